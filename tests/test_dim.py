"""DIM teacher and pruned students against the PyTorch reference of the original (`dim_reference`): checkpoints
pickled as the originals save them (whole modules, zip and legacy containers), through the real `port/convert.py dim`
and `predict.py --trimap-dir`; sizes, FLOPs, pruning and the trimap -> alpha chain."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from dim_reference import (
    TEACHER_CFG,
    TEACHER_PARAMS,
    DIMModel,
    DIMModel_student,
    perturb_,
    save_like_original,
    tie_inputs,
)
from flax import nnx
from PIL import Image
from scripts import load_script

from jaxmatte import load_pretrained, registry
from jaxmatte.data.io import read_mask
from jaxmatte.models.dim import DIM, DIMConfig, DIMStudentConfig, forward
from jaxmatte.models.dim.modeling import check_widths
from jaxmatte.models.dim.pruning import conv_macs, load_cfg, prune_widths
from jaxmatte.models.dim.system import size_report
from jaxmatte.ops.pool import torch_flat_indices
from jaxmatte.pretrained import read_config
from port import convert

REPO = Path(__file__).resolve().parents[1]
SMALL_CFG = (8, 6, 8, 7, 8, 8, 5, 8, 8, 9, 8, 8, 7, 9, 5, 7, 6, 1)
SHAPES = {"odd": (45, 61), "tall": (70, 33), "even": (64, 96)}  # (H, W)
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


def converted(tmp_path: Path, model: torch.nn.Module, name: str, *, legacy: bool, extra: tuple = ()) -> Path:
    src = tmp_path / f"{name}.tar"
    save_like_original(src, model, legacy=legacy, data_parallel=isinstance(model, DIMModel))
    out = tmp_path / f"{name}_jax"
    assert convert.main(["dim", "--src", str(src), "--out", str(out), *extra]) == 0
    return out


def torch_alpha(model: torch.nn.Module, image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
    """The original test: normalised RGB + trimap / 255 at native size, float alpha with known regions forced."""
    rgb = (image.astype(np.float32) / 255.0 - MEAN) / STD
    x = np.concatenate([rgb, trimap[..., None].astype(np.float32) / 255.0], axis=-1)
    with torch.no_grad():
        alpha = model(torch.from_numpy(x).permute(2, 0, 1)[None])[1][0].numpy()
    alpha[trimap == 0] = 0.0
    alpha[trimap == 255] = 1.0
    return alpha


def test_teacher_size_and_macs_match_the_spec():
    model = DIM(DIMConfig(), rngs=nnx.Rngs(0))
    report = size_report(TEACHER_CFG, model)
    assert report["params"] == TEACHER_PARAMS == 25_582_595
    assert round(report["macs_224"] / 1e9, 2) == 24.45 and round(conv_macs(TEACHER_CFG, 320, 320) / 1e9, 1) == 49.9
    assert size_report(SMALL_CFG, projections=(128, 256, 512, 512))["params"] < 60_000


def test_widths_are_checked():
    assert check_widths(TEACHER_CFG) == []
    bad = list(SMALL_CFG)
    bad[16] = 5  # up2 must match down1's end (unpooled with its indices)
    assert any("up2.conv" in p for p in check_widths(tuple(bad)))
    zero = list(SMALL_CFG)
    zero[4] = 0
    with pytest.raises(ValueError, match="zero-width"):
        DIMStudentConfig(widths=tuple(zero))


def jax_pool_indices(model: DIM, x: np.ndarray) -> list[torch.Tensor]:
    """Our model's pooling indices at the five levels, as PyTorch's flat NCHW int64 indices."""
    h, indices = jnp.asarray(x), []
    for level in range(1, 6):
        h, window, size = getattr(model, f"down{level}")(h)
        flat = np.asarray(torch_flat_indices(window, size[1])).transpose(0, 3, 1, 2)
        indices.append(torch.from_numpy(flat.astype(np.int64)))
    return indices


def torch_alpha_with_indices(model: torch.nn.Module, x: torch.Tensor, indices: list[torch.Tensor]) -> np.ndarray:
    """The reference's alpha with its unpooling driven by the given indices (the encoder runs as is)."""
    with torch.no_grad():
        h, shapes = x, []
        for level in range(1, 6):
            h, _, shape = getattr(model, f"down{level}")(h)
            shapes.append(shape)
        for level in range(5, 0, -1):
            h = getattr(model, f"up{level}")(h, indices[level - 1], shapes[level - 1])
        return torch.sigmoid(h[:, 0]).numpy()


