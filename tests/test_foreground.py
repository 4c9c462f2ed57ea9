"""Foreground colour estimation (`jaxmatte.foreground`) and its use by predict.py's rgba / composite outputs.

Scenes come from the built-in soft-alpha generator (`matting_sample`: hair, fur, veils, motion blur over a textured
background), whose true foreground is known.
"""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scripts import load_script
from test_predict import TRAINED_INFO, tiny_tsr_model

from jaxmatte import foreground as fg
from jaxmatte import pretrained
from jaxmatte.data.io import read_image, read_mask
from jaxmatte.data.synthetic_matting import matting_sample
from jaxmatte.predict import Predictor

SEEDS = (0, 1, 2)


def scene(seed: int, height: int = 96, width: int = 128):
    """(uint8 image, float alpha, true foreground in [0, 1]) of one synthetic composite."""
    sample = matting_sample(np.random.default_rng(seed), height, width)
    return sample.image_u8, sample.alpha, sample.foreground / np.float32(255.0)


def test_estimate_beats_the_naive_cutout_in_the_transparent_region():
    for seed in SEEDS:
        image, alpha, truth = scene(seed)
        region = (alpha > 0.05) & (alpha < 0.95)
        assert region.sum() > 500
        estimate = fg.foreground_uint8(image, alpha, backend="numpy").astype(np.float32) / 255.0
        naive = image.astype(np.float32) / 255.0  # the cut-out keeps the blended colours
        estimate_error = np.abs(estimate - truth)[region].mean()
        naive_error = np.abs(naive - truth)[region].mean()
        print(f"seed {seed}, mean |F - F_true| at 0.05 < a < 0.95: {estimate_error:.4f} (naive {naive_error:.4f})")
        assert estimate_error < 0.4 * naive_error


def test_known_regions_range_and_shapes():
    image, alpha, _ = scene(3, 41, 67)  # odd sides: the pyramid repeats edges
    alpha = alpha.copy()
    alpha[:8] = 1.0
    alpha[-8:] = 0.0
    foreground, background = fg.estimate_foreground_numpy(image, alpha)
    values = image.astype(np.float32) / 255.0
    assert foreground.shape == background.shape == image.shape and foreground.dtype == np.float32
    assert np.isfinite(foreground).all() and np.isfinite(background).all()
    assert foreground.min() >= 0.0 and foreground.max() <= 1.0 and background.min() >= 0.0 and background.max() <= 1.0
    np.testing.assert_array_equal(foreground[alpha == 1.0], values[alpha == 1.0])
    np.testing.assert_array_equal(background[alpha == 0.0], values[alpha == 0.0])
    # the model of the image holds where the data pins it: a F + (1 - a) B reproduces the image in the soft region
    soft = (alpha > 0.05) & (alpha < 0.95)
    blended = alpha[..., None] * foreground + (1 - alpha[..., None]) * background
    assert np.abs(blended - values)[soft].mean() < 0.02

    # uint8 colours: the image wherever the uint8 alpha is 255 (floats just below 1 included), uint8 alphas accepted
    near = np.where(alpha > 0.999, 0.9995, alpha).astype(np.float32)
    colours = fg.foreground_uint8(image, near, backend="numpy")
    assert colours.dtype == np.uint8 and colours.shape == image.shape
    np.testing.assert_array_equal(colours[near >= 0.999], image[near >= 0.999])
    from_uint8 = fg.foreground_uint8(image, np.round(alpha * 255).astype(np.uint8), backend="numpy")
    assert np.abs(from_uint8.astype(int) - colours.astype(int)).max() <= 3

    with pytest.raises(ValueError, match="alpha"):
        fg.estimate_foreground_numpy(image, alpha[:-1])


def test_jax_and_numpy_paths_agree_batched():
    pairs = [scene(seed, 37, 53)[:2] for seed in (4, 5)]
    images, alphas = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    numpy_f, numpy_b = fg.estimate_foreground_numpy(images, alphas)
    jax_f, jax_b = fg.estimate_foreground(images, alphas, backend="jax")
    assert jax_f.shape == numpy_f.shape == images.shape
    np.testing.assert_allclose(jax_f, numpy_f, atol=1e-4)
    np.testing.assert_allclose(jax_b, numpy_b, atol=1e-4)
    single, _ = fg.estimate_foreground_numpy(images[1], alphas[1])  # the batch is image by image
    np.testing.assert_array_equal(single, numpy_f[1])
    with pytest.raises(ValueError, match="backend"):
        fg.estimate_foreground(images, alphas, backend="torch")


