"""Alpha prediction with a saved model: images of any size in, uint8 alpha mattes at each image's size out.

A `Predictor` is built from a directory written by `port/convert.py` or `save_pretrained`, or from a training workdir
(its `best/`, else its `last/` checkpoint). The geometry and quantisation come from the directory's `info`, unless
overridden:

- converted TSR / TwinSwin releases (faithful pipeline): stretch to the input size with cv2 INTER_LINEAR, ImageNet
  normalisation, model, cv2 INTER_LINEAR back to (W, H), x255 and truncation to uint8 (``(p * 255).astype(uint8)`` in
  float32, as the original scripts do);
- jaxmatte-trained models: letterbox (longer side to the input size, centred, zero padding), model, crop the padding,
  cv2 INTER_LINEAR back to (W, H), x255 rounded to the nearest uint8.

Every image becomes a size x size input, so images of different sizes share one batch; the last batch is padded to
the batch size (one compiled shape). The forward pass is jitted; host-side decoding and resizing use OpenCV.

    predictor = Predictor("ckpt/tsr_base")                     # or Predictor("runs/tsr", dtype=jnp.bfloat16)
    alphas = predictor.predict_arrays([rgb_uint8, ...])         # list of HxW uint8
    for path, alpha in predictor.predict_files(paths):          # alpha: HxW uint8, or the ImageReadError
        ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte import pretrained
from jaxmatte.data.io import ImageReadError, read_image
from jaxmatte.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Placement, ResizePolicy, to_uint8
from jaxmatte.pretrained import CONFIG_FILE, load_pretrained, read_config

Quantization = Literal["round", "truncate"]
WORKDIR_CHECKPOINTS = ("best", "last")
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
SUPPORTED_INTERPOLATION = "cv2.INTER_LINEAR"


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Geometry (`policy`), normalisation (`mean`, `std` of x / 255) and quantisation of the outputs."""

    policy: ResizePolicy
    mean: tuple[float, ...] = tuple(float(v) for v in IMAGENET_MEAN)
    std: tuple[float, ...] = tuple(float(v) for v in IMAGENET_STD)
    quantization: Quantization = "round"

    def __post_init__(self) -> None:
        if self.quantization not in ("round", "truncate"):
            raise ValueError(f"quantization must be 'round' or 'truncate', got {self.quantization!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values each, got {self.mean} and {self.std}")

    @classmethod
    def from_info(cls, info: Mapping[str, Any], config: Any = None) -> Preprocessing:
        """From a directory's `info["preprocess"]` / `info["postprocess"]`.

        Missing entries take the jaxmatte defaults: letterbox at `config.img_size` (else 1024), ImageNet statistics,
        rounding. Interpolations other than cv2 INTER_LINEAR are refused.
        """
        pre = dict(info.get("preprocess") or {})
        post = dict(info.get("postprocess") or {})
        for key, where in (("interpolation", pre), ("resize_to_original", post)):
            if key in where and where[key] != SUPPORTED_INTERPOLATION:
                raise ValueError(f"unsupported {key} {where[key]!r} (only {SUPPORTED_INTERPOLATION})")
        kind = pre.get("resize_policy", "letterbox")
        size = square_size(pre["input_size"]) if "input_size" in pre else int(getattr(config, "img_size", 1024))
        return cls(
            policy=ResizePolicy(kind, size),
            mean=tuple(float(v) for v in pre.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in pre.get("std", IMAGENET_STD)),
            quantization=parse_quantization(post.get("quantization", "round")),
        )

    def replace(
        self, *, resize_policy: str | None = None, input_size: int | None = None, quantization: str | None = None
    ) -> Preprocessing:
        """This preprocessing with the given fields overridden (None keeps the current value)."""
        policy = ResizePolicy(resize_policy or self.policy.kind, input_size or self.policy.size)
        return dataclasses.replace(self, policy=policy, quantization=quantization or self.quantization)

    def describe(self) -> dict[str, Any]:
        """JSON-able summary (for reports)."""
        return {
            "resize_policy": self.policy.kind,
            "input_size": [self.policy.size, self.policy.size],
            "mean": list(self.mean),
            "std": list(self.std),
            "quantization": self.quantization,
        }


