"""High-resolution inference (`jaxmatte.highres`): the coarse stage on the canvas, TSR's refiner at full resolution in
overlapping tiles; `Predictor(high_res=True, tile=...)` and `predict.py --high-res`.

Tiny models with seeded random weights (`test_predict.tiny_tsr_model`: one refiner block, halo 7 px) and small
images with small tiles, so every run crosses many tile borders.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from scripts import load_script
from test_predict import CONVERTED_INFO, MEAN, SIZE, STD, tiny_tsr_model

from jaxmatte import highres, pretrained
from jaxmatte.data.io import read_image, read_mask
from jaxmatte.data.synthetic import write_synthetic_dis
from jaxmatte.models.tsr import modeling
from jaxmatte.predict import Predictor, quantize

REPO = Path(__file__).resolve().parents[1]
TILE = 48
PHOTO = (150, 170)  # larger than a tile both ways, not a multiple of the tile's stride


def _smooth_photo(shape: tuple[int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (shape[0] // 10, shape[1] // 10, 3), dtype=np.uint8)
    big = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(big.astype(int) + rng.integers(-30, 31, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The tiny TSR (converted-release layout: stretch to 64, truncation) and a tiny TwinSwin (no refiner)."""
    root = tmp_path_factory.mktemp("highres")
    config, model = tiny_tsr_model()
    tsr = pretrained.save_pretrained(model, config, root / "tsr", info=CONVERTED_INFO)
    twin_config = modeling.TwinSwinConfig(
        backbone=config.backbone, safe_size=224, img_size=SIZE, decoder_channels=(32, 16, 8), head_channels=(8, 8)
    )
    twin = modeling.TwinSwinMatte(twin_config, rngs=nnx.Rngs(0))
    twinswin = pretrained.save_pretrained(twin, twin_config, root / "twinswin", info=CONVERTED_INFO)
    return {"tsr": tsr, "twinswin": twinswin}


@pytest.fixture(scope="module")
def tiled(checkpoints):
    return Predictor(checkpoints["tsr"], high_res=True, tile=TILE)


@pytest.mark.parametrize("num_blocks, fusion_depth", [(1, 2), (2, 2), (2, 1)])
def test_halo_is_the_refiners_receptive_field(num_blocks, fusion_depth):
    """Changing one input pixel changes exactly the refined pixels within `receptive_radius` (Chebyshev distance)."""
    config = modeling.RefinerConfig(mid_channels=8, num_blocks=num_blocks, fusion_depth=fusion_depth)
    refiner = modeling.Refiner(config, rngs=nnx.Rngs(3))
    refiner.eval()
    side, centre = 41, 20
    rng = np.random.default_rng(0)
    image = rng.standard_normal((1, side, side, 3)).astype(np.float32)
    coarse = rng.uniform(0, 1, (1, side, side, 1)).astype(np.float32)
    changed = image.copy()
    changed[0, centre, centre] += 5.0
    difference = np.abs(np.asarray(refiner(jnp.asarray(changed), coarse) - refiner(jnp.asarray(image), coarse)))[
        0, ..., 0
    ]
    rows, cols = np.nonzero(difference > 0)
    reach = max(np.abs(rows - centre).max(), np.abs(cols - centre).max())
    assert reach == config.receptive_radius
    assert config.receptive_radius < centre  # the reach is not cut by the image border


@pytest.mark.parametrize("length", [1, 30, 48, 49, 70, 150, 1000])
def test_windows_cover_every_pixel_with_positive_weight(length):
    halo, feather = 7, 8
    overlap = 2 * halo + feather
    size = min(TILE, length)
    starts = highres.tile_starts(length, size, overlap)
    assert starts[0] == 0 and starts[-1] + size == length
    assert all(0 < b - a <= size - overlap for a, b in zip(starts, starts[1:], strict=False))
    total = np.zeros(length, np.float32)
    for start in starts:
        total[start : start + size] += highres.feather_weights(start, size, length, halo, feather)
    assert total.min() > 0
    regular = [start for start in starts[:-1] if start + 2 * (size - overlap) <= starts[-1]]
    for start in regular:  # between windows at the regular stride the ramps add up to one
        np.testing.assert_allclose(total[start + size - overlap : start + size], 1.0, atol=1e-6)


def test_constant_photo_gives_constant_alpha_across_tile_borders(tiled):
    """A uniform photo with uniform coarse guidance: the alpha is one value everywhere the image border's zero
    padding does not reach, across 5 x 6 tile borders. Without the halo margin (halo 0) the same run shows seams."""
    height, width = PHOTO
    photo = np.full((height, width, 3), (120, 60, 200), np.uint8)
    placement = highres.hold_image(tiled.policy.placement(height, width), photo)
    guidance = np.full((SIZE, SIZE, 1), 0.3, np.float32)
    refiner = tiled.high_res
    assert (
        len({w[0] for w in refiner.windows(height, width)}) > 2
        and len({w[1] for w in refiner.windows(height, width)}) > 2
    )
    inner = (slice(refiner.halo, -refiner.halo), slice(refiner.halo, -refiner.halo))
    alpha = refiner.refine(guidance, placement)
    assert np.ptp(alpha[inner]) < 1e-5
    assert 0.01 < alpha[inner].mean() < 0.99

    careless = highres.TiledRefiner(tiled.model, tiled.policy, MEAN, STD, tile=TILE, halo=0)
    seams = careless.refine(guidance, placement)
    assert np.ptp(seams[inner]) > 1e-3


