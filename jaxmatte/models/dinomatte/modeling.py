"""DINOv3 matting (family "dinomatte"): a DINOv3 ViT (frozen by default) and a convolutional alpha decoder, NHWC.

Input: ImageNet-normalised RGB (B, H, W, 3). If H or W is not a multiple of the patch size, the image is upsized
bilinearly (`align_corners=False`) before the backbone: `pad_rule="independent"` rounds each side up on its own;
`"original"` reproduces the original code, where both sides become (n // 16 + 1) * 16 as soon as either side is a
non-multiple (a side that already is a multiple grows by 16). The patch grid is (H'/16, W'/16), non-square allowed.

Decoders:

- `"faithful"` (dinov3_matting.md §3): final-norm patch tokens -> `input_proj` 1x1 -> `DecoderBlock`s
  ([Conv3x3 -> BN -> ReLU] x 2) with a ConvTranspose2d (k4 s2 p1) + ReLU after each but the last -> `final_conv`
  (Conv3x3 -> 32, ReLU, Conv1x1 -> 1) -> sigmoid at stride 4 (56x56 for a 224 input) -> bilinear to the input size.
- `"detail"` (jaxmatte's): four intermediate blocks (`feature_layers`, default evenly spaced, final-norm applied) are
  projected to `fuse_dim`. The two deepest are fused at stride 16; the second shallowest is lifted to stride 8 and the
  shallowest to stride 4 with transposed convolutions (a ViTDet-like simple pyramid). A top-down path (bilinear x2 +
  concat + Conv3x3/BN/ReLU) runs 16 -> 8 -> 4 -> 2 -> 1 with `decoder_dims` widths at strides 8, 4, 2; a light RGB
  path (`detail_dims` widths at strides 1, 2, 4: Conv3x3/BN/ReLU on the image, stride 2 between them) is concatenated
  at strides 4, 2 and 1 so that fine structures (hair) come from the image itself. The sigmoid is taken at the full
  (patch-rounded) input resolution; only a rounded-up input is resized back.

Optional `BoundaryRefinement` (both decoders): r = conv3(relu(conv2(relu(conv1(alpha))))) (1 -> 32 -> 32 -> 1),
alpha' = clamp(alpha + s * r, 0, 1), learnable scalar s (init 0.1), applied to the final alpha at the input size.

Training: `model.train()` gives BN batch statistics in the decoder; the backbone's features pass `stop_gradient` when
`freeze_backbone` (its drop-path rate must then be 0). The backbone's RoPE rescale augmentation is a separate switch,
`rope_rescale_train` (the backbone config gets `rope_rescale=2.0`), so `model.train()` alone never changes features.

Initialisation as the original decoder: Conv2d kaiming-normal (fan_out, ReLU gain) with zero bias, ConvTranspose2d
and the boundary convs PyTorch's defaults, BN 1 / 0. Layers compute in `dtype` (bf16 capable); sigmoid, resizing and
the refinement run in float32, and every output is float32.

`forward(model, x)` is a jitted `model(x)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.backbones.dinov3 import PRESETS as DINOV3_PRESETS
from jaxmatte.backbones.dinov3 import DinoV3, DinoV3Config
from jaxmatte.layers import ConvBN, batch_norm, conv
from jaxmatte.ops import ConvTranspose2d, resize_bilinear
from jaxmatte.registry import register

Dtype = Any

DECODERS = ("faithful", "detail")
PAD_RULES = ("independent", "original")
FAITHFUL_LAST_WIDTH = 64  # the original's last DecoderBlock always outputs 64 channels (final_conv expects 64)
FINAL_HIDDEN = 32
BOUNDARY_HIDDEN = 32
SHARPENING_INIT = 0.1
TRAIN_ROPE_RESCALE = 2.0
NUM_FEATURE_LEVELS = 4

# kaiming_normal_(mode='fan_out', nonlinearity='relu'): N(0, 2 / (C_out * kh * kw)), untruncated


# ---------------------------------------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True, kw_only=True)
class DinoMatteConfig:
    """DINOv3 matting model.

    `decoder_dims`: faithful: input_proj width followed by the DecoderBlock outputs but the last (which is 64);
    detail: the top-down widths at strides 8, 4, 2. `boundary_kernels`: the refiner's three (odd) kernel sizes.
    `img_size`: nominal input side for prediction / training (the model accepts any size).
    Detail decoder only: `feature_layers` (4 block indices, None = evenly spaced), `fuse_dim`, `detail_dims` (RGB path
    widths at strides 1, 2, 4).
    """

    backbone: DinoV3Config = DINOV3_PRESETS["small"]
    decoder: str = "faithful"
    decoder_dims: tuple[int, ...] = (256, 128, 64)
    boundary_refinement: bool = False
    boundary_kernels: tuple[int, int, int] = (3, 3, 3)
    img_size: int = 224
    pad_rule: str = "independent"
    freeze_backbone: bool = True
    rope_rescale_train: bool = False
    feature_layers: tuple[int, ...] | None = None
    fuse_dim: int = 128
    detail_dims: tuple[int, int, int] = (16, 32, 32)

    def __post_init__(self) -> None:
        problems = []
        if self.decoder not in DECODERS:
            problems.append(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.pad_rule not in PAD_RULES:
            problems.append(f"pad_rule must be one of {PAD_RULES}, got {self.pad_rule!r}")
        if not self.decoder_dims or any(not _positive_int(d) for d in self.decoder_dims):
            problems.append(f"decoder_dims must be positive ints, got {self.decoder_dims}")
        if self.decoder == "detail" and len(self.decoder_dims) != 3:
            problems.append(f"the detail decoder needs 3 decoder_dims (strides 8, 4, 2), got {self.decoder_dims}")
        if len(self.boundary_kernels) != 3 or any(not _positive_int(k) or k % 2 == 0 for k in self.boundary_kernels):
            problems.append(f"boundary_kernels must be three odd positive ints, got {self.boundary_kernels}")
        patch = self.backbone.patch_size
        if not _positive_int(self.img_size) or self.img_size % patch:
            problems.append(f"img_size must be a positive multiple of the patch size {patch}, got {self.img_size}")
        if not _positive_int(self.fuse_dim) or self.fuse_dim % 2:
            problems.append(f"fuse_dim must be a positive even int, got {self.fuse_dim}")
        if len(self.detail_dims) != 3 or any(not _positive_int(d) for d in self.detail_dims):
            problems.append(f"detail_dims must be three positive ints, got {self.detail_dims}")
        depth = self.backbone.depth
        if self.feature_layers is not None and (
            len(self.feature_layers) != NUM_FEATURE_LEVELS or any(not -depth <= i < depth for i in self.feature_layers)
        ):
            problems.append(
                f"feature_layers must be {NUM_FEATURE_LEVELS} block indices in [-{depth}, {depth}), "
                f"got {self.feature_layers}"
            )
        if depth < 1:
            problems.append("the backbone needs at least one block")
        if self.freeze_backbone and self.backbone.drop_path_rate:
            problems.append(f"a frozen backbone must have drop_path_rate 0, got {self.backbone.drop_path_rate}")
        if problems:
            raise ValueError("invalid DinoMatteConfig: " + "; ".join(problems))
        # the backbone's RoPE rescale follows the switch (keeping a custom factor that is already set)
        rescale = (self.backbone.rope_rescale or TRAIN_ROPE_RESCALE) if self.rope_rescale_train else None
        if rescale != self.backbone.rope_rescale:
            object.__setattr__(self, "backbone", dataclasses.replace(self.backbone, rope_rescale=rescale))

    @property
    def stride(self) -> int:
        return self.backbone.patch_size

    @property
    def levels(self) -> tuple[int, ...]:
        """The detail decoder's 4 block indices (non-negative, shallow to deep)."""
        depth = self.backbone.depth
        if self.feature_layers is not None:
            return tuple(i % depth for i in self.feature_layers)
        return tuple(max(0, (k + 1) * depth // NUM_FEATURE_LEVELS - 1) for k in range(NUM_FEATURE_LEVELS))

    def backbone_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size the backbone sees for an (height, width) image, by `pad_rule`."""
        p = self.stride
        if self.pad_rule == "original":
            if height % p or width % p:
                return (height // p + 1) * p, (width // p + 1) * p
            return height, width
        return -(-height // p) * p, -(-width // p) * p

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DinoMatteConfig:
        """See `PRESETS`; `overrides` replace fields."""
        if name not in PRESETS:
            raise KeyError(f"unknown dinomatte preset {name!r}; known: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _detail(size: str) -> DinoMatteConfig:
    return DinoMatteConfig(backbone=DINOV3_PRESETS[size], decoder="detail", decoder_dims=(128, 64, 32), img_size=448)


PRESETS: dict[str, DinoMatteConfig] = {
    # faithful decoder (spec §3) on each DINOv3 size; jaxmatte's corrected input and training behaviour
    **{size: DinoMatteConfig(backbone=DINOV3_PRESETS[size]) for size in ("small", "base", "large", "huge_plus")},
    # the original system exactly, training quirks included (§9.2: RoPE rescale in train mode; §9.5: padding rule)
    "faithful": DinoMatteConfig(pad_rule="original", rope_rescale_train=True),
    # jaxmatte's multi-scale decoder with an RGB detail path, for 448 / 896 inputs
    **{f"{size}_detail": _detail(size) for size in ("small", "base", "large", "huge_plus")},
}


# ---------------------------------------------------------------------------------------------------------------------
# Layers


def kaiming_conv(in_features: int, out_features: int, kernel: int, **kwargs: Any) -> nnx.Conv:
    """`nn.Conv2d` (bias) with the original decoder's init: kaiming-normal fan_out, zero bias."""
    return conv(in_features, out_features, kernel, bias=True, init="kaiming", **kwargs)


def upsample2(x: jax.Array) -> jax.Array:
    """Bilinear x2, `align_corners=False`."""
    return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=False)


def clamp01(x: jax.Array) -> jax.Array:
    """`torch.clamp(x, 0, 1)` with its gradient (1 strictly inside, 0 at and beyond the bounds)."""
    return jnp.where(x <= 0.0, 0.0, jnp.where(x >= 1.0, 1.0, x)).astype(x.dtype)


def conv_bn_relu(in_features: int, out_features: int, *, stride: int = 1, **kwargs: Any) -> ConvBN:
    """Conv3x3 (bias, kaiming init) -> BN -> ReLU."""
    return ConvBN(in_features, out_features, 3, stride=stride, padding=1, bias=True, init="kaiming", **kwargs)


class DecoderBlock(nnx.Module):
    """[Conv3x3 (bias) -> BN -> ReLU] x 2; PyTorch `conv_block.{0,1,3,4}` = `conv1, bn1, conv2, bn2`."""

    def __init__(self, in_features: int, out_features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = kaiming_conv(in_features, out_features, 3, padding=1, **kw)
        self.bn1 = batch_norm(out_features, **kw)
        self.conv2 = kaiming_conv(out_features, out_features, 3, padding=1, **kw)
        self.bn2 = batch_norm(out_features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.relu(self.bn2(self.conv2(x)))


class FinalConv(nnx.Module):
    """Conv3x3 64 -> 32, ReLU, Conv1x1 32 -> 1 (logits); PyTorch `final_conv.{0,2}` = `conv, out`."""

    def __init__(self, in_features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv = kaiming_conv(in_features, FINAL_HIDDEN, 3, padding=1, **kw)
        self.out = kaiming_conv(FINAL_HIDDEN, 1, 1, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(jax.nn.relu(self.conv(x)))


class DecoderOutput(NamedTuple):
    alpha: jax.Array  # (B, H, W, 1) float32 at the requested size
    logits: jax.Array  # (B, h', w', 1) float32 before the sigmoid, at the decoder's resolution
    levels: list[jax.Array]  # per-stage features (faithful: after each block / upsampling), for parity checks


class FaithfulDecoder(nnx.Module):
    """The original `MultiScaleDecoder` on a (B, h, w, D) token grid."""

    def __init__(
        self, config: DinoMatteConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        dims = tuple(config.decoder_dims)
        outs = dims[1:] + (FAITHFUL_LAST_WIDTH,)
        self.input_proj = kaiming_conv(config.backbone.embed_dim, dims[0], 1, **kw)
        self.decoder_blocks = nnx.List([DecoderBlock(i, o, **kw) for i, o in zip(dims, outs, strict=True)])
        self.upsample_blocks = nnx.List(
            [
                ConvTranspose2d(o, o, 4, stride=2, padding=1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                for o in outs[:-1]
            ]
        )
        self.final_conv = FinalConv(FAITHFUL_LAST_WIDTH, **kw)

    def __call__(self, grid: jax.Array, size: tuple[int, int]) -> DecoderOutput:
        x = self.input_proj(grid)
        levels = [x]
        for i, block in enumerate(self.decoder_blocks):
            x = block(x)
            levels.append(x)
            if i < len(self.upsample_blocks):
                x = jax.nn.relu(self.upsample_blocks[i](x))
                levels.append(x)
        logits = self.final_conv(x).astype(jnp.float32)
        alpha = jax.nn.sigmoid(logits)
        if alpha.shape[1:3] != tuple(size):
            alpha = resize_bilinear(alpha, size, align_corners=False)
        return DecoderOutput(alpha, logits, levels)


class DetailDecoder(nnx.Module):
    """jaxmatte's multi-scale decoder with a full-resolution RGB detail path (module docstring)."""

    def __init__(
        self, config: DinoMatteConfig, *, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        fuse, half = config.fuse_dim, config.fuse_dim // 2
        c8, c4, c2 = config.decoder_dims
        e1, e2, e4 = config.detail_dims
        dim = config.backbone.embed_dim
        self.proj = nnx.List([kaiming_conv(dim, fuse, 1, **kw) for _ in range(NUM_FEATURE_LEVELS)])
        self.fuse16 = conv_bn_relu(2 * fuse, fuse, **kw)
        self.lift8 = ConvTranspose2d(fuse, fuse, 2, stride=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.lift4 = ConvTranspose2d(fuse, half, 4, stride=4, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rgb1 = conv_bn_relu(3, e1, **kw)
        self.rgb2 = conv_bn_relu(e1, e2, stride=2, **kw)
        self.rgb4 = conv_bn_relu(e2, e4, stride=2, **kw)
        self.fuse8 = conv_bn_relu(2 * fuse, c8, **kw)
        self.fuse4 = conv_bn_relu(c8 + half + e4, c4, **kw)
        self.fuse2 = conv_bn_relu(c4 + e2, c2, **kw)
        self.fuse1 = conv_bn_relu(c2 + e1, e1, **kw)
        self.head = kaiming_conv(e1, 1, 3, padding=1, **kw)

    def __call__(self, features: list[jax.Array], image: jax.Array, size: tuple[int, int]) -> DecoderOutput:
        """`features`: 4 (B, h, w, D) grids, shallow to deep; `image`: the (B, 16h, 16w, 3) backbone input."""
        p0, p1, p2, p3 = [proj(f) for proj, f in zip(self.proj, features, strict=True)]
        rgb1 = self.rgb1(image.astype(p0.dtype))
        rgb2 = self.rgb2(rgb1)
        rgb4 = self.rgb4(rgb2)
        f16 = self.fuse16(jnp.concatenate([p2, p3], axis=-1))
        f8 = self.fuse8(jnp.concatenate([upsample2(f16), jax.nn.relu(self.lift8(p1))], axis=-1))
        f4 = self.fuse4(jnp.concatenate([upsample2(f8), jax.nn.relu(self.lift4(p0)), rgb4], axis=-1))
        f2 = self.fuse2(jnp.concatenate([upsample2(f4), rgb2], axis=-1))
        f1 = self.fuse1(jnp.concatenate([upsample2(f2), rgb1], axis=-1))
        logits = self.head(f1).astype(jnp.float32)
        alpha = jax.nn.sigmoid(logits)
        if alpha.shape[1:3] != tuple(size):
            alpha = resize_bilinear(alpha, size, align_corners=False)
        return DecoderOutput(alpha, logits, [f16, f8, f4, f2, f1])


class BoundaryRefinement(nnx.Module):
    """clamp(alpha + s * conv3(relu(conv2(relu(conv1(alpha))))), 0, 1); PyTorch `boundary_conv.{0,2,4}` =
    `conv1, conv2, conv3`, `sharpening_weight` = s (a 0-d parameter). PyTorch default init."""

    def __init__(
        self,
        kernels: tuple[int, int, int] = (3, 3, 3),
        hidden: int = BOUNDARY_HIDDEN,
        *,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        rngs: nnx.Rngs,
    ):
        kw = {"bias": True, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        k1, k2, k3 = kernels
        self.dtype = dtype
        self.conv1 = conv(1, hidden, k1, padding=k1 // 2, **kw)
        self.conv2 = conv(hidden, hidden, k2, padding=k2 // 2, **kw)
        self.conv3 = conv(hidden, 1, k3, padding=k3 // 2, **kw)
        self.sharpening_weight = nnx.Param(jnp.asarray(SHARPENING_INIT, param_dtype))

    def __call__(self, alpha: jax.Array) -> jax.Array:
        x = alpha.astype(self.dtype)
        response = self.conv3(jax.nn.relu(self.conv2(jax.nn.relu(self.conv1(x))))).astype(jnp.float32)
        return clamp01(alpha.astype(jnp.float32) + self.sharpening_weight[...].astype(jnp.float32) * response)


# ---------------------------------------------------------------------------------------------------------------------
# Model


class DinoMatteOutput(NamedTuple):
    """`alpha` (B, H, W, 1) float32 in [0, 1] at the input size; `coarse` the same before boundary refinement (equal
    to `alpha` without a refiner); `logits` the decoder's pre-sigmoid output at its own resolution (faithful: stride 4
    of the backbone input; detail: the backbone input size)."""

    alpha: jax.Array
    coarse: jax.Array
    logits: jax.Array


@register("dinomatte", DinoMatteConfig)
class DinoMatte(nnx.Module):
    """DINOv3 backbone (`backbone`), alpha `decoder` and optional `boundary_refiner` (None when disabled)."""

    def __init__(
        self, config: DinoMatteConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.config = config
        self.backbone = DinoV3(config.backbone, **kw)
        decoder_cls = DetailDecoder if config.decoder == "detail" else FaithfulDecoder
        self.decoder = decoder_cls(config, **kw)
        self.boundary_refiner = (
            BoundaryRefinement(config.boundary_kernels, **kw) if config.boundary_refinement else None
        )

    def features(self, x: jax.Array) -> tuple[list[jax.Array], jax.Array]:
        """(backbone feature grids, the backbone input) for an input (B, H, W, 3); gradients stopped when frozen."""
        cfg = self.config
        size = cfg.backbone_size(*x.shape[1:3])
        if size != tuple(x.shape[1:3]):
            x = resize_bilinear(x.astype(jnp.promote_types(x.dtype, jnp.float32)), size, align_corners=False)
        indices = cfg.levels if cfg.decoder == "detail" else (-1,)
        grids = self.backbone.forward_intermediates(x, indices, norm=True)
        if cfg.freeze_backbone:
            grids = [jax.lax.stop_gradient(g) for g in grids]
        return grids, x

    def __call__(self, x: jax.Array) -> DinoMatteOutput:
        """x: (B, H, W, 3) ImageNet-normalised RGB."""
        size = tuple(x.shape[1:3])
        grids, inner = self.features(x)
        detail = self.config.decoder == "detail"
        decoded = self.decoder(grids, inner, size) if detail else self.decoder(grids[0], size)
        coarse = decoded.alpha
        alpha = self.boundary_refiner(coarse) if self.boundary_refiner is not None else coarse
        return DinoMatteOutput(alpha, coarse, decoded.logits)


@nnx.jit
def forward(model: DinoMatte, x: jax.Array) -> DinoMatteOutput:
    """Jitted `model(x)`."""
    return model(x)