def square_size(value: Any) -> int:
    """`S` from an `input_size` entry: S or [S, S]."""
    sizes = [int(v) for v in np.atleast_1d(value)]
    if len(sizes) not in (1, 2) or len(set(sizes)) != 1 or sizes[0] < 1:
        raise ValueError(f"input_size must be S or [S, S] (a square), got {value!r}")
    return sizes[0]


def parse_quantization(text: str) -> Quantization:
    """'round' / 'truncate', also from descriptions such as 'x255, truncate to uint8'."""
    lowered = str(text).lower()
    found = [mode for mode in ("round", "truncate") if mode in lowered]
    if len(found) != 1:
        raise ValueError(f"cannot tell the quantisation (round or truncate) from {text!r}")
    return found[0]


def quantize(probability: np.ndarray, mode: Quantization) -> np.ndarray:
    """uint8 alpha from a float map in [0, 1] (`to_uint8`: ``truncate`` is the original scripts' float32 product)."""
    if mode not in ("round", "truncate"):
        raise ValueError(f"quantization must be 'round' or 'truncate', got {mode!r}")
    return to_uint8(probability, mode)


def resolve_checkpoint(directory: str | os.PathLike) -> Path:
    """The model directory: `directory` itself when it holds a saved model, else its `best/`, else its `last/`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint directory not found")
    for candidate in (directory, *(directory / name for name in WORKDIR_CHECKPOINTS)):
        if pretrained.is_model_dir(candidate):
            return candidate
    raise FileNotFoundError(
        f"{directory}: no model here; expected a directory with {CONFIG_FILE} (written by port/convert.py or "
        f"save_pretrained) or a training workdir with {' or '.join(f'{n}/{CONFIG_FILE}' for n in WORKDIR_CHECKPOINTS)}"
    )


def precision_dtype(precision: str) -> Any:
    """Compute dtype of 'fp32' / 'bf16'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


@partial(jax.jit, static_argnums=0)
def _alpha(graphdef: nnx.GraphDef, state: nnx.State, images: jax.Array) -> jax.Array:
    """(B, S, S, 1) float32 alpha of normalised (B, S, S, 3) images; compiled once per model structure and shape."""
    return nnx.merge(graphdef, state)(images).alpha.astype(jnp.float32)


