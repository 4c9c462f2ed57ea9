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
from jaxmatte.models.dim.system import DIM_STUDENT_SYSTEM, DIM_SYSTEM, DIMLoss

__all__ = [
    "DIM",
    "DIM_STUDENT_SYSTEM",
    "DIM_SYSTEM",
    "DIMLoss",
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
