"""Robust image and mask reading: every common format, mode and bit depth, EXIF orientation, clear errors.

Images come back as HxWx3 uint8 RGB, masks as HxW uint8. Conversions:

- 16-bit data -> 8-bit by round(v / 257) (65535 -> 255, exact integer arithmetic).
- float data (e.g. float TIFF) must lie in [0, 1] and becomes clip(floor(255 v + 0.5)); other ranges are refused.
- EXIF orientation (tag 0x0112) is applied to images and masks alike, as PIL `ImageOps.exif_transpose` does, so
  an image and its mask stay aligned.
- Images: grayscale is replicated to 3 channels; palette and CMYK/YCbCr/LAB/HSV are converted to RGB; an alpha
  channel is dropped (not composited: the colour values are returned as stored).
- Masks: 8-bit files give the same values as `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` (the convention of the DIS
  and pysodmetrics evaluation code): grayscale as stored, colour and palette files as the decoder's luminance
  (libpng's, libjpeg's, ... as OpenCV uses them). Exception: a mask with an alpha channel (LA, RGBA, palette with
  transparency) whose colour is constant over the image while its alpha varies uses the alpha channel (cut-outs
  saved as a transparent layer). 16-bit colour masks use 0.299 R + 0.587 G + 0.114 B before the 16 -> 8 bit step.

PIL decodes; OpenCV is used for what PIL cannot represent (16-bit colour, float colour TIFF) and for the luminance of
8-bit colour masks. Multi-frame files (GIF, multi-page TIFF) give their first frame.

Size limit: an image with more than `max_pixels()` pixels (default 100 Mpx; the `JAXMATTE_MAX_PIXELS` environment
variable, `set_max_pixels`, or `max_pixels=` per call) is refused from its header, before any pixel is decoded (a
140 KB PNG can declare 144 Mpx). PIL's own `Image.MAX_IMAGE_PIXELS` is set to the same limit. Files PIL cannot
identify, which only OpenCV decodes, are checked after decoding (OpenCV's own `OPENCV_IO_MAX_IMAGE_PIXELS`, 2^30 by
default, bounds that decode).

Every failure is an `ImageReadError` naming the file, with a `kind`: "not found", "unreadable", "too large".
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION_TAG = 0x0112

MAX_PIXELS_ENV = "JAXMATTE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 100_000_000

_RGB_CONVERTIBLE = {"P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}
_WARNING_FILTERS = threading.Lock()  # `warnings.catch_warnings` changes process-wide state: one thread at a time


class ImageReadError(ValueError):
    """A file that cannot be read as an image; the message names the file and the problem. `kind`: a short class of
    the problem for summaries ("not found", "unreadable", "too large", or a caller's own)."""

    def __init__(self, path: str | os.PathLike, problem: str, kind: str = "unreadable"):
        self.path = Path(path)
        self.problem = problem
        self.kind = kind
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable with its kind (process pools)
        return type(self), (self.path, self.problem, self.kind)


def _limit_from_env() -> int:
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        return parse_max_pixels(text)
    except ValueError as exc:
        warnings.warn(f"{MAX_PIXELS_ENV}: {exc}; using {DEFAULT_MAX_PIXELS}", stacklevel=2)
        return DEFAULT_MAX_PIXELS


def parse_max_pixels(text: str) -> int:
    """A pixel limit from text: an integer (underscores allowed) or a float with an M suffix (e.g. "150M")."""
    cleaned = text.strip().replace("_", "")
    try:
        value = float(cleaned[:-1]) * 1e6 if cleaned[-1:] in ("M", "m") else int(cleaned)
    except ValueError:
        raise ValueError(f"expected a pixel count such as 100000000 or 100M, got {text!r}") from None
    if value < 1:
        raise ValueError(f"the pixel limit must be at least 1, got {text!r}")
    return int(value)


def max_pixels() -> int:
    """The current pixel limit of `read_image` / `read_mask`."""
    return _max_pixels


def set_max_pixels(limit: int) -> None:
    """Set the pixel limit, PIL's `Image.MAX_IMAGE_PIXELS` with it, and `JAXMATTE_MAX_PIXELS` so that worker
    processes started later use it too."""
    global _max_pixels
    if int(limit) < 1:
        raise ValueError(f"the pixel limit must be at least 1, got {limit}")
    _max_pixels = int(limit)
    Image.MAX_IMAGE_PIXELS = _max_pixels
    os.environ[MAX_PIXELS_ENV] = str(_max_pixels)


_max_pixels = _limit_from_env()
Image.MAX_IMAGE_PIXELS = _max_pixels


def scan_images(folder: str | os.PathLike, recursive: bool = False) -> tuple[list[Path], list[ImageReadError]]:
    """(image files, problems) of `folder`: files by suffix (case-insensitive, `IMAGE_SUFFIXES`), sorted by relative
    path, hidden entries skipped. Folders named like images are not files (with `recursive` their images count);
    symbolic links to folders are not followed (no loops); a link with an image suffix that leads nowhere (broken or
    looping) is a problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found, problems = [], []
    for path in candidates:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.is_file():
            found.append(path)
        elif path.is_symlink() and not path.is_dir():
            problems.append(ImageReadError(path, "broken or looping symbolic link", "broken link"))

    def order(path: Path) -> str:
        return path.relative_to(folder).as_posix()

    return sorted(found, key=order), sorted(problems, key=lambda error: order(error.path))


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, case-insensitive, see `IMAGE_SUFFIXES`) in `folder`, sorted; hidden files skipped."""
    return scan_images(folder, recursive)[0]


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB image from any common file (alpha dropped, grayscale replicated); `max_pixels`: this call's
    limit (default `max_pixels()`)."""
    array, layout = _decode(path, max_pixels=max_pixels)
    if layout in ("L", "LA"):
        gray = _to_uint8(array[..., 0] if layout == "LA" else array, path)
        return np.repeat(gray[..., None], 3, axis=2)
    return _to_uint8(array[..., :3], path)


def read_mask(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """HxW uint8 mask (ground truth, prediction, trimap); see the module docstring for the conventions."""
    array, layout = _decode(path, gray_for_colour=True, max_pixels=max_pixels)
    if layout == "L":
        return _to_uint8(array, path)
    colour, alpha = (array[..., 0], array[..., 1]) if layout == "LA" else (array[..., :3], array[..., 3:])
    if alpha.size and _is_constant(colour) and not _is_constant(alpha):
        return _to_uint8(alpha.reshape(alpha.shape[:2]), path)
    if layout == "LA":
        return _to_uint8(colour, path)
    return _to_uint8(_luminance(colour, path), path)


def write_png(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write a uint8 HxW mask, HxWx3 RGB or HxWx4 RGBA image as PNG, creating parent folders."""
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_png expects uint8, got {array.dtype}")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ValueError(f"write_png expects HxW, HxWx3 or HxWx4, got shape {array.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG")
    return path


# --------------------------------------------------------------------------------------------------------------------


def _decode(
    path: str | os.PathLike, gray_for_colour: bool = False, max_pixels: int | None = None
) -> tuple[np.ndarray, str]:
    """(array at native dtype, layout in L | LA | RGB | RGBA), EXIF orientation applied.

    With `gray_for_colour`, 8-bit colour files without a usable alpha come back as OpenCV's grayscale decode ("L").
    """
    limit = _max_pixels if max_pixels is None else max_pixels
    data = _read_bytes(path)
    try:
        with _WARNING_FILTERS, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            pil = Image.open(io.BytesIO(data))
        _check_size(path, pil.size, limit)  # from the header, before decoding
        wide_colour = _is_wide_colour(pil)  # the tile list is gone after load()
        pil.load()  # outside the lock: threads decode in parallel
    except UnidentifiedImageError:
        array = _cv2_unchanged(data)
        if array is None:
            raise ImageReadError(path, "not an image file (or an unsupported format)") from None
        _check_size(path, (array.shape[1], array.shape[0]), limit)
        return _from_cv2(array, path), _layout_of(array)
    except Image.DecompressionBombError as exc:  # PIL's own check (2 x its limit) in Image.open
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.1f} Mpx" if found else "its size"
        raise ImageReadError(path, f"{pixels} is above the pixel limit of {_mpx(limit)}{_HINT}", "too large") from None
    except ImageReadError:
        raise
    except Exception as exc:  # truncated / corrupt data surfaces as OSError, SyntaxError, zlib.error, ...
        raise ImageReadError(path, f"truncated or corrupt image data ({exc})") from None

    orientation = _orientation(pil)
    mode = pil.mode
    if wide_colour:  # 16-bit colour, which PIL would reduce to 8 bits by truncation
        array = _cv2_unchanged(data)
        if array is None or array.ndim != 3:
            raise ImageReadError(path, f"unsupported 16-bit colour file (mode {mode})")
        return _orient(_from_cv2(array, path), orientation), _layout_of(array)

    if mode == "1":
        array, layout = np.asarray(pil, dtype=np.uint8) * np.uint8(255), "L"
    elif mode in ("L", "F") or mode in _SIXTEEN_BIT_MODES:
        array, layout = np.asarray(pil), "L"
    elif mode == "I":
        array, layout = np.asarray(pil), "L"
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise ImageReadError(path, "32-bit integer image with values outside 0..65535")
        array = array.astype(np.uint16)
    elif mode in ("LA", "RGB", "RGBA"):
        array, layout = np.asarray(pil), mode
    elif mode in _RGB_CONVERTIBLE:
        has_alpha = mode in ("PA", "RGBa", "La") or (mode == "P" and "transparency" in pil.info)
        if mode == "La":
            array, layout = np.asarray(pil.convert("LA")), "LA"
        else:
            target = "RGBA" if has_alpha else "RGB"
            array, layout = np.asarray(pil.convert(target)), target
    else:
        raise ImageReadError(path, f"unsupported image mode {mode!r}")

    if gray_for_colour and layout in ("RGB", "RGBA") and array.dtype == np.uint8:
        keep_alpha = layout == "RGBA" and _is_constant(array[..., :3]) and not _is_constant(array[..., 3])
        if not keep_alpha:
            gray = _cv2_gray(data, array.shape[:2])
            if gray is None:
                gray = cv2.cvtColor(np.ascontiguousarray(array[..., :3]), cv2.COLOR_RGB2GRAY)
            array, layout = gray, "L"
    return _orient(array, orientation), layout


_HINT = f" (--max-pixels or {MAX_PIXELS_ENV})"


def _mpx(pixels: int) -> str:
    return f"{pixels / 1e6:g} Mpx" if pixels >= 100_000 else f"{pixels} px"


def _check_size(path: str | os.PathLike, size: tuple[int, int], limit: int) -> None:
    """Refuse a (width, height) above `limit` pixels."""
    width, height = size
    if width * height > limit:
        raise ImageReadError(
            path,
            f"{width}x{height} ({_mpx(width * height)}) is above the pixel limit of {_mpx(limit)}{_HINT}",
            "too large",
        )


def _read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise ImageReadError(path, "broken or looping symbolic link", "broken link")
    if not path.exists():
        raise ImageReadError(path, "file not found", "not found")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    return data


def _is_wide_colour(pil: Image.Image) -> bool:
    """True for colour files with more than 8 bits per channel (PIL keeps only the high byte of those)."""
    if pil.mode in ("L", "1", "F", "I", "P") or pil.mode in _SIXTEEN_BIT_MODES:
        return False
    rawmodes = [tile[3] if isinstance(tile[3], str) else (tile[3] or ("",))[0] for tile in pil.tile]
    return any(isinstance(raw, str) and ";16" in raw for raw in rawmodes)


def _cv2_unchanged(data: bytes) -> np.ndarray | None:
    buffer = np.frombuffer(data, dtype=np.uint8)
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)