@pytest.mark.parametrize("legacy", [True, False])
def test_pickled_teacher_converts_and_matches(tmp_path, legacy):
    """Full-width teacher from a pickled DataParallel module. Exact ties (ReLU zeros, equal values) are broken the
    same way; a near-tie (values within rounding of each other) may pick another window position than PyTorch's
    kernels, which moves one unpooled value. So: pooled features match, pooling positions agree on all but a few
    windows, and the alpha equals the reference driven by our pooling positions."""
    model = perturb_(DIMModel(), seed=1).eval()
    directory = converted(tmp_path, model, "BEST_checkpoint", legacy=legacy)
    info = json.loads((directory / "config.json").read_text())["info"]
    assert info["container"] == "pickled model" and info["class"] == "models.DIMModel" and info["data_parallel"]
    assert info["preprocessing"]["resize"] == "native"
    ours = load_pretrained(directory)
    x = tie_inputs()
    with torch.no_grad():
        features, _ = model(x)
        torch_indices = [idx for _, idx, _ in _torch_encoder(model, x)]
    nhwc = x.permute(0, 2, 3, 1).numpy()
    out = forward(ours, jnp.asarray(nhwc))
    for mine, theirs in zip(out.features, features, strict=True):
        np.testing.assert_allclose(np.asarray(mine), theirs.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)
    indices = jax_pool_indices(ours, nhwc)
    for mine, theirs in zip(indices, torch_indices, strict=True):
        assert np.mean((mine == theirs).numpy()) >= 0.9999
    expected = torch_alpha_with_indices(model, x, indices)
    np.testing.assert_allclose(np.asarray(out.alpha)[..., 0], expected, atol=1e-5)


def _torch_encoder(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor, torch.Size]]:
    levels, h = [], x
    for level in range(1, 6):
        h, idx, shape = getattr(model, f"down{level}")(h)
        levels.append((h, idx, shape))
    return levels


