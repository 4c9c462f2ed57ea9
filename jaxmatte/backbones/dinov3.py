"""DINOv3 ViT backbone (S, S+, B, L, H+ with patch 16) on timm's `Eva` parameter names, NHWC images in.

Token layout: [CLS, 4 registers, h·w patches] (row-major patches). Pre-norm blocks with layer scale,
`x + γ₁·Attn(LN₁ x)`, `x + γ₂·MLP(LN₂ x)`, then a final LayerNorm over all tokens. Attention applies 2-D RoPE
(DINOv3 form: 0.5-centred coordinates normalised per axis to [-1, 1], periods θ^(2k/(d/2)), [row, column] angles tiled
twice, `rotate_half`) to q and k of the patch tokens only. The RoPE tables are computed from Python ints on every call
and are never stored. The k third of the qkv bias is always zero (official `bias_mask`, timm `k_bias`).

The training-time RoPE rescale augmentation of the official model (coordinates ×s, s log-uniform in
[1/`rope_rescale`, `rope_rescale`], one draw per block per call) runs only when `config.rope_rescale` is set AND the
module is in train mode; by default it is off, so `model.train()` alone never changes the features.

With `dtype=jnp.bfloat16` the layers compute in bf16 while the residual stream between blocks stays float32.

`forward(model, x, indices=(...))` is a jitted call (indices must be a tuple).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte.backbones.features import FeatureInfo, block_levels
from jaxmatte.layers import DropPath, Mlp, SwiGLU, attention, layer_norm, linear, patch_conv
from jaxmatte.registry import register

LAYER_SCALE_INIT = 1e-5
SWIGLU_ALIGN = 8


@dataclasses.dataclass(frozen=True)
class DinoV3Config:
    """Architecture and numerics of a DINOv3 ViT.

    `rope_periods`: RoPE periods stored in an official checkpoint (faithful mode); None = the formula θ^(2k/(d/2)).
    `rope_rescale`: factor R of the train-mode coordinate rescale (official value 2.0); None = never rescale.
    """

    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    patch_size: int = 16
    mlp_ratio: float = 4.0
    mlp: str = "gelu"
    qkv_bias: bool = False
    num_register_tokens: int = 4
    norm_eps: float = 1e-5
    layer_scale: bool = True
    rope_theta: float = 100.0
    rope_periods: tuple[float, ...] | None = None
    rope_rescale: float | None = None
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be a multiple of 4 for 2-D RoPE")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if self.rope_periods is not None and len(self.rope_periods) != self.head_dim // 4:
            raise ValueError(f"rope_periods needs {self.head_dim // 4} values, got {len(self.rope_periods)}")
        if self.rope_rescale is not None and not self.rope_rescale >= 1.0:
            raise ValueError(f"rope_rescale must be >= 1, got {self.rope_rescale}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    @property
    def mlp_hidden(self) -> int:
        """int(D·mlp_ratio); for SwiGLU rounded up to a multiple of 8 (timm `align_to=8`, official SwiGLUFFN)."""
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.mlp == "swiglu":
            hidden += -hidden % SWIGLU_ALIGN
        return hidden

    @classmethod
    def preset(cls, name: str) -> DinoV3Config:
        if name not in PRESETS:
            raise KeyError(f"unknown DINOv3 preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]


def _vit(embed_dim: int, depth: int, mlp: str = "gelu") -> DinoV3Config:
    return DinoV3Config(embed_dim=embed_dim, depth=depth, num_heads=embed_dim // 64, mlp=mlp)


_SIZES = {
    "small": _vit(384, 12),
    "small_plus": _vit(384, 12, "swiglu"),
    "base": _vit(768, 12),
    "large": _vit(1024, 24),
    "huge_plus": _vit(1280, 32, "swiglu"),
}
PRESETS: dict[str, DinoV3Config] = {
    **_SIZES,
    **{f"vit_{size}_patch16_dinov3": config for size, config in _SIZES.items()},
    **{f"vit_{size}_patch16_dinov3_qkvb": dataclasses.replace(c, qkv_bias=True) for size, c in _SIZES.items()},
}


# ----------------------------------------------------------------------------------------------------------- RoPE


def rope_formula_periods(head_dim: int, theta: float = 100.0) -> np.ndarray:
    """p_k = θ^(2k/(d/2)), k < d/4, in float32 (as timm computes them)."""
    exponents = np.float32(2.0) * np.arange(head_dim // 4, dtype=np.float32) / np.float32(head_dim // 2)
    return (np.float32(theta) ** exponents).astype(np.float32)


def rope_coords(h: int, w: int) -> np.ndarray:
    """(h·w, 2) float32 [row, column] coordinates 2·(i + 0.5)/n − 1, row-major."""
    ys = np.arange(0.5, h, dtype=np.float32) / np.float32(h)
    xs = np.arange(0.5, w, dtype=np.float32) / np.float32(w)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), axis=-1).reshape(h * w, 2)
    return np.float32(2.0) * grid - np.float32(1.0)


def rope_angles(coords, periods):
    """(N, 2) coordinates, (d/4,) periods -> (N, d) angles [row angles, column angles] tiled twice (numpy or jnp)."""
    xp = jnp if isinstance(coords, jax.Array) else np
    angles = (np.float32(2.0 * math.pi) * coords[:, :, None]) / periods[None, None, :]
    angles = angles.reshape(angles.shape[0], -1)
    return xp.concatenate([angles, angles], axis=-1)


def rope_sin_cos(h: int, w: int, head_dim: int, theta: float = 100.0, periods=None) -> tuple[np.ndarray, np.ndarray]:
    """float32 (sin, cos) tables of shape (h·w, head_dim) for an h×w patch grid (no augmentation)."""
    periods = rope_formula_periods(head_dim, theta) if periods is None else np.asarray(periods, np.float32)
    angles = rope_angles(rope_coords(h, w), periods)
    return np.sin(angles).astype(np.float32), np.cos(angles).astype(np.float32)


def apply_rope(x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
    """x·cos + rotate_half(x)·sin over the last axis, computed in float32 and cast back to x's dtype."""
    x32 = x.astype(jnp.float32)
    first, second = jnp.split(x32, 2, axis=-1)
    rotated = jnp.concatenate([-second, first], axis=-1)
    return (x32 * cos + rotated * sin).astype(x.dtype)


