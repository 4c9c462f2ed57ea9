"""Deep Image Matting (RGB + trimap -> alpha) and its distillation-guided channel pruning (Matting Prune)."""

from jaxmatte.models.dim.modeling import (
    DIM,
    PRESETS,
    TEACHER_WIDTHS,
    DIMConfig,
    DIMOutput,
    DIMStudent,
    DIMStudentConfig,
    dim_input,
    force_known,
    forward,
)

__all__ = [
    "DIM",
    "PRESETS",
    "TEACHER_WIDTHS",
    "DIMConfig",
    "DIMOutput",
    "DIMStudent",
    "DIMStudentConfig",
    "dim_input",
    "force_known",
    "forward",
]