def test_pickled_student_converts_with_cfg_check(tmp_path):
    model = perturb_(DIMModel_student(SMALL_CFG), seed=2).eval()
    cfg_file = tmp_path / "pruned.tar"
    torch.save({"cfg": list(SMALL_CFG[:-1]) + [0]}, cfg_file)  # the original's up1 entry is unused
    directory = converted(tmp_path, model, "BEST_pruned", legacy=False, extra=("--cfg", str(cfg_file)))
    family, config, _ = read_config(directory)
    assert family == "dim_student" and tuple(config.widths) == SMALL_CFG
    ours = load_pretrained(directory)
    x = tie_inputs(batch=1, height=53, width=66, seed=3)
    with torch.no_grad():
        maps, alpha = model(x)
    out = forward(ours, jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_allclose(np.asarray(out.alpha)[..., 0], alpha.numpy(), atol=1e-5)
    for mine, theirs in zip(out.projected, maps[4:], strict=True):
        np.testing.assert_allclose(np.asarray(mine), theirs.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=1e-4)
    wrong = list(SMALL_CFG)
    wrong[0] = 9
    torch.save({"cfg": wrong}, cfg_file)
    src = tmp_path / "BEST_pruned.tar"
    assert convert.main(["dim", "--src", str(src), "--out", str(tmp_path / "x"), "--cfg", str(cfg_file)]) == 2


def test_converter_refuses_code_and_foreign_models(tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    bad = tmp_path / "evil.tar"
    torch.save({"model": Payload(), "epoch": 1}, bad)
    assert convert.main(["dim", "--src", str(bad), "--out", str(tmp_path / "evil")]) == 2
    assert not marker.exists()
    assert "system" in capsys.readouterr().err
    state = tmp_path / "state.pth"
    torch.save(perturb_(DIMModel_student(SMALL_CFG), seed=4).state_dict(), state)  # a plain state dict converts
    assert convert.main(["dim", "--src", str(state), "--out", str(tmp_path / "plain")]) == 0
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 1, 1)}, other)
    assert convert.main(["dim", "--src", str(other), "--out", str(tmp_path / "o")]) == 2


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path]:
    """Smooth colour images of odd sizes (PNG and JPEG) with trimaps: a foreground ellipse, an unknown ring, and a
    flat region whose post-ReLU pooling windows tie."""
    root = tmp_path_factory.mktemp("dim_inputs")
    images, trimaps = root / "images", root / "trimaps"
    images.mkdir()
    trimaps.mkdir()
    rng = np.random.default_rng(11)
    for index, (name, (h, w)) in enumerate(SHAPES.items()):
        small = rng.integers(0, 256, (max(2, h // 5), max(2, w // 5), 3), dtype=np.uint8)
        picture = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        picture[: h // 3, : w // 3] = 0  # flat, tie-heavy corner
        Image.fromarray(picture).save(images / f"{name}{'.jpg' if index == 1 else '.png'}", quality=95)
        trimap = np.zeros((h, w), np.uint8)
        cv2.ellipse(trimap, (w // 2, h // 2), (w // 3, h // 3), 10, 0, 360, 128, -1)
        cv2.ellipse(trimap, (w // 2, h // 2), (w // 5, h // 5), 10, 0, 360, 255, -1)
        Image.fromarray(trimap).save(trimaps / f"{name}.png")
    return images, trimaps


@pytest.mark.parametrize("student", [False, True])
def test_predict_cli_reproduces_the_original_alpha(tmp_path, pictures, student):
    images, trimaps = pictures
    model = perturb_(DIMModel_student(SMALL_CFG) if student else DIMModel(), seed=5 + student).eval()
    directory = converted(tmp_path, model, "ckpt", legacy=not student)
    out = tmp_path / "out"
    predict = load_script("predict")
    args = [str(images), "--checkpoint", str(directory), "--trimap-dir", str(trimaps), "--output", str(out)]
    assert predict.main([*args, "--batch-size", "2"]) == 0
    spread = []
    for path in sorted(images.iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        trimap = read_mask(trimaps / f"{path.stem}.png")
        expected = np.floor(torch_alpha(model, image, trimap) * 255.0 + 0.5)
        written = read_mask(out / f"{path.stem}.png").astype(np.float64)
        assert written.shape == image.shape[:2]
        close = np.abs(written - expected) <= 1
        assert close.mean() >= 0.995, (path.name, close.mean())
        assert np.all(written[trimap == 0] == 0) and np.all(written[trimap == 255] == 255)
        spread.append(np.ptp(expected[trimap == 128]))
    assert max(spread) > 10  # the perturbed model is not constant in the unknown region


def test_predict_cli_reports_missing_trimaps_and_needs_them(tmp_path, pictures, capsys):
    images, trimaps = pictures
    directory = converted(tmp_path, perturb_(DIMModel_student(SMALL_CFG), seed=7).eval(), "ckpt", legacy=False)
    partial = tmp_path / "some"
    partial.mkdir()
    first = sorted(trimaps.iterdir())[0]
    (partial / first.name).write_bytes(first.read_bytes())
    predict = load_script("predict")
    out = tmp_path / "out"
    base = [str(images), "--checkpoint", str(directory), "--output", str(out)]
    assert predict.main([*base, "--trimap-dir", str(partial)]) == 1  # the others have no trimap
    assert sorted(p.name for p in out.glob("*.png")) == [first.name]
    assert predict.main(base) == 2  # neither --trimap-dir nor --trimap-model
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(tiny / "small.png")
    Image.fromarray(np.full((20, 50), 128, np.uint8)).save(partial / "small.png")
    out2 = tmp_path / "out2"
    args = [str(tiny), str(images), "--checkpoint", str(directory), "--trimap-dir", str(partial), "--output", str(out2)]
    capsys.readouterr()
    assert predict.main(args) == 1  # the 20 px image is reported, the others still run
    assert "small.png: 20x50 is below dim_student's 32 px minimum" in capsys.readouterr().err
    assert sorted(p.name for p in out2.glob("*.png")) == [first.name]


def test_pruning_thresholds_ties_and_zero_widths():
    rng = np.random.default_rng(0)
    from jaxmatte.models.dim.modeling import UNIT_NAMES

    scales = {name: rng.normal(size=w).astype(np.float32) for name, w in zip(UNIT_NAMES, TEACHER_CFG, strict=True)}
    result = prune_widths(scales, 0.5)
    encoder = np.sort(np.abs(np.concatenate([scales[n] for n in UNIT_NAMES[:13]])))
    assert result.thresholds[0] == encoder[int(encoder.size * 0.5)]
    kept = [int(np.sum(np.abs(scales[n]) > result.thresholds[0 if i < 13 else 1])) for i, n in enumerate(UNIT_NAMES)]
    assert list(result.kept) == kept
    w = result.widths
    assert (w[1], w[3], w[6], w[9]) == (w[16], w[15], w[14], w[13]) and w[-1] == 1
    assert w[1] == max(kept[1], kept[16]) and w[9] == max(kept[9], kept[13])
    assert sum(w[:13]) <= 4224 and check_widths(w) == []
    dead = dict(scales)
    dead["down3.conv2"] = np.zeros(256, np.float32)  # nothing above any threshold
    with pytest.raises(ValueError, match="zero-width"):
        prune_widths(dead, 0.5)


def test_cfg_files_round_trip(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps({"cfg": list(SMALL_CFG[:-1]) + [3]}))
    assert load_cfg(tmp_path / "cfg.json") == SMALL_CFG
    torch.save({"cfg": list(SMALL_CFG)}, tmp_path / "pruned.tar")
    assert load_cfg(tmp_path / "pruned.tar") == SMALL_CFG
    with pytest.raises(FileNotFoundError):
        load_cfg(tmp_path / "missing")


def test_systems_are_registered():
    for name in ("dim", "dim_student"):
        system = registry.system(name)
        assert system.inputs == ("image", "trimap") and system.output == "alpha" and system.best_metric == "SAD"


def test_trimap_model_chain_feeds_dim(tmp_path, pictures):
    """predict.py --trimap-model: SegTrimap's trimaps (also saved) drive DIM exactly as the same trimaps given as
    files; and the Python chain returns the same alphas."""
    from test_segtrimap import converted as segtrimap_converted
    from test_segtrimap import reference as segtrimap_reference

    from jaxmatte.chain import TrimapToAlpha
    from jaxmatte.data.io import read_image
    from jaxmatte.predict import Predictor

    images, trimaps = pictures
    masks = tmp_path / "masks"
    masks.mkdir()
    for path in sorted(trimaps.iterdir()):
        Image.fromarray(np.where(read_mask(path) >= 128, 255, 0).astype(np.uint8)).save(masks / path.name)
    segtrimap = segtrimap_converted(tmp_path, segtrimap_reference(2, "x4", seed=3), "1", "segtrimap")
    dim = converted(tmp_path, perturb_(DIMModel_student(SMALL_CFG), seed=8).eval(), "dim", legacy=False)
    predict = load_script("predict")
    chained, saved, direct = tmp_path / "chained", tmp_path / "saved", tmp_path / "direct"
    base = [str(images), "--checkpoint", str(dim)]
    chain_args = ["--trimap-model", str(segtrimap), "--mask-dir", str(masks)]
    assert predict.main([*base, *chain_args, "--output", str(chained), "--save-trimaps", str(saved)]) == 0
    assert predict.main([*base, "--trimap-dir", str(saved), "--output", str(direct)]) == 0
    chain = TrimapToAlpha(Predictor(segtrimap), Predictor(dim))
    for path in sorted(images.iterdir()):
        trimap = read_mask(saved / f"{path.stem}.png")
        assert trimap.shape == read_image(path).shape[:2] and set(np.unique(trimap)) <= {0, 128, 255}
        alpha = read_mask(chained / f"{path.stem}.png")
        np.testing.assert_array_equal(alpha, read_mask(direct / f"{path.stem}.png"))
        alphas, classes = chain.predict_arrays([read_image(path)], [read_mask(masks / f"{path.stem}.png")])
        np.testing.assert_array_equal(alphas[0], alpha)
        np.testing.assert_array_equal(np.array([0, 128, 255], np.uint8)[classes[0]], trimap)
    assert predict.main([*base, "--trimap-model", str(dim), "--mask-dir", str(masks), "--output", str(chained)]) == 2


def test_pruning_cfg_on_hand_built_scales():
    """Spec §6.3 by hand: 2111 encoder channels at 0.9 and one at 0.5 among 0.1s put the encoder threshold (the value
    at index int(4224 * 0.5) = 2112 of the sorted |gamma|) at 0.5, which a strict > does not keep; the decoder the same
    at index 480 of 961. Then the unpooling ties raise d1c2/d2c2/d3c3/d4c3 and up2/up3/up4/up5 to their maxima."""
    from jaxmatte.models.dim.modeling import UNIT_NAMES

    kept = [30, 20, 60, 50, 120, 100, 90, 250, 200, 150, 300, 341, 400, 200, 150, 80, 49, 1]
    scales = {}
    for index, (name, width, k) in enumerate(zip(UNIT_NAMES, TEACHER_CFG, kept, strict=True)):
        values = np.full(width, 0.1, np.float32)
        values[:k] = -0.9 if index % 2 else 0.9  # magnitudes count, not signs
        if index in (0, 13):
            values[k] = 0.5
        scales[name] = values
    result = prune_widths(scales, 0.5)
    assert result.thresholds == (pytest.approx(0.5), pytest.approx(0.5))
    assert list(result.kept) == kept
    assert list(result.widths) == [30, 49, 60, 80, 120, 100, 150, 250, 200, 200, 300, 341, 400, 200, 150, 80, 49, 1]


REALDATA = REPO.parent / "shared" / "realdata" / "alphamatting_training_lowres"


@pytest.mark.skipif(not (REALDATA / "image").is_dir(), reason="../shared/realdata not present")
def test_predict_cli_reproduces_the_original_alpha_on_real_images(tmp_path):
    """Three alphamatting.com photos with their trimap1, through the real converter and predict.py."""
    images, trimaps = tmp_path / "images", tmp_path / "trimaps"
    images.mkdir()
    trimaps.mkdir()
    for stem in ("GT01", "GT14", "GT27"):
        (images / f"{stem}.png").symlink_to(REALDATA / "image" / f"{stem}.png")
        (trimaps / f"{stem}.png").symlink_to(REALDATA / "trimap1" / f"{stem}.png")
    model = perturb_(DIMModel_student(SMALL_CFG), seed=9).eval()
    directory = converted(tmp_path, model, "ckpt", legacy=True)
    out = tmp_path / "out"
    args = [str(images), "--checkpoint", str(directory), "--trimap-dir", str(trimaps), "--output", str(out)]
    assert load_script("predict").main(args) == 0
    for path in sorted(images.iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        trimap = read_mask(trimaps / path.name)
        expected = np.floor(torch_alpha(model, image, trimap) * 255.0 + 0.5)
        written = read_mask(out / path.name).astype(np.float64)
        assert written.shape == image.shape[:2]
        assert np.mean(np.abs(written - expected) <= 1) >= 0.995, path.name
