"""TwinSwin-Matte (Swin U-Net student, optional mask teacher) and TSR-Matte (student + full-resolution refiner)."""

from jaxmatte.models.tsr.modeling import (
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
from jaxmatte.models.tsr.system import TSR, TWINSWIN, TSRLoss
from jaxmatte.preprocessing import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "TSR",
    "TSR_PRESETS",
    "TWINSWIN",
    "TSRLoss",
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
