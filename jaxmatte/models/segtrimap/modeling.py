"""SegTrimap (family "segtrimap"): trimap segmentation from an RGB image and a coarse binary object mask, NHWC.

    tokens = patch_embed(image) + patch_embed_mask(mask * mask_scale) [+ pos_embed[:, 1:]]
    -> ViT blocks (SimpleClick schedule: local attention in windows, a global block every depth // 4)
    -> token grid at stride p -> SimpleFPN neck (strides p/4, p/2, p, 2p) -> all-MLP head -> 3-class logits

Inputs: ImageNet-normalised RGB (B, H, W, 3) and the binary mask (B, H, W, 1) in {0, 1}; `mask_scale` (1 for
jaxmatte-trained models, 1/255 for the original's checkpoints, which saw their masks through ToTensor) multiplies the
mask inside the model, so callers always feed {0, 1}. Variant 1 adds the learned position table (the class slot is
stored, never in the sequence); variant 2 (`backbone.use_pos_embed=False`) has no positional embedding at all.

Neck (SimpleFPN, `neck_dims` = (d4, d8, d16, d32) for the four scales; GroupNorm(1, C) everywhere, eps 1e-5):
  down_4:  ConvT k2 s2 -> GN -> GELU -> ConvT k2 s2 -> GN -> Conv1x1 -> GN -> GELU  (inner max(2 d4, D/2), then half)
  down_8:  ConvT k2 s2 -> GN -> Conv1x1 -> GN -> GELU                               (inner max(d8, D/2))
  down_16: Conv1x1 -> GN -> GELU
  down_32: Conv k2 s2 -> GN -> Conv1x1 -> GN -> GELU                                (inner max(d32, 2 D))
Head: Conv1x1 + ReLU per scale to `head_width`, bilinear (align_corners False) to the stride-p/4 size, concatenate,
`fusion_conv` Conv1x1 + ReLU; `upsample` "x2" / "x4" adds one / two [ConvT k2 s2 -> GN -> Conv1x1 -> GN -> GELU]
blocks halving the width each time; Dropout2d(0.1) (whole channels, training only); `conv_seg` Conv1x1 -> logits.
For a 448 input with patch 14 the logits are 128 (x1), 256 (x2) or 512 (x4) pixels square: the model does no final
resize. `logits_at(logits, size)` is the separate step that brings them to the input size (bilinear, half-pixel
centres, no antialias, as PyTorch does).

Layers compute in `dtype` (bf16 capable) with float32 parameters; the logits are float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.backbones.vit import PRESETS as VIT_PRESETS
from jaxmatte.backbones.vit import VisionTransformer, ViTConfig
from jaxmatte.layers import conv, gelu, group_norm, patch_conv
from jaxmatte.ops import ConvTranspose2d, resize_bilinear, torch_bias_init, torch_kernel_init
from jaxmatte.registry import register

Dtype = Any

UPSAMPLE_MODES = ("x1", "x2", "x4")
UPSAMPLE_FACTORS = {"x1": 1, "x2": 2, "x4": 4}
NUM_CLASSES = 3  # 0 background, 1 unknown, 2 foreground
CLASS_NAMES = ("bg", "unknown", "fg")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SegTrimapConfig:
    """SegTrimap model.

    `backbone`: a windowed ViT (SimpleClick schedule, no final norm); `use_pos_embed` selects variant 1 (True) or 2.
    `neck_dims`: SimpleFPN output widths at strides p/4, p/2, p, 2p. `head_width`: the head's internal width (the
    per-scale projections, fusion and upsampling input); `upsample` x1 / x2 / x4: logits at stride p/4, p/8, p/16,
    from `head_width / factor` channels. `mask_scale`: factor applied to the {0, 1} input mask (1/255 reproduces
    checkpoints trained on ToTensor masks). `dropout`: Dropout2d rate before `conv_seg`.
    """

    backbone: ViTConfig = VIT_PRESETS["simpleclick_huge_448"]
    neck_dims: tuple[int, int, int, int] = (240, 480, 960, 1920)
    head_width: int = 256
    upsample: str = "x4"
    num_classes: int = NUM_CLASSES
    dropout: float = 0.1
    mask_scale: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        b = self.backbone
        if not b.windowed:
            problems.append("the backbone must use SimpleClick windows (window_size / global_every set)")
        if b.final_norm:
            problems.append("the backbone has no final norm in SegTrimap (final_norm=False)")
        if b.in_chans != 3:
            problems.append(f"the backbone takes RGB images (in_chans 3), got {b.in_chans}")
        if b.img_size[0] != b.img_size[1]:
            problems.append(f"the input is a square canvas, got img_size {b.img_size}")
        if self.upsample not in UPSAMPLE_MODES:
            problems.append(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        elif self.head_width % UPSAMPLE_FACTORS[self.upsample]:
            problems.append(f"head_width {self.head_width} is not divisible by the {self.upsample} factor")
        if len(self.neck_dims) != 4 or any(not _positive_int(d) for d in self.neck_dims):
            problems.append(f"neck_dims must be four positive ints, got {self.neck_dims}")
        if not _positive_int(self.head_width):
            problems.append(f"head_width must be a positive int, got {self.head_width}")
        if not _positive_int(self.num_classes) or self.num_classes < 2:
            problems.append(f"num_classes must be an int >= 2, got {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.mask_scale > 0:
            problems.append(f"mask_scale must be positive, got {self.mask_scale}")
        if problems:
            raise ValueError("invalid SegTrimapConfig: " + "; ".join(problems))

    @property
    def img_size(self) -> int:
        """Side of the square input canvas (the position table's size)."""
        return self.backbone.img_size[0]

    @property
    def variant(self) -> int:
        """1: learned position table (and stored class token); 2: no positional embedding."""
        return 1 if self.backbone.use_pos_embed else 2

    @property
    def seg_channels(self) -> int:
        """Input width of `conv_seg` (what identifies the upsample mode in a checkpoint)."""
        return self.head_width // UPSAMPLE_FACTORS[self.upsample]

    def logits_size(self, size: int | None = None) -> int:
        """Side of the logits for a `size` (default `img_size`) input."""
        size = self.img_size if size is None else size
        return size // self.backbone.patch_size * 4 * UPSAMPLE_FACTORS[self.upsample]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SegTrimapConfig:
        """See `PRESETS`; `overrides` replace fields."""
        if name not in PRESETS:
            raise KeyError(f"unknown segtrimap preset {name!r}; known: {sorted(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def without_pos_embed(backbone: ViTConfig) -> ViTConfig:
    """Variant 2's backbone: no class token and no position table."""
    return dataclasses.replace(backbone, class_token=False, use_pos_embed=False)


_SMALL_224 = ViTConfig(
    img_size=(224, 224),
    patch_size=16,
    embed_dim=384,
    depth=4,
    num_heads=6,
    window_size=7,
    global_every=2,
    final_norm=False,
)

PRESETS: dict[str, SegTrimapConfig] = {
    # the headline system: MAE ViT-H/14 at 448, variant 1 (learned positions), x4 head (logits at 512)
    "huge_448": SegTrimapConfig(),
    # variant 2 (no positional embedding), as the later CE / CE+NFL runs
    "huge_448_nopos": SegTrimapConfig(backbone=without_pos_embed(VIT_PRESETS["simpleclick_huge_448"])),
    # smaller runs on MAE ViT-L/16 and ViT-B/16 (SimpleClick's neck widths for those sizes)
    "large_448": SegTrimapConfig(backbone=VIT_PRESETS["simpleclick_large_448"], neck_dims=(256, 512, 1024, 2048)),
    "base_448": SegTrimapConfig(backbone=VIT_PRESETS["simpleclick_base_448"], neck_dims=(128, 256, 512, 1024)),
    # CPU demo: a ViT-S-wide, 4-block backbone at 224 (windows of 7x7 tokens, blocks 2 and 4 global)
    "small_224": SegTrimapConfig(backbone=_SMALL_224, neck_dims=(96, 192, 384, 768), head_width=128),
}


# ---------------------------------------------------------------------------------------------------------------------
# Layers


def _conv1x1(in_features: int, out_features: int, **kw: Any) -> nnx.Conv:
    return conv(in_features, out_features, 1, bias=True, **kw)


def _deconv2(in_features: int, out_features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    return ConvTranspose2d(in_features, out_features, 2, stride=2, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class MaskPatchEmbed(nnx.Module):
    """`patch_embed_mask.proj`: Conv 1 -> D, kernel = stride = patch, on the (scaled) mask; PyTorch default init."""

    def __init__(self, patch_size: int, dim: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        fan_in = patch_size * patch_size
        self.proj = patch_conv(
            1,
            dim,
            patch_size,
            kernel_init=torch_kernel_init,
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )
        self.proj.bias = nnx.Param(torch_bias_init(fan_in)(rngs.params(), (dim,), param_dtype))

    def __call__(self, mask: jax.Array) -> jax.Array:
        return self.proj(mask)


class Down4(nnx.Module):
    """Stride p -> p/4: ConvT -> GN -> GELU -> ConvT -> GN -> Conv1x1 -> GN -> GELU."""

    def __init__(self, dim: int, out: int, **kw: Any):
        inner = max(2 * out, dim // 2)
        self.deconv1 = _deconv2(dim, inner, **kw)
        self.norm1 = group_norm(inner, **kw)
        self.deconv2 = _deconv2(inner, inner // 2, **kw)
        self.norm2 = group_norm(inner // 2, **kw)
        self.proj = _conv1x1(inner // 2, out, **kw)
        self.norm3 = group_norm(out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.norm2(self.deconv2(gelu(self.norm1(self.deconv1(x)))))
        return gelu(self.norm3(self.proj(x)))


class Down8(nnx.Module):
    """Stride p -> p/2: ConvT -> GN -> Conv1x1 -> GN -> GELU."""

    def __init__(self, dim: int, out: int, **kw: Any):
        inner = max(out, dim // 2)
        self.deconv = _deconv2(dim, inner, **kw)
        self.norm1 = group_norm(inner, **kw)
        self.proj = _conv1x1(inner, out, **kw)
        self.norm2 = group_norm(out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.norm2(self.proj(self.norm1(self.deconv(x)))))


class Down16(nnx.Module):
    """Stride p: Conv1x1 -> GN -> GELU."""

    def __init__(self, dim: int, out: int, **kw: Any):
        self.proj = _conv1x1(dim, out, **kw)
        self.norm = group_norm(out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.norm(self.proj(x)))


class Down32(nnx.Module):
    """Stride p -> 2p: Conv k2 s2 -> GN -> Conv1x1 -> GN -> GELU."""

    def __init__(self, dim: int, out: int, **kw: Any):
        inner = max(out, 2 * dim)
        self.down = conv(dim, inner, 2, stride=2, bias=True, **kw)
        self.norm1 = group_norm(inner, **kw)
        self.proj = _conv1x1(inner, out, **kw)
        self.norm2 = group_norm(out, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.norm2(self.proj(self.norm1(self.down(x)))))


class SimpleFPN(nnx.Module):
    """The ViT token grid -> four maps at strides p/4, p/2, p, 2p (`neck.down_4/8/16/32`)."""

    def __init__(self, dim: int, dims: tuple[int, int, int, int], **kw: Any):
        self.down_4 = Down4(dim, dims[0], **kw)
        self.down_8 = Down8(dim, dims[1], **kw)
        self.down_16 = Down16(dim, dims[2], **kw)
        self.down_32 = Down32(dim, dims[3], **kw)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        return self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)


class ConvReLU(nnx.Module):
    """mmcv's ConvModule without norm: Conv1x1 (bias, kaiming-normal fan_out init, zero bias) + ReLU."""

    def __init__(self, in_features: int, out_features: int, **kw: Any):
        self.conv = conv(in_features, out_features, 1, bias=True, init="kaiming", **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv(x))


class UpBlock(nnx.Module):
    """x2: ConvT k2 s2 -> GN -> Conv1x1 -> GN -> GELU (`up_conv1` / `up_conv2`)."""

    def __init__(self, in_features: int, out_features: int, **kw: Any):
        self.deconv = _deconv2(in_features, out_features, **kw)
        self.norm1 = group_norm(out_features, **kw)
        self.proj = _conv1x1(out_features, out_features, **kw)
        self.norm2 = group_norm(out_features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return gelu(self.norm2(self.proj(self.norm1(self.deconv(x)))))


class TrimapHead(nnx.Module):
    """All-MLP head over the four neck maps -> class logits (`head.*`).

    `up_conv1` / `up_conv2` always exist (checkpoints hold them in every mode); only the `upsample` mode's ones run.
    """

    def __init__(self, config: SegTrimapConfig, *, rngs: nnx.Rngs, **kw: Any):
        width = config.head_width
        self.upsample = config.upsample
        self.convs = nnx.List([ConvReLU(d, width, rngs=rngs, **kw) for d in config.neck_dims])
        self.fusion_conv = ConvReLU(width * len(config.neck_dims), width, rngs=rngs, **kw)
        self.up_conv1 = UpBlock(width, width // 2, rngs=rngs, **kw)
        self.up_conv2 = UpBlock(width // 2, width // 4, rngs=rngs, **kw)
        self.dropout = nnx.Dropout(config.dropout, broadcast_dims=(1, 2), rngs=rngs)
        self.conv_seg = _conv1x1(config.seg_channels, config.num_classes, rngs=rngs, **kw)

    def __call__(self, features: tuple[jax.Array, ...]) -> jax.Array:
        size = features[0].shape[1:3]
        branches = []
        for layer, x in zip(self.convs, features, strict=True):
            y = layer(x)
            if y.shape[1:3] != size:
                y = resize_bilinear(y, size, align_corners=False)
            branches.append(y)
        x = self.fusion_conv(jnp.concatenate(branches, axis=-1))
        if self.upsample in ("x2", "x4"):
            x = self.up_conv1(x)
        if self.upsample == "x4":
            x = self.up_conv2(x)
        return self.conv_seg(self.dropout(x))


@register("segtrimap", SegTrimapConfig)
class SegTrimap(nnx.Module):
    """`backbone` (windowed ViT), `patch_embed_mask`, `neck` (SimpleFPN), `head` (TrimapHead)."""

    def __init__(
        self, config: SegTrimapConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.config = config
        self.dtype = dtype
        kw = {"dtype": dtype, "param_dtype": param_dtype}
        b = config.backbone
        self.backbone = VisionTransformer(b, rngs=rngs, **kw)
        self.patch_embed_mask = MaskPatchEmbed(b.patch_size, b.embed_dim, rngs=rngs, **kw)
        self.neck = SimpleFPN(b.embed_dim, config.neck_dims, rngs=rngs, **kw)
        self.head = TrimapHead(config, rngs=rngs, **kw)

    def features(self, image: jax.Array, mask: jax.Array) -> tuple[jax.Array, ...]:
        """The four neck maps for an image and its {0, 1} mask."""
        if mask.ndim == 3:
            mask = mask[..., None]
        if mask.shape[:3] != image.shape[:3] or mask.shape[-1] != 1:
            raise ValueError(f"the mask must be (B, H, W, 1) like the image {image.shape[:3]}, got {mask.shape}")
        backbone = self.backbone
        tokens, (h, w) = backbone.patch_tokens(image)
        scaled = mask.astype(jnp.float32) * jnp.float32(self.config.mask_scale)
        mask_tokens = self.patch_embed_mask(scaled.astype(self.dtype))
        tokens = tokens + mask_tokens.reshape(tokens.shape)
        pos = backbone.position_embedding(h, w)
        if pos is not None:
            tokens = tokens + pos
        tokens, _ = backbone.run_blocks(tokens, (h, w), num_prefix=0)
        grid = tokens.reshape(tokens.shape[0], h, w, tokens.shape[-1])
        return self.neck(grid)

    def __call__(self, image: jax.Array, mask: jax.Array) -> jax.Array:
        """Class logits (B, h, w, num_classes), float32, at the head's resolution (see `logits_at`)."""
        return self.head(self.features(image, mask)).astype(jnp.float32)


def logits_at(logits: jax.Array, size: int | tuple[int, int]) -> jax.Array:
    """Logits resized to `size` as the original trainer and evaluator do (bilinear, align_corners False, no
    antialias, also when shrinking 512 -> 448)."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(logits.shape[1:3]) == size:
        return logits
    return resize_bilinear(logits, size, align_corners=False)


@nnx.jit
def forward(model: SegTrimap, image: jax.Array, mask: jax.Array) -> jax.Array:
    """Jitted `model(image, mask)`."""
    return model(image, mask)


__all__ = [
    "CLASS_NAMES",
    "NUM_CLASSES",
    "PRESETS",
    "UPSAMPLE_MODES",
    "SegTrimap",
    "SegTrimapConfig",
    "SimpleFPN",
    "TrimapHead",
    "forward",
    "logits_at",
    "without_pos_embed",
]