def _untiled_alpha(model, photo: np.ndarray) -> np.ndarray:
    """The full-resolution refine in one piece, written out independently: stretch to 64 (cv2 linear), student
    logits, cv2 linear back to the photo's size, refiner on the whole normalised photo."""
    height, width = photo.shape[:2]
    canvas = cv2.resize(photo, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR)
    normalise = lambda image: ((image.astype(np.float32) / 255.0 - MEAN) / STD)[None]  # noqa: E731
    logits = np.asarray(model.student(jnp.asarray(normalise(canvas))).logits)[0, ..., 0]
    full = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)[None, ..., None]
    refined = model.refiner(jnp.asarray(normalise(photo)), jax.nn.sigmoid(jnp.asarray(full)))
    return np.asarray(jax.nn.sigmoid(refined))[0, ..., 0]


def test_tiled_equals_untiled_full_resolution_refine(checkpoints, tiled):
    photo = _smooth_photo(PHOTO, 1)
    reference = _untiled_alpha(tiled.model, photo)
    whole = Predictor(checkpoints["tsr"], high_res=True, tile=1024)  # one window covers the photo
    assert whole.high_res.windows(*PHOTO) == [(0, 0, *PHOTO)]
    assert len(tiled.high_res.windows(*PHOTO)) == 30
    for predictor in (whole, tiled):
        floats = predictor.predict_arrays([photo], floats=True)[0]
        assert floats.shape == PHOTO
        np.testing.assert_allclose(floats, reference, atol=1e-5)
        alpha = predictor.predict_arrays([photo])[0]
        assert np.abs(alpha.astype(int) - quantize(reference, "truncate").astype(int)).max() <= 1
    assert np.ptp(reference) > 0.05  # the photo gives a non-trivial matte


def test_canvas_sized_photo_matches_plain_prediction(checkpoints, tiled):
    """At the canvas size (no resizing either way) coarse + tiled refine is the model's own forward pass."""
    photo = _smooth_photo((SIZE, SIZE), 2)
    plain = Predictor(checkpoints["tsr"]).predict_arrays([photo], floats=True)[0]
    np.testing.assert_allclose(tiled.predict_arrays([photo], floats=True)[0], plain, atol=1e-5)


def test_tile_smaller_than_the_overlap_is_refused(checkpoints):
    with pytest.raises(ValueError, match="tile 20 is too small"):
        Predictor(checkpoints["tsr"], high_res=True, tile=20)
    with pytest.raises(ValueError, match="high-resolution mode only"):
        Predictor(checkpoints["tsr"], tile=64)


@pytest.fixture(scope="module")
def predict_cli():
    return load_script("predict")


def test_cli_high_res_writes_every_format(checkpoints, tiled, predict_cli, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    shapes = {"wide": PHOTO, "tall": (130, 61)}
    for index, (name, shape) in enumerate(shapes.items()):
        Image.fromarray(_smooth_photo(shape, 10 + index)).save(photos / f"{name}.png")
    out = tmp_path / "out"
    argv = [str(photos), "--checkpoint", str(checkpoints["tsr"]), "--output", str(out), "--high-res"]
    status = predict_cli.main([*argv, "--tile", str(TILE), "--format", "alpha,rgba,composite"])
    assert status == 0, capsys.readouterr().err
    assert f"full-resolution refiner in {TILE} px tiles" in capsys.readouterr().out
    for name, shape in shapes.items():
        photo = read_image(photos / f"{name}.png")
        alpha = read_mask(out / f"{name}.png")
        np.testing.assert_array_equal(alpha, tiled.predict_arrays([photo])[0])
        rgba = np.asarray(Image.open(out / f"{name}_rgba.png"))
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        assert np.asarray(Image.open(out / f"{name}_composite.png")).shape == (*shape, 3)


def test_cli_refuses_high_res_without_a_refine_stage(checkpoints, predict_cli, tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray(_smooth_photo((40, 50), 3)).save(photo)
    out = tmp_path / "out"
    argv = [str(photo), "--checkpoint", str(checkpoints["twinswin"]), "--output", str(out)]
    assert predict_cli.main([*argv, "--high-res"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "twinswin has no high-resolution mode" in err[0]
    assert not any(out.glob("*.png"))
    assert predict_cli.main([*argv, "--tile", "64"]) == 2
    assert capsys.readouterr().err.strip() == "error: --tile needs --high-res"


def test_evaluate_high_res_scores_the_tiled_predictions(checkpoints, tiled, tmp_path, capsys):
    evaluate_cli = load_script("evaluate")
    root = write_synthetic_dis(tmp_path / "DIS5K", splits={"DIS-TE1": 2}, size_range=((100, 130), (110, 150)))
    results, preds = tmp_path / "results.json", tmp_path / "preds"
    argv = ["--checkpoint", str(checkpoints["tsr"]), "--data", str(root / "DIS-TE1"), "--json", str(results)]
    argv += ["--save-preds", str(preds), "--worst", "0"]
    assert evaluate_cli.main([*argv, "--high-res", "--tile", str(TILE)]) == 0, capsys.readouterr().err
    report = json.loads(results.read_text())["DIS-TE1"]
    assert report["images"] == 2 and report["prediction"]["high_res"]["tile"] == TILE
    for image in sorted((root / "DIS-TE1" / "im").iterdir()):
        expected = tiled.predict_arrays([read_image(image)])[0]
        np.testing.assert_array_equal(read_mask(preds / "DIS-TE1" / f"{image.stem}.png"), expected)
    assert evaluate_cli.main([*argv, "--tile", "64"]) == 2
    assert capsys.readouterr().err.strip().endswith("--tile needs --high-res")


def test_predictor_refuses_high_res_for_families_without_the_hook(checkpoints):
    with pytest.raises(ValueError, match="twinswin has no high-resolution mode"):
        Predictor(checkpoints["twinswin"], high_res=True)