def test_level_shapes_and_composite():
    assert fg.level_shapes(5, 8) == [(1, 1), (2, 2), (3, 4), (5, 8)]
    colours = np.array([[[200, 100, 0], [10, 20, 30]]], np.uint8)
    alpha = np.array([[255, 51]], np.uint8)
    out = fg.composite(colours, alpha, (0, 255, 0))
    np.testing.assert_array_equal(out, [[[200, 100, 0], [2, 208, 6]]])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A tiny TSR model (letterbox, rounding) and a few photo-like inputs with soft edges."""
    config, model = tiny_tsr_model()
    root = tmp_path_factory.mktemp("foreground")
    pretrained.save_pretrained(model, config, root / "model", info=TRAINED_INFO)
    for seed in (6, 7):
        Image.fromarray(scene(seed, 45, 58)[0]).save(root / f"scene{seed}.png")
    return root


def test_cli_estimates_foreground_by_default_and_none_turns_it_off(workdir, tmp_path):
    predict_cli = load_script("predict")
    inputs = [str(workdir / "scene6.png"), str(workdir / "scene7.png")]
    common = ["--checkpoint", str(workdir / "model"), "--format", "alpha,rgba,composite", "--background", "0,255,0"]
    assert predict_cli.main([*inputs, *common, "--output", str(tmp_path / "estimate")]) == 0
    assert predict_cli.main([*inputs, *common, "--output", str(tmp_path / "none"), "--foreground", "none"]) == 0

    predictor = Predictor(workdir / "model")
    for name in ("scene6", "scene7"):
        image = read_image(workdir / f"{name}.png")
        floats = predictor.predict_arrays([image], floats=True)[0]
        alpha = read_mask(tmp_path / "estimate" / f"{name}.png")
        np.testing.assert_array_equal(alpha, predictor.predict_arrays([image])[0])  # the float path writes the same
        np.testing.assert_array_equal(read_mask(tmp_path / "none" / f"{name}.png"), alpha)
        rgba = np.asarray(Image.open(tmp_path / "estimate" / f"{name}_rgba.png"))
        np.testing.assert_array_equal(rgba[..., 3], alpha)
        np.testing.assert_array_equal(rgba[..., :3], fg.foreground_uint8(image, floats, backend=fg.default_backend()))
        soft = (alpha > 12) & (alpha < 243)
        assert soft.sum() > 50 and np.abs(rgba[..., :3].astype(int) - image)[soft].mean() > 1.0
        np.testing.assert_array_equal(rgba[..., :3][alpha == 255], image[alpha == 255])
        composite = np.asarray(Image.open(tmp_path / "estimate" / f"{name}_composite.png"))
        np.testing.assert_array_equal(composite, fg.composite(rgba[..., :3], alpha, (0, 255, 0)))

        plain = np.asarray(Image.open(tmp_path / "none" / f"{name}_rgba.png"))
        np.testing.assert_array_equal(plain[..., :3], image)
        np.testing.assert_array_equal(plain[..., 3], alpha)
        plain_composite = np.asarray(Image.open(tmp_path / "none" / f"{name}_composite.png"))
        np.testing.assert_array_equal(plain_composite, fg.composite(image, alpha, (0, 255, 0)))


def test_alpha_only_runs_do_not_estimate(workdir, tmp_path, monkeypatch):
    predict_cli = load_script("predict")

    def refuse(*args, **kwargs):
        raise AssertionError("foreground estimated for an alpha-only run")

    monkeypatch.setattr(fg, "foreground_uint8", refuse)
    argv = [str(workdir / "scene6.png"), "--checkpoint", str(workdir / "model"), "--output", str(tmp_path)]
    assert predict_cli.main(argv) == 0
    assert sorted(path.name for path in Path(tmp_path).iterdir()) == ["scene6.png"]