class Predictor:
    """A saved model with its pre- and postprocessing; see the module docstring.

    `directory`: converted directory, `save_pretrained` directory or training workdir. `dtype`: compute dtype
    (parameters stay float32). `resize_policy` ('stretch' / 'letterbox'), `input_size` and `quantization`
    ('round' / 'truncate') override what the directory records.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        dtype: Any = jnp.float32,
        batch_size: int = 1,
        resize_policy: str | None = None,
        input_size: int | None = None,
        quantization: str | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.directory = resolve_checkpoint(directory)
        self.family, self.config, self.info = read_config(self.directory)
        self.preprocessing = Preprocessing.from_info(self.info, self.config).replace(
            resize_policy=resize_policy, input_size=input_size, quantization=quantization
        )
        self.dtype = dtype
        self.batch_size = batch_size
        self.model = load_pretrained(self.directory, dtype=dtype)
        self._graphdef, self._state = nnx.split(self.model)
        self._mean = np.asarray(self.preprocessing.mean, dtype=np.float32)
        self._std = np.asarray(self.preprocessing.std, dtype=np.float32)

    @property
    def policy(self) -> ResizePolicy:
        return self.preprocessing.policy

    def describe(self) -> dict[str, Any]:
        """JSON-able description: checkpoint, family, compute dtype, preprocessing."""
        return {
            "checkpoint": str(self.directory),
            "family": self.family,
            "dtype": jnp.dtype(self.dtype).name,
            **self.preprocessing.describe(),
        }

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, Placement]:
        """(S x S x 3 float32 normalised input, placement) of an HxWx3 uint8 RGB image."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
        canvas, placement = self.policy.image(image)
        normalised = (canvas.astype(np.float32) / np.float32(255.0) - self._mean) / self._std
        return normalised.astype(np.float32), placement

    def finish(self, alpha: np.ndarray, placement: Placement) -> np.ndarray:
        """HxW uint8 alpha at the original size from an S x S float prediction."""
        return quantize(self.policy.restore(alpha, placement), self.preprocessing.quantization)

    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """HxW uint8 alpha for each HxWx3 uint8 RGB image (any sizes), in order."""
        alphas: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            prepared = [self.prepare(image) for image in images[start : start + self.batch_size]]
            alphas.extend(self._finish_batch(self._dispatch(prepared), prepared))
        return alphas

    def predict_files(
        self, paths: Iterable[str | os.PathLike], *, with_images: bool = False
    ) -> Iterator[tuple[Any, ...]]:
        """(path, alpha) per file, in order; alpha is the HxW uint8 matte or, for an unreadable file, the
        `ImageReadError`. With `with_images`, (path, alpha, RGB image or None).

        Files are read one batch at a time; the next batch is read while the device works on the current one.
        """
        pending = None
        for batch in _chunks(paths, self.batch_size):
            loaded = [(path, *_load(path)) for path in batch]
            prepared = [(path, image, self.prepare(image)) for path, image, _ in loaded if image is not None]
            errors = {index: error for index, (_, _, error) in enumerate(loaded) if error is not None}
            dispatched = self._dispatch([item[2] for item in prepared]) if prepared else None
            if pending is not None:
                yield from self._collect(*pending, with_images)
            pending = (batch, errors, prepared, dispatched)
        if pending is not None:
            yield from self._collect(*pending, with_images)

    # ------------------------------------------------------------------------------------------------ internals

    def _dispatch(self, prepared: Sequence[tuple[np.ndarray, Placement]]) -> jax.Array:
        """Start the forward pass of up to `batch_size` prepared inputs (padded with copies of the last one)."""
        inputs = [item[0] for item in prepared]
        inputs.extend([inputs[-1]] * (self.batch_size - len(inputs)))
        return _alpha(self._graphdef, self._state, jnp.asarray(np.stack(inputs)))

    def _finish_batch(self, outputs: jax.Array, prepared: Sequence[tuple[np.ndarray, Placement]]) -> list[np.ndarray]:
        host = np.asarray(outputs)
        return [self.finish(host[index, ..., 0], placement) for index, (_, placement) in enumerate(prepared)]

    def _collect(
        self,
        batch: list[Path],
        errors: dict[int, ImageReadError],
        prepared: list[tuple[Path, np.ndarray, tuple[np.ndarray, Placement]]],
        outputs: jax.Array | None,
        with_images: bool,
    ) -> Iterator[tuple[Any, ...]]:
        alphas = iter(self._finish_batch(outputs, [item[2] for item in prepared]) if prepared else [])
        images = iter([item[1] for item in prepared])
        for index, path in enumerate(batch):
            if index in errors:
                result: tuple[Any, ...] = (path, errors[index], None)
            else:
                result = (path, next(alphas), next(images))
            yield result if with_images else result[:2]


