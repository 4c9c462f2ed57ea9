"""A corpus of awkward and broken inputs for the reliability tests, generated on the fly (nothing binary is committed).

`write_corpus(root)` writes ``root/images`` (the inputs, good and bad), ``root/masks`` (an object mask per image
stem, for SegTrimap) and ``root/trimaps`` (a trimap per stem, for DIM), and returns the `Case` of every input file.
`write_eval_corpus(root)` writes ``pred/``, ``gt/``, ``trimap/`` and ``empty/`` folders for evaluate.py.

Good images are small (40 x 56 unless said otherwise) so that a trimap-based model running at native resolution
compiles few shapes; the extreme aspect ratios (50 x 8000, 8000 x 50) and the decompression bomb are the exceptions.

YCCK: PIL writes CMYK JPEGs only, so the YCCK file is a CMYK JPEG whose four channels hold Y, Cb, Cr (of the RGB
picture) and K = 0, with the Adobe marker's transform byte set to 2; libjpeg then decodes it as YCCK, to the picture.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

SHAPE = (40, 56)  # (H, W) of most good images
TURNED = SHAPE[::-1]  # EXIF orientations 5..8 swap the sides
BOMB_SIDE = 12_000  # 144 Mpx declared in a ~140 KB PNG


@dataclass(frozen=True)
class Case:
    """One input file. `shape`: (H, W) after EXIF orientation for a good file, None for a bad one; `problem`: a
    fragment of the reported problem for a bad one; `stem`: the output name (relative, no suffix); `what`: the
    README table's description."""

    path: str
    what: str
    shape: tuple[int, int] | None = None
    problem: str | None = None

    @property
    def good(self) -> bool:
        return self.shape is not None

    @property
    def stem(self) -> str:
        return Path(self.path).with_suffix("").as_posix()


