"""DIM data (dim_prune.md §4): trimaps, composition, the per-sample pipeline, the fields, composition folders."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torchvision.transforms.functional as TF
from PIL import Image
from scipy import ndimage

from jaxmatte.data.composition import (
    CompositionFolders,
    background_offset,
    composite,
    composite_top_left,
    fit_background,
    write_synthetic_composition,
)
from jaxmatte.data.io import ImageReadError
from jaxmatte.data.pipeline import make_dataset
from jaxmatte.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Placement, ResizePolicy, normalize
from jaxmatte.models.dim import data as dim_data
from jaxmatte.models.dim.data import (
    DIMAugment,
    DIMFields,
    apply_color_jitter,
    crop_origin,
    gen_trimap,
    safe_crop,
    trimap_from_morphology,
)


def blob_alpha(height=64, width=80, seed=0) -> np.ndarray:
    """A disc with a soft (blurred) rim and a few isolated fractional pixels."""
    alpha = np.zeros((height, width), np.uint8)
    cv2.circle(alpha, (width // 2, height // 2), min(height, width) // 4, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (0, 0), 1.5)
    alpha[alpha < 8] = 0
    alpha[alpha > 247] = 255
    rng = np.random.default_rng(seed)
    alpha[rng.integers(0, height, 4), rng.integers(0, width, 4)] = 77
    return alpha


def draws(seed: int) -> tuple[int, int]:
    """The (kernel size, iteration count) that gen_trimap draws first from default_rng(seed)."""
    rng = np.random.default_rng(seed)
    return int(rng.choice((1, 2, 3, 4))), int(rng.integers(1, 20))


@pytest.fixture(scope="module")
def composition_root(tmp_path_factory):
    return write_synthetic_composition(tmp_path_factory.mktemp("dim") / "comp", num_fg=3, num_bg=5, size=(72, 110))


# ---------------------------------------------------------------------------------------------------------- trimaps


def test_faithful_trimap_is_one_iteration_and_fixed_applies_the_drawn_count():
    alpha = blob_alpha()
    fractional = (alpha > 0) & (alpha < 255)
    seen_k1 = seen_many = False
    for seed in range(40):
        k, iterations = draws(seed)
        faithful = gen_trimap(alpha, np.random.default_rng(seed), faithful=True)
        fixed = gen_trimap(alpha, np.random.default_rng(seed), faithful=False)
        assert set(np.unique(faithful)) <= {0, 128, 255} and set(np.unique(fixed)) <= {0, 128, 255}
        np.testing.assert_array_equal(faithful, trimap_from_morphology(alpha, k, 1))
        np.testing.assert_array_equal(fixed, trimap_from_morphology(alpha, k, iterations))
        # Fixed widens the band (never narrows it): every faithful unknown pixel stays unknown.
        assert np.all(fixed[faithful == 128] == 128)
        if k == 1:  # the identity element: unknown is exactly the fractional alpha
            seen_k1 = True
            np.testing.assert_array_equal(faithful == 128, fractional)
        if k >= 3 and iterations >= 3:
            seen_many = True
            assert (fixed == 128).sum() > (faithful == 128).sum() + 100
    assert seen_k1 and seen_many


def test_trimap_modes_draw_the_same_numbers():
    alpha = blob_alpha()
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    gen_trimap(alpha, a, faithful=True)
    gen_trimap(alpha, b, faithful=False)
    assert a.random() == b.random()


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_cross_element_band_is_the_taxicab_distance(iterations):
    # k = 3 is the cross: n iterations reach every pixel within L1 distance n (the array border never erodes).
    alpha = np.zeros((40, 50), np.uint8)
    alpha[10:30, 12:40] = 255
    alpha[5, 5] = 60  # an isolated fractional pixel
    trimap = trimap_from_morphology(alpha, 3, iterations)
    to_not_fg = ndimage.distance_transform_cdt(alpha == 255, metric="taxicab")
    to_not_bg = ndimage.distance_transform_cdt(alpha == 0, metric="taxicab")
    np.testing.assert_array_equal(trimap == 255, to_not_fg > iterations)
    np.testing.assert_array_equal(trimap == 0, to_not_bg > iterations)
    widths = [(trimap_from_morphology(alpha, 3, n) == 128).sum() for n in (1, 2, 3, 4)]
    assert widths == sorted(widths) and len(set(widths)) == 4


# -------------------------------------------------------------------------------------------------------- composite


def test_composite_blends_in_float32_and_truncates():
    fg = np.full((4, 6, 3), 100, np.uint8)
    bg = np.zeros((4, 6, 3), np.uint8)
    alpha = np.full((4, 6), 191, np.uint8)
    # 191 / 255 * 100 = 74.9: truncated to 74 (rounding would give 75).
    assert np.all(composite_top_left(fg, alpha, bg) == 74)
    rng = np.random.default_rng(0)
    fg = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    alpha[:5] = 0
    alpha[-5:] = 255
    out = composite_top_left(fg, alpha, bg)
    a = (alpha / 255.0).astype(np.float32)[..., None]
    np.testing.assert_array_equal(out, (a * fg.astype(np.float32) + (1 - a) * bg.astype(np.float32)).astype(np.uint8))
    np.testing.assert_array_equal(out[:5], bg[:5])
    np.testing.assert_array_equal(out[-5:], fg[-5:])


def test_small_backgrounds_are_upscaled_by_the_larger_ratio():
    bg = np.random.default_rng(1).integers(0, 256, (50, 40, 3), dtype=np.uint8)
    fitted = fit_background(bg, 60, 100)  # ratios 100 / 40 = 2.5 (width), 60 / 50 = 1.2
    assert fitted.shape == (125, 100, 3)
    np.testing.assert_array_equal(fitted, cv2.resize(bg, (100, 125), interpolation=cv2.INTER_CUBIC))
    fitted = fit_background(bg, 70, 30)  # only the height is short: 1.4, sizes rounded up
    assert fitted.shape == (math.ceil(50 * 1.4), math.ceil(40 * 1.4), 3)
    assert fit_background(bg, 50, 40) is bg and fit_background(bg, 20, 10) is bg


def test_background_window_offset_is_uniform_below_the_margin():
    xs, ys = set(), set()
    for seed in range(300):
        x, y = background_offset((20, 13), 20, 10, np.random.default_rng(seed))
        xs.add(x)
        ys.add(y)
    assert xs == {0, 1, 2} and ys == {0}  # [0, 13 - 10) and no room vertically
    assert background_offset((99, 99), 10, 10, None) == (0, 0)
    rng = np.random.default_rng(2)
    fg = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (31, 29, 3), dtype=np.uint8)
    alpha = np.zeros((10, 12), np.uint8)  # pure background: the composite is the window itself
    x, y = background_offset(bg.shape, 10, 12, np.random.default_rng(3))
    np.testing.assert_array_equal(composite(fg, alpha, bg, np.random.default_rng(3)), bg[y : y + 10, x : x + 12])
    np.testing.assert_array_equal(composite_top_left(fg, alpha, bg), bg[:10, :12])


# ------------------------------------------------------------------------------------------------------ cropping


def test_crop_origin_rule_and_zero_padding():
    trimap = np.zeros((100, 120), np.uint8)
    trimap[90, 100] = 128
    assert crop_origin(trimap, 64, np.random.default_rng(0)) == (100 - 32, 90 - 32)  # no upper clamp
    trimap[:] = 0
    trimap[10, 5] = 128
    assert crop_origin(trimap, 64, np.random.default_rng(0)) == (0, 0)  # clamped at 0
    trimap[:] = 255
    assert crop_origin(trimap, 64, np.random.default_rng(0)) == (0, 0)  # no unknown pixel
    # A uniformly chosen unknown pixel: every one of them is picked sometimes.
    trimap[:] = 0
    trimap[50, [60, 70, 80]] = 128
    origins = {crop_origin(trimap, 20, np.random.default_rng(s)) for s in range(60)}
    assert origins == {(50, 40), (60, 40), (70, 40)}

    image = np.random.default_rng(1).integers(1, 256, (100, 120, 3), dtype=np.uint8)
    crop = safe_crop(image, 68, 58, 64)
    assert crop.shape == (64, 64, 3)
    np.testing.assert_array_equal(crop[:42, :52], image[58:, 68:])
    assert not crop[42:].any() and not crop[:, 52:].any()


def test_larger_crops_are_resized_nearest():
    alpha = blob_alpha(200, 220)
    crop = safe_crop(alpha, 30, 20, 160, 64)
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    padded = safe_crop(alpha, 30, 20, 160)
    np.testing.assert_array_equal(crop, cv2.resize(padded, (64, 64), interpolation=cv2.INTER_NEAREST))
    assert set(np.unique(crop)) <= set(np.unique(alpha))  # nearest invents no values
    rgb = np.random.default_rng(0).integers(0, 256, (200, 220, 3), dtype=np.uint8)
    assert safe_crop(rgb, 0, 0, 96, 64).shape == (64, 64, 3)


# -------------------------------------------------------------------------------------------------- colour jitter


def test_colour_adjustments_match_torchvision_on_pil_exactly():
    rng = np.random.default_rng(0)
    adjust = {
        dim_data.adjust_brightness: TF.adjust_brightness,
        dim_data.adjust_contrast: TF.adjust_contrast,
        dim_data.adjust_saturation: TF.adjust_saturation,
    }
    for trial in range(20):
        image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
        if trial % 2:
            image = (image // 3 + 90).astype(np.uint8)  # mid tones: extrapolation stays unclipped
        factor = float(rng.uniform(0.875, 1.125))
        for ours, reference in adjust.items():
            np.testing.assert_array_equal(ours(image, factor), np.asarray(reference(Image.fromarray(image), factor)))
    # The three in a given order, as ColorJitter applies them.
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)
    expected = TF.adjust_brightness(TF.adjust_saturation(Image.fromarray(image), 1.1), 0.9)
    np.testing.assert_array_equal(apply_color_jitter(image, [2, 0], [0.9, 1.0, 1.1]), np.asarray(expected))


# --------------------------------------------------------------------------------------------------- augmentation


def replay(augment: DIMAugment, record: dict, seed: int) -> dict:
    """§4.3 steps 1-8 spelled out with the building blocks, drawing in DIMAugment's order."""
    rng = np.random.default_rng(seed)
    alpha = record["mask"]
    image = composite(record["fg"], alpha, record["bg"], rng) if "fg" in record else record["image"]
    crop = augment.crop_sizes[int(rng.integers(len(augment.crop_sizes)))]
    x, y = crop_origin(gen_trimap(alpha, rng, faithful=augment.faithful_trimap), crop, rng)
    image, alpha = safe_crop(image, x, y, crop, augment.out_size), safe_crop(alpha, x, y, crop, augment.out_size)
    trimap = gen_trimap(alpha, rng, faithful=augment.faithful_trimap)
    if rng.random() < augment.p_flip:
        image, alpha, trimap = image[:, ::-1], alpha[:, ::-1], trimap[:, ::-1]
    return {"image": image, "mask": alpha, "trimap": trimap, "crop": crop}


