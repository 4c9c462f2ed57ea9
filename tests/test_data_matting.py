"""Soft-alpha synthetic data and the matting folder layouts (rgb_images/alpha_maps, image/alpha, trimaps)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from jaxmatte.data import MattingFolders, open_folders
from jaxmatte.data.synthetic_matting import (
    EFFECTS,
    matting_sample,
    trimap_from_alpha,
    write_synthetic_matting,
)
from jaxmatte.data.transforms import Augment, ResizePolicy, shift_scale

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "alphamatting_training_lowres"


def test_samples_are_soft_composites_with_the_named_effects():
    seen: set[str] = set()
    for seed in range(12):
        sample = matting_sample(np.random.default_rng(seed), 160, 224)
        alpha = sample.alpha_u8
        assert alpha.shape == (160, 224) and sample.image_u8.shape == (160, 224, 3)
        assert np.mean((alpha > 0) & (alpha < 255)) > 0.03  # genuinely soft, not anti-aliased edges only
        assert np.mean(alpha == 0) > 0.05  # background visible
        a = sample.alpha[..., None]
        composite = a * sample.foreground + (1 - a) * sample.background
        np.testing.assert_allclose(sample.image, composite, atol=1e-3)
        seen.update(sample.effects)
        if "veil" in sample.effects:  # a semi-transparent region: many mid-alpha pixels
            assert np.mean((alpha > 40) & (alpha < 200)) > 0.02
    assert seen == set(EFFECTS)
    again = matting_sample(np.random.default_rng(3), 160, 224)
    np.testing.assert_array_equal(again.alpha_u8, matting_sample(np.random.default_rng(3), 160, 224).alpha_u8)


def test_hair_gives_thin_fractional_strands():
    for seed in range(40):
        sample = matting_sample(np.random.default_rng(seed), 192, 192)
        if "hair" in sample.effects and "motion_blur" not in sample.effects:
            break
    alpha = sample.alpha_u8
    thin = (alpha > 0) & (alpha < 255) & (cv2.erode((alpha > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) == 0)
    assert thin.sum() > 100  # one-pixel structures with partial coverage


def test_folder_written_once_and_read_by_the_loader(tmp_path):
    root = write_synthetic_matting(tmp_path / "m", splits={"train": 5, "val": 2}, size=(64, 96), seed=1)
    for split, count in (("train", 5), ("val", 2)):
        names = {d.name for d in (root / split).iterdir()}
        assert names == {"rgb_images", "alpha_maps", "trimaps"}
        source = open_folders(root / split)
        assert len(source) == count and not source.problems
        record = source[0]
        assert record["image"].shape[:2] == record["mask"].shape == record["trimap"].shape
        assert set(np.unique(record["trimap"])) <= {0, 128, 255}
    stamp = (root / "train" / "alpha_maps" / "train_00000.png").stat().st_mtime_ns
    write_synthetic_matting(tmp_path / "m", splits={"train": 5, "val": 2}, size=(64, 96), seed=1)
    assert (root / "train" / "alpha_maps" / "train_00000.png").stat().st_mtime_ns == stamp  # reused


def test_trimap_marks_every_soft_pixel_unknown():
    alpha = np.zeros((20, 20), np.uint8)
    alpha[5:15, 5:15] = 255
    alpha[5:15, 10] = 100
    trimap = trimap_from_alpha(alpha, dilation=1)
    assert np.all(trimap[alpha == 100] == 128) and trimap[0, 0] == 0 and trimap[7, 6] == 255
    assert trimap[7, 9] == 128 and trimap[7, 12] == 255  # dilated by one pixel only


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.mark.parametrize("layout", [("im", "gt"), ("rgb_images", "alpha_maps"), ("image", "alpha")])
def test_layouts_and_missing_partners(tmp_path, layout):
    image_dir, alpha_dir = (tmp_path / name for name in layout)
    rgb = np.full((12, 16, 3), 90, np.uint8)
    for stem in ("a", "b", "c"):
        _write(image_dir / f"{stem}.JPG" if stem == "a" else image_dir / f"{stem}.png", rgb)
    for stem in ("a", "b", "d"):
        _write(alpha_dir / f"{stem}.png", np.full((12, 16), 128, np.uint8))
    source = MattingFolders(tmp_path)
    assert source.names == ["a", "b"]
    reasons = {path.name: reason for path, reason in source.problems}
    assert "without ground truth" in reasons["c.png"] and "without an image" in reasons["d.png"]
    assert source[0]["mask"].dtype == np.uint8 and "trimap" not in source[0]


def test_trimap_folder_and_unknown_layout(tmp_path):
    _write(tmp_path / "s" / "image" / "x.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "s" / "image" / "y.png", np.zeros((8, 8, 3), np.uint8))
    for stem in ("x", "y"):
        _write(tmp_path / "s" / "alpha" / f"{stem}.png", np.zeros((8, 8), np.uint8))
    _write(tmp_path / "t" / "x.png", np.full((8, 8), 128, np.uint8))
    source = open_folders(tmp_path / "s", trimap_dir=tmp_path / "t")
    assert source.names == ["x"] and "without a trimap" in source.problems[0][1]
    assert source[0]["trimap"].max() == 128
    (tmp_path / "odd" / "pictures").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="rgb_images/ \\+ alpha_maps/"):
        open_folders(tmp_path / "odd")


@pytest.mark.skipif(not REALDATA.is_dir(), reason="the shared real-data folder is not present")
def test_real_alphamatting_folder():
    source = open_folders(REALDATA)
    assert len(source) == 27 and not source.problems
    with_trimaps = open_folders(REALDATA, trimap_dir=REALDATA / "trimap1")
    record = with_trimaps[0]
    assert record["trimap"].shape == record["mask"].shape and np.any(record["trimap"] == 128)
    assert np.mean((record["mask"] > 0) & (record["mask"] < 255)) > 0.01


def test_soft_alpha_survives_resize_and_augmentation():
    alpha = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))
    linear = ResizePolicy("letterbox", 32, mask_resample="linear").mask(alpha)
    nearest = ResizePolicy("letterbox", 32).mask(alpha)
    np.testing.assert_array_equal(linear[4:28], cv2.resize(alpha, (32, 24), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(nearest[4:28], cv2.resize(alpha, (32, 24), interpolation=cv2.INTER_NEAREST))
    image = np.zeros((48, 64, 3), np.uint8)
    _, moved = shift_scale(image, alpha, 1.3, 0.05, 0.0, mask_interpolation="linear")
    _, moved_nearest = shift_scale(image, alpha, 1.3, 0.05, 0.0)
    assert set(np.unique(moved_nearest)) <= set(np.unique(alpha))
    assert not set(np.unique(moved)) <= set(np.unique(alpha))  # interpolated values appear
    with pytest.raises(ValueError, match="mask_interpolation"):
        Augment(mask_interpolation="cubic")