def _chunks(paths: Iterable[str | os.PathLike], size: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for path in paths:
        batch.append(Path(path))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _load(path: Path) -> tuple[np.ndarray | None, ImageReadError | None]:
    try:
        return read_image(path), None
    except ImageReadError as error:
        return None, error


# ---------------------------------------------------------------------------------------------- dataset evaluation

GRID_THUMBNAIL = 384  # worst-image columns are kept at most this large (the grid shows 192 px tiles)


def evaluate_folder(
    predictor: Predictor,
    root: str | os.PathLike,
    *,
    name: str | None = None,
    hce_binarize: str = "dis",
    matting: str = "auto",
    chunk_size: int = 32,
    save_dir: str | os.PathLike | None = None,
    worst: int = 0,
    progress: bool = False,
) -> tuple[Any, list[Any]]:
    """Predict `root/im/*` and score against `root/gt/*` at the GT's original resolution.

    Returns (`DatasetReport`, the `worst` images as small `GridItem`s). Records go to `evaluate_records` in chunks of
    `chunk_size`, so memory stays bounded; with `matting="auto"` the GTs are read once beforehand for the
    soft-GT decision. Unreadable images or GTs are reported as skipped. `save_dir`: also write `<stem>.png` there.
    """
    from tqdm import tqdm

    from jaxmatte.data.folders import DISFolders
    from jaxmatte.data.io import read_mask, write_png
    from jaxmatte.evaluation import (
        Evaluation,
        Problem,
        Record,
        evaluate_records,
        grid_items_from_records,
        matting_applies,
        soft_fraction,
        summarize,
        worst_results,
    )

    root = Path(root)
    name = name or root.resolve().name
    folders = DISFolders(root, validate=False)
    listing_problems = [Problem(path.name, reason) for path, reason in folders.problems]
    pairs = [(stem, *folders.paths(index)) for index, stem in enumerate(folders.names)]
    show = None if progress else True

    if matting == "auto":
        fractions = []
        for _, _, gt_path in tqdm(pairs, desc=f"{name} ground truth", file=sys.stderr, disable=show):
            with contextlib.suppress(ImageReadError):  # reported by the main pass
                fractions.append(soft_fraction(read_mask(gt_path)))
        with_matting = matting_applies(False, fractions, "auto")
    elif matting in ("yes", "no"):
        with_matting = matting == "yes"
    else:
        raise ValueError(f"matting must be 'auto', 'yes' or 'no', got {matting!r}")

    results: list[Any] = []
    problems: list[Any] = []
    worst_items: list[Any] = []

    def flush(chunk: list[Any]) -> None:
        evaluation = evaluate_records(chunk, hce_binarize=hce_binarize, matting="yes" if with_matting else "no")
        results.extend(evaluation.results)
        problems.extend(evaluation.problems)
        if worst > 0:
            fresh = [_shrink(item) for item in grid_items_from_records(chunk, worst_results(evaluation.results, worst))]
            worst_items[:] = sorted([*worst_items, *fresh], key=lambda item: (-item.mae, item.name))[:worst]

    chunk: list[Any] = []
    predictions = predictor.predict_files([image_path for _, image_path, _ in pairs], with_images=worst > 0)
    bar = tqdm(zip(pairs, predictions, strict=True), total=len(pairs), desc=name, file=sys.stderr, disable=show)
    for (stem, image_path, gt_path), (_, alpha, *image) in bar:
        if isinstance(alpha, ImageReadError):
            problems.append(Problem(stem, f"unreadable image {image_path.name}: {alpha.problem}"))
            continue
        if save_dir is not None:
            write_png(Path(save_dir) / f"{stem}.png", alpha)
        try:
            gt = read_mask(gt_path)
        except ImageReadError as error:
            problems.append(Problem(stem, f"unreadable ground truth {gt_path.name}: {error.problem}"))
            continue
        chunk.append(Record(stem, alpha, gt, image=image[0] if image else None))
        if len(chunk) >= chunk_size:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    evaluation = Evaluation(results, problems, "whole" if with_matting else None, hce_binarize)
    return summarize(name, evaluation, listing_problems), worst_items


def _shrink(item: Any) -> Any:
    """A grid item with its arrays reduced to at most `GRID_THUMBNAIL` pixels on the longer side."""
    import cv2

    height, width = item.gt.shape[:2]
    scale = GRID_THUMBNAIL / max(height, width)
    if scale >= 1:
        return item
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def small(array: np.ndarray | None) -> np.ndarray | None:
        return None if array is None else cv2.resize(array, size, interpolation=cv2.INTER_AREA)

    return dataclasses.replace(item, gt=small(item.gt), pred=small(item.pred), image=small(item.image))