def test_augment_follows_the_pipeline(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=2)
    augment = DIMAugment(crop_sizes=(48, 64, 96), out_size=64, jitter=0.0)
    crops = set()
    for index in range(len(source)):
        record = source[index]
        out = augment.random_map(record, np.random.default_rng(index))
        expected = replay(augment, record, index)
        crops.add(expected["crop"])
        assert set(out) == {"image", "mask", "trimap", "name"} and out["name"] == record["name"]
        assert out["image"].shape == (64, 64, 3) and out["mask"].shape == out["trimap"].shape == (64, 64)
        assert out["image"].dtype == out["mask"].dtype == out["trimap"].dtype == np.uint8
        for key in ("image", "mask", "trimap"):
            np.testing.assert_array_equal(out[key], expected[key])
        assert set(np.unique(out["trimap"])) <= {0, 128, 255}
    assert len(crops) >= 2
    # Image / alpha folders: the record's image is used as it is.
    plain = {"image": composite_top_left(record["fg"], record["mask"], record["bg"]), "mask": record["mask"]}
    out = augment.random_map(plain, np.random.default_rng(7))
    np.testing.assert_array_equal(out["image"], replay(augment, plain, 7)["image"])


def test_flip_moves_image_alpha_and_trimap_together(composition_root):
    record = CompositionFolders(composition_root, backgrounds_per_fg=1)[1]
    for seed in range(3):
        kept = DIMAugment(crop_sizes=(64,), out_size=64, p_flip=0.0).random_map(record, np.random.default_rng(seed))
        flipped = DIMAugment(crop_sizes=(64,), out_size=64, p_flip=1.0).random_map(record, np.random.default_rng(seed))
        for key in ("image", "mask", "trimap"):  # jitter is per pixel (contrast uses the mean): it commutes with flips
            np.testing.assert_array_equal(flipped[key], kept[key][:, ::-1])


