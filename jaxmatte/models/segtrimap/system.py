"""SegTrimap as a system: image + input mask in, trimap logits out; NFL + DT (or CE) loss; trimap validation.

Run-config sections read here (added by `recipe.segtrimap_config`): ``loss`` (kind nfl_dt | nfl | ce | ce_nfl,
weights, focal gamma) and ``labels`` (padding ignored or background, the unknown band of alpha-derived trimaps), and
``augmentation`` (`data.SegTrimapAugment` fields).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

import jax
from flax import nnx

from jaxmatte import losses
from jaxmatte.backbones import vit
from jaxmatte.models.segtrimap.data import SegTrimapAugment, SegTrimapFields
from jaxmatte.models.segtrimap.modeling import logits_at
from jaxmatte.registry import System, register_system
from jaxmatte.train.config import merge_overrides
from jaxmatte.train.warm_start import fill_part, load_directory

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SegTrimapLoss:
    """``loss(model, batch)``: `losses.segtrimap_loss` of the logits (resized to the labels' size, bilinear,
    align_corners False) for ``batch["image"]`` / ``batch["input_mask"]`` against ``batch["labels"]``."""

    kind: str = "nfl_dt"
    w_nfl: float = 1.0
    w_dt: float = 0.1
    w_ce: float = 1.0
    gamma: float = 2.0

    @classmethod
    def from_config(cls, config: Any) -> SegTrimapLoss:
        loss = config.loss
        return cls(str(loss.kind), float(loss.w_nfl), float(loss.w_dt), float(loss.w_ce), float(loss.gamma))

    def __call__(self, model: nnx.Module, batch: dict[str, jax.Array]) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = logits_at(model(batch["image"], batch["input_mask"]), batch["labels"].shape[1:3])
        return losses.segtrimap_loss(
            logits,
            batch["labels"],
            batch["distance"],
            kind=self.kind,
            w_nfl=self.w_nfl,
            w_dt=self.w_dt,
            w_ce=self.w_ce,
            gamma=self.gamma,
        )


def infer(model: nnx.Module, image: jax.Array, input_mask: jax.Array) -> jax.Array:
    """Class logits (B, H, W, 3) at the input size (the head's 512 -> 448 resize of the original evaluator)."""
    return logits_at(model(image, input_mask), image.shape[1:3])


def layer_of(keys: tuple, depth: int) -> int:
    """Layer-wise lr decay layers: the mask patch embedding with the image embeddings (0), block ``i`` at
    ``i + 1``, neck and head on top (``depth + 1``, the full learning rate)."""
    if keys[0] == "patch_embed_mask":
        return 0
    if keys[0] == "backbone":
        return vit.layer_of(keys[1:], depth)
    return depth + 1


def lr_layers(model_config: Any) -> tuple[Any, int]:
    depth = model_config.backbone.depth
    return functools.partial(layer_of, depth=depth), depth + 1


def example(config: Any, policy: Any) -> SegTrimapFields:
    labels = config.labels
    return SegTrimapFields(policy, ignore_padding=bool(labels.ignore_padding), unknown_band=int(labels.unknown_band))


def augment(config: Any) -> SegTrimapAugment:
    return merge_overrides(SegTrimapAugment(), config.augmentation)


def warm_start(model: nnx.Module, config: Any) -> None:
    """`model.init_from`: a segtrimap directory (e.g. ``port/convert.py segtrimap --mae``) fills the whole model;
    `model.backbone_weights`: a converted ViT (``port/convert.py vit``) fills the backbone."""
    backbone, init_from = config.model.backbone_weights, config.model.init_from
    if init_from:
        source = load_directory(init_from, ("segtrimap",), "model.init_from")
        for part in ("backbone", "patch_embed_mask", "neck", "head"):
            fill_part(getattr(model, part), init_from, getattr(source, part), part)
    elif backbone:
        hint = " converted with `python port/convert.py vit` (MAE weights, --pos-grid for the input size)"
        fill_part(
            model.backbone, backbone, load_directory(backbone, ("vit",), "model.backbone_weights", hint), "backbone"
        )
    else:
        logger.warning(
            "neither model.init_from nor model.backbone_weights is set: the ViT backbone has random weights. Real "
            "runs start from MAE (`python port/convert.py segtrimap --mae mae_pretrain_vit_huge.pth --out DIR`, then "
            "model.init_from=DIR)."
        )


SEGTRIMAP = register_system(
    System(
        name="segtrimap",
        make_loss=SegTrimapLoss.from_config,
        output="trimap",
        validation="trimap",
        best_metric="mIoU",
        best_mode="max",
        infer=infer,
        warm_start=warm_start,
        converters=("segtrimap",),
        inputs=("image", "input_mask"),
        example=example,
        augment=augment,
        lr_layers=lr_layers,
    )
)
