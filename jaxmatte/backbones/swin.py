"""Swin Transformer v1 backbone with timm's names and numerics (`features_only=True` outputs).

`SwinTransformer(config)(x)` maps NHWC images (sides divisible by `patch_size`) to the four NHWC stage outputs, as
timm's `FeatureListNet` does: no final norm unless `config.final_norm`.

Windows follow timm's construction rule, evaluated on the actual feature size of each call: per axis, a stage whose
feature size is at most its window uses one window covering the axis and no shift; otherwise the stage window, shifted
by half of it in odd blocks. Shifted blocks roll, then zero-pad bottom/right to whole windows, mask across the rolled
regions with -100 (padded tokens are not masked), crop and roll back. The result equals a timm model built with
`img_size` equal to the input size and holding the same tables. timm builds a stage whose feature size is at most the
window with a smaller window and table (`SwinConfig.stage_window_sizes`); a call whose feature size is below a stage's
table window here reads the central part of the table (timm, built at that size, would hold a resampled table).

`forward(model, x)` is a jitted forward for benchmarks and inference.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte import layers
from jaxmatte.backbones.features import FeatureInfo, FeatureLevel
from jaxmatte.registry import register

Dtype = Any
MASK_VALUE = -100.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class SwinConfig:
    """Swin v1 architecture.

    `stage_window_sizes`: per stage (h, w) window the relative-position tables were built for; None means
    `window_size` in every stage. timm clamps a stage's window to its feature size at construction time (e.g.
    `swin_base_patch4_window12_384` built at 224 has a 7x7 last stage with a 169-row table); `built_for(img_size)`
    reproduces that rule.
    """

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    patch_size: int = 4
    in_chans: int = 3
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.0
    norm_eps: float = 1e-5
    final_norm: bool = False
    stage_window_sizes: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} differ in length")
        if self.stage_window_sizes is not None and len(self.stage_window_sizes) != len(self.depths):
            raise ValueError(f"stage_window_sizes {self.stage_window_sizes} needs one (h, w) per stage")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def table_windows(self) -> tuple[tuple[int, int], ...]:
        """Per stage (h, w) window of the relative-position tables."""
        if self.stage_window_sizes is not None:
            return tuple(tuple(w) for w in self.stage_window_sizes)
        return ((self.window_size, self.window_size),) * self.num_stages

    def built_for(self, img_size: int | tuple[int, int]) -> SwinConfig:
        """This config with the tables timm builds for `img_size` (windows clamped to small stages)."""
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        grid = [s // self.patch_size for s in size]
        windows = []
        for stage in range(self.num_stages):
            if stage > 0:
                grid = [(g + 1) // 2 for g in grid]
            windows.append(tuple(min(g, self.window_size) for g in grid))
        nominal = ((self.window_size, self.window_size),) * self.num_stages
        return dataclasses.replace(self, stage_window_sizes=None if tuple(windows) == nominal else tuple(windows))

    @classmethod
    def preset(cls, name: str) -> SwinConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown Swin preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]


_TINY = SwinConfig(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7)
_SMALL = SwinConfig(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), window_size=7)
_BASE = SwinConfig(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=7)
_BASE384 = dataclasses.replace(_BASE, window_size=12)
_LARGE = SwinConfig(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48), window_size=12)

PRESETS: dict[str, SwinConfig] = {
    "tiny": _TINY,
    "small": _SMALL,
    "base": _BASE,
    "base384": _BASE384,
    "large": _LARGE,
    "swin_tiny_patch4_window7_224": _TINY,
    "swin_small_patch4_window7_224": _SMALL,
    "swin_base_patch4_window7_224": _BASE,
    "swin_base_patch4_window12_384": _BASE384,
    "swin_large_patch4_window12_384": _LARGE,
}


def window_and_shift(size: int, table_window: int, shifted: bool) -> tuple[int, int]:
    """(window, shift) along one axis of `size` tokens."""
    if size <= table_window:
        return size, 0
    return table_window, (table_window // 2 if shifted else 0)


@functools.lru_cache(maxsize=64)
def relative_position_index(window: tuple[int, int], table_window: tuple[int, int]) -> np.ndarray:
    """(N*N,) rows of a `table_window` table for the token pairs of a `window` (N = wh*ww, row-major tokens)."""
    (wh, ww), (th, tw) = window, table_window
    rows, cols = np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")
    rows, cols = rows.reshape(-1), cols.reshape(-1)
    d_row = rows[:, None] - rows[None, :] + (th - 1)
    d_col = cols[:, None] - cols[None, :] + (tw - 1)
    return (d_row * (2 * tw - 1) + d_col).reshape(-1).astype(np.int32)


@functools.lru_cache(maxsize=64)
def shift_regions(padded: tuple[int, int], window: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """(num_windows, N) region ids of the rolled, padded map; tokens of different regions must not attend."""

    def labels(size: int, w: int, s: int) -> np.ndarray:
        lab = np.zeros(size, np.int32)
        lab[size - w : size - s] = 1
        if s:
            lab[size - s :] = 2
        return lab

    (hp, wp), (wh, ww) = padded, window
    ids = 3 * labels(hp, wh, shift[0])[:, None] + labels(wp, ww, shift[1])[None, :]
    ids = ids.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3)
    return ids.reshape(-1, wh * ww)


def to_windows(x: jax.Array, window: tuple[int, int]) -> jax.Array:
    """(B, Hp, Wp, C) -> (B, nW, N, C), windows row-major."""
    b, h, w, c = x.shape
    wh, ww = window
    x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // wh) * (w // ww), wh * ww, c)


def from_windows(x: jax.Array, window: tuple[int, int], padded: tuple[int, int]) -> jax.Array:
    """Inverse of `to_windows`."""
    b, _, _, c = x.shape
    (wh, ww), (h, w) = window, padded
    x = x.reshape(b, h // wh, w // ww, wh, ww, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


class PatchEmbed(nnx.Module):
    """Conv k=s=patch -> LayerNorm, NHWC."""

    def __init__(self, config: SwinConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        p = config.patch_size
        self.patch_size = p
        self.proj = layers.patch_conv(
            config.in_chans, config.embed_dim, p, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )
        self.norm = layers.layer_norm(
            config.embed_dim, config.norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {self.patch_size}")
        return self.norm(self.proj(x))


class WindowAttention(nnx.Module):
    """Multi-head self-attention inside windows with a relative-position bias table."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        table_window: tuple[int, int],
        *,
        qkv_bias: bool,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.num_heads = num_heads
        self.table_window = tuple(table_window)
        rows = (2 * table_window[0] - 1) * (2 * table_window[1] - 1)
        init = nnx.initializers.truncated_normal(0.02)
        self.relative_position_bias_table = nnx.Param(init(rngs.params(), (rows, num_heads), param_dtype))
        self.qkv = layers.linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = layers.linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def position_bias(self, window: tuple[int, int]) -> jax.Array:
        """(heads, N, N) float32 bias for a window (gathered with a constant index)."""
        n = window[0] * window[1]
        index = relative_position_index(tuple(window), self.table_window)
        table = jnp.asarray(self.relative_position_bias_table[...], jnp.float32)
        return jnp.take(table, index, axis=0, mode="clip").reshape(n, n, self.num_heads).transpose(2, 0, 1)

    def __call__(self, x: jax.Array, window: tuple[int, int], regions: np.ndarray | None) -> jax.Array:
        """x: (B, nW, N, C) windows; `regions`: (nW, N) shift-region ids or None."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        head_dim = c // heads
        qkv = self.qkv(x).reshape(b, nw, n, 3, heads, head_dim)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k, preferred_element_type=jnp.float32)
        logits = logits + self.position_bias(window)
        if regions is not None:
            ids = jnp.asarray(regions)
            mask = jnp.where(ids[:, :, None] == ids[:, None, :], 0.0, MASK_VALUE).astype(jnp.float32)
            logits = logits + mask[:, None]
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v).reshape(b, nw, n, c)
        return self.proj(out)


class SwinBlock(nnx.Module):
    """Pre-norm (shifted) window attention + MLP, both with drop-path."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        table_window: tuple[int, int],
        shifted: bool,
        drop_path: float,
        config: SwinConfig,
        *,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.shifted = shifted
        self.table_window = tuple(table_window)
        self.norm1 = layers.layer_norm(dim, config.norm_eps, **kw)
        self.attn = WindowAttention(dim, num_heads, table_window, qkv_bias=config.qkv_bias, **kw)
        self.drop_path1 = layers.DropPath(drop_path, rngs=rngs)
        self.norm2 = layers.layer_norm(dim, config.norm_eps, **kw)
        self.mlp = layers.Mlp(dim, int(dim * config.mlp_ratio), **kw)
        self.drop_path2 = layers.DropPath(drop_path, rngs=rngs)

    def attend(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        wh, sh = window_and_shift(h, self.table_window[0], self.shifted)
        ww, sw = window_and_shift(w, self.table_window[1], self.shifted)
        shifted = bool(sh or sw)
        if shifted:
            x = jnp.roll(x, (-sh, -sw), axis=(1, 2))
        pad_h, pad_w = -h % wh, -w % ww
        if pad_h or pad_w:
            x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        padded = (h + pad_h, w + pad_w)
        regions = shift_regions(padded, (wh, ww), (sh, sw)) if shifted else None
        out = self.attn(to_windows(x, (wh, ww)), (wh, ww), regions)
        out = from_windows(out, (wh, ww), padded)[:, :h, :w]
        if shifted:
            out = jnp.roll(out, (sh, sw), axis=(1, 2))
        return out

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.drop_path1(self.attend(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchMerging(nnx.Module):
    """2x2 neighbourhood -> 4C in the order [x(0,0), x(1,0), x(0,1), x(1,1)] -> LayerNorm -> Linear(4C, 2C), no bias."""

    def __init__(self, dim: int, eps: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        self.norm = layers.layer_norm(4 * dim, eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.reduction = layers.linear(
            4 * dim, 2 * dim, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        if h % 2 or w % 2:
            x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
            h, w = h + h % 2, w + w % 2
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    """Optional PatchMerging at the start (stages 1..3), then blocks alternating plain / shifted windows."""

    def __init__(
        self,
        stage: int,
        drop_paths: list[float],
        config: SwinConfig,
        *,
        dtype: Dtype,
        param_dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        dim = config.stage_dims[stage]
        self.downsample = PatchMerging(dim // 2, config.norm_eps, **kw) if stage > 0 else None
        window = config.table_windows[stage]
        self.blocks = nnx.List(
            [
                SwinBlock(dim, config.num_heads[stage], window, i % 2 == 1, drop_paths[i], config, **kw)
                for i in range(config.depths[stage])
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.downsample is not None:
            x = self.downsample(x)
        for block in self.blocks:
            x = block(x)
        return x


@register("swin", SwinConfig)
class SwinTransformer(nnx.Module):
    """Swin v1 feature extractor: NHWC image -> list of NHWC stage outputs (strides 4, 8, 16, 32)."""

    def __init__(
        self, config: SwinConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.config = config
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        starts = np.cumsum((0, *config.depths))
        self.patch_embed = PatchEmbed(config, **kw)
        self.layers = nnx.List(
            [SwinStage(s, rates[starts[s] : starts[s + 1]], config, **kw) for s in range(config.num_stages)]
        )
        self.norm = layers.layer_norm(config.stage_dims[-1], config.norm_eps, **kw) if config.final_norm else None

    @property
    def feature_channels(self) -> tuple[int, ...]:
        return self.config.stage_dims

    @property
    def feature_strides(self) -> tuple[int, ...]:
        return tuple(self.config.patch_size * 2**i for i in range(self.config.num_stages))

    def feature_info(self) -> FeatureInfo:
        """The stages `layers.{i}` (strides 4, 8, 16, 32 for patch 4); all of them by default."""
        levels = tuple(
            FeatureLevel(f"layers.{i}", c, s)
            for i, (c, s) in enumerate(zip(self.feature_channels, self.feature_strides, strict=True))
        )
        return FeatureInfo(levels, tuple(range(len(levels))))

    def forward_intermediates(
        self, x: jax.Array, indices: Sequence[int] | None = None, *, norm: bool = False
    ) -> list[jax.Array]:
        """Stage maps (`jaxmatte.backbones.features`); `norm` is accepted for the contract (the final norm, when
        configured, always applies to the last stage as in `__call__`)."""
        chosen = self.feature_info().resolve(indices)
        features = self(x)
        return [features[i] for i in chosen]

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        x = self.patch_embed(x)
        features = []
        for stage in self.layers:
            x = stage(x)
            features.append(x)
        if self.norm is not None:
            features[-1] = self.norm(features[-1])
        return features


@nnx.jit
def forward(model: SwinTransformer, x: jax.Array) -> list[jax.Array]:
    """Jitted `model(x)`."""
    return model(x)


def feature_shapes(config: SwinConfig, height: int, width: int) -> list[tuple[int, int, int]]:
    """(H, W, C) of each stage output for an input of `height` x `width`."""
    h, w = height // config.patch_size, width // config.patch_size
    shapes = []
    for stage, dim in enumerate(config.stage_dims):
        if stage > 0:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        shapes.append((h, w, dim))
    return shapes
