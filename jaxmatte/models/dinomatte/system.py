"""DINOv3 matting as a system: the spec's matting loss, a frozen backbone, matting validation, warm start.

Run-config section read here (added by `recipe.dinomatte_config`): ``loss`` (Charbonnier / multi-scale gradient /
Laplacian weights, L1 instead of Charbonnier, the optional boundary term).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import jax
from flax import nnx

from jaxmatte import losses
from jaxmatte.registry import System, register_system
from jaxmatte.train.warm_start import fill_part, load_directory

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DinoMatteLoss:
    """``loss(model, batch)``: `losses.dinov3_matting_loss` of the alpha for ``batch["image"]`` against
    ``batch["mask"]`` (soft alpha in [0, 1])."""

    w_charbonnier: float = 1.0
    w_gradient: float = 0.5
    w_laplacian: float = 0.1
    use_charbonnier: bool = True
    w_boundary: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> DinoMatteLoss:
        loss = config.loss
        return cls(
            float(loss.w_charbonnier),
            float(loss.w_gradient),
            float(loss.w_laplacian),
            bool(loss.use_charbonnier),
            float(loss.w_boundary),
        )

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        alpha = model(batch["image"]).alpha
        return losses.dinov3_matting_loss(
            alpha,
            batch["mask"],
            w_charbonnier=self.w_charbonnier,
            w_gradient=self.w_gradient,
            w_laplacian=self.w_laplacian,
            use_charbonnier=self.use_charbonnier,
            w_boundary=self.w_boundary,
        )


def infer(model: nnx.Module, images: jax.Array) -> jax.Array:
    return model(images).alpha


def trainable(model: nnx.Module) -> Any:
    """The decoder (and boundary refiner); the backbone too when `freeze_backbone` is off."""
    if model.config.freeze_backbone:
        return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("backbone")))
    return nnx.Param


def warm_start(model: nnx.Module, config: Any) -> None:
    """`model.backbone_weights`: a converted DINOv3 (``port/convert.py dinov3``) fills the backbone;
    `model.init_from`: a dinomatte directory fills the whole model (the boundary refiner when both have one)."""
    backbone, init_from = config.model.backbone_weights, config.model.init_from
    if init_from:
        source = load_directory(init_from, ("dinomatte",), "model.init_from")
        fill_part(model.backbone, init_from, source.backbone, "backbone")
        fill_part(model.decoder, init_from, source.decoder, "decoder")
        if model.boundary_refiner is not None:
            if source.boundary_refiner is None:
                logger.warning("%s has no boundary refiner: it starts from its initial weights", init_from)
            else:
                fill_part(model.boundary_refiner, init_from, source.boundary_refiner, "boundary refiner")
    elif backbone:
        hint = " converted with `python port/convert.py dinov3`"
        source = load_directory(backbone, ("dinov3",), "model.backbone_weights", hint)
        fill_part(model.backbone, backbone, source, "backbone")
    else:
        logger.warning(
            "model.backbone_weights is not set: the DINOv3 backbone has random weights%s. Real runs start from the "
            "official or timm DINOv3 weights (convert them with `python port/convert.py dinov3`).",
            " and stays frozen" if model.config.freeze_backbone else "",
        )


# No `high_res` split (predict.py --high-res refuses this family). The detail decoder's full-resolution RGB path is
# not a separate stage: it joins the backbone's top-down path at strides 4, 2 and 1, where the stride-4 input is a
# transposed-convolution lift with a fixed 4 x 4 pattern per token, tied to the canvas grid. Running that part at a
# photo's full resolution would resample those features by the photo / canvas ratio and feed the fusion convolutions
# a mix of scales they never saw in training. The faithful decoder has no RGB path, and the boundary refinement reads
# the alpha only, so at full resolution it would add no image detail.
DINOMATTE = register_system(
    System(
        name="dinomatte",
        make_loss=DinoMatteLoss.from_config,
        output="alpha",
        validation="matting",
        best_metric="MAE",
        best_mode="min",
        infer=infer,
        trainable=trainable,
        warm_start=warm_start,
        converters=("dinomatte",),
    )
)
