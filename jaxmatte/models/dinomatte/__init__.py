"""DINOv3 matting: frozen DINOv3 ViT + the original convolutional decoder, or jaxmatte's multi-scale detail decoder."""

from jaxmatte.models.dinomatte.modeling import (
    DECODERS,
    PAD_RULES,
    PRESETS,
    BoundaryRefinement,
    DecoderOutput,
    DetailDecoder,
    DinoMatte,
    DinoMatteConfig,
    DinoMatteOutput,
    FaithfulDecoder,
    forward,
)
from jaxmatte.models.dinomatte.system import DINOMATTE, DinoMatteLoss

__all__ = [
    "DINOMATTE",
    "DinoMatteLoss",
    "DECODERS",
    "PAD_RULES",
    "PRESETS",
    "BoundaryRefinement",
    "DecoderOutput",
    "DetailDecoder",
    "DinoMatte",
    "DinoMatteConfig",
    "DinoMatteOutput",
    "FaithfulDecoder",
    "forward",
]