# --------------------------------------------------------------------------------------------------------- modules


class PatchEmbed(nnx.Module):
    """Conv p×p stride p (`patch_embed.proj`), NHWC -> (B, H/p, W/p, D)."""

    def __init__(self, patch_size: int, in_chans: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.proj = patch_conv(in_chans, dim, patch_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Attention(nnx.Module):
    """qkv (k bias forced to zero) -> RoPE on the patch tokens' q, k -> softmax attention -> proj."""

    def __init__(self, config: DinoV3Config, *, dtype, param_dtype, rngs: nnx.Rngs):
        dim = config.embed_dim
        self.num_heads = config.num_heads
        self.num_prefix_tokens = config.num_prefix_tokens
        self.dtype = dtype
        self.qkv = linear(dim, 3 * dim, use_bias=config.qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def _qkv(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.qkv.kernel[...].astype(self.dtype))
        if self.qkv.bias is not None:
            q_bias, _, v_bias = jnp.split(self.qkv.bias[...], 3)
            y = y + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(y.dtype)
        return y

    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        qkv = self._qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = jnp.moveaxis(qkv, (2, 3), (0, 2))  # each (B, heads, N, head_dim)
        p = self.num_prefix_tokens
        q = jnp.concatenate([q[:, :, :p], apply_rope(q[:, :, p:], sin, cos)], axis=2)
        k = jnp.concatenate([k[:, :, :p], apply_rope(k[:, :, p:], sin, cos)], axis=2)
        out = attention(q, k, v)
        out = jnp.moveaxis(out, 1, 2).reshape(batch, tokens, dim)
        return self.proj(out)


class Block(nnx.Module):
    def __init__(self, config: DinoV3Config, drop_path: float, *, dtype, param_dtype, rngs: nnx.Rngs):
        dim = config.embed_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = layer_norm(dim, config.norm_eps, **kw)
        self.attn = Attention(config, **kw)
        self.gamma_1 = nnx.Param(jnp.full((dim,), LAYER_SCALE_INIT, param_dtype)) if config.layer_scale else None
        self.drop_path1 = DropPath(drop_path, rngs=rngs)
        self.norm2 = layer_norm(dim, config.norm_eps, **kw)
        mlp_cls = SwiGLU if config.mlp == "swiglu" else Mlp
        self.mlp = mlp_cls(dim, config.mlp_hidden, **kw)
        self.gamma_2 = nnx.Param(jnp.full((dim,), LAYER_SCALE_INIT, param_dtype)) if config.layer_scale else None
        self.drop_path2 = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array, sin: jax.Array, cos: jax.Array) -> jax.Array:
        y = self.attn(self.norm1(x), sin, cos)
        if self.gamma_1 is not None:
            y = y * self.gamma_1[...].astype(y.dtype)
        x = x + self.drop_path1(y)
        y = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            y = y * self.gamma_2[...].astype(y.dtype)
        return x + self.drop_path2(y)


class DinoV3Output(NamedTuple):
    tokens: jax.Array  # (B, 1 + R + h·w, D) after the final norm
    patch_tokens: jax.Array  # (B, h, w, D) after the final norm
    cls_token: jax.Array  # (B, D) after the final norm
    intermediates: list[jax.Array]  # (B, h, w, D) outputs of the requested blocks


@register("dinov3", DinoV3Config)
class DinoV3(nnx.Module):
    """DINOv3 ViT. `model(x)` with x (B, H, W, 3), H and W multiples of the patch size (non-square allowed)."""

    def __init__(self, config: DinoV3Config, *, rngs: nnx.Rngs, dtype=jnp.float32, param_dtype=jnp.float32):
        dim = config.embed_dim
        self.config = config
        self.dtype = dtype
        self.deterministic = False
        token_init = nnx.initializers.truncated_normal(0.02)
        self.patch_embed = PatchEmbed(config.patch_size, 3, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.cls_token = nnx.Param(token_init(rngs.params(), (1, 1, dim), param_dtype))
        if config.num_register_tokens:
            self.reg_token = nnx.Param(token_init(rngs.params(), (1, config.num_register_tokens, dim), param_dtype))
        else:
            self.reg_token = None
        rates = np.linspace(0.0, config.drop_path_rate, config.depth) if config.depth else []
        self.blocks = nnx.List(
            [Block(config, float(r), dtype=dtype, param_dtype=param_dtype, rngs=rngs) for r in rates]
        )
        self.norm = layer_norm(dim, config.norm_eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rope_rngs = rngs["rope"].fork() if config.rope_rescale is not None else nnx.data(None)

    def _periods(self) -> np.ndarray:
        cfg = self.config
        if cfg.rope_periods is not None:
            return np.asarray(cfg.rope_periods, np.float32)
        return rope_formula_periods(cfg.head_dim, cfg.rope_theta)

    def _rope_tables(self, h: int, w: int) -> list[tuple[jax.Array, jax.Array]]:
        """(sin, cos) per block: one shared table, or one rescaled table per block in augmented train mode."""
        cfg = self.config
        if cfg.rope_rescale is None or self.deterministic:
            sin, cos = rope_sin_cos(h, w, cfg.head_dim, periods=self._periods())
            return [(jnp.asarray(sin), jnp.asarray(cos))] * cfg.depth
        log_max = math.log(cfg.rope_rescale)
        scales = jnp.exp(jax.random.uniform(self.rope_rngs(), (cfg.depth,), jnp.float32, -log_max, log_max))
        coords = jnp.asarray(rope_coords(h, w))
        angles = [rope_angles(coords * scales[i], self._periods()) for i in range(cfg.depth)]
        return [(jnp.sin(a), jnp.cos(a)) for a in angles]

    def feature_info(self) -> FeatureInfo:
        """One level per block `blocks.{i}` (embed_dim channels at the patch stride); the last block by default."""
        return block_levels(self.config.depth, self.config.embed_dim, self.config.patch_size)

    def forward_intermediates(
        self, x: jax.Array, indices: Sequence[int] | None = None, *, norm: bool = False
    ) -> list[jax.Array]:
        """Block outputs as NHWC grids (`jaxmatte.backbones.features`); `norm` applies the final norm to each (the
        last block with `norm` is the final-norm patch grid)."""
        chosen = self.feature_info().resolve(indices)
        return self(x, indices=chosen, norm_intermediates=norm).intermediates

    def __call__(
        self, x: jax.Array, *, indices: tuple[int, ...] | list[int] = (), norm_intermediates: bool = False
    ) -> DinoV3Output:
        """Features of NHWC images. `indices`: blocks (negative allowed) whose outputs are returned, in the given
        order, as (B, h, w, D) grids before the final norm (after it with `norm_intermediates=True`)."""
        cfg = self.config
        batch, height, width, _ = x.shape
        p = cfg.patch_size
        if height % p or width % p:
            raise ValueError(f"input {height}x{width} is not a multiple of the patch size {p}")
        h, w = height // p, width // p
        take = [i + cfg.depth if i < 0 else i for i in indices]
        bad = [i for i, t in zip(indices, take, strict=True) if not 0 <= t < cfg.depth]
        if bad:
            raise ValueError(f"block indices {bad} out of range for depth {cfg.depth}")

        patches = self.patch_embed(x.astype(self.dtype)).reshape(batch, h * w, cfg.embed_dim)
        prefix = [self.cls_token[...]] + ([self.reg_token[...]] if self.reg_token is not None else [])
        stream = jnp.promote_types(self.dtype, jnp.float32)  # residual stream stays >= fp32 (as under torch autocast)
        prefix = [jnp.broadcast_to(t.astype(stream), (batch, *t.shape[1:])) for t in prefix]
        tokens = jnp.concatenate([*prefix, patches.astype(stream)], axis=1)

        saved: dict[int, jax.Array] = {}
        for i, (block, (sin, cos)) in enumerate(zip(self.blocks, self._rope_tables(h, w), strict=True)):
            tokens = block(tokens, sin, cos)
            if i in take:
                saved[i] = tokens
        tokens = self.norm(tokens)

        def grid(t: jax.Array) -> jax.Array:
            return t[:, cfg.num_prefix_tokens :].reshape(batch, h, w, cfg.embed_dim).astype(tokens.dtype)

        intermediates = [grid(self.norm(saved[i]) if norm_intermediates else saved[i]) for i in take]
        return DinoV3Output(tokens, grid(tokens), tokens[:, 0], intermediates)


@nnx.jit(static_argnames=("indices", "norm_intermediates"))
def forward(
    model: DinoV3, x: jax.Array, indices: tuple[int, ...] = (), norm_intermediates: bool = False
) -> DinoV3Output:
    """Jitted `model(x, indices=..., norm_intermediates=...)`."""
    return model(x, indices=indices, norm_intermediates=norm_intermediates)
