"""TwinSwin-Matte and TSR-Matte on NHWC arrays.

- `TwinSwinUNet` (student): the input (any size, ImageNet-normalised RGB) is resized bilinearly (`align_corners=False`,
  no antialias) to `safe_size` x `safe_size`, a Swin backbone gives four stages, three `Up` blocks (x2 bilinear
  upsampling with `align_corners=True`, concat [skip, upsampled], DoubleConv) and a head (2 x (x2 upsampling +
  DoubleConv), 1x1 conv) give logits at `safe_size`, which are resized back to the input size (`align_corners=True`).
  It returns the logits and the decoder features d1 (stride 16) and d2 (stride 8) used for twin alignment.
- `MaskEncoder` (teacher): an FPN on the alpha mask whose outputs p2 / p1 have the shapes of d1 / d2. Its convolutions
  are initialised with PyTorch's default distributions from `MaskEncoderConfig.init_seed`; its BatchNorms always use
  their stored statistics (0 / 1 when random), also after `model.train()`.
- `Refiner`: at the input resolution, [image, coarse probability] -> conv/BN/ReLU -> dilated inception blocks ->
  3x3 conv giving a residual Δ. The refined logit is z = coarse probability + Δ, computed in float32 (the released
  weights add Δ to a probability, not to a logit); the refined alpha is sigmoid(z).

`TwinSwinMatte` (family "twinswin") is the student (+ optional teacher), `TSRMatte` (family "tsr") adds the refiner.
Logits, probabilities and the refined logit are float32 also with `dtype=jnp.bfloat16`. BatchNorm follows PyTorch
(eps 1e-5, momentum 0.1 = Flax 0.9); `model.train()` / `model.eval()` switch batch statistics / running averages.

`forward(model, x)` is a jitted `model(x)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.backbones.swin import PRESETS as SWIN_PRESETS
from jaxmatte.backbones.swin import SwinConfig, SwinTransformer
from jaxmatte.layers import ConvBN, FrozenBatchNorm, batch_norm, conv
from jaxmatte.ops import resize_bilinear, resize_nearest
from jaxmatte.preprocessing import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (the input statistics, re-exported)
from jaxmatte.registry import register

Dtype = Any

GN_EPS = 1e-5
MAX_BRANCH_DILATION = 4  # the widest 3x3 branch of a dilated inception block
DROP_PATH_RATE = 0.1  # timm's default for the Swin backbone, active in the original training
# preset -> (Swin preset, safe size): every stage grid at the safe size is a multiple of the window.
BACKBONES = {
    "tiny": ("tiny", 896),
    "small": ("small", 896),
    "base": ("base", 896),
    "base384": ("base384", 1152),
    "large": ("large", 1152),
}


# ---------------------------------------------------------------------------------------------------------------------
# Configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class MaskEncoderConfig:
    """Teacher FPN. `dims` (c0, c1, c2, c3) are the widths at strides 4, 8, 16, 32; p2 has c2 channels, p1 c1.

    The original derives them from the backbone (`embed_dim * (1, 2, 4, 8)`), which fits the student only for `base`;
    `for_features(d1, d2)` derives them from the student's decoder instead (equal to the original for `base`).
    """

    dims: tuple[int, ...] = (128, 256, 512, 1024)
    num_groups: int = 8
    patch_size: int = 4
    init_seed: int = 0
    relu_outputs: bool = False  # True: p2 / p1 pass a ReLU, like the post-ReLU student features they are compared to

    def __post_init__(self) -> None:
        if len(self.dims) != 4:
            raise ValueError(f"MaskEncoder needs 4 widths, got {self.dims}")
        if self.dims[0] % self.num_groups:
            raise ValueError(f"stem width {self.dims[0]} is not divisible into {self.num_groups} groups")

    @classmethod
    def for_features(cls, d1: int, d2: int, **fields: Any) -> MaskEncoderConfig:
        """A teacher whose p2 / p1 have d1 / d2 channels; `fields` set the other options."""
        return cls(dims=(d2 // 2, d2, d1, 2 * d1), **fields)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RefinerConfig:
    """Residual refiner. `fusion_depth` 2 is TSR-Matte HEAD (1x1 conv/BN/ReLU + 3x3 conv/BN), 1 the earlier
    1x1 conv/BN fusion."""

    in_chans: int = 4
    mid_channels: int = 64
    num_blocks: int = 2
    fusion_depth: int = 2

    def __post_init__(self) -> None:
        if self.fusion_depth not in (1, 2):
            raise ValueError(f"fusion_depth must be 1 or 2, got {self.fusion_depth}")
        if self.mid_channels % 4:
            raise ValueError(f"mid_channels {self.mid_channels} must split into 4 branches")

    @property
    def receptive_radius(self) -> int:
        """How far (px) the inputs of one refined pixel reach: `conv_in` 3x3 (1), per block the dilation-4 branch (4)
        and at fusion depth 2 its 3x3 (1), `conv_out` 3x3 (1); 12 for the released refiner."""
        per_block = MAX_BRANCH_DILATION + (1 if self.fusion_depth == 2 else 0)
        return 1 + self.num_blocks * per_block + 1


@dataclasses.dataclass(frozen=True, kw_only=True)
class TwinSwinConfig:
    """Student U-Net on a Swin backbone.

    `safe_size`: side the input is resized to for the backbone (896 for window 7, 1152 for window 12: every stage grid
    is then a multiple of the window). `img_size`: the nominal input side images are brought to before the model
    (recorded for prediction; the model itself accepts any size). `decoder_channels`: outputs of up1 (d1), up2 (d2),
    up3; `head_channels`: the two head DoubleConvs. `teacher`: a `MaskEncoder` held by the model (training only).
    """

    backbone: SwinConfig
    safe_size: int = 896
    img_size: int = 1024
    decoder_channels: tuple[int, ...] = (512, 256, 128)
    head_channels: tuple[int, ...] = (64, 32)
    teacher: MaskEncoderConfig | None = None

    def __post_init__(self) -> None:
        if self.backbone.num_stages != 4:
            raise ValueError(f"the U-Net needs a 4-stage backbone, got depths {self.backbone.depths}")
        if len(self.decoder_channels) != 3 or len(self.head_channels) != 2:
            raise ValueError(
                f"decoder_channels needs 3 and head_channels 2 widths: {self.decoder_channels}, {self.head_channels}"
            )
        stride = self.backbone.patch_size * 8
        if self.safe_size % stride:
            raise ValueError(f"safe_size {self.safe_size} is not a multiple of the backbone stride {stride}")
        if self.teacher is not None and (self.teacher.dims[2], self.teacher.dims[1]) != self.feature_channels:
            raise ValueError(
                f"teacher widths {self.teacher.dims} do not give the decoder features' channels {self.feature_channels}"
            )

    @property
    def feature_channels(self) -> tuple[int, int]:
        """Channels of the alignment features (d1, d2)."""
        return self.decoder_channels[0], self.decoder_channels[1]

    def with_teacher(self, **fields: Any):
        """This config with a teacher fitting the decoder features; `fields` as in `MaskEncoderConfig`."""
        return dataclasses.replace(self, teacher=MaskEncoderConfig.for_features(*self.feature_channels, **fields))

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """tiny, small, base (the released configuration), base384, large; `overrides` replace fields."""
        if name not in BACKBONES:
            raise KeyError(f"unknown preset {name!r}; known: {sorted(BACKBONES)}")
        swin_name, safe = BACKBONES[name]
        backbone = dataclasses.replace(SWIN_PRESETS[swin_name], drop_path_rate=DROP_PATH_RATE)
        return cls(**{"backbone": backbone, "safe_size": safe, **overrides})


@dataclasses.dataclass(frozen=True, kw_only=True)
class TSRConfig(TwinSwinConfig):
    """Student + refiner. `detach_coarse` stops the refined branch's gradient into the student (the original does
    not)."""

    refiner: RefinerConfig = RefinerConfig()
    detach_coarse: bool = False


PRESETS: dict[str, TwinSwinConfig] = {name: TwinSwinConfig.preset(name) for name in BACKBONES}
TSR_PRESETS: dict[str, TSRConfig] = {name: TSRConfig.preset(name) for name in BACKBONES}


# ---------------------------------------------------------------------------------------------------------------------
# Layers


def upsample2(x: jax.Array) -> jax.Array:
    """`nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)`."""
    return resize_bilinear(x, (2 * x.shape[1], 2 * x.shape[2]), align_corners=True)


class DoubleConv(nnx.Module):
    """(Conv3x3 no bias -> BN -> ReLU) x 2; PyTorch `double_conv.{0,1,3,4}` = `conv1, bn1, conv2, bn2`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        mid_features: int | None = None,
        *,
        frozen: bool = False,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        mid = mid_features or out_features
        norm = FrozenBatchNorm if frozen else batch_norm
        self.conv1 = conv(in_features, mid, 3, padding=1, bias=False, **kw)
        self.bn1 = norm(mid, **kw)
        self.conv2 = conv(mid, out_features, 3, padding=1, bias=False, **kw)
        self.bn2 = norm(out_features, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(x)))
        return jax.nn.relu(self.bn2(self.conv2(x)))


