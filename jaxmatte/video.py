"""Video matting: a clip's frames through a `Predictor`, streamed to alpha / RGBA / composite videos or PNG sequences.

    frames = matte_video(predictor, "clip.mp4", Path("out"), Path("clip"), ("alpha", "rgba"))

Frames are decoded in batches of the predictor's batch size one batch ahead of the model (`jaxmatte.data.video`), each
batch is predicted, its foreground colours are estimated (`jaxmatte.foreground`, jitted; the last batch is padded so
every batch has one shape) and written, so memory holds a few batches whatever the clip's length. File layouts and
codecs: `jaxmatte.data.video`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte import foreground as fg
from jaxmatte.data import video
from jaxmatte.predict import quantize

FOREGROUND_MODES = ("estimate", "none")


def unsupported(predictor: Any) -> str | None:
    """Why `predictor` cannot matte videos (it predicts trimaps, or reads a mask / trimap per frame), else None."""
    if predictor.output != "alpha":
        return f"videos need an alpha matting model; {predictor.family} predicts {predictor.output}s"
    if predictor.companion is not None:
        what = "an object mask" if predictor.needs_mask else "a trimap"
        return f"videos need a model that reads the frames alone; {predictor.family} needs {what} per image"
    return None


def colours_of(frames: np.ndarray, alphas: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 foreground colours of a (N, H, W, 3) batch and its (N, H, W) float alphas with the jitted estimator,
    the batch padded to `batch_size` frames (one compiled shape for the whole clip)."""
    count = len(frames)
    if count < batch_size:
        frames = np.concatenate([frames, np.repeat(frames[-1:], batch_size - count, axis=0)])
        alphas = np.concatenate([alphas, np.repeat(alphas[-1:], batch_size - count, axis=0)])
    return fg.foreground_uint8(frames, alphas, backend=fg.default_backend(repeated_shape=True))[:count]


def matte_video(
    predictor: Any,
    path: str | Path,
    folder: Path,
    stem: Path,
    formats: Sequence[str],
    *,
    background: Sequence[int] = (255, 255, 255),
    foreground: str = "estimate",
    mode: str = "video",
    progress: Any = None,
) -> int:
    """Write the clip at `path` in each of `formats` under `folder` (`jaxmatte.data.video.targets` of `stem`);
    returns the number of frames. `foreground`: "estimate" (the RGBA colours and the composite use the estimated
    foreground) or "none" (the frame itself). `progress`: a tqdm-like bar; its total becomes the frame count of the
    clip's header (when it gives one) and it is updated per batch written.

    Raises `ImageReadError` for a clip that cannot be read or decoded (also half way: what was written is removed),
    OSError for outputs that cannot be written, ValueError for a predictor that cannot matte videos."""
    problem = unsupported(predictor)
    if problem is not None:
        raise ValueError(problem)
    if foreground not in FOREGROUND_MODES:
        raise ValueError(f"foreground must be one of {FOREGROUND_MODES}, got {foreground!r}")
    path = Path(path)
    info, batches = video.read_batches(path, predictor.batch_size)
    if progress is not None and info.frames:
        progress.total = info.frames
        progress.refresh()
    estimate = foreground == "estimate" and any(name in formats for name in ("rgba", "composite"))
    outputs: dict[str, Any] = {}
    count = 0
    try:
        small = predictor.size_problem(path, np.zeros((info.height, info.width, 3), np.uint8))
        if small is not None:
            raise small
        for batch in batches:
            if not outputs:  # opened once the first frames decode: an unreadable clip leaves no files
                outputs = video.sinks(folder, stem, formats, info, mode, audio_from=path)
            frames = np.stack(batch)
            if estimate:
                floats = np.stack(predictor.predict_arrays(batch, floats=True))
                alphas = np.stack([quantize(alpha, predictor.preprocessing.quantization) for alpha in floats])
                colours = colours_of(frames, floats, predictor.batch_size)
            else:
                alphas, colours = np.stack(predictor.predict_arrays(batch)), frames
            for index in range(len(batch)):
                for name, sink in outputs.items():
                    sink.write(render(name, colours[index], alphas[index], background))
            count += len(batch)
            if progress is not None:
                progress.update(len(batch))
        for sink in outputs.values():
            sink.close()
    except BaseException:
        for sink in outputs.values():
            sink.discard()
        raise
    finally:
        batches.close()
    return count


def render(name: str, colours: np.ndarray, alpha: np.ndarray, background: Sequence[int]) -> np.ndarray:
    """One output frame: the uint8 alpha, the RGBA cut-out (colours + alpha) or the composite over `background`."""
    if name == "alpha":
        return alpha
    if name == "rgba":
        return np.concatenate([colours, alpha[..., None]], axis=2)
    if name == "composite":
        return fg.composite(colours, alpha, background)
    raise ValueError(f"videos are written as {', '.join(video.VIDEO_FORMATS)}, not {name!r}")
