"""Data side: synthetic DIS writer, DIS folders, resize policies, augmentation, grain pipelines."""

import gc
import json
import pickle
from pathlib import Path

import cv2
import grain
import numpy as np
import pytest
from PIL import Image

from jaxmatte.data import DISFolders, ImageReadError, read_image, read_mask, write_png, write_synthetic_dis
from jaxmatte.data.pipeline import batches_per_epoch, ensure_absl_flags_parsed, make_dataset, make_iterator
from jaxmatte.data.synthetic import MANIFEST
from jaxmatte.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    Placement,
    ResizePolicy,
    denormalize,
    normalize,
    shift_scale,
    to_uint8,
)

RNG = np.random.default_rng(11)


def smooth_field(height: int, width: int, cells: int = 4, seed: int = 0) -> np.ndarray:
    """A smooth float32 map in [0, 1] (bicubic upsampling of a coarse random grid)."""
    coarse = np.random.default_rng(seed).random((cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC), 0.0, 1.0)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    channels = [smooth_field(height, width, seed=seed + c) for c in range(3)]
    return np.clip(np.stack(channels, axis=2) * 255.0 + 0.5, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    return write_synthetic_dis(root, splits={"train": 24, "val": 5}, size_range=((96, 160), (96, 160)), seed=3)


# --------------------------------------------------------------------------------------------------------- synthetic


def test_synthetic_layout_and_reuse(synthetic_root):
    for split, count in (("train", 24), ("val", 5)):
        images = sorted((synthetic_root / split / "im").iterdir())
        masks = sorted((synthetic_root / split / "gt").iterdir())
        assert len(images) == len(masks) == count
        assert {p.suffix for p in images} == {".jpg", ".png"} and {p.suffix for p in masks} == {".png"}
        assert [p.stem for p in images] == [p.stem for p in masks]
        shapes = [read_mask(p).shape for p in masks]
        assert all(96 <= h <= 160 and 96 <= w <= 160 and h != w for h, w in shapes)
        assert len(set(shapes)) > count // 2  # varied sizes
        for image_path, mask_path in zip(images, masks, strict=True):
            assert read_image(image_path).shape[:2] == read_mask(mask_path).shape
    manifest = json.loads((synthetic_root / MANIFEST).read_text())
    assert manifest["seed"] == 3 and manifest["splits"] == {"train": 24, "val": 5}

    stamp = {p: p.stat().st_mtime_ns for p in synthetic_root.rglob("*.png")}
    assert write_synthetic_dis(
        synthetic_root, splits={"train": 24, "val": 5}, size_range=((96, 160), (96, 160)), seed=3
    )
    assert {p: p.stat().st_mtime_ns for p in synthetic_root.rglob("*.png")} == stamp  # reused, not rewritten


def test_synthetic_parameters_change_regenerates_and_foreign_folders_are_kept(tmp_path):
    small = {"size_range": ((40, 56), (40, 56))}
    write_synthetic_dis(tmp_path / "a", splits={"train": 3, "extra": 2}, seed=1, **small)
    write_synthetic_dis(tmp_path / "a", splits={"train": 4}, seed=1, **small)
    assert len(list((tmp_path / "a" / "train" / "gt").iterdir())) == 4
    assert not (tmp_path / "a" / "extra").exists()

    (tmp_path / "b" / "train").mkdir(parents=True)
    (tmp_path / "b" / "train" / "mine.txt").write_text("not synthetic")
    with pytest.raises(FileExistsError, match="train"):
        write_synthetic_dis(tmp_path / "b", splits={"train": 2}, **small)
    assert (tmp_path / "b" / "train" / "mine.txt").read_text() == "not synthetic"


def test_synthetic_is_deterministic_by_seed(tmp_path):
    kwargs = {"splits": {"val": 4}, "size_range": ((64, 96), (64, 96))}
    first = write_synthetic_dis(tmp_path / "first", seed=5, **kwargs)
    again = write_synthetic_dis(tmp_path / "again", seed=5, **kwargs)
    other = write_synthetic_dis(tmp_path / "other", seed=6, **kwargs)
    for path in sorted((first / "val" / "im").iterdir()):
        twin = again / "val" / "im" / path.name
        assert path.read_bytes() == twin.read_bytes()
        gt = first / "val" / "gt" / f"{path.stem}.png"
        np.testing.assert_array_equal(read_mask(gt), read_mask(again / "val" / "gt" / gt.name))
        other_gt = read_mask(other / "val" / "gt" / gt.name)
        assert other_gt.shape != read_mask(gt).shape or not np.array_equal(other_gt, read_mask(gt))


def test_synthetic_content_has_thin_soft_holed_structures_and_distractors(synthetic_root):
    source = DISFolders([synthetic_root / "train"])
    thin, soft, holes, look_alike_background, sizes = [], [], [], [], set()
    for index in range(len(source)):
        record = source[index]
        mask, image = record["mask"], record["image"]
        sizes.add(mask.shape)
        foreground = mask >= 128
        opened = cv2.morphologyEx(foreground.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        thin.append((foreground & (opened == 0)).sum() / max(foreground.sum(), 1))  # structures under 5 px wide
        soft.append(((mask > 0) & (mask < 255)).sum() / max((mask > 0).sum(), 1))
        _, hierarchy = cv2.findContours(foreground.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        holes.append(0 if hierarchy is None else int((hierarchy[0][:, 3] >= 0).sum()))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        vivid = (hsv[..., 1] > 128) & (hsv[..., 2] > 140)
        look_alike_background.append((vivid & (mask == 0)).sum())
        assert 0.01 < foreground.mean() < 0.7
    thin, soft, holes = np.array(thin), np.array(soft), np.array(holes)
    assert (thin > 0.05).mean() > 0.6, thin
    assert (soft > 0.1).mean() > 0.9, soft  # anti-aliased edges and fading strands everywhere
    assert np.median(soft) > 0.25
    assert (holes > 0).mean() > 0.6, holes
    assert (np.array(look_alike_background) > 50).mean() > 0.5  # vivid colours in the background too
    assert len(sizes) > 15


# ----------------------------------------------------------------------------------------------------------- folders


def _save(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def test_folders_pairing_and_problems(tmp_path, caplog):
    root = tmp_path / "DIS-TR"
    image = {name: RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8) for name in "abcefg"}
    mask = {name: (RNG.random((20, 30)) > 0.5).astype(np.uint8) * 255 for name in "abdefg"}
    _save(root / "im" / "a.jpg", image["a"])
    _save(root / "im" / "b.png", image["b"])
    _save(root / "im" / "c.jpg", image["c"])  # no ground truth
    _save(root / "im" / "f.png", image["f"])
    _save(root / "im" / "g.png", image["g"])
    (root / "im" / "e.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)  # corrupt
    for name in "abde":
        _save(root / "gt" / f"{name}.png", mask[name])
    _save(root / "gt" / "f.jpg", np.zeros((20, 30), np.uint8))  # png preferred over jpg
    _save(root / "gt" / "f.png", mask["f"])
    _save(root / "gt" / "g.png", np.zeros((21, 30), np.uint8))  # size mismatch

    with caplog.at_level("WARNING", logger="jaxmatte.data.folders"):
        source = DISFolders([root])
    assert len(source) == 3 and source.names == ["a", "b", "f"]
    reasons = {path.name: reason for path, reason in source.problems}
    assert set(reasons) == {"c.jpg", "d.png", "e.png", "f.jpg", "g.png"}
    assert "without ground truth" in reasons["c.jpg"] and "without an image" in reasons["d.png"]
    assert "not a readable image" in reasons["e.png"] and "duplicate" in reasons["f.jpg"]
    assert "20" in reasons["g.png"] and "21" in reasons["g.png"]
    assert len([r for r in caplog.records if "left out" in r.getMessage()]) == 1  # reported once

    record = source[2]
    assert record["name"] == "f" and record["image"].dtype == np.uint8 and record["image"].shape == (20, 30, 3)
    np.testing.assert_array_equal(record["image"], image["f"])
    np.testing.assert_array_equal(record["mask"], mask["f"])
    np.testing.assert_array_equal(source[1]["mask"], mask["b"])
    assert source.paths(0) == (root / "im" / "a.jpg", root / "gt" / "a.png")

    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone[1]["image"], source[1]["image"])

    unchecked = DISFolders(root, validate=False)  # the corrupt file is kept and fails, naming itself, when read
    assert "e" in unchecked.names
    with pytest.raises(ImageReadError, match="e.png"):
        unchecked[unchecked.names.index("e")]


def test_folders_concatenate_roots_and_read_wide_and_alpha_masks(tmp_path):
    first, second = tmp_path / "DIS-TR", tmp_path / "HRS10K"
    for name in ("b", "a"):
        _save(first / "im" / f"{name}.jpg", RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8))
        write_png(first / "gt" / f"{name}.png", np.full((8, 12), 255, np.uint8))
    wide = RNG.integers(0, 65536, (8, 12), dtype=np.uint16)
    _save(second / "im" / "wide.png", RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    _save(second / "gt" / "wide.png", wide)  # 16-bit grayscale
    alpha = RNG.integers(0, 256, (8, 12), dtype=np.uint8)
    cutout = np.dstack([np.full((8, 12, 3), 200, np.uint8), alpha])
    _save(second / "im" / "cutout.jpg", RNG.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    write_png(second / "gt" / "cutout.png", cutout)  # RGBA layer: the alpha is the mask

    source = DISFolders([first, second])
    assert source.names == ["a", "b", "cutout", "wide"] and not source.problems
    np.testing.assert_array_equal(source[2]["mask"], alpha)
    np.testing.assert_array_equal(source[3]["mask"], ((2 * wide.astype(np.uint32) + 257) // 514).astype(np.uint8))


def test_folders_clear_errors_for_bad_roots(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DISFolders([tmp_path / "nowhere"])
    (tmp_path / "half" / "im").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"half[/\\]gt"):
        DISFolders([tmp_path / "half"])


# -------------------------------------------------------------------------------------------------------- transforms


def expected_letterbox(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(inner_h, inner_w, top, left) from the written formulas: Python round, floor of half the remainder."""
    scale = size / max(height, width)
    inner_h, inner_w = round(height * scale), round(width * scale)
    return inner_h, inner_w, (size - inner_h) // 2, (size - inner_w) // 2


@pytest.mark.parametrize(
    ("height", "width", "size"),
    [(700, 333, 64), (333, 700, 64), (257, 257, 64), (3, 5, 64), (31, 17, 64), (45, 30, 64), (5, 16, 8), (3, 16, 8)],
)
def test_letterbox_geometry_and_pixels(height, width, size):
    policy = ResizePolicy("letterbox", size)
    image = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    canvas, placement = policy.image(image)
    inner_h, inner_w, top, left = expected_letterbox(height, width, size)
    assert placement == Placement(height, width, top, left, inner_h, inner_w)
    assert canvas.shape == (size, size, 3) and canvas.dtype == np.uint8

    inner = np.zeros((size, size), bool)
    inner[top : top + inner_h, left : left + inner_w] = True
    assert not canvas[~inner].any()  # zero padding, remainder at the bottom / right
    assert size - inner_h - top >= top and size - inner_w - left >= left
    resized = cv2.resize(image, (inner_w, inner_h), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(canvas[top : top + inner_h, left : left + inner_w], resized)
    placed_mask = policy.mask(mask)
    assert not placed_mask[~inner].any()
    nearest = cv2.resize(mask, (inner_w, inner_h), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(placed_mask[top : top + inner_h, left : left + inner_w], nearest)


def test_letterbox_rounds_half_to_even():
    # 5 * 8 / 16 = 2.5 -> 2 and 3 * 8 / 16 = 1.5 -> 2 (not 3 and 2 as floor(x + 0.5) would give for 2.5);
    # 90 * 64 / 256 = 22.5 -> 22 with the remainder 42 split 21 / 21; 46 * 64 / 128 = 23 (odd), split 20 / 21.
    assert ResizePolicy("letterbox", 8).placement(5, 16) == Placement(5, 16, 3, 0, 2, 8)
    assert ResizePolicy("letterbox", 8).placement(16, 3) == Placement(16, 3, 0, 3, 8, 2)
    assert ResizePolicy("letterbox", 64).placement(256, 90) == Placement(256, 90, 0, 21, 64, 22)
    assert ResizePolicy("letterbox", 64).placement(46, 128) == Placement(46, 128, 20, 0, 23, 64)
    assert ResizePolicy("letterbox", 1024).placement(1, 5000).inner_height == 1  # never empty


@pytest.mark.parametrize(("height", "width", "size"), [(90, 150, 64), (40, 70, 128), (77, 77, 96)])
def test_letterbox_restore_round_trip(height, width, size):
    policy = ResizePolicy("letterbox", size)
    field = smooth_field(height, width, seed=height)
    canvas, placement = policy.image(field)
    restored = policy.restore(canvas, placement)
    assert restored.shape == (height, width) and restored.dtype == np.float32
    assert np.abs(restored - field).max() < 0.02
    np.testing.assert_array_equal(policy.restore(canvas[..., None], placement.as_array()), restored)


def test_stretch_geometry_and_restore():
    policy = ResizePolicy("stretch", 64)
    image = smooth_image(50, 90)
    canvas, placement = policy.image(image)
    assert placement == Placement(50, 90, 0, 0, 64, 64)
    np.testing.assert_array_equal(canvas, cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR))
    prediction = RNG.random((64, 64)).astype(np.float32)
    expected = cv2.resize(prediction, (90, 50), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(policy.restore(prediction, placement), expected)
    field = smooth_field(50, 90)
    assert np.abs(policy.restore(policy.image(field)[0], placement) - field).max() < 0.02
    with pytest.raises(ValueError, match="64x64"):
        policy.restore(np.zeros((32, 32), np.float32), placement)
    with pytest.raises(ValueError, match="letterbox"):
        ResizePolicy("crop", 64)


@pytest.mark.parametrize("kind", ["letterbox", "stretch"])
def test_masks_resize_nearest_and_keep_their_values(kind):
    policy = ResizePolicy(kind, 48)
    binary = (smooth_field(37, 61, seed=2) > 0.5).astype(np.uint8) * 255
    assert set(np.unique(policy.mask(binary))) <= {0, 255}
    soft = RNG.choice(np.array([0, 17, 128, 255], np.uint8), (61, 37))
    assert set(np.unique(policy.mask(soft))) <= {0, 17, 128, 255}


def test_normalize_and_quantisation():
    black = normalize(np.zeros((2, 2, 3), np.uint8))
    np.testing.assert_allclose(black[0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(normalize(np.full((1, 1, 3), 255, np.uint8))[0, 0], (1 - IMAGENET_MEAN) / IMAGENET_STD)
    assert black.dtype == np.float32
    image = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(denormalize(normalize(image)), image)
    # letterbox padding is black before normalisation
    canvas, _ = ResizePolicy("letterbox", 16).image(np.full((4, 16, 3), 255, np.uint8))
    np.testing.assert_allclose(normalize(canvas)[0, 0], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)

    probability = np.array([0.0, 0.5 / 255, 0.499 / 255, 0.9999, 1.0, 1.5, -0.2, np.nan])
    np.testing.assert_array_equal(to_uint8(probability, "round"), [0, 1, 0, 255, 255, 255, 0, 0])
    np.testing.assert_array_equal(to_uint8(probability, "truncate"), [0, 0, 0, 254, 255, 255, 0, 0])
    with pytest.raises(ValueError, match="round"):
        to_uint8(probability, "floor")


# ------------------------------------------------------------------------------------------------------ augmentation


def test_shift_scale_matrix_convention():
    image = smooth_image(20, 30)
    mask = (image[..., 0] > 128).astype(np.uint8) * 255
    moved_image, moved_mask = shift_scale(image, mask, 1.0, 3 / 30, -2 / 20)  # 3 px right, 2 px up
    np.testing.assert_array_equal(moved_image[:-2, 3:], image[2:, :-3])
    np.testing.assert_array_equal(moved_mask[:-2, 3:], mask[2:, :-3])
    assert not moved_image[:, :3].any() and not moved_image[-2:].any() and not moved_mask[:, :3].any()
    zoomed, _ = shift_scale(image, mask, 2.0, 0.0, 0.0)  # doubling about the centre (14.5, 9.5)
    assert zoomed.shape == image.shape
    np.testing.assert_array_equal(zoomed[9:11, 14:16], cv2.resize(image, (60, 40))[19:21, 29:31])


def augmented(augment, element, *, seed, count):
    dataset = grain.MapDataset.source([element] * count).seed(seed).random_map(augment)
    return [dataset[i] for i in range(count)]


def test_augment_is_deterministic_per_record_and_seed():
    image = smooth_image(40, 56)
    element = {"image": image, "mask": (image[..., 1] > 100).astype(np.uint8) * 255, "name": "x"}
    always = Augment(p_shift_scale=1.0, p_flip=0.5, p_brightness_contrast=1.0)
    first = augmented(always, element, seed=4, count=6)
    again = augmented(always, element, seed=4, count=6)
    other_seed = augmented(always, element, seed=5, count=6)
    for a, b, c in zip(first, again, other_seed, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["mask"], b["mask"])
        assert not np.array_equal(a["image"], c["image"])
        assert a["name"] == "x" and a["image"].dtype == np.uint8 and a["mask"].shape == (40, 56)
    for i in range(len(first)):
        for j in range(i):
            assert not np.array_equal(first[i]["image"], first[j]["image"])
    default = augmented(Augment(), element, seed=4, count=24)  # the default probabilities: some records untouched
    untouched = [np.array_equal(d["image"], image) for d in default]
    assert 0 < sum(untouched) < len(default)
    assert np.array_equal(element["image"], image)  # the input is not modified in place


def test_augment_moves_image_and_mask_together():
    image = smooth_image(48, 64, seed=9)
    element = {"image": image, "mask": image[..., 0].copy()}
    flips = augmented(Augment(p_shift_scale=0.0, p_flip=1.0, p_brightness_contrast=0.0), element, seed=0, count=2)
    for result in flips:
        np.testing.assert_array_equal(result["mask"], result["image"][..., 0])
        np.testing.assert_array_equal(result["mask"], image[:, ::-1, 0])
    moved = augmented(Augment(p_shift_scale=1.0, p_flip=0.5, p_brightness_contrast=0.0), element, seed=0, count=8)
    for result in moved:
        aligned = np.abs(result["mask"].astype(int) - result["image"][..., 0].astype(int)).mean()
        unmoved = np.abs(result["mask"].astype(int) - image[..., 0].astype(int)).mean()
        assert aligned < 3.0 and aligned < unmoved / 3, (aligned, unmoved)  # nearest vs bilinear of one channel
    brightened = augmented(Augment(p_shift_scale=0.0, p_flip=0.0, p_brightness_contrast=1.0), element, seed=0, count=3)
    for result in brightened:  # photometric changes touch the image only
        np.testing.assert_array_equal(result["mask"], image[..., 0])


# ---------------------------------------------------------------------------------------------------------- pipeline


def test_train_pipeline_batches(synthetic_root):
    source = DISFolders([synthetic_root / "train"])
    policy = ResizePolicy("letterbox", 64)
    dataset = make_dataset(source, policy, train=True, batch_size=5, seed=0, augment=Augment())
    per_epoch = batches_per_epoch(len(source), 5, train=True)
    assert per_epoch == 4
    batch = dataset[0]
    assert set(batch) == {"image", "mask"}
    assert batch["image"].shape == (5, 64, 64, 3) and batch["image"].dtype == np.float32
    assert batch["mask"].shape == (5, 64, 64, 1) and batch["mask"].dtype == np.float32
    assert batch["mask"].min() >= 0.0 and batch["mask"].max() <= 1.0 and 0.0 < batch["mask"].mean() < 1.0
    low, high = -IMAGENET_MEAN / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert (batch["image"] >= low - 1e-5).all() and (batch["image"] <= high + 1e-5).all()

    plain = make_dataset(source, policy, train=True, batch_size=5, seed=0, augment=None)
    first_epoch = np.concatenate([plain[i]["mask"] for i in range(per_epoch)])
    expected = {policy.mask(source[i]["mask"]).tobytes() for i in range(len(source))}
    seen = [(m[..., 0] * 255).round().astype(np.uint8).tobytes() for m in first_epoch]
    assert len(set(seen)) == len(seen) == 20 and set(seen) <= expected  # 20 distinct records, 4 dropped
    assert not np.array_equal(plain[0]["mask"], plain[per_epoch]["mask"])  # reshuffled next epoch
    reseeded = make_dataset(source, policy, train=True, batch_size=5, seed=1, augment=None)
    assert not np.array_equal(plain[0]["mask"], reseeded[0]["mask"])
    with pytest.raises(ValueError, match="no full batch"):
        make_dataset(source, policy, train=True, batch_size=25, seed=0, augment=None)


def test_eval_pipeline_pads_and_restores(synthetic_root):
    source = DISFolders([synthetic_root / "val"])
    policy = ResizePolicy("letterbox", 160)
    dataset = make_dataset(source, policy, train=False, batch_size=2)
    assert len(dataset) == batches_per_epoch(5, 2, train=False) == 3
    batches = list(make_iterator(dataset, workers=0))
    assert len(batches) == 3
    assert all(b["image"].shape == (2, 160, 160, 3) and b["mask"].shape == (2, 160, 160, 1) for b in batches)
    valid = np.concatenate([b["valid"] for b in batches])
    indices = np.concatenate([b["index"] for b in batches])
    names = np.concatenate([b["name"] for b in batches])
    assert valid.tolist() == [True] * 5 + [False] and indices.tolist() == [0, 1, 2, 3, 4, 4]
    assert names[:5].tolist() == source.names
    for batch in batches:
        for mask, placement, index in zip(batch["mask"], batch["placement"], batch["index"], strict=True):
            original = source[int(index)]["mask"]
            restored = policy.restore(mask[..., 0], placement)
            direct = policy.restore(policy.mask(original).astype(np.float32) / 255, policy.placement(*original.shape))
            np.testing.assert_array_equal(restored, direct)
            assert np.abs(restored - original / 255).mean() < 0.05  # thin 1 px structures move a little


def take(iterator, count):
    return [next(iterator) for _ in range(count)]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def test_iterator_resumes_at_the_exact_next_batch(synthetic_root):
    source = DISFolders([synthetic_root / "train"])
    dataset = make_dataset(source, ResizePolicy("letterbox", 48), train=True, batch_size=4, seed=2, augment=Augment())
    iterator = make_iterator(dataset, workers=0)
    take(iterator, 5)  # past the first epoch boundary (6 batches per epoch)
    state = iterator.get_state()
    expected = take(iterator, 3)
    resumed = make_iterator(dataset, workers=0)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 3), expected)
    iterator.set_state(state)  # rewinding the same iterator
    assert_same_batches(take(iterator, 1), expected[:1])
    iterator.close()
    resumed.close()


def test_worker_processes_give_the_single_process_batches_and_resume(synthetic_root):
    source = DISFolders([synthetic_root / "train"])
    dataset = make_dataset(source, ResizePolicy("letterbox", 48), train=True, batch_size=4, seed=7, augment=Augment())
    single = make_iterator(dataset, workers=0)
    reference = take(single, 9)
    single.close()

    ensure_absl_flags_parsed()  # idempotent
    workers = make_iterator(dataset, workers=2)
    try:
        got = take(workers, 6)
        state = workers.get_state()
        got += take(workers, 1)
        assert_same_batches(got, reference[:7])
    finally:
        workers.close()
    resumed = make_iterator(dataset, workers=2)  # fresh worker processes, as after a restart
    try:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 3), reference[6:9])
    finally:
        resumed.close()
        del workers, resumed, got
        gc.collect()
