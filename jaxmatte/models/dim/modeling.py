"""Deep Image Matting (the foamliu `DIMModel` tree) and its channel-pruned student, NHWC.

Input: 4 channels, ImageNet-normalised RGB and trimap / 255 (0, 128/255, 1). Encoder: five VGG blocks of
conv3x3 (bias) -> BN -> ReLU units, each followed by 2x2 max pooling with indices. Decoder: five units of max-unpool
with the matching encoder indices (restoring the pre-pool size) -> conv5x5 (bias) -> BN, no ReLU; sigmoid alpha.
Feature maps for distillation: the pooled outputs of blocks 2..5.

`DIMConfig.widths` holds the 18 output widths in module order ``[d1c1, d1c2, d2c1, d2c2, d3c1..3, d4c1..3, d5c1..3,
up5, up4, up3, up2, up1]`` (the pruning `cfg`); the teacher's are `TEACHER_WIDTHS`. `DIMStudent` adds the 1x1
projections ``feature2..5`` (to the teacher's widths, for SPKD's channel similarity) and the unused
``feature_trans2..5`` connectors the original student also holds. A distillation run attaches a frozen teacher
(`DIMConfig.teacher`, BN on its stored statistics in every mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.layers import FrozenBatchNorm, TorchBatchNorm, conv
from jaxmatte.ops import max_pool_with_indices, max_unpool
from jaxmatte.registry import register

Dtype = Any

TEACHER_WIDTHS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 256, 128, 64, 1)
BLOCK_UNITS = (2, 2, 3, 3, 3)  # conv units per encoder block
ENCODER_UNITS = sum(BLOCK_UNITS)  # 13
DECODER_UNITS = 5
STRIDE = 32  # five 2x2 poolings
FEATURE_WIDTHS = (128, 256, 512, 512)  # the teacher's down2..down5 widths (the projections' outputs)
# unpooling needs as many channels as the indices: (decoder output, encoder block end) pairs that must match
UNPOOL_TIES = ((16, 1), (15, 3), (14, 6), (13, 9))
UNIT_NAMES = tuple(
    [f"down{b + 1}.conv{u + 1}" for b, n in enumerate(BLOCK_UNITS) for u in range(n)]
    + [f"up{5 - i}.conv" for i in range(DECODER_UNITS)]
)


def block_ends() -> tuple[int, ...]:
    """Index in `widths` of each encoder block's last unit (its pooled output width)."""
    ends, total = [], 0
    for n in BLOCK_UNITS:
        total += n
        ends.append(total - 1)
    return tuple(ends)


def check_widths(widths: tuple[int, ...]) -> list[str]:
    """Problems of a pruning cfg (empty when usable)."""
    problems = []
    if len(widths) != len(TEACHER_WIDTHS):
        return [f"widths must hold {len(TEACHER_WIDTHS)} channel counts, got {len(widths)}"]
    if any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in widths):
        bad = [name for name, w in zip(UNIT_NAMES, widths, strict=True) if not isinstance(w, int) or w < 1]
        problems.append(f"every width must be a positive int (zero-width layers: {bad})")
    elif widths[-1] != 1:
        problems.append(f"up1 outputs the single alpha channel, got width {widths[-1]}")
    else:
        for decoder, encoder in UNPOOL_TIES:
            if widths[decoder] != widths[encoder]:
                problems.append(
                    f"{UNIT_NAMES[decoder]} ({widths[decoder]}) must match {UNIT_NAMES[encoder]} ({widths[encoder]}),"
                    " whose pooling indices it is unpooled with"
                )
    return problems


@dataclasses.dataclass(frozen=True, kw_only=True)
class DIMConfig:
    """`widths`: the 18 unit widths (see the module docstring). `teacher`: a frozen teacher attached for
    distillation (training only; never exported)."""

    widths: tuple[int, ...] = TEACHER_WIDTHS
    in_chans: int = 4
    teacher: DIMConfig | None = None

    def __post_init__(self) -> None:
        problems = check_widths(tuple(self.widths))
        if self.in_chans != 4:
            problems.append(f"DIM takes RGB + trimap (in_chans 4), got {self.in_chans}")
        if self.teacher is not None and self.teacher.teacher is not None:
            problems.append("a teacher cannot have a teacher")
        if problems:
            raise ValueError(f"invalid {type(self).__name__}: " + "; ".join(problems))

    @property
    def pruned(self) -> bool:
        return tuple(self.widths) != TEACHER_WIDTHS

    def feature_widths(self) -> tuple[int, ...]:
        """Widths of the distillation maps (pooled outputs of down2..down5)."""
        return tuple(self.widths[i] for i in block_ends()[1:])

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> DIMConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown {cls.__name__} preset {name!r}; known: {sorted(PRESETS)}")
        base = PRESETS[name]
        if not isinstance(base, cls):
            base = cls(widths=base.widths)
        return dataclasses.replace(base, **overrides) if overrides else base


