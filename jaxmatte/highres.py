"""High-resolution inference: the coarse stage at the model's input size, the refine stage at the photo's full
resolution in overlapping tiles.

A system opts in with a `TwoStage` record (`System.high_res`):

- `coarse(model, canvas_images)`: the (B, S, S, C) float32 guidance of the normalised canvas images (placed by the
  checkpoint's resize policy, as in plain prediction). It is brought to the photo's size as a plain prediction is
  (`ResizePolicy.restore`: crop the letterbox padding, bilinear to H x W).
- `refine(model, image_tiles, guidance_tiles)`: the (B, h, w, 1) float32 alpha of (B, h, w, 3) normalised full
  resolution image tiles and their (B, h, w, C) guidance. It must be fully convolutional (no global pooling, no
  attention), so that a pixel depends on its neighbourhood only.
- `halo(model)`: the refine stage's receptive-field radius in pixels (how far a pixel's value reaches).

Tiling. A photo is covered by `tile` x `tile` windows (each side clamped to the photo's) that overlap by
``2 * halo + feather`` pixels. Windows at the right / bottom are shifted inward instead of padded, so every window has
one shape (one compilation for all photos at least `tile` on each side) and the photo's border is a window border,
where the refine stage's zero padding then falls where it falls in an untiled run. Each window's result is weighted
by a separable window that is 0 within `halo` of an inner window border (where that padding reaches) and ramps
linearly to 1 over the next `feather` pixels; the weighted results are summed and divided by the summed weights. With
a correct halo every weighted pixel is exact, so the tiled alpha equals the untiled full-resolution one up to float
error; the feathering hides any residual difference (an underestimated halo, bf16 rounding) instead of leaving a seam.

Memory: the device holds one window's activations (and the next window's inputs while the current one runs); the
host holds the photo, its guidance and the two float32 accumulators at full resolution.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte import registry
from jaxmatte.data.transforms import Placement, ResizePolicy

DEFAULT_TILE = 1024
MIN_FEATHER = 8

__all__ = ["DEFAULT_TILE", "FullResolution", "TiledRefiner", "TwoStage", "feather_weights", "tile_starts"]


@dataclasses.dataclass(frozen=True)
class TwoStage:
    """A system's split into a coarse stage on the canvas and a tile-able full-resolution refine stage (module
    docstring)."""

    coarse: Callable[[Any, jax.Array], jax.Array]
    refine: Callable[[Any, jax.Array, jax.Array], jax.Array]
    halo: Callable[[Any], int]


@dataclasses.dataclass(frozen=True)
class FullResolution(Placement):
    """A `Placement` that also carries the original H x W x 3 uint8 image, for the full-resolution refine stage."""

    image: np.ndarray = dataclasses.field(repr=False, compare=False)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """First pixels of the windows covering [0, length): stride ``tile - overlap``, the last window ending at
    `length` (shifted inward, never padded); one window [0, length) when ``length <= tile``."""
    if length <= tile:
        return [0]
    if overlap >= tile:
        raise ValueError(f"tile {tile} must exceed the overlap {overlap}")
    starts = list(range(0, length - tile, tile - overlap))
    return [*starts, length - tile]


def feather_weights(start: int, size: int, length: int, halo: int, feather: int) -> np.ndarray:
    """(size,) float32 blending weights of the window [start, start + size) on an axis of `length` pixels: 1 where
    the window meets the photo's border, 0 within `halo` of an inner border, a linear ramp over the next `feather`."""
    index = np.arange(size, dtype=np.float32)
    weights = np.ones(size, np.float32)

    def ramp(distance: np.ndarray) -> np.ndarray:
        return np.clip((distance - halo + 0.5) / feather, 0.0, 1.0).astype(np.float32)

    if start > 0:
        weights = np.minimum(weights, ramp(index))
    if start + size < length:
        weights = np.minimum(weights, ramp(size - 1 - index))
    return weights


@partial(jax.jit, static_argnums=0)
def _coarse(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, state)
    return registry.system(model.family).high_res.coarse(model, images).astype(jnp.float32)


@partial(jax.jit, static_argnums=0)
def _refine(graphdef: nnx.GraphDef, state: nnx.State, image: jax.Array, guidance: jax.Array) -> jax.Array:
    model = nnx.merge(graphdef, state)
    return registry.system(model.family).high_res.refine(model, image, guidance).astype(jnp.float32)


