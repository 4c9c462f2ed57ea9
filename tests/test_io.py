"""Robust image reading: every mode, bit depth and format, EXIF orientation, and clear errors for bad files."""

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from jaxmatte.data.io import IMAGE_SUFFIXES, ImageReadError, list_images, read_image, read_mask, write_png

RNG = np.random.default_rng(7)
HEIGHT, WIDTH = 12, 17


def random_u8(*shape: int) -> np.ndarray:
    return RNG.integers(0, 256, shape, dtype=np.uint8)


def cv2_gray(path) -> np.ndarray:
    """The DIS / pysodmetrics convention for reading masks."""
    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def round_div_257(values: np.ndarray) -> np.ndarray:
    """16-bit -> 8-bit as round(v / 257), computed in float64 (no ties: v / 257 is never k + 0.5)."""
    return np.round(values.astype(np.float64) / 257.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------- 8-bit modes


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".webp"])
def test_rgb_lossless_formats(tmp_path, suffix):
    rgb = random_u8(HEIGHT, WIDTH, 3)
    path = tmp_path / f"rgb{suffix}"
    Image.fromarray(rgb).save(path, **({"lossless": True} if suffix == ".webp" else {}))
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(image, rgb)
    np.testing.assert_array_equal(read_mask(path), cv2_gray(path))


def test_grayscale_png(tmp_path):
    gray = random_u8(HEIGHT, WIDTH)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    np.testing.assert_array_equal(read_mask(path), gray)
    np.testing.assert_array_equal(read_image(path), np.repeat(gray[..., None], 3, axis=2))


def test_bilevel_png(tmp_path):
    bits = RNG.random((HEIGHT, WIDTH)) > 0.5
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(read_mask(path), np.where(bits, 255, 0))
    np.testing.assert_array_equal(read_image(path)[..., 1], np.where(bits, 255, 0))


def test_palette_png(tmp_path):
    palette = random_u8(256, 3)
    indices = RNG.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    image.save(path)
    np.testing.assert_array_equal(read_image(path), palette[indices])
    np.testing.assert_array_equal(read_mask(path), cv2_gray(path))


def test_palette_png_with_transparency_drops_it_for_images(tmp_path):
    indices = RNG.integers(0, 4, (HEIGHT, WIDTH), dtype=np.uint8)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette_alpha.png"
    image.save(path, transparency=0)
    np.testing.assert_array_equal(read_image(path), palette[indices])


def test_la_png(tmp_path):
    gray, alpha = random_u8(HEIGHT, WIDTH), random_u8(HEIGHT, WIDTH)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([gray, alpha], axis=2), mode="LA").save(path)
    np.testing.assert_array_equal(read_image(path), np.repeat(gray[..., None], 3, axis=2))  # alpha dropped
    np.testing.assert_array_equal(read_mask(path), gray)  # the gray channel varies: it is the mask


def test_la_png_with_constant_gray_uses_alpha(tmp_path):
    alpha = random_u8(HEIGHT, WIDTH)
    path = tmp_path / "cutout.png"
    Image.fromarray(np.stack([np.full_like(alpha, 255), alpha], axis=2), mode="LA").save(path)
    np.testing.assert_array_equal(read_mask(path), alpha)


def test_rgba_png(tmp_path):
    rgba = random_u8(HEIGHT, WIDTH, 4)
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_image(path), rgba[..., :3])  # alpha dropped, colours as stored
    np.testing.assert_array_equal(read_mask(path), cv2_gray(path))  # colour varies: luminance, as OpenCV


def test_rgba_png_with_constant_colour_uses_alpha(tmp_path):
    alpha = random_u8(HEIGHT, WIDTH)
    rgba = np.concatenate([np.full((HEIGHT, WIDTH, 3), (255, 255, 255), np.uint8), alpha[..., None]], axis=2)
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_mask(path), alpha)


def test_rgba_png_with_constant_alpha_uses_colour(tmp_path):
    rgba = np.concatenate([random_u8(HEIGHT, WIDTH, 3), np.full((HEIGHT, WIDTH, 1), 255, np.uint8)], axis=2)
    path = tmp_path / "opaque.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    np.testing.assert_array_equal(read_mask(path), cv2_gray(path))


def test_rgb_mask_matches_opencv_grayscale_not_pil(tmp_path):
    """Saved-RGB GT masks: the DIS convention (OpenCV's grayscale decode) differs from PIL's 'L' on some pixels."""
    rgb = random_u8(64, 64, 3)
    path = tmp_path / "mask_rgb.png"
    Image.fromarray(rgb).save(path)
    mask = read_mask(path)
    np.testing.assert_array_equal(mask, cv2_gray(path))
    assert np.abs(mask.astype(int) - np.asarray(Image.open(path).convert("L"), int)).max() <= 1


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(random_u8(HEIGHT, WIDTH, 4), mode="CMYK").save(path)
    image = read_image(path)
    assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.asarray(Image.open(path).convert("RGB")))


# ----------------------------------------------------------------------------------------------------- wide data