@dataclasses.dataclass(frozen=True, kw_only=True)
class DIMStudentConfig(DIMConfig):
    """A pruned student: the `DIMConfig` tree at `widths` plus the ``feature2..5`` / ``feature_trans2..5`` 1x1
    projections to `projection_widths` (the teacher's down2..down5 widths)."""

    projection_widths: tuple[int, ...] = FEATURE_WIDTHS

    def __post_init__(self) -> None:
        super().__post_init__()
        widths = tuple(self.projection_widths)
        if len(widths) != 4 or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"projection_widths must be four positive ints, got {widths}")


PRESETS: dict[str, DIMConfig] = {
    "teacher": DIMConfig(),  # also the full-width student of the pruning stage
}


class DIMOutput(NamedTuple):
    alpha: jax.Array  # (B, H, W, 1) float32 in [0, 1]
    features: tuple[jax.Array, ...]  # pooled down2..down5 outputs
    projected: tuple[jax.Array, ...] | None = None  # feature2..5 of a student


class ConvBNUnit(nnx.Module):
    """conv -> BN (`cbr_unit.0`, `.1` of the original); ReLU applied by the caller."""

    def __init__(self, cin: int, cout: int, kernel: int, *, frozen: bool, dtype: Dtype, param_dtype: Dtype, rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv = conv(cin, cout, kernel, padding=kernel // 2, bias=True, **kw)
        self.bn = (FrozenBatchNorm if frozen else TorchBatchNorm)(cout, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class DownBlock(nnx.Module):
    def __init__(self, widths: tuple[int, ...], cin: int, **kw):
        units = []
        for width in widths:
            units.append(ConvBNUnit(cin, width, 3, **kw))
            cin = width
        for index, unit in enumerate(units):
            setattr(self, f"conv{index + 1}", unit)
        self.num_units = len(units)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
        for index in range(self.num_units):
            x = jax.nn.relu(getattr(self, f"conv{index + 1}")(x))
        size = x.shape[1:3]
        pooled, indices = max_pool_with_indices(x)
        return pooled, indices, size


class UpBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, **kw):
        self.conv = ConvBNUnit(cin, cout, 5, **kw)

    def __call__(self, x: jax.Array, indices: jax.Array, size: tuple[int, int]) -> jax.Array:
        return self.conv(max_unpool(x, indices, size))


class FeatureConnector(nnx.Module):
    """``feature_transK``: conv1x1 (no bias) -> BN, the original student's unused distillation connector."""

    def __init__(self, cin: int, cout: int, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.conv = conv(cin, cout, 1, bias=False, **kw)
        self.bn = TorchBatchNorm(cout, **kw)


@register("dim", DIMConfig)
class DIM(nnx.Module):
    """The DIM encoder-decoder (``down1..5``, ``up5..1``) at `config.widths`, plus the frozen `teacher` of a
    distillation run."""

    min_input_size = STRIDE  # five poolings need 32 px per side

    def __init__(
        self,
        config: DIMConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        frozen_bn: bool = False,
    ):
        self.config = config
        self.dtype = dtype
        kw = {"frozen": frozen_bn, "dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        widths = tuple(config.widths)
        cin, start = config.in_chans, 0
        for block, units in enumerate(BLOCK_UNITS):
            setattr(self, f"down{block + 1}", DownBlock(widths[start : start + units], cin, **kw))
            cin, start = widths[start + units - 1], start + units
        for index in range(DECODER_UNITS):
            cout = widths[ENCODER_UNITS + index]
            setattr(self, f"up{5 - index}", UpBlock(cin, cout, **kw))
            cin = cout
        self.teacher = (
            DIM(config.teacher, rngs=rngs, dtype=dtype, param_dtype=param_dtype, frozen_bn=True)
            if config.teacher is not None
            else None
        )

    def run(self, x: jax.Array) -> DIMOutput:
        """This network (never the teacher) on a (B, H, W, 4) input; any size of at least `STRIDE`."""
        if x.ndim != 4 or x.shape[-1] != self.config.in_chans:
            raise ValueError(f"DIM takes (B, H, W, {self.config.in_chans}) inputs, got {x.shape}")
        if x.shape[1] < STRIDE or x.shape[2] < STRIDE:
            raise ValueError(f"DIM needs inputs of at least {STRIDE} px per side, got {x.shape[1:3]}")
        x = x.astype(self.dtype)
        skips, features = [], []
        for block in range(len(BLOCK_UNITS)):
            x, indices, size = getattr(self, f"down{block + 1}")(x)
            skips.append((indices, size))
            if block >= 1:
                features.append(x)
        for index in range(DECODER_UNITS):
            indices, size = skips[len(skips) - 1 - index]
            x = getattr(self, f"up{5 - index}")(x, indices, size)
        alpha = jax.nn.sigmoid(x.astype(jnp.float32))
        return DIMOutput(alpha, tuple(features), self.project(tuple(features)))

    def project(self, features: tuple[jax.Array, ...]) -> tuple[jax.Array, ...] | None:
        del features
        return None

    def __call__(self, x: jax.Array) -> DIMOutput:
        return self.run(x)

    def teacher_output(self, x: jax.Array) -> DIMOutput:
        """The attached teacher's output (stored BN statistics, no gradient)."""
        if self.teacher is None:
            raise ValueError("this model has no teacher (set teacher.path in the run config)")
        out = self.teacher.run(x)
        return jax.tree.map(jax.lax.stop_gradient, out)


@register("dim_student", DIMStudentConfig)
class DIMStudent(DIM):
    """`DIM` at pruned widths with the ``feature2..5`` projections (and the ``feature_trans2..5`` connectors)."""

    def __init__(
        self,
        config: DIMStudentConfig,
        *,
        rngs: nnx.Rngs,
        dtype: Dtype = jnp.float32,
        param_dtype: Dtype = jnp.float32,
        frozen_bn: bool = False,
    ):
        super().__init__(config, rngs=rngs, dtype=dtype, param_dtype=param_dtype, frozen_bn=frozen_bn)
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        pairs = zip(config.feature_widths(), config.projection_widths, strict=True)
        for level, (cin, cout) in enumerate(pairs, start=2):
            setattr(self, f"feature{level}", conv(cin, cout, 1, bias=False, **kw))
            setattr(self, f"feature_trans{level}", FeatureConnector(cin, cout, **kw))

    def project(self, features: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        return tuple(getattr(self, f"feature{level}")(f) for level, f in enumerate(features, start=2))


def dim_input(image: jax.Array, trimap: jax.Array) -> jax.Array:
    """The network input: normalised RGB (B, H, W, 3) and the trimap in [0, 1] ((B, H, W) or (B, H, W, 1))."""
    if trimap.ndim == 3:
        trimap = trimap[..., None]
    return jnp.concatenate([image.astype(jnp.float32), trimap.astype(jnp.float32)], axis=-1)


def force_known(alpha: jax.Array, trimap: jax.Array) -> jax.Array:
    """Alpha with the trimap's known regions forced: 0 where trimap is 0, 1 where it is 1 (trimap in [0, 1])."""
    if trimap.ndim == alpha.ndim - 1:
        trimap = trimap[..., None]
    alpha = jnp.where(trimap <= 0.0, 0.0, alpha)
    return jnp.where(trimap >= 1.0, 1.0, alpha)


def bn_scales(model: DIM) -> dict[str, jax.Array]:
    """The BN scales (gamma) of the network's 18 units by unit name (the pruning criterion's input)."""
    scales = {}
    for name in UNIT_NAMES:
        block, unit = name.split(".")
        scales[name] = getattr(getattr(model, block), unit).bn.scale[...]
    return scales


@nnx.jit
def forward(model: DIM, x: jax.Array) -> DIMOutput:
    return model(x)