def _cv2_gray(data: bytes, shape: tuple[int, int]) -> np.ndarray | None:
    """OpenCV's grayscale decode (what `cv2.imread(path, IMREAD_GRAYSCALE)` gives, before orientation)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    gray = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION)
    if gray is None or gray.shape != shape:
        return None
    return gray


def _layout_of(array: np.ndarray) -> str:
    channels = 1 if array.ndim == 2 else array.shape[2]
    return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]


def _from_cv2(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """OpenCV's BGR(A) order to RGB(A); a single channel stays as HxW."""
    if array.ndim == 3 and array.shape[2] == 1:
        return array[..., 0]
    if array.ndim == 2 or array.shape[2] == 2:
        return array
    if array.shape[2] in (3, 4):
        return np.ascontiguousarray(np.concatenate([array[..., 2::-1], array[..., 3:]], axis=2))
    raise ImageReadError(path, f"unsupported number of channels ({array.shape[2]})")


def _orientation(pil: Image.Image) -> int:
    try:
        value = pil.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1..8) to HxW[xC] pixels, as PIL `ImageOps.exif_transpose` does."""
    if orientation == 2:
        array = array[:, ::-1]
    elif orientation == 3:
        array = array[::-1, ::-1]
    elif orientation == 4:
        array = array[::-1]
    elif orientation == 5:
        array = array.swapaxes(0, 1)
    elif orientation == 6:
        array = np.rot90(array, k=-1)
    elif orientation == 7:
        array = array[::-1, ::-1].swapaxes(0, 1)
    elif orientation == 8:
        array = np.rot90(array, k=1)
    return np.ascontiguousarray(array)


def _is_constant(array: np.ndarray) -> bool:
    flat = array.reshape(-1, array.shape[-1]) if array.ndim == 3 else array.reshape(-1, 1)
    return bool(flat.size == 0 or (flat == flat[0]).all())


def _luminance(rgb: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """0.299 R + 0.587 G + 0.114 B scaled to [0, 1] (for data OpenCV's 8-bit grayscale decode does not cover)."""
    if np.issubdtype(rgb.dtype, np.integer):
        scale = float(np.iinfo(rgb.dtype).max)
    elif np.issubdtype(rgb.dtype, np.floating):
        scale = 1.0
    else:
        raise ImageReadError(path, f"unsupported pixel type {rgb.dtype}")
    return (rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / scale


def _to_uint8(array: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """uint8 from uint8 / 16-bit (round(v / 257)) / float in [0, 1] (clip(floor(255 v + 0.5)))."""
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if array.dtype.kind == "u" and array.dtype.itemsize == 2:
        wide = array.astype(np.uint32)
        return ((2 * wide + 257) // 514).astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float64)
        if not np.isfinite(values).all():
            raise ImageReadError(path, "float image with NaN or infinite values")
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        if low < 0.0 or high > 1.0 + 1e-6:
            raise ImageReadError(path, f"float image with values outside [0, 1] (min {low:g}, max {high:g})")
        return np.clip(np.floor(values * 255.0 + 0.5), 0, 255).astype(np.uint8)
    raise ImageReadError(path, f"unsupported pixel type {array.dtype}")
