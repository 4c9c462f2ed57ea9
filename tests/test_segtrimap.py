"""SegTrimap end to end against a PyTorch reference of the original model tree (reduced depth and width, perturbed
weights, both variants, all three upsample modes): the trainer's checkpoint (DataParallel `module.` keys, a pickled
CrossEntropyLoss in its config record) through the real `port/convert.py segtrimap`, logits in fp32, and the real
`predict.py --mask-dir` against the original pipeline (letterbox, model, 512 -> 448 bilinear, crop, resize to the
original size, argmax)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from PIL import Image
from scripts import load_script
from segtrimap_reference import ReferenceSegTrimap, mae_state_dict, perturb_, reference_trimap, save_original_checkpoint

from jaxmatte import load_pretrained, registry
from jaxmatte.data.io import read_mask
from jaxmatte.metrics.trimap import trimap_labels
from jaxmatte.models.segtrimap import PRESETS, SegTrimap, SegTrimapConfig, forward
from port import convert
from port import segtrimap as port_segtrimap
from port.table import PortError

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(img_size=112, patch_size=14, embed_dim=64, depth=4, num_heads=4, window_size=4, global_every=2)
SMALL_NECK = (16, 32, 64, 128)
WINDOW_ARGS = ["--window-size", "4", "--global-every", "2"]
SHAPES = {"wide": (90, 151), "tall": (133, 61), "exact": (112, 112), "odd": (47, 75)}  # (H, W)
CASES = list(itertools.product((1, 2), ("x1", "x2", "x4")))


def reference(variant: int, upsample: str, seed: int = 0) -> ReferenceSegTrimap:
    model = ReferenceSegTrimap(variant=variant, upsample=upsample, out_dims=SMALL_NECK, **SMALL)
    return perturb_(model, seed).eval()


def converted(tmp_path: Path, model: ReferenceSegTrimap, mask_scale: str, name: str) -> Path:
    checkpoint = save_original_checkpoint(model, tmp_path / f"{name}.pth")
    out = tmp_path / f"{name}_jax"
    assert (
        convert.main(
            ["segtrimap", "--src", str(checkpoint), "--mask-scale", mask_scale, "--out", str(out)] + WINDOW_ARGS
        )
        == 0
    )
    return out


def inputs(seed: int, batch: int = 2, size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.random((batch, 3, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    mask = np.stack([((yy - size / 2 - 9 * b) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2) for b in range(batch)])
    return image, mask[:, None].astype(np.float32)


# --------------------------------------------------------------------------------------------------- architecture


def _param_count(config: SegTrimapConfig) -> int:
    model = nnx.eval_shape(lambda: SegTrimap(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))


def test_headline_parameter_counts_and_schedule():
    # spec §2.4: 659,086,131 (variant 2, x4); variant 1 adds cls_token + pos_embed (and the unused fc_norm / head,
    # 2,560 + 1,281,000, which are not converted); x2 / x1 add 192 / 576 in conv_seg
    headline = PRESETS["huge_448"]
    nopos = PRESETS["huge_448_nopos"]
    assert _param_count(nopos) == 659_086_131
    assert _param_count(headline) == 661_682_971 - 2_560 - 1_281_000
    for mode, extra in (("x2", 192), ("x1", 576)):
        assert _param_count(SegTrimapConfig(backbone=nopos.backbone, upsample=mode)) == 659_086_131 + extra
    assert headline.backbone.global_blocks() == (7, 15, 23, 31)
    assert headline.backbone.window_size == 16 and headline.logits_size() == 512
    assert (headline.variant, nopos.variant) == (1, 2)


def test_config_is_checked():
    with pytest.raises(ValueError, match="upsample"):
        SegTrimapConfig(upsample="x8")
    with pytest.raises(ValueError, match="mask_scale"):
        SegTrimapConfig(mask_scale=0.0)
    with pytest.raises(ValueError, match="windows"):
        SegTrimapConfig(backbone=PRESETS["small_224"].backbone.__class__())


# --------------------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(("variant", "upsample"), CASES)
def test_converted_logits_match_the_original(tmp_path, variant, upsample):
    model = reference(variant, upsample, seed=10 * variant + len(upsample))
    scale = "1/255" if variant == 1 else "1"
    directory = converted(tmp_path, model, scale, f"v{variant}{upsample}")
    ported = load_pretrained(directory)
    assert (ported.config.variant, ported.config.upsample) == (variant, upsample)
    info = json.loads((directory / "config.json").read_text())["info"]
    assert info["mask_scale"] == scale and info["variant"] == variant

    image, mask = inputs(seed=variant)
    factor = 1.0 / 255.0 if variant == 1 else 1.0
    with torch.no_grad():
        expected = model(torch.from_numpy(image), torch.from_numpy(mask * factor)).numpy()
    mean = np.array([0.485, 0.456, 0.406], np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[:, None, None]
    normalised = ((image - mean) / std).transpose(0, 2, 3, 1)
    got = np.asarray(forward(ported, jnp.asarray(normalised), jnp.asarray(mask.transpose(0, 2, 3, 1))))
    got = got.transpose(0, 3, 1, 2)
    side = 32 * {"x1": 1, "x2": 2, "x4": 4}[upsample]  # 8 x 8 tokens -> stride-4 map of 32, then x1 / x2 / x4
    assert got.shape == expected.shape == (2, 3, side, side)
    diff = np.abs(got - expected).max()
    assert diff <= 1e-4 and diff / np.abs(expected).max() <= 1e-5, diff


def test_mask_scale_matters_and_is_required(tmp_path):
    model = reference(1, "x4", seed=3)
    checkpoint = save_original_checkpoint(model, tmp_path / "020.pth")
    with pytest.raises(PortError, match="--mask-scale is required"):
        convert.run(["segtrimap", "--src", str(checkpoint), "--out", str(tmp_path / "x")] + WINDOW_ARGS)
    with pytest.raises(PortError, match="1/255 or 1"):
        convert.run(["segtrimap", "--src", str(checkpoint), "--mask-scale", "0.5", "--out", str(tmp_path / "x")])
    a = load_pretrained(converted(tmp_path, model, "1/255", "a"))
    b = load_pretrained(converted(tmp_path, model, "1", "b"))
    image, mask = inputs(seed=4, batch=1)
    normalised = jnp.asarray(image.transpose(0, 2, 3, 1))
    nhwc_mask = jnp.asarray(mask.transpose(0, 2, 3, 1))
    assert (
        np.abs(np.asarray(forward(a, normalised, nhwc_mask)) - np.asarray(forward(b, normalised, nhwc_mask))).max()
        > 1e-2
    )


def test_converter_refuses_what_does_not_fit(tmp_path):
    model = reference(1, "x2", seed=1)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["neck.down_4.0.weight"] = state.pop("module.neck.down_4.0.weight")  # a mixed prefix
    torch.save({"state_dict": state, "config": {}}, tmp_path / "mixed.pth")
    with pytest.raises(PortError, match="mixed"):
        convert.run(
            ["segtrimap", "--src", str(tmp_path / "mixed.pth"), "--mask-scale", "1", "--out", str(tmp_path / "o")]
        )
    state = dict(model.state_dict())
    state["backbone.blocks.0.extra"] = torch.zeros(2)
    torch.save({"state_dict": state, "config": {}}, tmp_path / "extra.pth")
    with pytest.raises(PortError, match="unexpected key backbone.blocks.0.extra"):
        convert.run(
            ["segtrimap", "--src", str(tmp_path / "extra.pth"), "--mask-scale", "1", "--out", str(tmp_path / "o")]
            + WINDOW_ARGS
            + ["--num-heads", "4"]
        )
    # the record's class must agree with the keys: a variant-1 state dict saved under the variant-2 class name
    checkpoint = torch.load(save_original_checkpoint(model, tmp_path / "v1.pth"), weights_only=False)
    checkpoint["config"]["class"] = "isegm.model.is_trimap_plaintvit_model_noposembed.NoPosEmbedTrimapPlainVitModel"
    torch.save(checkpoint, tmp_path / "wrong_class.pth")
    with pytest.raises(PortError, match="variant 1"):
        convert.run(
            ["segtrimap", "--src", str(tmp_path / "wrong_class.pth"), "--mask-scale", "1", "--out", str(tmp_path / "o")]
            + WINDOW_ARGS
            + ["--num-heads", "4"]
        )


def test_only_the_loss_class_is_allowed_in_the_record(tmp_path):
    model = reference(2, "x1", seed=2)
    checkpoint = torch.load(save_original_checkpoint(model, tmp_path / "ok.pth"), weights_only=False)
    checkpoint["config"]["params"]["extra"] = torch.nn.MSELoss()  # another pickled object: refused
    torch.save(checkpoint, tmp_path / "other.pth")
    assert (
        convert.main(
            ["segtrimap", "--src", str(tmp_path / "other.pth"), "--mask-scale", "1", "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert not (tmp_path / "o").exists()


def test_mae_start_resamples_positions(tmp_path):
    mae = mae_state_dict(embed_dim=384, depth=4, num_heads=6, patch_size=16, grid=7, seed=0)
    torch.save(mae, tmp_path / "mae.pth")
    out = tmp_path / "mae_segtrimap"
    assert (
        convert.main(["segtrimap", "--mae", str(tmp_path / "mae.pth"), "--preset", "small_224", "--out", str(out)]) == 0
    )
    model = load_pretrained(out)
    assert model.config.mask_scale == 1.0
    pos = np.asarray(model.backbone.pos_embed[...])
    source = mae["model"]["pos_embed"].numpy()
    assert pos.shape == (1, 1 + 14 * 14, 384)
    np.testing.assert_array_equal(pos[:, :1], source[:, :1])  # class slot kept
    grid = torch.from_numpy(source[:, 1:]).reshape(1, 7, 7, -1).permute(0, 3, 1, 2)
    resized = torch.nn.functional.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    np.testing.assert_allclose(pos[:, 1:], resized.permute(0, 2, 3, 1).reshape(1, 196, -1).numpy(), atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(model.backbone.blocks[2].attn.qkv.kernel[...]), mae["model"]["blocks.2.attn.qkv.weight"].numpy().T
    )


# ------------------------------------------------------------------------------------------------ predict.py path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path]:
    """Smooth colour images of odd sizes (PNG and JPEG) and 0 / 255 object masks (ellipses) of the same stems."""
    root = tmp_path_factory.mktemp("segtrimap_inputs")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(7)
    for index, (name, (h, w)) in enumerate(SHAPES.items()):
        small = rng.integers(0, 256, (max(2, h // 6), max(2, w // 6), 3), dtype=np.uint8)
        picture = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
        suffix = ".jpg" if index == 1 else ".png"
        Image.fromarray(picture).save(images / f"{name}{suffix}", quality=95)
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (w // 2, h // 2), (max(3, w // 3), max(3, h // 3)), 15, 0, 360, 255, -1)
        Image.fromarray(mask).save(masks / f"{name}.png")
    return images, masks


@pytest.mark.parametrize(("variant", "upsample"), CASES)
def test_predict_cli_reproduces_the_original_trimap(tmp_path, pictures, variant, upsample):
    images, masks = pictures
    model = reference(variant, upsample, seed=100 + 10 * variant + len(upsample))
    scale = "1/255" if variant == 1 else "1"
    directory = converted(tmp_path, model, scale, "ckpt")
    out = tmp_path / "out"
    predict = load_script("predict")
    code = predict.main(
        [
            str(images),
            "--checkpoint",
            str(directory),
            "--mask-dir",
            str(masks),
            "--output",
            str(out),
            "--format",
            "trimap,overlay",
            "--batch-size",
            "2",
        ]
    )
    assert code == 0
    classes_seen = set()
    for path in sorted(images.iterdir()):
        image = np.asarray(Image.open(path).convert("RGB"))
        mask01 = (np.asarray(Image.open(masks / f"{path.stem}.png")) >= 30).astype(np.uint8)
        expected, _ = reference_trimap(model, image, mask01, mask_scale=1 / 255 if variant == 1 else 1.0, size=112)
        written = read_mask(out / f"{path.stem}.png")
        assert written.shape == image.shape[:2]
        assert set(np.unique(written)) <= {0, 128, 255}
        agreement = np.mean(trimap_labels(written) == expected)
        assert agreement >= 0.995, (path.name, agreement)
        overlay = np.asarray(Image.open(out / f"{path.stem}_overlay.png"))
        assert overlay.shape == image.shape
        classes_seen |= set(np.unique(expected).tolist())
    assert len(classes_seen) >= 2  # the perturbed model is not constant


def test_predict_cli_reports_missing_masks(tmp_path, pictures):
    images, masks = pictures
    directory = converted(tmp_path, reference(2, "x1", seed=5), "1", "ckpt")
    partial = tmp_path / "some_masks"
    partial.mkdir()
    for mask in sorted(masks.iterdir())[:2]:
        (partial / mask.name).write_bytes(mask.read_bytes())
    predict = load_script("predict")
    out = tmp_path / "out"
    assert (
        predict.main([str(images), "--checkpoint", str(directory), "--mask-dir", str(partial), "--output", str(out)])
        == 1  # the others have no mask
    )
    assert len(list(out.glob("*.png"))) == 2
    assert predict.main([str(images), "--checkpoint", str(directory), "--output", str(out)]) == 2  # no --mask-dir
    assert (
        predict.main(
            [
                str(images),
                "--checkpoint",
                str(directory),
                "--mask-dir",
                str(partial),
                "--output",
                str(out),
                "--format",
                "alpha",
            ]
        )
        == 2
    )


def test_system_is_registered():
    system = registry.system("segtrimap")
    assert system.output == "trimap" and system.inputs == ("image", "input_mask")
    assert system.validation == "trimap" and system.best_metric == "mIoU"
    assert port_segtrimap.KIND in system.converters


REALDATA = REPO.parent / "shared" / "realdata" / "alphamatting_training_lowres"


@pytest.mark.skipif(not (REALDATA / "image").is_dir(), reason="../shared/realdata not present")
@pytest.mark.parametrize("variant", [1, 2])
def test_predict_cli_reproduces_the_original_trimap_on_real_images(tmp_path, variant):
    """Three alphamatting.com photos with object masks from their GT alpha (>= 30), both variants, x4."""
    images = tmp_path / "images"
    images.mkdir()
    stems = ("GT02", "GT13", "GT26")
    for stem in stems:
        (images / f"{stem}.png").symlink_to(REALDATA / "image" / f"{stem}.png")
    model = reference(variant, "x4", seed=40 + variant)
    scale = "1/255" if variant == 1 else "1"
    directory = converted(tmp_path, model, scale, "ckpt")
    out = tmp_path / "out"
    args = [str(images), "--checkpoint", str(directory), "--mask-dir", str(REALDATA / "alpha"), "--output", str(out)]
    assert load_script("predict").main(args) == 0
    for stem in stems:
        image = np.asarray(Image.open(images / f"{stem}.png").convert("RGB"))
        mask01 = (read_mask(REALDATA / "alpha" / f"{stem}.png") >= 30).astype(np.uint8)
        expected, _ = reference_trimap(model, image, mask01, mask_scale=1 / 255 if variant == 1 else 1.0, size=112)
        written = read_mask(out / f"{stem}.png")
        assert written.shape == image.shape[:2]
        assert np.mean(trimap_labels(written) == expected) >= 0.995, stem
