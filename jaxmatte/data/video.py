"""Video reading and writing with PyAV (FFmpeg): frames in as RGB batches, alpha / RGBA / composite videos or PNG
sequences out.

- `read_batches(path, size)`: the clip's first video stream as lists of up to `size` HxWx3 uint8 RGB frames, decoded
  in a background thread at most `prefetch` batches ahead (memory holds a few batches, never the clip); `probe(path)`
  reads the header only. Problems (not a video, no video stream, undecodable data, more pixels per frame than
  `max_pixels()`, no frames) are `ImageReadError`s naming the file, as for images.
- `VideoSink`: one output video, encoded frame by frame at the clip's frame rate; `FrameFolder`: one PNG per frame.
  `sinks(...)` opens what a run asked for: per format (`VIDEO_FORMATS`) a video or, with ``mode="frames"``, a folder:

  ========== =========================================== =================================================
  format     video                                       frames
  ========== =========================================== =================================================
  alpha      ``<stem>_alpha.mkv``: FFV1, gray (lossless)  ``<stem>/alpha/000000.png`` ...: 8-bit gray
  rgba       ``<stem>_rgba.mov``: QuickTime Animation     ``<stem>/rgba/000000.png`` ...: RGBA
             (qtrle), ARGB (lossless, with alpha)
  composite  ``<stem>_composite.mp4``: H.264, CRF 16,     ``<stem>/composite/000000.png`` ...: RGB
             yuv420p (yuv444p for odd sides)
  ========== =========================================== =================================================

Frames are read as displayed: a rotation in the clip's display matrix (phone clips, stored landscape and shown
portrait) is applied to every frame, as EXIF orientation is to images, so the model sees the scene upright and the
outputs (which carry no rotation) play the way the clip does. Outputs run at the clip's average frame rate with one
output frame per decoded frame (constant frame rate: a clip with variable frame timing keeps its frame count and
duration, not each frame's timestamp). The RGBA and composite videos carry the clip's first audio stream, copied
without re-encoding, when their container takes its codec (AAC, MP3, AC-3, Opus, ALAC, FLAC; PCM in the .mov);
the alpha video and PNG sequences have none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import queue
import threading
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte.data.io import ImageReadError, max_pixels, write_png

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi")
VIDEO_FORMATS = ("alpha", "rgba", "composite")
VIDEO_MODES = ("video", "frames")
DEFAULT_RATE = Fraction(25)  # when a clip records no frame rate
INSTALL_HINT = "video files need PyAV, a jaxmatte dependency: pip install av"


@dataclasses.dataclass(frozen=True)
class Encoding:
    """How one format is encoded: the file suffix, FFmpeg codec, pixel format, the numpy layout handed to it
    (PyAV's `from_ndarray` format) and codec options."""

    suffix: str
    codec: str
    pixel_format: str
    layout: str
    options: tuple[tuple[str, str], ...] = ()
    audio_codecs: frozenset[str] = frozenset()  # the source's audio is copied when its codec is one of these


_MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
ENCODINGS = {
    "alpha": Encoding("_alpha.mkv", "ffv1", "gray", "gray"),
    "rgba": Encoding("_rgba.mov", "qtrle", "argb", "rgba", audio_codecs=_MP4_AUDIO | {"pcm_s16le", "pcm_s24le"}),
    "composite": Encoding(
        "_composite.mp4", "libx264", "yuv420p", "rgb24", (("crf", "16"), ("preset", "medium")), _MP4_AUDIO
    ),
}
FRAME_LAYOUTS = {"alpha": "gray", "rgba": "rgba", "composite": "rgb24"}


def is_video(path: str | Path) -> bool:
    """Whether a file is taken as a video: by its suffix (`VIDEO_SUFFIXES`)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def import_av() -> Any:
    """The `av` module, or ImportError with the install hint."""
    try:
        import av
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return av


def available() -> bool:
    """Whether PyAV can be imported."""
    try:
        import_av()
    except ImportError:
        return False
    return True


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """A clip's first video stream: frame size as displayed, average frame rate, the frame count its header gives
    (0: unknown), the codec, and the rotation its frames are displayed with (degrees counterclockwise, a multiple of
    90, as FFmpeg reads the display matrix; applied to the frames read)."""

    width: int
    height: int
    rate: Fraction
    frames: int
    codec: str
    rotation: int = 0


def displayed(frame: np.ndarray, rotation: int) -> np.ndarray:
    """An HxW[xC] frame as stored, turned `rotation` degrees counterclockwise (a multiple of 90)."""
    turns = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(frame, turns)) if turns else frame


def _rotation(path: Path, frame: Any) -> int:
    """The display rotation of a decoded frame (0 without a display matrix); others than multiples of 90 refused."""
    angle = int(round(getattr(frame, "rotation", 0) or 0))
    if angle % 90:
        raise ImageReadError(path, f"a display rotation of {angle} degrees (only multiples of 90 are supported)")
    return angle % 360


def _problem(exc: BaseException) -> str:
    """FFmpeg's reason of a PyAV error, without the file name PyAV appends."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).split(": '", 1)[0]


def _open(path: Path) -> Any:
    av = import_av()
    if not path.is_file():
        raise ImageReadError(path, "no such file", "not found")
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise ImageReadError(path, f"not a readable video ({_problem(exc)})") from None


def _info(path: Path, container: Any) -> VideoInfo:
    if not container.streams.video:
        raise ImageReadError(path, "has no video stream")
    stream = container.streams.video[0]
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width <= 0 or height <= 0:
        raise ImageReadError(path, "its video stream gives no frame size")
    limit = max_pixels()
    if width * height > limit:
        megapixels = f"{width}x{height} frames ({width * height / 1e6:.1f} Mpx)"
        raise ImageReadError(path, f"{megapixels} exceed the {limit / 1e6:g} Mpx limit", "too large")
    rate = stream.average_rate or stream.guessed_rate or DEFAULT_RATE
    name = stream.codec_context.name or "unknown"
    return VideoInfo(width, height, Fraction(rate), int(stream.frames or 0), name)


def _with_rotation(info: VideoInfo, rotation: int) -> VideoInfo:
    if rotation in (90, 270):
        return dataclasses.replace(info, width=info.height, height=info.width, rotation=rotation)
    return dataclasses.replace(info, rotation=rotation)


def probe(path: str | Path) -> VideoInfo:
    """The header of a clip's first video stream (`VideoInfo`; the first frame is decoded for its display rotation);
    an `ImageReadError` if there is none."""
    path = Path(path)
    with contextlib.closing(_open(path)) as container:
        info = _info(path, container)
        frames = _decoded(path, container)
        first = next(frames, None)
        frames.close()
        return info if first is None else _with_rotation(info, _rotation(path, first))


_DONE = object()


def read_batches(path: str | Path, size: int, *, prefetch: int = 2) -> tuple[VideoInfo, Batches]:
    """(header, batches): the clip's frames as lists of `size` HxWx3 uint8 RGB arrays (the last may be shorter),
    decoded by a background thread at most `prefetch` batches ahead. The header is read before returning (its errors
    are raised here); a decoding error, or a clip without frames, is raised by the iteration as an `ImageReadError`.
    `Batches.close()` stops the thread and closes the file (leaving the iteration early does too)."""
    if size < 1 or prefetch < 1:
        raise ValueError(f"size and prefetch must be >= 1, got {size}, {prefetch}")
    path = Path(path)
    container = _open(path)
    try:
        info = _info(path, container)
        frames = _decoded(path, container)
        first = next(frames, None)  # its display matrix gives the rotation, and so the displayed size
        if first is not None:
            info = _with_rotation(info, _rotation(path, first))
    except BaseException:
        container.close()
        raise
    stored = (first.width, first.height) if first is not None else (info.width, info.height)
    batches = _batches(path, container, info, stored, first, frames, size, prefetch)
    return info, Batches(batches, container)


def _decoded(path: Path, container: Any) -> Iterator[Any]:
    """The first video stream's decoded frames; FFmpeg's errors as `ImageReadError`s (the count decoded before)."""
    av = import_av()
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    count = 0
    try:
        for frame in container.decode(stream):
            yield frame
            count += 1
    except (av.FFmpegError, OSError, ValueError, MemoryError) as exc:
        raise ImageReadError(path, f"cannot be decoded after frame {count} ({_problem(exc)})") from None


class Batches:
    """The iterator of `read_batches`; `close()` stops the decoding thread and closes the file, whether or not the
    iteration has started."""

    def __init__(self, batches: Iterator[list[np.ndarray]], container: Any):
        self._batches, self._container = batches, container

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        return self._batches

    def close(self) -> None:
        self._batches.close()
        self._container.close()


def _batches(
    path: Path,
    container: Any,
    info: VideoInfo,
    stored: tuple[int, int],
    first: Any,
    frames: Iterator[Any],
    size: int,
    prefetch: int,
) -> Iterator[list[np.ndarray]]:
    handoff: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        batch: list[np.ndarray] = []
        count = 0
        try:
            for frame in itertools.chain([first] if first is not None else [], frames):
                if (frame.width, frame.height) != stored:
                    raise ImageReadError(
                        path, f"frame {count} is {frame.width}x{frame.height}, the stream {stored[0]}x{stored[1]}"
                    )
                batch.append(displayed(frame.to_ndarray(format="rgb24"), info.rotation))
                count += 1
                if len(batch) == size:
                    if not put(batch):
                        return
                    batch = []
            if batch and not put(batch):
                return
            put(_DONE if count else ImageReadError(path, "has no decodable video frames"))
        except ImageReadError as error:
            put(error)
        except MemoryError:
            put(ImageReadError(path, f"cannot be decoded after frame {count} (out of memory)"))

    worker = threading.Thread(target=decode, name="jaxmatte-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, ImageReadError):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()
        container.close()


class VideoSink:
    """One output video (`Encoding`), written frame by frame; `close()` flushes the encoder, `discard()` closes and
    removes the file (a clip that failed half way leaves nothing behind)."""

    def __init__(self, path: str | Path, encoding: Encoding, info: VideoInfo, audio_from: Path | None = None):
        av = import_av()
        self.path = Path(path)
        self.encoding = encoding
        self.path.parent.mkdir(parents=True, exist_ok=True)
        pixel_format = encoding.pixel_format
        if pixel_format == "yuv420p" and (info.width % 2 or info.height % 2):
            pixel_format = "yuv444p"  # 4:2:0 needs even sides
        self._time_base = Fraction(1) / info.rate
        try:
            self._container = av.open(str(self.path), mode="w")
        except (av.FFmpegError, OSError) as exc:
            raise OSError(exc.errno if isinstance(exc, OSError) else None, _problem(exc), str(self.path)) from None
        self._stream = self._container.add_stream(encoding.codec, rate=info.rate, options=dict(encoding.options))
        self._stream.width, self._stream.height, self._stream.pix_fmt = info.width, info.height, pixel_format
        self._stream.time_base = self._time_base
        self._count = 0
        self._av = av
        self._audio = _AudioCopy(audio_from, self._container, encoding.audio_codecs) if audio_from else None

    @property
    def has_audio(self) -> bool:
        return self._audio is not None and self._audio.stream is not None

    def write(self, array: np.ndarray) -> None:
        frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self.encoding.layout)
        frame.pts, frame.time_base = self._count, self._time_base
        self._count += 1
        self._mux(self._stream.encode(frame))
        if self._audio is not None:  # interleaved: the audio up to the end of this frame
            self._mux(self._audio.packets_until(self._count * self._time_base))

    def close(self) -> None:
        try:
            self._mux(self._stream.encode(None))
            if self._audio is not None:
                self._mux(self._audio.packets_until(None))
        finally:
            self._close_audio()
            self._container.close()

    def discard(self) -> None:
        self._close_audio()
        with contextlib.suppress(Exception):
            self._container.close()
        self.path.unlink(missing_ok=True)

    def _close_audio(self) -> None:
        if self._audio is not None:
            self._audio.close()

    def _mux(self, packets: Sequence[Any]) -> None:
        try:
            self._container.mux(packets)
        except self._av.FFmpegError as exc:
            raise OSError(getattr(exc, "errno", None), _problem(exc), str(self.path)) from None


class _AudioCopy:
    """The first audio stream of `source`, copied packet by packet (no re-encoding) into `container` when its codec is
    one of `codecs`; `stream` is None when there is none to copy (no audio, another codec, unreadable)."""

    def __init__(self, source: Path, container: Any, codecs: frozenset[str]):
        av = import_av()
        self.stream = self._input = self._packets = None
        self._pending: Any = None
        try:
            self._input = av.open(str(source), mode="r")
            if not self._input.streams.audio or self._input.streams.audio[0].codec_context.name not in codecs:
                self.close()
                return
            source_stream = self._input.streams.audio[0]
            self.stream = container.add_stream_from_template(source_stream)
            self._packets = self._input.demux(source_stream)
        except (av.FFmpegError, OSError, ValueError):
            self.stream = None
            self.close()

    def packets_until(self, end: Fraction | None) -> list[Any]:
        """The source's packets that start before `end` seconds (all that are left for None), re-addressed to
        `stream`. A demuxing error ends the copy: the audio is as long as it could be read."""
        if self._packets is None:
            return []
        out = []
        try:
            while True:
                packet = self._pending if self._pending is not None else next(self._packets, None)
                self._pending = None
                if packet is None:
                    self._packets = None
                    break
                if packet.size == 0 or packet.pts is None:
                    continue  # the demuxer's end-of-stream marker, or no time to place it at
                if end is not None and packet.pts * packet.time_base >= end:
                    self._pending = packet
                    break
                packet.stream = self.stream
                out.append(packet)
        except (import_av().FFmpegError, OSError, ValueError):
            self._packets = None
        return out

    def close(self) -> None:
        self._packets = None
        if self._input is not None:
            with contextlib.suppress(Exception):
                self._input.close()
            self._input = None


class FrameFolder:
    """One PNG per frame in a folder: ``000000.png``, ``000001.png``, ...; `discard()` removes what was written."""

    def __init__(self, folder: str | Path, layout: str):
        self.path = Path(folder)
        self.layout = layout
        self._written: list[Path] = []

    def write(self, array: np.ndarray) -> None:
        self._written.append(write_png(self.path / f"{len(self._written):06d}.png", array))

    def close(self) -> None:
        pass

    def discard(self) -> None:
        for file in self._written:
            file.unlink(missing_ok=True)
        for folder in (self.path, self.path.parent):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty


def targets(folder: Path, stem: Path, formats: Sequence[str], mode: str = "video") -> list[Path]:
    """The file (video mode) or folder (frames mode) each format of a clip is written to."""
    if mode not in VIDEO_MODES:
        raise ValueError(f"mode must be one of {VIDEO_MODES}, got {mode!r}")
    base = folder / stem.parent
    if mode == "frames":
        return [base / stem.name / name for name in formats]
    return [base / f"{stem.name}{ENCODINGS[name].suffix}" for name in formats]


def sinks(
    folder: Path,
    stem: Path,
    formats: Sequence[str],
    info: VideoInfo,
    mode: str = "video",
    audio_from: Path | None = None,
) -> dict[str, VideoSink | FrameFolder]:
    """An open sink per format (see the module docstring); the RGBA and composite videos copy the audio of
    `audio_from` (the source clip) when their container takes its codec. On an error those already opened are
    discarded."""
    opened: dict[str, VideoSink | FrameFolder] = {}
    try:
        for name, target in zip(formats, targets(folder, stem, formats, mode), strict=True):
            if name not in VIDEO_FORMATS:
                raise ValueError(f"videos are written as {', '.join(VIDEO_FORMATS)}, not {name!r}")
            sink = FrameFolder(target, FRAME_LAYOUTS[name]) if mode == "frames" else None
            opened[name] = sink or VideoSink(target, ENCODINGS[name], info, audio_from)
    except BaseException:
        for sink in opened.values():
            sink.discard()
        raise
    return opened


def read_frames(path: str | Path, layout: str = "rgb24") -> list[np.ndarray]:
    """Every frame of a (short) clip as displayed, arrays in PyAV's `layout` ("rgb24", "rgba", "gray"): for checks
    and tests, not for long clips."""
    path = Path(path)
    with contextlib.closing(_open(path)) as container:
        frames = list(container.decode(container.streams.video[0]))
        rotation = _rotation(path, frames[0]) if frames else 0
        return [displayed(frame.to_ndarray(format=layout), rotation) for frame in frames]