def test_colour_jitter_only_when_enabled(composition_root):
    record = CompositionFolders(composition_root, backgrounds_per_fg=1)[0]
    plain = DIMAugment(crop_sizes=(64,), out_size=64, jitter=0.0)
    jittered = DIMAugment(crop_sizes=(64,), out_size=64)
    changed = 0
    for seed in range(4):
        a = plain.random_map(record, np.random.default_rng(seed))
        b = jittered.random_map(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(a["image"], replay(plain, record, seed)["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        np.testing.assert_array_equal(a["trimap"], b["trimap"])
        changed += int(not np.array_equal(a["image"], b["image"]))
        assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() < 0.2 * 255
    assert changed == 4
    # The run config's section (lists from JSON / ml_collections) builds the same augmentation.
    configured = DIMAugment(**{"crop_sizes": [64], "out_size": 64, "faithful_trimap": False, "jitter": 0.125})
    assert configured == jittered and hash(configured) == hash(jittered)
    with pytest.raises(ValueError, match="jitter"):
        DIMAugment(jitter=1.5)


def test_faithful_augment_gives_narrower_bands(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=2)
    narrow = wide = 0
    for index in range(len(source)):
        record = source[index]
        for faithful in (True, False):
            out = DIMAugment(crop_sizes=(64,), out_size=64, faithful_trimap=faithful).random_map(
                record, np.random.default_rng(index)
            )
            if faithful:
                narrow += int((out["trimap"] == 128).sum())
            else:
                wide += int((out["trimap"] == 128).sum())
    assert wide > 1.2 * narrow > 0


# ---------------------------------------------------------------------------------------------------------- fields


def test_fields_for_training(composition_root):
    record = CompositionFolders(composition_root, backgrounds_per_fg=1)[2]
    out = DIMAugment(crop_sizes=(64,), out_size=64).random_map(record, np.random.default_rng(0))
    fields, _ = DIMFields(ResizePolicy("stretch", 64, mask_resample="linear"))(out, True)
    assert set(fields) == {"image", "trimap", "alpha", "unknown"}
    assert fields["image"].shape == (64, 64, 3)
    assert all(fields[k].shape == (64, 64, 1) for k in ("trimap", "alpha", "unknown"))
    assert all(v.dtype == np.float32 for v in fields.values())
    np.testing.assert_array_equal(fields["image"], normalize(out["image"]))
    np.testing.assert_array_equal(fields["trimap"][..., 0], out["trimap"].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(fields["alpha"][..., 0], out["mask"].astype(np.float32) / np.float32(255))
    np.testing.assert_array_equal(fields["unknown"][..., 0], (out["trimap"] == 128).astype(np.float32))
    assert fields["unknown"].any() and set(np.unique(fields["unknown"])) == {0.0, 1.0}


def test_fields_for_evaluation_pad_to_the_stride_and_restore():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (45, 70, 3), dtype=np.uint8)
    alpha = blob_alpha(45, 70)
    trimap = trimap_from_morphology(alpha, 3, 4)
    fields_of = DIMFields(ResizePolicy("letterbox", 320))
    fields, placement = fields_of({"image": image, "mask": alpha, "trimap": trimap, "name": "a"}, False)
    assert fields["image"].shape == (64, 96, 3) and fields["trimap"].shape == (64, 96, 1)
    assert fields["alpha"].shape == fields["unknown"].shape == (64, 96, 1)
    np.testing.assert_array_equal(placement.as_array(), [45, 70, 0, 0, 45, 70])
    np.testing.assert_array_equal(fields["image"][:45, :70], normalize(image))
    # Padding: black pixels before normalisation, background trimap, no alpha, nothing unknown.
    np.testing.assert_allclose(fields["image"][45:], np.broadcast_to(-IMAGENET_MEAN / IMAGENET_STD, (19, 96, 3)))
    for key in ("trimap", "alpha", "unknown"):
        assert not fields[key][45:].any() and not fields[key][:, 70:].any()
    np.testing.assert_array_equal(fields["trimap"][:45, :70, 0] * 255, trimap)
    prediction = rng.uniform(size=(64, 96, 1)).astype(np.float32)
    restored = fields_of.eval_policy.restore(prediction, Placement.from_array(placement.as_array()))
    np.testing.assert_array_equal(restored, prediction[:45, :70, 0])
    # A multiple of the stride is left alone; stride 1 is the native resolution itself.
    fields, _ = fields_of({"image": image[:32, :64], "mask": alpha[:32, :64], "trimap": trimap[:32, :64]}, False)
    assert fields["image"].shape == (32, 64, 3)
    fields, _ = DIMFields(ResizePolicy("letterbox", 320), stride=1)({"image": image, "mask": alpha}, False)
    assert fields["image"].shape == (45, 70, 3)


def test_fields_generate_a_reproducible_trimap_when_none_is_given(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=1, compose=True)
    fields_of = DIMFields(ResizePolicy("letterbox", 320))
    record = source[0]
    assert "trimap" not in record
    first, _ = fields_of(record, False)
    again, _ = fields_of(source[0], False)
    np.testing.assert_array_equal(first["trimap"], again["trimap"])
    values = set(np.unique(np.round(first["trimap"] * 255).astype(int)))
    assert values <= {0, 128, 255} and 128 in values
    # A composition record without "image" is composited top-left, as the compose=True source does.
    bare = {k: v for k, v in record.items() if k != "image"}
    np.testing.assert_array_equal(fields_of(bare, False)[0]["image"], first["image"])


def test_grain_pipeline_end_to_end(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=2)
    augment = DIMAugment(crop_sizes=(48, 64, 96), out_size=64)
    fields = DIMFields(ResizePolicy("native", 32))
    dataset = make_dataset(source, fields.policy, train=True, batch_size=2, seed=1, augment=augment, fields=fields)
    batch = dataset[0]
    assert batch["image"].shape == (2, 64, 64, 3) and batch["unknown"].shape == (2, 64, 64, 1)
    np.testing.assert_array_equal(dataset[0]["trimap"], batch["trimap"])  # reproducible per seed and index
    evaluation = CompositionFolders(composition_root, backgrounds_per_fg=1, compose=True)
    batch = make_dataset(evaluation, fields.policy, train=False, batch_size=1, fields=fields)[0]
    height, width = evaluation[0]["image"].shape[:2]
    assert batch["image"].shape == (1, -(-height // 32) * 32, -(-width // 32) * 32, 3)
    np.testing.assert_array_equal(batch["placement"][0], [height, width, 0, 0, height, width])


# ------------------------------------------------------------------------------------------------ composition folders


def test_composition_folders_pair_by_the_counter_rule(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=4)
    assert len(source) == 12 and source.num_foregrounds == 3 and source.num_backgrounds == 5 and not source.problems
    # i -> (i // 4, (f * 4 + i % 4) % 5)
    assert [source.pair(i) for i in range(12)] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (1, 0), (1, 1), (1, 2), (2, 3), (2, 4), (2, 0), (2, 1),
    ]  # fmt: skip
    record = source[5]
    assert set(record) == {"fg", "mask", "bg", "name"} and record["name"] == "fg_00001_bg_00000"
    assert record["fg"].shape[:2] == record["mask"].shape and record["fg"].dtype == np.uint8
    assert source.names[5] == record["name"]
    with pytest.raises(IndexError):
        source.pair(12)
    composed = CompositionFolders(composition_root, backgrounds_per_fg=4, compose=True)[5]
    np.testing.assert_array_equal(composed["image"], composite_top_left(record["fg"], record["mask"], record["bg"]))


def test_synthetic_composition_is_soft_thin_and_reused(composition_root):
    source = CompositionFolders(composition_root, backgrounds_per_fg=5)
    smaller = 0
    for index in range(source.num_foregrounds):
        record = source[index * 5]
        alpha = record["mask"]
        assert np.mean((alpha > 0) & (alpha < 255)) > 0.02 and (alpha == 0).any()
        core = cv2.erode((alpha > 0).astype(np.uint8), np.ones((3, 3), np.uint8))
        assert ((alpha > 0) & (core == 0)).sum() > 50  # one-pixel structures
        for slot in range(5):
            bg = source[index * 5 + slot]["bg"]
            smaller += int(bg.shape[0] < alpha.shape[0] or bg.shape[1] < alpha.shape[1])
    assert smaller > 0  # some backgrounds need upscaling
    stamp = os.path.getmtime(composition_root / "fg" / "fg_00000.png")
    write_synthetic_composition(composition_root, num_fg=3, num_bg=5, size=(72, 110))
    assert os.path.getmtime(composition_root / "fg" / "fg_00000.png") == stamp


def test_composition_folders_report_bad_files(tmp_path):
    root = write_synthetic_composition(tmp_path / "c", num_fg=3, num_bg=3, size=(40, 48), seed=2)
    (root / "alpha").rename(root / "mask")  # the original's name for the alpha folder
    (root / "fg" / "fg_00001.png").write_bytes(b"not an image")
    (root / "bg" / "bg_00002.jpg").write_bytes(b"")
    cv2.imwrite(str(root / "mask" / "fg_00002.png"), np.zeros((5, 5), np.uint8))
    cv2.imwrite(str(root / "mask" / "orphan.png"), np.zeros((5, 5), np.uint8))
    source = CompositionFolders(root, backgrounds_per_fg=2)
    assert source.num_foregrounds == 1 and source.num_backgrounds == 2
    reasons = {path.name: reason for path, reason in source.problems}
    assert "not a readable image" in reasons["fg_00001.png"]
    assert "empty file" in reasons["bg_00002.jpg"]
    assert "but its alpha fg_00002.png is 5x5" in reasons["fg_00002.png"]
    assert "without a foreground" in reasons["orphan.png"]
    # Without validation the broken foreground is listed, and reading it names the file.
    unchecked = CompositionFolders(root, backgrounds_per_fg=2, validate=False)
    with pytest.raises(ImageReadError, match="fg_00001.png"):
        unchecked[2]


def test_composition_folders_errors(tmp_path):
    root = write_synthetic_composition(tmp_path / "c", num_fg=1, num_bg=1, size=(40, 48), seed=3)
    with pytest.raises(ValueError, match="backgrounds_per_fg"):
        CompositionFolders(root, backgrounds_per_fg=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CompositionFolders(tmp_path / "nowhere")
    (root / "bg" / "bg_00000.jpg").write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ValueError, match=r"no usable backgrounds .*bg_00000.jpg"):
        CompositionFolders(root)
    (root / "bg" / "bg_00000.jpg").unlink()
    (root / "bg").rmdir()
    with pytest.raises(FileNotFoundError, match=r"bg: missing"):
        CompositionFolders(root)
    (tmp_path / "foreign" / "fg").mkdir(parents=True)
    (tmp_path / "foreign" / "fg" / "mine.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="not written by"):
        write_synthetic_composition(tmp_path / "foreign", num_fg=1, num_bg=1, size=(40, 48))
