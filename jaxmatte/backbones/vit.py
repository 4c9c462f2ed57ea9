"""Plain / MAE Vision Transformer (timm `VisionTransformer` names), with SimpleClick's windowed-attention schedule.

Pre-norm blocks `x + Attn(LN1 x)`, `x + MLP(LN2 x)`, LayerNorm eps 1e-6, exact GELU, one fused `qkv` Linear whose output
is split as (3, heads, head_dim). Images are NHWC.

Two ways to run the blocks:

- plain (timm / MAE): the class token is prepended, the full `pos_embed` is added, every block attends globally;
- windowed (SimpleClick, `window_size` set): no class token in the sequence, only the patch part `pos_embed[:, 1:]` is
  added; a block `i` (0-based) is global when `(i + 1) % global_every == 0`, otherwise it attends inside
  `window_size x window_size` token windows. The windows are formed lazily: the sequence is partitioned before the first
  local block of a run and restored before a global block (and after the last block), windows batched into the batch
  axis in window-row-major order, tokens row-major inside a window.

Systems that feed their own tokens (e.g. image + mask patch tokens) use the pieces: `patch_tokens`,
`position_embedding`, `run_blocks`, `norm`. For benchmarks: `forward(model, x, indices=(...))` is jitted.

The position table is stored for one grid (`img_size // patch_size`); other sizes need the table resampled with timm
before conversion (`port/convert.py vit --timm-model NAME --img-size H W`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmatte.backbones.features import FeatureInfo, block_levels
from jaxmatte.layers import DropPath, Mlp, attention, layer_norm, linear, patch_conv
from jaxmatte.registry import register

Dtype = Any


@dataclass(frozen=True)
class ViTConfig:
    """ViT hyper-parameters.

    `img_size` is the (H, W) the position table was built for. `class_token`: a `cls_token` parameter exists (in the
    windowed schedule it is stored but never enters the sequence). `use_pos_embed`: a learned absolute position table
    exists, with a first slot for the class token when `class_token` is set (as in timm / MAE). `window_size`: tokens
    per window side for local attention (None: every block global); `global_every`: with windows, blocks with
    `(i + 1) % global_every == 0` are global.
    """

    img_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    class_token: bool = True
    use_pos_embed: bool = True
    norm_eps: float = 1e-6
    final_norm: bool = True
    drop_path_rate: float = 0.0
    window_size: int | None = None
    global_every: int | None = None

    def __post_init__(self) -> None:
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if len(self.img_size) != 2 or any(s % self.patch_size for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be two multiples of patch_size {self.patch_size}")
        if self.window_size is not None:
            if self.window_size < 1:
                raise ValueError(f"window_size must be positive, got {self.window_size}")
            if self.global_every is None or self.global_every < 1:
                raise ValueError(
                    f"window_size needs global_every >= 1 (SimpleClick: depth // 4), got {self.global_every}"
                )
        elif self.global_every is not None:
            raise ValueError("global_every is only meaningful with window_size")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Token grid (h, w) of the stored position table."""
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size

    @property
    def pos_embed_prefix(self) -> int:
        """Slots of `pos_embed` before the patch part (1 for the class-token slot, else 0)."""
        return int(self.class_token)

    @property
    def num_prefix_tokens(self) -> int:
        """Prefix tokens `__call__` puts in the sequence (the class token in the plain schedule)."""
        return int(self.class_token and self.window_size is None)

    @property
    def windowed(self) -> bool:
        return self.window_size is not None

    def is_global(self, index: int) -> bool:
        """Whether block `index` (0-based) attends over the whole sequence."""
        return self.window_size is None or (index + 1) % self.global_every == 0

    def global_blocks(self) -> tuple[int, ...]:
        """0-based indices of the global blocks."""
        return tuple(i for i in range(self.depth) if self.is_global(i))

    @classmethod
    def preset(cls, name: str) -> ViTConfig:
        if name not in PRESETS:
            raise KeyError(f"unknown ViT preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name]


_BASE = ViTConfig()
_LARGE = dataclasses.replace(_BASE, embed_dim=1024, depth=24, num_heads=16)
_HUGE = dataclasses.replace(_BASE, patch_size=14, embed_dim=1280, depth=32, num_heads=16)

PRESETS: dict[str, ViTConfig] = {
    # timm vit_base_patch16_224.mae / MAE mae_pretrain_vit_base.pth
    "mae_base": _BASE,
    # MAE mae_pretrain_vit_large.pth (no timm .mae tag exists for large)
    "mae_large": _LARGE,
    # timm vit_huge_patch14_224.mae / MAE mae_pretrain_vit_huge.pth
    "mae_huge": _HUGE,
    # SimpleClick backbones at 448: windows of (224 / patch)^2 tokens, a global block every depth // 4, no final norm
    # (SimpleClick keeps `fc_norm`/`head` unused and has no `norm`)
    "simpleclick_base_448": dataclasses.replace(
        _BASE, img_size=(448, 448), window_size=14, global_every=3, final_norm=False
    ),
    "simpleclick_large_448": dataclasses.replace(
        _LARGE, img_size=(448, 448), window_size=14, global_every=6, final_norm=False
    ),
    "simpleclick_huge_448": dataclasses.replace(
        _HUGE, img_size=(448, 448), window_size=16, global_every=8, final_norm=False
    ),
}


class ViTOutput(NamedTuple):
    """`tokens`: (B, prefix + N, D) after the final norm (when the config has one), like timm `forward_features`.
    `intermediates`: NHWC grids (B, h, w, D) of the requested block outputs, before the final norm, prefix removed."""

    tokens: jax.Array
    intermediates: tuple[jax.Array, ...]


def window_partition(tokens: jax.Array, grid_hw: tuple[int, int], window: int) -> jax.Array:
    """(B, h*w, D) row-major tokens -> (B * nh * nw, window^2, D) windows (window-row-major, row-major inside)."""
    batch, _, dim = tokens.shape
    h, w = grid_hw
    nh, nw = h // window, w // window
    x = tokens.reshape(batch, nh, window, nw, window, dim).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(batch * nh * nw, window * window, dim)


def window_unpartition(windows: jax.Array, grid_hw: tuple[int, int], window: int) -> jax.Array:
    """Exact inverse of `window_partition`."""
    h, w = grid_hw
    nh, nw = h // window, w // window
    dim = windows.shape[-1]
    x = windows.reshape(-1, nh, nw, window, window, dim).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h * w, dim)


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.qkv = linear(dim, 3 * dim, use_bias=qkv_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.proj = linear(dim, dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.transpose(2, 0, 3, 1, 4)
        out = attention(q, k, v).transpose(0, 2, 1, 3).reshape(batch, tokens, dim)
        return self.proj(out)


class Block(nnx.Module):
    def __init__(self, config: ViTConfig, drop_path: float, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        dim = config.embed_dim
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.norm1 = layer_norm(dim, config.norm_eps, **kw)
        self.attn = Attention(dim, config.num_heads, config.qkv_bias, **kw)
        self.drop_path1 = DropPath(drop_path, rngs=rngs)
        self.norm2 = layer_norm(dim, config.norm_eps, **kw)
        self.mlp = Mlp(dim, int(dim * config.mlp_ratio), **kw)
        self.drop_path2 = DropPath(drop_path, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class PatchEmbed(nnx.Module):
    def __init__(self, config: ViTConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
        self.proj = patch_conv(
            config.in_chans,
            config.embed_dim,
            config.patch_size,
            kernel_init=nnx.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=-1),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


@register("vit", ViTConfig)
class VisionTransformer(nnx.Module):
    """timm-named ViT: `cls_token`, `pos_embed` (1, slots, D), `patch_embed.proj`, `blocks.N.*`, `norm`."""

    def __init__(
        self, config: ViTConfig, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32
    ):
        self.config = config
        self.dtype = dtype
        dim = config.embed_dim
        kw = {"dtype": dtype, "param_dtype": param_dtype, "rngs": rngs}
        self.patch_embed = PatchEmbed(config, **kw)
        init = nnx.initializers.normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim), param_dtype)) if config.class_token else None
        if config.use_pos_embed:
            h, w = config.grid_size
            slots = config.pos_embed_prefix + h * w
            self.pos_embed = nnx.Param(init(rngs.params(), (1, slots, dim), param_dtype))
        else:
            self.pos_embed = None
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]
        self.blocks = nnx.List([Block(config, rate, **kw) for rate in rates])
        self.norm = layer_norm(dim, config.norm_eps, **kw) if config.final_norm else None

    def patch_tokens(self, x: jax.Array) -> tuple[jax.Array, tuple[int, int]]:
        """NHWC image (B, H, W, in_chans) -> (patch tokens (B, h*w, D) in row-major order, (h, w))."""
        p = self.config.patch_size
        if x.ndim != 4 or x.shape[-1] != self.config.in_chans:
            raise ValueError(f"expected an NHWC image with {self.config.in_chans} channels, got shape {x.shape}")
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"image size {x.shape[1]}x{x.shape[2]} is not a multiple of the patch size {p}")
        grid = self.patch_embed(x.astype(self.dtype))
        batch, h, w, dim = grid.shape
        return grid.reshape(batch, h * w, dim), (h, w)

    def position_embedding(self, h: int, w: int) -> jax.Array | None:
        """Patch part (1, h*w, D) of `pos_embed` (the class slot dropped); None when the model has no table.

        The grid must be the one the table was built for; resample with timm before conversion otherwise.
        """
        if self.pos_embed is None:
            return None
        if (h, w) != self.config.grid_size:
            gh, gw = self.config.grid_size
            raise ValueError(
                f"position table is for a {gh}x{gw} token grid (img_size {self.config.img_size}, patch "
                f"{self.config.patch_size}), got a {h}x{w} grid; resample it with timm when converting "
                f"(port/convert.py vit --timm-model NAME --img-size {h * self.config.patch_size} "
                f"{w * self.config.patch_size})"
            )
        return self.pos_embed[...][:, self.config.pos_embed_prefix :].astype(self.dtype)

    def run_blocks(
        self, tokens: jax.Array, grid_hw: tuple[int, int], *, num_prefix: int, indices: Sequence[int] = ()
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Apply the blocks with the configured schedule to (B, num_prefix + h*w, D) tokens.

        Returns (tokens after the last block, un-partitioned, no final norm; NHWC grids of the block outputs listed in
        `indices` (negative allowed), prefix removed, in the order requested).
        """
        config = self.config
        h, w = grid_hw
        batch, length, dim = tokens.shape
        if length != num_prefix + h * w:
            raise ValueError(f"{length} tokens do not match num_prefix {num_prefix} + grid {h}x{w}")
        wanted = self._block_indices(indices)
        window = config.window_size
        if window is not None:
            if num_prefix:
                raise ValueError(
                    f"windowed attention (window_size {window}) runs on patch tokens only; got {num_prefix} prefix "
                    "token(s) (SimpleClick puts no class token in the sequence)"
                )
            if h % window or w % window:
                raise ValueError(f"token grid {h}x{w} is not a multiple of the window size {window}")

        outputs: dict[int, jax.Array] = {}
        partitioned = False
        x = tokens
        for i, block in enumerate(self.blocks):
            local = not config.is_global(i)
            if local and not partitioned:
                x, partitioned = window_partition(x, grid_hw, window), True
            elif not local and partitioned:
                x, partitioned = window_unpartition(x, grid_hw, window), False
            x = block(x)
            if i in wanted:
                full = window_unpartition(x, grid_hw, window) if partitioned else x
                outputs[i] = full[:, num_prefix:].reshape(batch, h, w, dim)
        if partitioned:
            x = window_unpartition(x, grid_hw, window)
        return x, tuple(outputs[i] for i in wanted)

    def _block_indices(self, indices: Sequence[int]) -> list[int]:
        depth = self.config.depth
        resolved = []
        for i in indices:
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for depth {depth}")
            resolved.append(i % depth)
        return resolved

    def feature_info(self) -> FeatureInfo:
        """One level per block `blocks.{i}` (embed_dim channels at the patch stride); the last block by default."""
        return block_levels(self.config.depth, self.config.embed_dim, self.config.patch_size)

    def forward_intermediates(
        self, x: jax.Array, indices: Sequence[int] | None = None, *, norm: bool = False
    ) -> list[jax.Array]:
        """Block outputs as NHWC grids (`jaxmatte.backbones.features`); `norm` applies the final norm to each."""
        chosen = self.feature_info().resolve(indices)
        grids = self(x, indices=chosen).intermediates
        if norm and self.norm is not None:
            grids = tuple(self.norm(g) for g in grids)
        return list(grids)

    def __call__(self, x: jax.Array, *, indices: Sequence[int] = ()) -> ViTOutput:
        """NHWC image -> `ViTOutput` (see there). Plain: class token prepended; windowed: patch tokens only."""
        config = self.config
        tokens, (h, w) = self.patch_tokens(x)
        pos = self.position_embedding(h, w)
        if pos is not None:
            tokens = tokens + pos
        prefix = config.num_prefix_tokens
        if prefix:
            cls = self.cls_token[...].astype(tokens.dtype)
            if config.use_pos_embed:
                cls = cls + self.pos_embed[...][:, :1].astype(tokens.dtype)
            tokens = jnp.concatenate([jnp.broadcast_to(cls, (tokens.shape[0], 1, tokens.shape[2])), tokens], axis=1)
        tokens, intermediates = self.run_blocks(tokens, (h, w), num_prefix=prefix, indices=indices)
        if self.norm is not None:
            tokens = self.norm(tokens)
        return ViTOutput(tokens, intermediates)


@nnx.jit(static_argnames=("indices",))
def forward(model: VisionTransformer, x: jax.Array, indices: tuple[int, ...] = ()) -> ViTOutput:
    """Jitted `model(x, indices=indices)`; `indices` must be a tuple."""
    return model(x, indices=indices)


def layer_of(keys: tuple, depth: int) -> int:
    """The layer-wise lr decay layer of a parameter path inside a ViT: 0 for the patch / position embeddings and
    tokens, ``i + 1`` for block ``i``, ``depth + 1`` for the rest (the final norm)."""
    if keys and keys[0] == "blocks":
        return int(keys[1]) + 1
    if keys and keys[0] in ("patch_embed", "pos_embed", "cls_token", "reg_token"):
        return 0
    return depth + 1
