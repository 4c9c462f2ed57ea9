"""Prediction with a saved model: images of any size in, uint8 outputs (alpha mattes or trimaps) at each image's size
out.

A `Predictor` is built from a directory written by `port/convert.py` or `save_pretrained`, or from a training workdir
(its `best/`, else its `last/` checkpoint). What the model computes comes from its system (`jaxmatte.registry`:
output kind and `infer`); how it is fed and read comes from the directory's preprocessing record
(`jaxmatte.preprocessing.Preprocessing`, ``info["preprocessing"]``), unless overridden. For example:

- converted TSR / TwinSwin releases (faithful pipeline): stretch to the input size with cv2 INTER_LINEAR, ImageNet
  normalisation, model, cv2 INTER_LINEAR back to (W, H), x255 and truncation to uint8 (``(p * 255).astype(uint8)`` in
  float32, as the original scripts do);
- converted DINOv3-matting checkpoints: the same with PIL's bilinear resize to 224;
- jaxmatte-trained models: letterbox (longer side to the input size, centred, zero padding), model, crop the padding,
  cv2 INTER_LINEAR back to (W, H), x255 rounded to the nearest uint8.

Systems with a second input (`System.inputs`: SegTrimap's coarse object mask, DIM's trimap) take it per image:
`masks=` in `predict_arrays` / `predict_files`. An object mask is binarised (`jaxmatte.data.trimaps.binarize_mask`:
0 / 1 masks as is, others at >= 30), a trimap is read as trimap / 255; either is resized to its image's size with
nearest neighbour if it differs, and placed on the canvas like the image (nearest). Trimap systems return H x W class
ids (0 background, 1 unknown, 2 foreground; `jaxmatte.outputs`).

With the letterbox and stretch policies every image becomes a size x size input, so images of different sizes share
one batch; the last batch is padded to the batch size (one compiled shape). The ``native`` policy (DIM: the whole
image at its own resolution) runs each input shape separately and compiles once per shape. The forward pass is
jitted; host-side decoding and resizing use OpenCV / PIL.

    predictor = Predictor("ckpt/tsr_base")                     # or Predictor("runs/tsr", dtype=jnp.bfloat16)
    alphas = predictor.predict_arrays([rgb_uint8, ...])         # list of HxW uint8
    for path, alpha in predictor.predict_files(paths):          # alpha: HxW uint8, or the ImageReadError
        ...

`floats=True` (`predict_arrays`, `predict_files`, `finish`; alpha systems) returns the HxW float32 alpha at the
original size before quantisation instead (e.g. for evaluators that score float outputs, such as DCP's).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Literal

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxmatte import canvas, highres, outputs, pretrained, registry
from jaxmatte.data.io import ImageReadError, read_image, read_mask
from jaxmatte.data.transforms import Placement, ResizePolicy, to_uint8
from jaxmatte.preprocessing import Preprocessing
from jaxmatte.pretrained import CONFIG_FILE, load_pretrained, read_config

Quantization = Literal["round", "truncate"]
WORKDIR_CHECKPOINTS = ("best", "last")
logger = logging.getLogger(__name__)
PRECISIONS = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

__all__ = ["Predictor", "Preprocessing", "precision_dtype", "quantize", "resolve_checkpoint", "square_size"]


def square_size(value: Any) -> int:
    """`S` from an `input_size` entry: S or [S, S]."""
    sizes = [int(v) for v in np.atleast_1d(value)]
    if len(sizes) not in (1, 2) or len(set(sizes)) != 1 or sizes[0] < 1:
        raise ValueError(f"input_size must be S or [S, S] (a square), got {value!r}")
    return sizes[0]


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
    candidates = (directory, *(directory / name for name in WORKDIR_CHECKPOINTS))
    for candidate in candidates:
        if pretrained.is_model_dir(candidate):
            passed = [c for c in candidates[1 : candidates.index(candidate)] if c.is_dir() and any(c.iterdir())]
            for damaged in passed:  # e.g. best/ cut short: say so rather than quietly use last/
                logger.warning("%s; using %s instead", pretrained.model_dir_problem(damaged), candidate)
            return candidate
    for candidate in candidates[1:]:  # a workdir export that lost its config.json or params/
        if candidate.is_dir() and any(candidate.iterdir()):
            raise FileNotFoundError(pretrained.model_dir_problem(candidate))
    raise FileNotFoundError(
        f"{directory}: no model here; expected a directory with {CONFIG_FILE} (written by port/convert.py or "
        f"save_pretrained) or a training workdir with {' or '.join(f'{n}/{CONFIG_FILE}' for n in WORKDIR_CHECKPOINTS)}"
    )


def precision_dtype(precision: str) -> Any:
    """Compute dtype of 'fp32' / 'bf16'."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


