"""TwinSwin-Matte (Swin U-Net student, optional mask teacher) and TSR-Matte (student + full-resolution refiner)."""

from jaxmatte.models.tsr.modeling import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    PRESETS,
    TSR_PRESETS,
    MaskEncoder,
    MaskEncoderConfig,
    Refiner,
    RefinerConfig,
    StudentOutput,
    TSRConfig,
    TSRMatte,
    TSROutput,
    TwinSwinConfig,
    TwinSwinMatte,
    TwinSwinUNet,
    forward,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "TSR_PRESETS",
    "MaskEncoder",
    "MaskEncoderConfig",
    "Refiner",
    "RefinerConfig",
    "StudentOutput",
    "TSRConfig",
    "TSRMatte",
    "TSROutput",
    "TwinSwinConfig",
    "TwinSwinMatte",
    "TwinSwinUNet",
    "forward",
]
