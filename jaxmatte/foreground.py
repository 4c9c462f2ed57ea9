"""Foreground colour estimation (decontamination): the colours behind a matte.

An image is a blend ``I = a F + (1 - a) B`` of a foreground F and a background B. Cutting an object out with its
alpha alone keeps ``I`` as the colour, so the old background bleeds through wherever ``0 < a < 1`` (a halo around
hair, fur, motion blur). `estimate_foreground` recovers F (and B) from I and a by minimising

    sum_i |a_i F_i + (1 - a_i) B_i - I_i|^2 + sum_i sum_{j in N(i)} w_ij (|F_i - F_j|^2 + |B_i - B_j|^2),
    w_ij = regularization + gradient_weight |a_i - a_j|

(N: the 4 neighbours) with the multi-level scheme of Germer et al., "Fast multi-level foreground estimation" (2020):
the image and the alpha are averaged down a pyramid of halvings to one pixel; from the coarsest level up, F and B are
upsampled (nearest) from the level below and improved by a few Jacobi iterations, each of which solves, at every
pixel, the 2 x 2 system of that pixel's F and B with its neighbours held fixed (`Settings`: more iterations on the
small levels, where they are cheap). Where ``a = 1`` the result is the image itself (F = I), where ``a = 0``, B = I.

Two implementations of the same arithmetic: `estimate_foreground_jax` (jitted, batched; the accelerator path, one
compilation per image shape) and `estimate_foreground_numpy` (the reference); `estimate_foreground` picks one.
`foreground_uint8` is what `predict.py` uses: uint8 colours for an RGBA cut-out or a composite over a new background.

    colours = foreground_uint8(image, alpha)                   # HxWx3 uint8 F; alpha: HxW float in [0, 1] or uint8
    over_green = composite(colours, alpha_uint8, (0, 177, 64))
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Backend = Literal["jax", "numpy"]
BACKENDS = ("jax", "numpy")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Parameters of the estimation: the smoothness weights and the iterations per pyramid level (`small_iterations`
    on levels of at most `small_side`^2 pixels, `iterations` on the larger ones). The weights were chosen on the
    built-in soft-alpha scenes and real alphas (`bench/foreground.py`): a weak gradient term did best on both."""

    regularization: float = 1e-3
    gradient_weight: float = 0.05
    iterations: int = 2
    small_iterations: int = 10
    small_side: int = 32

    def iterations_at(self, shape: tuple[int, int]) -> int:
        return self.small_iterations if shape[0] * shape[1] <= self.small_side**2 else self.iterations