SUPPORTED_INPUTS = ("image", "input_mask", "trimap")


@partial(jax.jit, static_argnums=0)
def _infer(graphdef: nnx.GraphDef, state: nnx.State, *inputs: jax.Array) -> jax.Array:
    """The system's float32 output (alpha (B, S, S, 1), trimap logits (B, S, S, 3)) for normalised (B, S, S, 3)
    images [and (B, S, S, 1) masks]; compiled once per model structure and shape."""
    model = nnx.merge(graphdef, state)
    return registry.system(model.family).infer(model, *inputs).astype(jnp.float32)


class Predictor:
    """A saved model with its pre- and postprocessing; see the module docstring.

    `directory`: converted directory, `save_pretrained` directory or training workdir. `dtype`: compute dtype
    (parameters stay float32). `resize_policy` ('stretch' / 'letterbox'), `input_size` and `quantization`
    ('round' / 'truncate') override what the directory records. `high_res`: the coarse stage on the canvas and the
    refine stage at each image's full resolution in `tile` x `tile` windows (`jaxmatte.highres`; systems with a
    `System.high_res` split only, e.g. TSR-Matte). `read_threads`: threads that read, decode and prepare the files
    of `predict_files` while the model runs (0: one after the other in the calling thread); the results are the same.
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
        high_res: bool = False,
        tile: int | None = None,
        read_threads: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if read_threads < 0:
            raise ValueError(f"read_threads must be >= 0, got {read_threads}")
        if tile is not None and not high_res:
            raise ValueError("tile is read in the high-resolution mode only (high_res=True)")
        self.directory = resolve_checkpoint(directory)
        self.family, self.config, self.info = read_config(self.directory)
        try:
            self.system = registry.system(self.family)
        except KeyError:
            raise ValueError(
                f"{self.directory}: holds a {self.family!r} model, which is not a predicting system "
                f"(known: {sorted(registry.systems())})"
            ) from None
        unsupported = [name for name in self.system.inputs if name not in SUPPORTED_INPUTS]
        if unsupported:
            raise ValueError(f"{self.directory}: {self.family} needs inputs {unsupported} the predictor cannot feed")
        if high_res and self.system.high_res is None:
            raise ValueError(f"{self.directory}: {highres.unsupported(self.family)}")
        default = Preprocessing(size=int(getattr(self.config, "img_size", 1024)))
        try:
            recorded = Preprocessing.from_info(self.info, default=default)
        except ValueError as err:
            raise ValueError(f"{self.directory}: {err}") from None
        self.preprocessing = recorded.replace(resize=resize_policy, size=input_size, quantization=quantization)
        self.dtype = dtype
        self.batch_size = batch_size
        self.read_threads = read_threads
        self.model = load_pretrained(self.directory, dtype=dtype)
        self._graphdef, self._state = nnx.split(self.model)
        self._mean = np.asarray(self.preprocessing.mean, dtype=np.float32)
        self._std = np.asarray(self.preprocessing.std, dtype=np.float32)
        self.high_res = None  # `jaxmatte.highres.TiledRefiner`: coarse stage on the canvas, refiner at full resolution
        if high_res:
            self.high_res = highres.TiledRefiner(
                self.model, self.policy, self._mean, self._std, tile=tile or highres.DEFAULT_TILE
            )

    @property
    def policy(self) -> ResizePolicy:
        return self.preprocessing.policy

    @property
    def output(self) -> str:
        """The output kind (`jaxmatte.outputs`): alpha or trimap."""
        return self.system.output

    @property
    def companion(self) -> str | None:
        """The per-image second input the system reads ("input_mask" or "trimap"), or None."""
        return self.system.inputs[1] if len(self.system.inputs) > 1 else None

    @property
    def needs_mask(self) -> bool:
        """Whether every image needs its object mask (`masks=`)."""
        return self.companion == "input_mask"

    @property
    def needs_trimap(self) -> bool:
        """Whether every image needs its trimap (`masks=` holds the trimaps)."""
        return self.companion == "trimap"

    def describe(self) -> dict[str, Any]:
        """JSON-able description: checkpoint, family, compute dtype, preprocessing."""
        return {
            "checkpoint": str(self.directory),
            "family": self.family,
            "output": self.system.output,
            "dtype": jnp.dtype(self.dtype).name,
            **({"high_res": self.high_res.describe()} if self.high_res is not None else {}),
            **self.preprocessing.describe(),
        }

    def prepare(self, image: np.ndarray, mask: np.ndarray | None = None) -> tuple[tuple[np.ndarray, ...], Placement]:
        """((canvas x 3 float32 normalised input[, canvas x 1 float32 companion]), placement) of an HxWx3 uint8 RGB
        image [and its HxW companion: the object mask ({0, 1} after `binarize_mask`) or the trimap (/ 255)]. A
        companion of another size is resized to the image's with nearest neighbour; both are placed nearest."""
        inputs, placement = canvas.prepare(self.preprocessing, image, self.companion, mask, family=self.family)
        return inputs, placement if self.high_res is None else highres.hold_image(placement, image)

    def finish(self, prediction: np.ndarray, placement: Placement, *, floats: bool = False) -> np.ndarray:
        """HxW uint8 result at the original size (alpha, or trimap class ids) from an S x S[ x C] prediction. With
        `floats` (alpha systems only): the HxW float32 alpha at the original size before quantisation, unclipped;
        ``quantize(result, preprocessing.quantization)`` of it is the uint8 result. In the high-resolution mode the
        prediction is the coarse guidance and `placement` holds the image (`prepare`): the refiner runs here."""
        if self.high_res is not None:
            alpha = self.high_res.refine(prediction, placement)
            return alpha if floats else quantize(alpha, self.preprocessing.quantization)
        if floats:
            self._check_floats()
            return self.policy.restore(prediction, placement)
        return outputs.finish(self.output, prediction, placement, self.policy, self.preprocessing.quantization)

    def canvas_outputs(self, prepared: Sequence[tuple[tuple[np.ndarray, ...], Placement]]) -> Any:
        """Host float32 canvas outputs (N, S, S, C) of `prepare` results, before `finish` (e.g. trimap logits);
        run in batches of `batch_size` padded as in `predict_arrays`, so the values match theirs. A list of
        per-image canvases for the ``native`` policy."""
        if not prepared:
            raise ValueError("canvas_outputs needs at least one prepared input")
        parts = []
        for start in range(0, len(prepared), self.batch_size):
            chunk = prepared[start : start + self.batch_size]
            parts.extend(self._host(self._dispatch(chunk), len(chunk)))
        return np.stack(parts) if self.policy.fixed_shape else parts

    def predict_arrays(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None, *, floats: bool = False
    ) -> list[np.ndarray]:
        """HxW uint8 result for each HxWx3 uint8 RGB image (any sizes) [with its mask], in order; with `floats`, the
        float32 alphas (`finish`)."""
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        if floats:
            self._check_floats()
        results: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            chunk = range(start, min(start + self.batch_size, len(images)))
            prepared = [self.prepare(images[i], masks[i] if masks is not None else None) for i in chunk]
            results.extend(self._finish_batch(self._dispatch(prepared), prepared, floats))
        return results

    def predict_files(
        self,
        paths: Iterable[str | os.PathLike],
        *,
        with_images: bool = False,
        masks: Sequence[str | os.PathLike] | None = None,
        floats: bool = False,
    ) -> Iterator[tuple[Any, ...]]:
        """(path, result) per file, in order; result is the HxW uint8 output or, for an unreadable file (or mask),
        the `ImageReadError`. With `with_images`, (path, result, RGB image or None). `masks`: the object mask (or
        trimap) file of each path (systems that read one). `floats`: results are the float32 alphas (`finish`).

        The next batch is read while the device works on the current one, so at most two batches of decoded images
        are held (a lazy generator: nothing is read before it is iterated). With `read_threads`, a pool of that many
        threads reads, decodes and prepares the files (OpenCV and PIL release the GIL), taking up each file as soon as
        an earlier one has been handed out, within the same two batches; the forward passes, and so the results, are
        those of the sequential reading. A file the preprocessing cannot take gives its `ImageReadError` too.
        """
        paths = [Path(path) for path in paths]
        if floats:
            self._check_floats()
        if self.companion is not None and (masks is None or len(masks) != len(paths)):
            what = "an object mask" if self.needs_mask else "a trimap"
            raise ValueError(f"{self.family} needs {what} file per image (masks=)")
        mask_of = dict(zip(paths, masks, strict=True)) if self.companion is not None else {}

        def read(index: int) -> tuple:
            path = paths[index]
            return self._prepared(*self._checked(path, *_load(path, mask_of.get(path))))

        reader = _ReadAhead(read, len(paths), self.read_threads, limit=2 * self.batch_size)
        try:
            pending = None
            for start in range(0, len(paths), self.batch_size):
                batch = paths[start : start + self.batch_size]
                loaded = [reader.take(index) for index in range(start, start + len(batch))]
                prepared = [(path, image, ready) for path, image, ready, _ in loaded if image is not None]
                errors = {index: error for index, (*_, error) in enumerate(loaded) if error is not None}
                del loaded
                dispatched = self._dispatch([item[2] for item in prepared]) if prepared else None
                if pending is not None:
                    yield from self._collect(*pending, with_images, floats, reader.release)
                pending = (batch, errors, prepared, dispatched)
            if pending is not None:
                yield from self._collect(*pending, with_images, floats, reader.release)
        finally:
            reader.close()

    def size_problem(self, path: str | os.PathLike, image: np.ndarray) -> ImageReadError | None:
        """The error of an image below the model's minimum side (`min_input_size`, native policy), else None."""
        minimum = int(getattr(self.model, "min_input_size", 1))
        if self.policy.kind == "native" and min(image.shape[:2]) < minimum:
            height, width = image.shape[:2]
            return ImageReadError(path, f"{height}x{width} is below {self.family}'s {minimum} px minimum", "too small")
        return None

    # ------------------------------------------------------------------------------------------------ internals

    def _checked(self, path: Path, images: tuple[np.ndarray, ...] | None, error: ImageReadError | None) -> tuple:
        """(path, images, error), with an image below the model's minimum side as an error."""
        problem = self.size_problem(path, images[0]) if images is not None else None
        return (path, None, problem) if problem is not None else (path, images, error)

    def _prepared(self, path: Path, images: tuple[np.ndarray, ...] | None, error: ImageReadError | None) -> tuple:
        """(path, images, `prepare` result, error); an image the preprocessing refuses becomes the error."""
        if images is None:
            return path, None, None, error
        try:
            return path, images, self.prepare(*images), None
        except (ValueError, cv2.error) as exc:
            return path, None, None, ImageReadError(path, f"cannot be prepared for {self.family} ({exc})")

    def _check_floats(self) -> None:
        if self.output != "alpha":
            raise ValueError(f"{self.family} predicts {self.output}s; float results exist for alpha outputs only")

    def _dispatch(self, prepared: Sequence[tuple[tuple[np.ndarray, ...], Placement]]) -> list[tuple[list[int], Any]]:
        """Start the forward passes of up to `batch_size` prepared inputs: one per input shape (one in all for the
        fixed-size policies), each padded with copies of its last input; [(indices in `prepared`, device output)]."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item[0][0].shape, []).append(index)
        started = []
        for indices in groups.values():
            inputs = [prepared[i][0] for i in indices]
            inputs.extend([inputs[-1]] * (self.batch_size - len(inputs)))
            stacked = [jnp.asarray(np.stack(column)) for column in zip(*inputs, strict=True)]
            forward = _infer if self.high_res is None else self.high_res.coarse
            started.append((indices, forward(self._graphdef, self._state, *stacked)))
        return started

    def _host(self, started: list[tuple[list[int], Any]], count: int) -> list[np.ndarray]:
        """The float32 host outputs of `_dispatch`, in input order."""
        host: list[Any] = [None] * count
        for indices, result in started:
            values = np.asarray(result, dtype=np.float32)
            for position, index in enumerate(indices):
                host[index] = values[position]
        return host

    def _finish_batch(
        self, started: list[tuple[list[int], Any]], prepared: Sequence[tuple[Any, Placement]], floats: bool = False
    ):
        host = self._host(started, len(prepared))
        return [self.finish(host[index], placement, floats=floats) for index, (_, placement) in enumerate(prepared)]

    def _collect(
        self,
        batch: list[Path],
        errors: dict[int, ImageReadError],
        prepared: list[tuple[Path, np.ndarray, tuple[np.ndarray, Placement]]],
        outputs: list[tuple[list[int], Any]] | None,
        with_images: bool,
        floats: bool = False,
        handed_out: Callable[[], None] | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """The results of one batch in order; `handed_out()` after each is taken. `prepared` is emptied: from then
        on each decoded image is held only until its result is handed out."""
        alphas = self._finish_batch(outputs, [item[2] for item in prepared], floats) if prepared else []
        images = [item[1][0] for item in prepared]
        prepared.clear()
        alphas.reverse()
        images.reverse()
        for index, path in enumerate(batch):
            if index in errors:
                result: tuple[Any, ...] = (path, errors[index], None)
            else:
                result = (path, alphas.pop(), images.pop())
            yield result if with_images else result[:2]
            del result
            if handed_out is not None:
                handed_out()


class _ReadAhead:
    """`read(index)` for index 0 .. `count` - 1, taken in order (`take`). Without threads each is read when taken;
    with a pool of `threads`, reads run ahead, at most `limit` of them read or being read and not yet `release`d (the
    caller takes at most `limit` before releasing one)."""

    def __init__(self, read: Callable[[int], Any], count: int, threads: int, limit: int):
        self._read, self._count, self._limit = read, count, limit
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="jaxmatte-read") if threads and count else None
        self._futures: dict[int, Future] = {}
        self._submitted = self._held = 0
        self._fill()

    def take(self, index: int) -> Any:
        if self._pool is None:
            return self._read(index)
        return self._futures.pop(index).result()

    def release(self) -> None:
        """One taken result is done with: another read may start."""
        self._held -= 1
        self._fill()

    def close(self) -> None:
        """Cancel the reads not started; wait for those running."""
        if self._pool is not None:
            self._futures.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _fill(self) -> None:
        while self._pool is not None and self._submitted < self._count and self._held < self._limit:
            self._futures[self._submitted] = self._pool.submit(self._read, self._submitted)
            self._submitted += 1
            self._held += 1


def _load(path: Path, mask: Path | None = None) -> tuple[tuple[np.ndarray, ...] | None, ImageReadError | None]:
    """((image[, mask]), None) or (None, the error of the image or its mask)."""
    try:
        image = read_image(path)
        return ((image, read_mask(mask)) if mask is not None else (image,)), None
    except ImageReadError as error:
        return None, error