def test_sixteen_bit_grayscale_png(tmp_path):
    # round(v / 257) steps from k to k + 1 between v = 257 k + 128 and 257 k + 129 (k = 0, 1, 127, 254 below)
    edges = np.array([0, 1, 128, 129, 385, 386, 32767, 32768, 65406, 65407, 65534, 65535], np.uint16)
    values = np.concatenate([edges, RNG.integers(0, 65536, HEIGHT * WIDTH - edges.size)]).astype(np.uint16)
    values = values.reshape(HEIGHT, WIDTH)
    path = tmp_path / "gray16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    expected = round_div_257(values)
    np.testing.assert_array_equal(read_mask(path), expected)
    np.testing.assert_array_equal(read_image(path), np.repeat(expected[..., None], 3, axis=2))
    assert expected.ravel()[:12].tolist() == [0, 0, 0, 1, 1, 2, 127, 128, 254, 255, 255, 255]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_colour(tmp_path, suffix):
    """PIL keeps only the high byte of 16-bit colour: the reader must use all 16 bits."""
    rgb16 = RNG.integers(0, 65536, (HEIGHT, WIDTH, 3)).astype(np.uint16)
    path = tmp_path / f"rgb16{suffix}"
    assert cv2.imwrite(str(path), rgb16[..., ::-1])
    expected = round_div_257(rgb16)
    np.testing.assert_array_equal(read_image(path), expected)
    assert not np.array_equal(expected, rgb16 >> 8)  # the values exercise the difference
    luminance = rgb16.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_array_equal(read_mask(path), np.round(luminance / 257).astype(np.uint8))


def test_sixteen_bit_grayscale_tiff(tmp_path):
    values = RNG.integers(0, 65536, (HEIGHT, WIDTH)).astype(np.uint16)
    path = tmp_path / "gray16.tif"
    assert cv2.imwrite(str(path), values)
    np.testing.assert_array_equal(read_mask(path), round_div_257(values))


def test_float_tiff(tmp_path):
    levels = RNG.integers(0, 256, (HEIGHT, WIDTH))
    values = (levels / 255.0).astype(np.float32)
    path = tmp_path / "alpha.tif"
    Image.fromarray(values, mode="F").save(path)
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(read_mask(path), levels)
    np.testing.assert_array_equal(read_image(path)[..., 2], levels)


def test_float_colour_tiff(tmp_path):
    levels = RNG.integers(0, 256, (HEIGHT, WIDTH, 3))
    path = tmp_path / "rgb_float.tif"
    assert cv2.imwrite(str(path), (levels[..., ::-1] / 255.0).astype(np.float32))
    np.testing.assert_array_equal(read_image(path), levels)


def test_float_tiff_out_of_range_is_refused(tmp_path):
    path = tmp_path / "float255.tif"
    Image.fromarray(np.full((HEIGHT, WIDTH), 200.0, np.float32), mode="F").save(path)
    with pytest.raises(ImageReadError, match=r"float255\.tif.*outside \[0, 1\]"):
        read_mask(path)


# --------------------------------------------------------------------------------------------------- orientation


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_jpeg_exif_orientation_6_rotates(tmp_path):
    rgb = random_u8(20, 30, 3)
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rgb).save(path, exif=exif_with_orientation(6), quality=95)
    image = read_image(path)
    assert image.shape == (30, 20, 3)
    np.testing.assert_array_equal(image, np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB")))
    np.testing.assert_array_equal(read_mask(path), cv2_gray(path))  # OpenCV applies the orientation too


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_as_pil(tmp_path, orientation):
    rgb = random_u8(5, 8, 3)
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(rgb).save(path, exif=exif_with_orientation(orientation))
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    np.testing.assert_array_equal(read_image(path), expected)
    assert read_mask(path).shape == expected.shape[:2]


# -------------------------------------------------------------------------------------------------------- errors


def truncated_copy(tmp_path, suffix: str):
    path = tmp_path / f"whole{suffix}"
    Image.fromarray(random_u8(40, 40, 3)).save(path)
    data = path.read_bytes()
    broken = tmp_path / f"broken{suffix}"
    broken.write_bytes(data[: len(data) // 2])
    return broken


def written(path, data: bytes):
    path.write_bytes(data)
    return path


def folder(path):
    path.mkdir()
    return path


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: tmp / "absent.png", "not found"),
        (lambda tmp: folder(tmp / "folder.png"), "directory"),
        (lambda tmp: written(tmp / "empty.png", b""), "empty"),
        (lambda tmp: written(tmp / "text.png", b"not an image"), "not an image"),
        (lambda tmp: truncated_copy(tmp, ".png"), "truncated"),
        (lambda tmp: truncated_copy(tmp, ".jpg"), "truncated"),
    ],
    ids=["missing", "directory", "empty", "not-an-image", "truncated-png", "truncated-jpeg"],
)
def test_bad_files_raise_image_read_error_naming_the_file(tmp_path, reader, make, problem):
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as caught:
        reader(path)
    assert path.name in str(caught.value) and problem in str(caught.value)
    assert isinstance(caught.value, ValueError) and caught.value.path == path


# --------------------------------------------------------------------------------------------- listing, writing


def test_list_images(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.tiff", "notes.txt", ".hidden.png", "sub/d.webp", "sub/.e.png", "f.jpeg"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()
    assert [path.name for path in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff", "f.jpeg"]
    assert [path.relative_to(tmp_path).as_posix() for path in list_images(tmp_path, recursive=True)] == [
        "a.jpg",
        "b.PNG",
        "c.tiff",
        "f.jpeg",
        "sub/d.webp",
    ]
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"} <= set(IMAGE_SUFFIXES)
    with pytest.raises(NotADirectoryError):
        list_images(tmp_path / "absent")


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (HEIGHT, WIDTH, 3)])
def test_write_png_round_trip_creates_folders(tmp_path, shape):
    array = random_u8(*shape)
    path = write_png(tmp_path / "deep" / "er" / "out.png", array)
    assert path.exists()
    read = read_mask(path) if len(shape) == 2 else read_image(path)
    np.testing.assert_array_equal(read, array)


def test_write_png_rejects_non_uint8(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        write_png(tmp_path / "f.png", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "f.png", np.zeros((4, 4, 2), np.uint8))