def smooth(rng: np.random.Generator, shape: tuple[int, int], channels: int = 3) -> np.ndarray:
    """A smooth random uint8 picture (H, W, C): a models sees structure, JPEG keeps it."""
    small = rng.integers(0, 256, (max(2, shape[0] // 8), max(2, shape[1] // 8), channels), dtype=np.uint8)
    big = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_LINEAR)
    return big.reshape(*shape, channels)


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid 8-bit grayscale PNG of side x side zeros: a tiny file that decodes to side^2 bytes (and more once
    converted to RGB). Compressed row by row, so writing it stays cheap."""
    compressor = zlib.compressobj(9)
    rows = b"\x00" * (side + 1) * 500  # filter byte + pixels, 500 rows at a time
    parts = [compressor.compress(rows[: (side + 1) * min(500, side - start)]) for start in range(0, side, 500)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def ycck_jpeg(rgb: np.ndarray) -> bytes:
    """A YCCK JPEG of an RGB picture (see the module docstring)."""
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)[..., [0, 2, 1]]
    channels = np.concatenate([ycc, np.zeros((*rgb.shape[:2], 1), np.uint8)], axis=2)
    buffer = io.BytesIO()
    Image.fromarray(channels, "CMYK").save(buffer, format="JPEG", quality=95)
    data = bytearray(buffer.getvalue())
    adobe = data.find(b"Adobe")
    assert adobe > 0, "libjpeg wrote no Adobe marker for CMYK"
    data[adobe + 11] = 2  # transform: 0 = none (CMYK), 2 = YCCK
    return bytes(data)


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def write_corpus(root: str | os.PathLike, seed: int = 0) -> list[Case]:
    """Write the corpus under `root` (see the module docstring); returns the cases in no particular order."""
    root = Path(root)
    images, masks, trimaps = root / "images", root / "masks", root / "trimaps"
    for folder in (images, masks, trimaps):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: list[Case] = []

    def good(path: str, what: str, data: bytes, shape: tuple[int, int] = SHAPE) -> None:
        target = images / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        cases.append(Case(path, what, shape=shape))

    def bad(path: str, what: str, data: bytes, problem: str) -> None:
        target = images / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        cases.append(Case(path, what, problem=problem))

    def picture(shape: tuple[int, int] = SHAPE, channels: int = 3) -> np.ndarray:
        array = smooth(rng, shape, channels)
        return array[..., 0] if channels == 1 else array

    # formats, modes and bit depths
    buffer = io.BytesIO()
    Image.fromarray(255 - picture(channels=4), "CMYK").save(buffer, format="JPEG", quality=92)
    good("cmyk.jpg", "CMYK JPEG", buffer.getvalue())
    good("ycck.jpg", "YCCK JPEG (Adobe transform 2)", ycck_jpeg(picture()))
    deep = picture().astype(np.uint16) * 257 + rng.integers(0, 257, (*SHAPE, 3)).astype(np.uint16)
    good("rgb16.png", "16-bit RGB PNG", cv2.imencode(".png", deep)[1].tobytes())
    for path, array, what in (
        ("gray16.tif", picture(channels=1).astype(np.uint16) * 257, "16-bit grayscale TIFF"),
        ("float.tif", picture(channels=1).astype(np.float32) / 255, "float32 TIFF in [0, 1]"),
    ):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="TIFF")
        good(path, what, buffer.getvalue())
    buffer = io.BytesIO()
    Image.fromarray(picture()).quantize(16).save(buffer, format="PNG", transparency=0)
    good("palette_alpha.png", "palette PNG with transparency", buffer.getvalue())
    good("la.png", "LA PNG (gray + alpha)", _png_bytes(np.asarray(Image.fromarray(picture(channels=2), "LA"))))
    good("rgba.png", "RGBA PNG", _png_bytes(picture(channels=4)))

    # EXIF orientations 2..8: stored 40 x 56, shown 56 x 40 for 5..8
    for value in range(2, 9):
        buffer = io.BytesIO()
        Image.fromarray(picture()).save(buffer, format="JPEG", quality=92, exif=exif_orientation(value))
        good(f"exif_{value}.jpg", f"JPEG, EXIF orientation {value}", buffer.getvalue(), TURNED if value >= 5 else SHAPE)

    # sizes
    good("one_pixel.png", "1 x 1 image", _png_bytes(picture((1, 1))), (1, 1))
    good("wide.png", "extreme aspect ratio, 50 x 8000", _png_bytes(picture((50, 8000))), (50, 8000))
    good("tall.png", "extreme aspect ratio, 8000 x 50", _png_bytes(picture((8000, 50))), (8000, 50))

    # names
    good("UPPER.PNG", "upper-case extension .PNG", _png_bytes(picture()))
    good("photo.JPG", "upper-case extension .JPG", _jpeg_bytes(picture()))
    good("with space.png", "name with spaces", _png_bytes(picture()))
    good("hash#1.png", "name with #", _png_bytes(picture()))
    good("café ü.png", "non-ASCII name (Latin)", _png_bytes(picture()))
    good("日本.jpg", "non-ASCII name (CJK)", _jpeg_bytes(picture()))

    # folders: a nested subfolder with a symlink loop, a folder named like an image
    good("sub/nested.png", "image in a subfolder", _png_bytes(picture()))
    good("sub/deeper/deep.png", "image two levels down", _png_bytes(picture()))
    (images / "sub" / "loop").symlink_to("..", target_is_directory=True)  # sub/loop -> images/: a loop
    good("dir.png/inside.png", "image inside a folder named dir.png", _png_bytes(picture()))

    # the same output name twice: an unreadable x.jpg must not hide a readable x.png; two readable ones clash
    png = _png_bytes(picture())
    bad("clash.jpg", "unreadable x.jpg beside a readable x.png", _jpeg_bytes(picture())[:300], "truncated")
    good("clash.png", "readable x.png beside an unreadable x.jpg", png)
    good("twin.jpg", "readable x.jpg beside a readable x.png (first in sorted order)", _jpeg_bytes(picture()))
    bad("twin.png", "readable x.png after a readable x.jpg", _png_bytes(picture()), "name clash")

    # images whose companion (mask / trimap) is missing or broken: good as images
    good("nomask.png", "image without mask / trimap", _png_bytes(picture()))
    good("badmask.png", "image with a truncated mask / trimap", _png_bytes(picture()))

    # bad files
    jpeg, png = _jpeg_bytes(picture()), _png_bytes(picture())
    bad("empty.png", "zero-byte file", b"", "empty file")
    bad("truncated.jpg", "truncated JPEG", jpeg[: len(jpeg) // 2], "truncated")
    bad("truncated.png", "truncated PNG", png[: len(png) // 2], "truncated")
    bad("text.jpg", "text file named .jpg", b"this is not a picture\n" * 4, "not an image")
    buffer = io.BytesIO()
    Image.fromarray(picture(channels=1).astype(np.float32) / 100).save(buffer, format="TIFF")
    bad("float_range.tif", "float TIFF with values above 1", buffer.getvalue(), "outside [0, 1]")
    bad("bomb.png", f"decompression bomb: {BOMB_SIDE}^2 px declared, tiny file", bomb_png(), "pixel limit")
    (images / "sub" / "dangling.png").symlink_to("nowhere.png")
    cases.append(Case("sub/dangling.png", "broken symbolic link", problem="symbolic link"))
    (images / "sub" / "self.png").symlink_to("self.png")
    cases.append(Case("sub/self.png", "symbolic link to itself (loop)", problem="symbolic link"))

    # companions: one mask and one trimap per output stem (40 x 56: resized with nearest neighbour to each image)
    mask = np.zeros(SHAPE, np.uint8)
    cv2.ellipse(mask, (28, 20), (18, 12), 0, 0, 360, 255, -1)
    trimap = np.where(cv2.dilate(mask, np.ones((5, 5))) > cv2.erode(mask, np.ones((5, 5))), 128, mask)
    for stem in sorted({Path(case.path).stem for case in cases} - {"nomask"}):
        (masks / f"{stem}.png").write_bytes(_png_bytes(mask))
        (trimaps / f"{stem}.png").write_bytes(_png_bytes(trimap.astype(np.uint8)))
    for folder in (masks, trimaps):
        whole = (folder / "badmask.png").read_bytes()
        (folder / "badmask.png").write_bytes(whole[: len(whole) // 2])
    return cases


# ---------------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class EvalCase:
    """One stem of the evaluation corpus: evaluated (`problem` None) or reported with `problem` in its line."""

    name: str
    what: str
    problem: str | None = None


def write_eval_corpus(root: str | os.PathLike, seed: int = 1) -> list[EvalCase]:
    """pred/, gt/, trimap/ (binary 40 x 56 GTs unless said otherwise) and an empty/ folder under `root`."""
    root = Path(root)
    pred, gt, trimap = root / "pred", root / "gt", root / "trimap"
    for folder in (pred, gt, trimap, root / "empty"):
        folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: list[EvalCase] = []

    def blob(shape: tuple[int, int] = SHAPE) -> np.ndarray:
        mask = np.zeros(shape, np.uint8)
        height, width = shape
        centre = (int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(height // 3, 2 * height // 3)))
        cv2.ellipse(mask, centre, (shape[1] // 4, shape[0] // 4), float(rng.uniform(0, 180)), 0, 360, 255, -1)
        return mask

    def band(mask: np.ndarray) -> np.ndarray:
        return np.where(cv2.dilate(mask, np.ones((5, 5))) > cv2.erode(mask, np.ones((5, 5))), 128, mask).astype(
            np.uint8
        )

    def noisy(mask: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        values = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.5) + rng.normal(0, 20, mask.shape)
        values = np.clip(values, 0, 255).astype(np.uint8)
        return values if shape is None else cv2.resize(values, shape[::-1], interpolation=cv2.INTER_AREA)

    def png(path: Path, array: np.ndarray) -> None:
        path.write_bytes(_png_bytes(array))

    def triple(name: str, what: str, mask: np.ndarray, prediction: np.ndarray, problem: str | None = None) -> None:
        png(gt / f"{name}.png", mask)
        png(pred / f"{name}.png", prediction)
        png(trimap / f"{name}.png", band(mask))
        cases.append(EvalCase(name, what, problem))

    mask = blob()
    triple("blob", "binary GT", mask, noisy(mask))
    mask = blob()
    triple("small_pred", "prediction of another size (30 x 40)", mask, noisy(mask, (30, 40)))
    zeros = np.zeros(SHAPE, np.uint8)
    triple("all_zero", "all-0 GT (its trimap has no unknown pixel)", zeros, noisy(blob()))
    full = np.full(SHAPE, 255, np.uint8)
    triple("all_255", "all-255 GT (its trimap has no unknown pixel)", full, noisy(blob()))
    mask = blob()
    png(gt / "deep.png", mask)
    buffer = io.BytesIO()
    Image.fromarray(noisy(mask).astype(np.float32) / 255).save(buffer, format="TIFF")
    (pred / "deep.tif").write_bytes(buffer.getvalue())
    png(trimap / "deep.png", band(mask))
    cases.append(EvalCase("deep", "float TIFF prediction"))
    mask = blob()
    triple("trimap_size", "trimap of another size than the GT", mask, noisy(mask), "differs")
    png(trimap / "trimap_size.png", band(blob((30, 40))))

    for name, what, data, problem in (
        ("empty", "zero-byte prediction", b"", "empty file"),
        ("truncated", "truncated prediction PNG", _png_bytes(noisy(blob()))[:200], "truncated"),
        ("text", "text file as prediction", b"not a picture\n", "not an image"),
        ("bomb", "decompression bomb as prediction", bomb_png(), "pixel limit"),
    ):
        mask = blob()
        png(gt / f"{name}.png", mask)
        (pred / f"{name}.png").write_bytes(data)
        png(trimap / f"{name}.png", band(mask))
        cases.append(EvalCase(name, what, problem))
    mask = blob()
    png(gt / "no_pred.png", mask)
    png(trimap / "no_pred.png", band(mask))
    cases.append(EvalCase("no_pred.png", "GT without prediction", "no prediction"))
    mask = blob()
    triple("dup", "two predictions with one stem (dup.png used)", mask, noisy(mask))
    (pred / "dup.jpg").write_bytes(_jpeg_bytes(noisy(mask)))
    cases.append(EvalCase("dup.jpg", "the other of two predictions with one stem", "duplicate stem"))
    png(pred / "orphan.png", noisy(blob()))
    cases.append(EvalCase("orphan.png", "prediction without GT", "no ground truth"))
    mask = blob()
    png(gt / "bad_gt.png", mask)
    (gt / "bad_gt.png").write_bytes(_png_bytes(mask)[:150])
    png(pred / "bad_gt.png", noisy(mask))
    png(trimap / "bad_gt.png", band(mask))
    cases.append(EvalCase("bad_gt", "truncated GT", "truncated"))
    return cases