class TiledRefiner:
    """The high-resolution mode of one loaded model: `coarse` on canvas batches (the predictor's forward pass), then
    `refine` per image in `tile` x `tile` windows (module docstring). `feather`: ramp length in pixels (default
    ``max(halo, 8)``); `halo`: the margin dropped at inner window borders (default the refine stage's receptive-field
    radius; a smaller one leaves errors there)."""

    def __init__(
        self,
        model: nnx.Module,
        policy: ResizePolicy,
        mean: np.ndarray,
        std: np.ndarray,
        *,
        tile: int = DEFAULT_TILE,
        feather: int | None = None,
        halo: int | None = None,
    ):
        stages = registry.system(model.family).high_res
        if stages is None:
            raise ValueError(unsupported(model.family))
        self.halo = int(stages.halo(model)) if halo is None else int(halo)
        self.feather = int(feather) if feather is not None else max(self.halo, MIN_FEATHER)
        if self.halo < 0 or self.feather < 1:
            raise ValueError(f"halo must be >= 0 and feather >= 1, got {self.halo} and {self.feather}")
        self.overlap = 2 * self.halo + self.feather
        if tile <= self.overlap:
            raise ValueError(
                f"tile {tile} is too small for {model.family}'s refine stage: it must exceed the windows' overlap of "
                f"{self.overlap} px (2 x {self.halo} px receptive-field halo + {self.feather} px feather)"
            )
        self.tile = int(tile)
        self.policy = policy
        self._mean = np.asarray(mean, np.float32)
        self._std = np.asarray(std, np.float32)
        self._graphdef, self._state = nnx.split(model)

    def describe(self) -> dict[str, int]:
        return {"tile": self.tile, "halo": self.halo, "feather": self.feather}

    def coarse(self, graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
        """The coarse stage's (B, S, S, C) guidance of normalised canvas images (the predictor's `_infer` twin)."""
        return _coarse(graphdef, state, images)

    def windows(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """(top, left, rows, columns) of every window of an `height` x `width` photo, row by row."""
        rows, columns = min(self.tile, height), min(self.tile, width)
        return [
            (top, left, rows, columns)
            for top in tile_starts(height, rows, self.overlap)
            for left in tile_starts(width, columns, self.overlap)
        ]

    def refine(self, guidance: np.ndarray, placement: FullResolution) -> np.ndarray:
        """The H x W float32 alpha of one photo from its coarse canvas guidance (S, S[, C])."""
        image = placement.image
        height, width = image.shape[:2]
        full = self.policy.restore(guidance, placement)
        full = full[..., None] if full.ndim == 2 else full
        total = np.zeros((height, width), np.float32)
        weight_sum = np.zeros((height, width), np.float32)
        for (top, left, rows, columns), result in self._run(image, full, self.windows(height, width)):
            weights = np.outer(
                feather_weights(top, rows, height, self.halo, self.feather),
                feather_weights(left, columns, width, self.halo, self.feather),
            )
            window = (slice(top, top + rows), slice(left, left + columns))
            total[window] += weights * result
            weight_sum[window] += weights
        return total / weight_sum

    def _run(
        self, image: np.ndarray, guidance: np.ndarray, windows: list[tuple[int, int, int, int]]
    ) -> Iterator[tuple[tuple[int, int, int, int], np.ndarray]]:
        """(window, its (rows, columns) alpha) in order; the next window is started before the current one is read."""
        pending = None
        for window in windows:
            top, left, rows, columns = window
            crop = image[top : top + rows, left : left + columns]
            normalised = (crop.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
            started = _refine(
                self._graphdef,
                self._state,
                jnp.asarray(normalised[None]),
                jnp.asarray(guidance[None, top : top + rows, left : left + columns]),
            )
            if pending is not None:
                yield pending[0], np.asarray(pending[1][0, ..., 0], np.float32)
            pending = (window, started)
        if pending is not None:
            yield pending[0], np.asarray(pending[1][0, ..., 0], np.float32)


def unsupported(family: str) -> str:
    """The one-line refusal for a family without a high-resolution mode."""
    return (
        f"{family} has no high-resolution mode: it has no separate fully convolutional refine stage to run on the "
        "full-resolution photo (TSR-Matte has one)"
    )


def hold_image(placement: Placement, image: np.ndarray) -> FullResolution:
    """`placement` with the original image attached."""
    return FullResolution(**dataclasses.asdict(placement), image=image)