def level_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """(height, width) of every pyramid level, coarse to fine: halvings (rounded up) of the image down to 1 x 1."""
    shapes = [(height, width)]
    while shapes[-1] != (1, 1):
        shapes.append(tuple(-(-side // 2) for side in shapes[-1]))
    return shapes[::-1]


def _check(image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (..., H, W, 3) image and (..., H, W) alpha in [0, 1] (uint8 inputs are divided by 255)."""
    image, alpha = np.asarray(image), np.asarray(alpha)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / np.float32(255.0)
    if alpha.dtype == np.uint8:
        alpha = alpha.astype(np.float32) / np.float32(255.0)
    if image.ndim < 3 or image.shape[-1] != 3 or alpha.shape != image.shape[:-1]:
        raise ValueError(f"expected an (..., H, W, 3) image and an (..., H, W) alpha, got {image.shape}, {alpha.shape}")
    image = np.clip(np.nan_to_num(image.astype(np.float32), nan=0.0), 0.0, 1.0)
    alpha = np.clip(np.nan_to_num(alpha.astype(np.float32), nan=0.0), 0.0, 1.0)
    return image, alpha


# ------------------------------------------------------------------- the arithmetic, for NumPy and jax.numpy alike
def _downsample(x: np.ndarray, xp=np) -> np.ndarray:
    """2 x 2 means over the (H, W) axes 0 and 1 of `x` (an odd side repeats its last row / column)."""
    height, width = x.shape[:2]
    pad = [(0, height % 2), (0, width % 2)] + [(0, 0)] * (x.ndim - 2)
    if height % 2 or width % 2:
        x = xp.pad(x, pad, mode="edge")
    return (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]) * 0.25


def _upsample(x, shape: tuple[int, int], xp=np):
    """Nearest-neighbour doubling of axes 0 and 1, cropped to `shape`."""
    return xp.repeat(xp.repeat(x, 2, axis=0), 2, axis=1)[: shape[0], : shape[1]]


def _neighbours(x, xp=np):
    """The up, down, left and right neighbours of every pixel of `x` (H, W, ...), edges repeated."""
    padded = xp.pad(x, [(1, 1), (1, 1)] + [(0, 0)] * (x.ndim - 2), mode="edge")
    return padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]


def _level_system(image, alpha, settings: Settings, xp=np):
    """What stays fixed over a level's iterations: the 4 neighbour weights (H, W, 1) and the per-pixel solution of
    the 2 x 2 system ``[[a^2 + W, a(1-a)], [a(1-a), (1-a)^2 + W]] [F, B] = [a I + sF, (1-a) I + sB]``, W the sum of
    the weights, as the coefficients of its inverse and the data terms a I, (1-a) I."""
    a = alpha[..., None]
    weights = [settings.regularization + settings.gradient_weight * xp.abs(a - n) for n in _neighbours(a, xp)]
    total = weights[0] + weights[1] + weights[2] + weights[3]
    b = 1.0 - a
    determinant = (a * a + total) * (b * b + total) - (a * b) ** 2
    inverse = ((b * b + total) / determinant, (a * b) / determinant, (a * a + total) / determinant)
    return weights, inverse, a * image, b * image


def _jacobi(foreground, background, weights, inverse, data_foreground, data_background, xp=np):
    """One Jacobi iteration: every pixel's F, B from its neighbours' current values, clipped to [0, 1]."""
    sum_foreground = sum(w * n for w, n in zip(weights, _neighbours(foreground, xp), strict=True))
    sum_background = sum(w * n for w, n in zip(weights, _neighbours(background, xp), strict=True))
    right_foreground = data_foreground + sum_foreground
    right_background = data_background + sum_background
    ff, fb, bb = inverse
    new_foreground = xp.clip(ff * right_foreground - fb * right_background, 0.0, 1.0)
    new_background = xp.clip(bb * right_background - fb * right_foreground, 0.0, 1.0)
    return new_foreground, new_background


def _jacobi_step(_, pair, system):
    """`_jacobi` with jax.numpy as a `fori_loop` body."""
    return _jacobi(*pair, *system, xp=jnp)


def _known(image, alpha, foreground, background, xp=np):
    """F = I where a = 1 and B = I where a = 0: the data fixes them exactly there."""
    a = alpha[..., None]
    return xp.where(a >= 1.0, image, foreground), xp.where(a <= 0.0, image, background)


def _estimate_one(image, alpha, settings: Settings, xp=np):
    """(F, B) of one (H, W, 3) image and (H, W) alpha, float32, with the array module `xp` (NumPy or jax.numpy)."""
    shapes = level_shapes(*alpha.shape)
    images, alphas = [image], [alpha]
    for _ in shapes[1:]:
        images.append(_downsample(images[-1], xp))
        alphas.append(_downsample(alphas[-1], xp))
    images, alphas = images[::-1], alphas[::-1]
    foreground = background = images[0]
    for level, shape in enumerate(shapes):
        if level:
            foreground, background = _upsample(foreground, shape, xp), _upsample(background, shape, xp)
        system = _level_system(images[level], alphas[level], settings, xp)
        if xp is np:
            for _ in range(settings.iterations_at(shape)):
                foreground, background = _jacobi(foreground, background, *system, xp=np)
        else:
            step = partial(_jacobi_step, system=system)
            foreground, background = jax.lax.fori_loop(0, settings.iterations_at(shape), step, (foreground, background))
    return _known(image, alpha, foreground, background, xp)


def estimate_foreground_numpy(
    image: np.ndarray, alpha: np.ndarray, settings: Settings = Settings()
) -> tuple[np.ndarray, np.ndarray]:
    """(F, B): float32 (..., H, W, 3) in [0, 1] for an (..., H, W, 3) image and (..., H, W) alpha (float in [0, 1],
    or uint8: / 255); NumPy, one image after another."""
    image, alpha = _check(image, alpha)
    flat_images, flat_alphas = image.reshape(-1, *image.shape[-3:]), alpha.reshape(-1, *alpha.shape[-2:])
    pairs = [_estimate_one(i, a, settings, np) for i, a in zip(flat_images, flat_alphas, strict=True)]
    foreground = np.stack([f for f, _ in pairs]).reshape(image.shape).astype(np.float32)
    background = np.stack([b for _, b in pairs]).reshape(image.shape).astype(np.float32)
    return foreground, background


@partial(jax.jit, static_argnums=2)
def _estimate_batch(images: jax.Array, alphas: jax.Array, settings: Settings) -> tuple[jax.Array, jax.Array]:
    return jax.vmap(lambda i, a: _estimate_one(i, a, settings, jnp))(images, alphas)


def estimate_foreground_jax(image, alpha, settings: Settings = Settings()) -> tuple[jax.Array, jax.Array]:
    """(F, B) as `estimate_foreground_numpy`, jitted (compiled once per shape and `settings`) and vectorised over
    the leading axes; device arrays."""
    if not isinstance(image, jax.Array) or not isinstance(alpha, jax.Array):
        image, alpha = _check(image, alpha)
    elif image.ndim < 3 or image.shape[-1] != 3 or alpha.shape != image.shape[:-1]:
        raise ValueError(f"expected an (..., H, W, 3) image and an (..., H, W) alpha, got {image.shape}, {alpha.shape}")
    lead = image.shape[:-3]
    images = jnp.asarray(image, jnp.float32).reshape(-1, *image.shape[-3:])
    alphas = jnp.clip(jnp.asarray(alpha, jnp.float32).reshape(-1, *alpha.shape[-2:]), 0.0, 1.0)
    foreground, background = _estimate_batch(images, alphas, settings)
    return foreground.reshape(*lead, *image.shape[-3:]), background.reshape(*lead, *image.shape[-3:])


def default_backend(repeated_shape: bool = False) -> Backend:
    """The backend for a workload: JAX on an accelerator, or where one shape repeats (video frames: one compilation
    per clip); NumPy for images of varying sizes on the CPU, where a compilation per size costs more than the
    estimate itself (`bench/foreground.py`)."""
    return "jax" if repeated_shape or jax.default_backend() != "cpu" else "numpy"


def estimate_foreground(
    image: np.ndarray, alpha: np.ndarray, *, backend: Backend = "jax", settings: Settings = Settings()
) -> tuple[np.ndarray, np.ndarray]:
    """(F, B) as float32 NumPy arrays in [0, 1]; `backend` "jax" (jitted) or "numpy"; see the module docstring."""
    if backend == "numpy":
        return estimate_foreground_numpy(image, alpha, settings)
    if backend == "jax":
        foreground, background = estimate_foreground_jax(image, alpha, settings)
        return np.asarray(foreground), np.asarray(background)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def to_colours(values: np.ndarray) -> np.ndarray:
    """uint8 from colours in [0, 1], rounded."""
    return np.clip(np.floor(np.asarray(values, np.float32) * np.float32(255.0) + np.float32(0.5)), 0, 255).astype(
        np.uint8
    )


def foreground_uint8(
    image: np.ndarray, alpha: np.ndarray, *, backend: Backend = "jax", settings: Settings = Settings()
) -> np.ndarray:
    """uint8 (..., H, W, 3) foreground colours of a uint8 image and its alpha (float in [0, 1] or uint8), equal to
    the image wherever the alpha is 1 (255) exactly or would round to 255 as uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    foreground, _ = estimate_foreground(image, alpha, backend=backend, settings=settings)
    colours = to_colours(foreground)
    alpha = np.asarray(alpha)
    opaque = alpha == 255 if alpha.dtype == np.uint8 else np.nan_to_num(alpha, nan=0.0) * 255.0 >= 254.5
    return np.where(opaque[..., None], image, colours)


def composite(colours: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """uint8 (..., H, W, 3): colours x a + background x (1 - a), a = uint8 alpha / 255, rounded."""
    weight = np.asarray(alpha).astype(np.float32)[..., None] / np.float32(255.0)
    back = np.asarray(background, dtype=np.float32)
    blended = np.asarray(colours).astype(np.float32) * weight + back * (np.float32(1.0) - weight)
    return np.clip(np.floor(blended + 0.5), 0, 255).astype(np.uint8)