class Up(nnx.Module):
    """x2 upsampling of the deep input, concat [skip, upsampled], DoubleConv(in + skip -> out, mid = in // 2)."""

    def __init__(
        self,
        in_features: int,
        skip_features: int,
        out_features: int,
        *,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.conv = DoubleConv(
            in_features + skip_features, out_features, in_features // 2, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        x = upsample2(x)
        if x.shape[1:3] != skip.shape[1:3]:
            raise ValueError(f"upsampled {x.shape[1:3]} does not match the skip connection {skip.shape[1:3]}")
        return self.conv(jnp.concatenate([skip, x.astype(skip.dtype)], axis=-1))


class Head(nnx.Module):
    """x2 -> DoubleConv -> x2 -> DoubleConv -> 1x1 conv; PyTorch `head.{1,3,4}` = `stage1, stage2, out`."""

    def __init__(
        self, in_features: int, channels: tuple[int, ...], *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.stage1 = DoubleConv(in_features, channels[0], **kw)
        self.stage2 = DoubleConv(channels[0], channels[1], **kw)
        self.out = conv(channels[1], 1, 1, bias=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.stage1(upsample2(x))
        x = self.stage2(upsample2(x))
        return self.out(x)


# ---------------------------------------------------------------------------------------------------------------------
# Student


class StudentOutput(NamedTuple):
    """`logits` (B, H, W, 1) float32 at the input size; `d1` (B, S/16, S/16, C1) and `d2` (B, S/8, S/8, C2): the
    post-ReLU decoder features (S = safe size) that twin alignment compares with the teacher's p2 / p1."""

    logits: jax.Array
    d1: jax.Array
    d2: jax.Array

    @property
    def alpha(self) -> jax.Array:
        return jax.nn.sigmoid(self.logits)


class TwinSwinUNet(nnx.Module):
    """Student: resize to the safe size -> Swin -> up1/up2/up3 -> head -> logits resized to the input size."""

    def __init__(
        self, config: TwinSwinConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.safe_size = config.safe_size
        c0, c1, c2, c3 = config.backbone.stage_dims
        u1, u2, u3 = config.decoder_channels
        self.backbone = SwinTransformer(config.backbone, **kw)
        self.up1 = Up(c3, c2, u1, **kw)
        self.up2 = Up(u1, c1, u2, **kw)
        self.up3 = Up(u2, c0, u3, **kw)
        self.head = Head(u3, tuple(config.head_channels), **kw)

    def __call__(self, x: jax.Array) -> StudentOutput:
        """x: (B, H, W, 3) normalised RGB."""
        size = x.shape[1:3]
        inner = resize_bilinear(x, (self.safe_size, self.safe_size), align_corners=False)
        x0, x1, x2, x3 = self.backbone(inner)
        d1 = self.up1(x3, x2)
        d2 = self.up2(d1, x1)
        d3 = self.up3(d2, x0)
        logits = self.head(d3).astype(jnp.float32)
        logits = resize_bilinear(logits, size, align_corners=True)
        return StudentOutput(logits, d1, d2)


# ---------------------------------------------------------------------------------------------------------------------
# Teacher


class Stem(nnx.Module):
    """Conv k = s = patch (bias) -> GroupNorm -> GELU (exact); PyTorch `stem.{0,1}` = `conv, norm`."""

    def __init__(self, config: MaskEncoderConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        p, dim = config.patch_size, config.dims[0]
        self.conv = conv(1, dim, p, stride=p, bias=True, **kw)
        self.norm = nnx.GroupNorm(dim, num_groups=config.num_groups, epsilon=GN_EPS, use_fast_variance=False, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.norm(self.conv(x)), approximate=False)


class Down(nnx.Module):
    """Conv k2 s2 (bias) -> DoubleConv with frozen BN; PyTorch `downN.{0,1}` = `conv, block`."""

    def __init__(self, in_features: int, out_features: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv = conv(in_features, out_features, 2, stride=2, bias=True, **kw)
        self.block = DoubleConv(out_features, out_features, frozen=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block(self.conv(x))


@register("tsr_teacher", MaskEncoderConfig)
class MaskEncoder(nnx.Module):
    """Teacher FPN on an alpha mask (B, S, S, 1) in [0, 1] at the safe size -> (p2 at S/16, p1 at S/8), un-activated
    unless `relu_outputs`.

    Initialisation follows PyTorch's defaults (conv U(±1/sqrt(fan_in)), GroupNorm 1 / 0, BN statistics 0 / 1) drawn
    from `rngs`; inside `TwinSwinMatte` / `TSRMatte` the stream is `nnx.Rngs(config.init_seed)`.
    """

    def __init__(
        self, config: MaskEncoderConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        c0, c1, c2, c3 = config.dims
        self.relu_outputs = config.relu_outputs
        self.stem = Stem(config, **kw)
        self.down1 = Down(c0, c1, **kw)
        self.down2 = Down(c1, c2, **kw)
        self.down3 = Down(c2, c3, **kw)
        self.lat3_to_2 = conv(c3, c2, 1, bias=True, **kw)
        self.lat2_to_1 = conv(c2, c1, 1, bias=True, **kw)
        self.smooth2 = conv(c2, c2, 3, padding=1, bias=True, **kw)
        self.smooth1 = conv(c1, c1, 3, padding=1, bias=True, **kw)

    def __call__(self, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
        c1 = self.down1(self.stem(mask))
        c2 = self.down2(c1)
        c3 = self.down3(c2)
        p2 = self.smooth2(c2 + resize_nearest(self.lat3_to_2(c3), c2.shape[1:3]))
        p1 = self.smooth1(c1 + resize_nearest(self.lat2_to_1(p2), c1.shape[1:3]))
        if self.relu_outputs:
            return jax.nn.relu(p2), jax.nn.relu(p1)
        return p2, p1


# ---------------------------------------------------------------------------------------------------------------------
# Refiner


class Fusion(nnx.Module):
    """Depth 2: 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN; depth 1: 1x1 conv -> BN. PyTorch `fusion.{0,1,3,4}` =
    `conv1, bn1, conv2, bn2`."""

    def __init__(self, features: int, depth: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv1 = conv(features, features, 1, bias=False, **kw)
        self.bn1 = batch_norm(features, **kw)
        self.conv2 = conv(features, features, 3, padding=1, bias=False, **kw) if depth == 2 else None
        self.bn2 = batch_norm(features, **kw) if depth == 2 else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn1(self.conv1(x))
        if self.conv2 is not None:
            x = self.bn2(self.conv2(jax.nn.relu(x)))
        return x


class DilatedInceptionBlock(nnx.Module):
    """Branches [1x1, 3x3 d1, 3x3 d2, 3x3 d4] (conv/BN/ReLU, C/4 each) -> concat -> fusion -> ReLU(fusion + x)."""

    def __init__(self, features: int, fusion_depth: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        branch = features // 4
        self.branch1 = ConvBN(features, branch, 1, **kw)
        self.branch2 = ConvBN(features, branch, 3, padding=1, dilation=1, **kw)
        self.branch3 = ConvBN(features, branch, 3, padding=2, dilation=2, **kw)
        wide = MAX_BRANCH_DILATION
        self.branch4 = ConvBN(features, branch, 3, padding=wide, dilation=wide, **kw)
        self.fusion = Fusion(features, fusion_depth, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return jax.nn.relu(self.fusion(jnp.concatenate(branches, axis=-1)) + x)


class Refiner(nnx.Module):
    """[image, coarse probability] -> `conv_in` (3x3 conv/BN/ReLU) -> `body` blocks -> `conv_out` (3x3, bias) = Δ.

    Returns the refined logit z = coarse probability + Δ in float32 (the refined alpha is sigmoid(z)).
    """

    def __init__(
        self, config: RefinerConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        mid = config.mid_channels
        self.conv_in = ConvBN(config.in_chans, mid, 3, padding=1, **kw)
        self.body = nnx.List([DilatedInceptionBlock(mid, config.fusion_depth, **kw) for _ in range(config.num_blocks)])
        self.conv_out = conv(mid, 1, 3, padding=1, bias=True, **kw)

    def residual(self, image: jax.Array, coarse_alpha: jax.Array) -> jax.Array:
        """Δ (B, H, W, 1) in float32."""
        x = jnp.concatenate([image, coarse_alpha.astype(image.dtype)], axis=-1)
        x = self.conv_in(x)
        for block in self.body:
            x = block(x)
        return self.conv_out(x).astype(jnp.float32)

    def __call__(self, image: jax.Array, coarse_alpha: jax.Array) -> jax.Array:
        return coarse_alpha.astype(jnp.float32) + self.residual(image, coarse_alpha)


# ---------------------------------------------------------------------------------------------------------------------
# Registered models


def _teacher(config: TwinSwinConfig, dtype: Dtype, param_dtype: Dtype) -> MaskEncoder | None:
    if config.teacher is None:
        return None
    return MaskEncoder(config.teacher, rngs=nnx.Rngs(config.teacher.init_seed), dtype=dtype, param_dtype=param_dtype)


def _teacher_features(model: Any, alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
    if model.teacher is None:
        raise ValueError("this model was built without a teacher (config.teacher is None)")
    mask = resize_nearest(alpha.astype(jnp.float32), (model.student.safe_size, model.student.safe_size))
    return tuple(jax.lax.stop_gradient(f) for f in model.teacher(mask))


@register("twinswin", TwinSwinConfig)
class TwinSwinMatte(nnx.Module):
    """TwinSwin-Matte: `student` (`TwinSwinUNet`) and, when configured, the frozen `teacher` (`MaskEncoder`)."""

    def __init__(
        self, config: TwinSwinConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.config = config
        self.student = TwinSwinUNet(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.teacher = _teacher(config, dtype, param_dtype)

    def __call__(self, x: jax.Array) -> StudentOutput:
        """x: (B, H, W, 3) ImageNet-normalised RGB -> logits at (H, W) and the alignment features."""
        return self.student(x)

    def teacher_features(self, alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(p2, p1) of the ground-truth alpha (B, H, W, 1), resized with PyTorch's legacy nearest to the safe size;
        gradients stopped."""
        return _teacher_features(self, alpha)


class TSROutput(NamedTuple):
    """`alpha` = sigmoid(`refined_logits`); `refined_logits` = `coarse_alpha` + Δ; `coarse_alpha` =
    sigmoid(`coarse_logits`), all (B, H, W, 1) float32 at the input size; `d1`, `d2` as in `StudentOutput`."""

    alpha: jax.Array
    refined_logits: jax.Array
    coarse_alpha: jax.Array
    coarse_logits: jax.Array
    d1: jax.Array
    d2: jax.Array


@register("tsr", TSRConfig)
class TSRMatte(nnx.Module):
    """TSR-Matte: `student`, `refiner` at the input resolution and, when configured, the frozen `teacher`."""

    def __init__(
        self, config: TSRConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.config = config
        self.detach_coarse = config.detach_coarse
        self.student = TwinSwinUNet(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.refiner = Refiner(config.refiner, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.teacher = _teacher(config, dtype, param_dtype)

    def __call__(self, x: jax.Array) -> TSROutput:
        """x: (B, H, W, 3) ImageNet-normalised RGB."""
        logits, d1, d2 = self.student(x)
        coarse = jax.nn.sigmoid(logits)
        refiner_input = jax.lax.stop_gradient(coarse) if self.detach_coarse else coarse
        refined = self.refiner(x, refiner_input)
        return TSROutput(jax.nn.sigmoid(refined), refined, coarse, logits, d1, d2)

    def teacher_features(self, alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(p2, p1) of the ground-truth alpha (B, H, W, 1); see `TwinSwinMatte.teacher_features`."""
        return _teacher_features(self, alpha)


@nnx.jit
def forward(model: TwinSwinMatte | TSRMatte, x: jax.Array) -> StudentOutput | TSROutput:
    """Jitted `model(x)`."""
    return model(x)
