"""Checks of the PyTorch SegTrimap reference itself (segtrimap.md §2-§4, §7.1, §11.2) before it is used for parity."""

from __future__ import annotations

import pickle

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segtrimap_reference import (
    CLASS_NAMES,
    ReferenceSegTrimap,
    interpolate_pos_embed,
    letterbox,
    letterbox_geometry,
    mae_state_dict,
    perturb_,
    reference_trimap,
    save_original_checkpoint,
    window_partition,
    window_unpartition,
)

SMALL = dict(img_size=112, patch_size=14, embed_dim=64, depth=4, num_heads=4, window_size=4, global_every=2)
SMALL_OUT = (16, 32, 64, 128)


def small(variant: int = 1, upsample: str = "x4", seed: int = 0, **overrides) -> ReferenceSegTrimap:
    torch.manual_seed(seed)
    kwargs = {**SMALL, "out_dims": SMALL_OUT, **overrides}
    return perturb_(ReferenceSegTrimap(variant=variant, upsample=upsample, **kwargs), seed).eval()


def inputs(size: int = 112, batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(batch, 3, size, size, generator=g)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.5).float()
    return image, mask


# ---------------------------------------------------------------------------------------------------------------------
# headline configuration on the meta device: parameter counts and key table


def headline(variant: int, upsample: str) -> ReferenceSegTrimap:
    with torch.device("meta"):
        return ReferenceSegTrimap(
            variant=variant,
            upsample=upsample,
            img_size=448,
            patch_size=14,
            embed_dim=1280,
            depth=32,
            num_heads=16,
            out_dims=(240, 480, 960, 1920),
            window_size=16,
            global_every=8,
        )


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("upsample,extra", [("x4", 0), ("x2", 192), ("x1", 576)])
def test_headline_parameter_counts(variant, upsample, extra):
    model = headline(variant, upsample)
    base = {1: 661_682_971, 2: 659_086_131}[variant]
    assert count(model) == base + extra
    assert count(model.neck) == 27_031_280
    assert count(model.patch_embed_mask) == 252_160
    assert count(model.head) == 1_370_691 + extra
    blocks = count(model.backbone.blocks)
    assert blocks == 32 * 19_677_440 and blocks + count(model.backbone.patch_embed) == 630_432_000


HEADLINE_SHAPES = {
    "patch_embed_mask.proj.weight": (1280, 1, 14, 14),
    "patch_embed_mask.proj.bias": (1280,),
    "backbone.patch_embed.proj.weight": (1280, 3, 14, 14),
    "backbone.blocks.31.attn.qkv.weight": (3840, 1280),
    "backbone.blocks.0.attn.qkv.bias": (3840,),
    "backbone.blocks.7.attn.proj.weight": (1280, 1280),
    "backbone.blocks.12.mlp.fc1.weight": (5120, 1280),
    "backbone.blocks.12.mlp.fc2.weight": (1280, 5120),
    "backbone.blocks.3.norm2.bias": (1280,),
    "neck.down_4.0.weight": (1280, 640, 2, 2),
    "neck.down_4.1.weight": (640,),
    "neck.down_4.3.weight": (640, 320, 2, 2),
    "neck.down_4.4.bias": (320,),
    "neck.down_4.5.weight": (240, 320, 1, 1),
    "neck.down_4.6.weight": (240,),
    "neck.down_8.0.weight": (1280, 640, 2, 2),
    "neck.down_8.2.weight": (480, 640, 1, 1),
    "neck.down_8.3.bias": (480,),
    "neck.down_16.0.weight": (960, 1280, 1, 1),
    "neck.down_16.1.weight": (960,),
    "neck.down_32.0.weight": (2560, 1280, 2, 2),
    "neck.down_32.1.weight": (2560,),
    "neck.down_32.2.weight": (1920, 2560, 1, 1),
    "neck.down_32.3.bias": (1920,),
    "head.convs.0.conv.weight": (256, 240, 1, 1),
    "head.convs.1.conv.weight": (256, 480, 1, 1),
    "head.convs.2.conv.weight": (256, 960, 1, 1),
    "head.convs.3.conv.weight": (256, 1920, 1, 1),
    "head.convs.3.conv.bias": (256,),
    "head.fusion_conv.conv.weight": (256, 1024, 1, 1),
    "head.up_conv1.0.weight": (256, 128, 2, 2),
    "head.up_conv1.1.weight": (128,),
    "head.up_conv1.2.weight": (128, 128, 1, 1),
    "head.up_conv1.3.bias": (128,),
    "head.up_conv2.0.weight": (128, 64, 2, 2),
    "head.up_conv2.2.weight": (64, 64, 1, 1),
    "head.up_conv2.3.weight": (64,),
    "head.conv_seg.bias": (3,),
}
VARIANT1_EXTRAS = {
    "backbone.cls_token": (1, 1, 1280),
    "backbone.pos_embed": (1, 1025, 1280),
    "backbone.fc_norm.weight": (1280,),
    "backbone.fc_norm.bias": (1280,),
    "backbone.head.weight": (1000, 1280),
    "backbone.head.bias": (1000,),
}


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("upsample,seg_in", [("x4", 64), ("x2", 128), ("x1", 256)])
def test_headline_state_dict(variant, upsample, seg_in):
    state = headline(variant, upsample).state_dict()
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for key, shape in HEADLINE_SHAPES.items():
        assert shapes[key] == shape, key
    assert shapes["head.conv_seg.weight"] == (3, seg_in, 1, 1)
    for key, shape in VARIANT1_EXTRAS.items():
        assert shapes.get(key) == (shape if variant == 1 else None), key
    per_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    block_keys = {f"backbone.blocks.{i}.{m}.{p}" for i in range(32) for m in per_block for p in ("weight", "bias")}
    fixed = {
        *(f"{m}.{p}" for m in ("patch_embed_mask.proj", "backbone.patch_embed.proj") for p in ("weight", "bias")),
        *(f"neck.down_4.{i}.{p}" for i in (0, 1, 3, 4, 5, 6) for p in ("weight", "bias")),
        *(f"neck.down_8.{i}.{p}" for i in range(4) for p in ("weight", "bias")),
        *(f"neck.down_16.{i}.{p}" for i in range(2) for p in ("weight", "bias")),
        *(f"neck.down_32.{i}.{p}" for i in range(4) for p in ("weight", "bias")),
        *(f"head.convs.{i}.conv.{p}" for i in range(4) for p in ("weight", "bias")),
        *(f"head.{m}.{p}" for m in ("fusion_conv.conv", "conv_seg") for p in ("weight", "bias")),
        *(f"head.up_conv{j}.{i}.{p}" for j in (1, 2) for i in range(4) for p in ("weight", "bias")),
    }
    expected = block_keys | fixed | (set(VARIANT1_EXTRAS) if variant == 1 else set())
    assert set(state) == expected


# ---------------------------------------------------------------------------------------------------------------------
# windowed attention


def test_window_partition_roundtrip_and_order():
    grid, window = (8, 12), 4
    x = torch.arange(2 * 96 * 3, dtype=torch.float32).reshape(2, 96, 3)
    parts = window_partition(x, grid, window)
    assert parts.shape == (2 * 2 * 3, 16, 3)
    assert torch.equal(window_unpartition(parts, grid, window), x)
    # window (image 1, row 1, col 2), token (r, c) inside it = grid token (4 + r, 8 + c) of image 1
    token = lambda r, c: 1 * 96 + (4 + r) * 12 + (8 + c)  # noqa: E731
    w = 1 * 6 + 1 * 3 + 2
    for r, c in [(0, 0), (0, 3), (2, 1), (3, 3)]:
        assert parts[w, r * 4 + c, 0].item() == 3 * token(r, c)


def test_headline_global_blocks():
    assert headline(1, "x4").global_blocks() == (7, 15, 23, 31)
    # defaults: window 224 // 14 = 16, groups of depth // 4
    with torch.device("meta"):
        model = ReferenceSegTrimap(variant=2)
    assert model.global_blocks() == (7, 15, 23, 31) and model.backbone.window_size == 16


def test_local_blocks_stay_inside_windows():
    # SMALL: 8x8 tokens, 4x4 windows, blocks 0 and 2 local, 1 and 3 global
    model = small(variant=2)
    assert model.global_blocks() == (1, 3)
    image, mask = inputs(batch=1)
    changed = image.clone()
    changed[:, :, :14, :14] += 0.5  # token (0, 0) in window (0, 0)
    with torch.no_grad():
        a, b = model.stages(image, mask), model.stages(changed, mask)
    grid = lambda t: t.reshape(8, 8, -1)  # noqa: E731
    diff0 = (grid(a["blocks"][0][0]) - grid(b["blocks"][0][0])).abs().amax(-1)
    assert diff0[:4, :4].min() > 0  # the whole window sees it
    assert diff0[4:].max() == 0 and diff0[:, 4:].max() == 0  # no other window does
    diff1 = (grid(a["blocks"][1][0]) - grid(b["blocks"][1][0])).abs().amax(-1)
    assert diff1.min() > 0  # the global block spreads it everywhere


# ---------------------------------------------------------------------------------------------------------------------
# small forward


@pytest.mark.parametrize("variant", [1, 2])
@pytest.mark.parametrize("upsample,size", [("x1", 32), ("x2", 64), ("x4", 128)])
def test_small_forward_shapes(variant, upsample, size):
    # 8x8 tokens: neck strides 14/4, 14/2, 14, 28 px; logits 4x / 8x / 16x the token grid (512 at 448 for x4)
    model = small(variant, upsample)
    image, mask = inputs()
    with torch.no_grad():
        stages = model.stages(image, mask)
    logits = stages["logits"]
    assert logits.shape == (2, 3, size, size) and torch.isfinite(logits).all()
    assert [tuple(f.shape[1:]) for f in stages["neck"]] == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]
    assert logits.std() > 0.05  # informative weights
    with torch.no_grad():
        assert torch.equal(model(image, mask), logits)


def test_mask_enters_unnormalised():
    model = small(variant=2)
    image, mask = inputs()
    with torch.no_grad():
        full, scaled = model(image, mask), model(image, mask / 255)
    assert (full - scaled).abs().max() > 1e-3


def test_pos_embed_use():
    v1 = small(variant=1, upsample="x2", seed=3)
    v2 = ReferenceSegTrimap(variant=2, upsample="x2", **SMALL, out_dims=SMALL_OUT).eval()
    assert not any("pos_embed" in k or "cls_token" in k for k in v2.state_dict())
    missing, unexpected = v2.load_state_dict(v1.state_dict(), strict=False)
    assert not missing and set(unexpected) == set(k for k in v1.state_dict() if k not in v2.state_dict())
    image, mask = inputs()
    with torch.no_grad():
        with_pos = v1(image, mask)
        v1.backbone.cls_token.add_(1.0)  # never used
        assert torch.equal(v1(image, mask), with_pos)
        v1.backbone.pos_embed[:, 0].add_(1.0)  # slot 0 is dropped
        assert torch.equal(v1(image, mask), with_pos)
        v1.backbone.pos_embed[:, 1:].zero_()
        no_pos = v1(image, mask)
        torch.testing.assert_close(v2(image, mask), no_pos, rtol=0, atol=1e-5)
    assert (with_pos - no_pos).abs().max() > 1e-2


def test_dropout_only_in_train_mode():
    model = small(upsample="x1")
    image, mask = inputs()
    with torch.no_grad():
        assert torch.equal(model(image, mask), model(image, mask))
        model.train()
        torch.manual_seed(0)
        assert not torch.equal(model(image, mask), model.eval()(image, mask))


def test_perturb_deterministic_and_informative():
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], sc[k]) for k in sa)
    for name, module in a.named_modules():
        if isinstance(module, torch.nn.LayerNorm | torch.nn.GroupNorm):
            assert 0.5 < module.weight.mean() < 1.5 and module.weight.std() > 0.01, name
        if getattr(module, "bias", None) is not None:
            assert module.bias.abs().min() > 0 and module.bias.std() > 0.01, name


# ---------------------------------------------------------------------------------------------------------------------
# original checkpoint file


@pytest.mark.parametrize("variant", [1, 2])
def test_original_checkpoint(tmp_path, variant):
    model = small(variant)
    path = save_original_checkpoint(model, tmp_path / "checkpoints", epoch=20)
    assert path.name == "020.pth"
    # weights_only refuses the pickled loss object, and it is the only foreign global
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == ["torch.nn.modules.loss.CrossEntropyLoss"]
    with pytest.raises(pickle.UnpicklingError, match="torch.nn.modules.loss.CrossEntropyLoss"):
        torch.load(path, weights_only=True)
    # torch.nn.CrossEntropyLoss is torch.nn.modules.loss.CrossEntropyLoss: allow-listing that one class suffices
    assert torch.nn.CrossEntropyLoss is torch.nn.modules.loss.CrossEntropyLoss
    with torch.serialization.safe_globals([torch.nn.CrossEntropyLoss]):
        ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"state_dict", "config"}
    config = ckpt["config"]
    assert config["class"] == CLASS_NAMES[variant]
    head = config["params"]["head_params"]
    assert head["type"] == "builtin" and head["specified"] is True
    assert isinstance(head["value"]["loss_decode"], torch.nn.CrossEntropyLoss)
    assert head["value"]["upsample"] == "x4" and head["value"]["channels"] == 64
    assert config["params"]["backbone_params"]["value"]["img_size"] == (112, 112)
    assert config["params"]["neck_params"]["value"]["out_dims"] == list(SMALL_OUT)
    state = ckpt["state_dict"]
    assert all(k.startswith("module.") for k in state)
    fresh = ReferenceSegTrimap(variant=variant, **SMALL, out_dims=SMALL_OUT).eval()
    fresh.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=True)
    image, mask = inputs()
    with torch.no_grad():
        assert torch.equal(fresh(image, mask), model(image, mask))


def test_checkpoint_without_data_parallel(tmp_path):
    model = small(variant=2, upsample="x1")
    path = save_original_checkpoint(model, tmp_path / "last_checkpoint.pth", data_parallel=False)
    assert path == tmp_path / "last_checkpoint.pth"
    state = torch.load(path, weights_only=False)["state_dict"]
    assert set(state) == set(model.state_dict())


# ---------------------------------------------------------------------------------------------------------------------
# letterbox (§7.1)


@pytest.mark.parametrize(
    "shape,geometry",
    [
        ((333, 500), (75, 0, 298, 448)),  # 298.368
        ((501, 77), (0, 189, 448, 69)),  # 68.85; odd padding 379 = 189 + 190
        ((448, 448), (0, 0, 448, 448)),
        ((10, 1000), (222, 0, 4, 448)),  # 4.48
        ((5, 896), (223, 0, 2, 448)),  # 2.5 -> 2 (half to even)
        ((7, 896), (222, 0, 4, 448)),  # 3.5 -> 4
        ((100, 50), (0, 112, 448, 224)),  # upscaling
    ],
)
def test_letterbox_geometry(shape, geometry):
    assert letterbox_geometry(*shape) == geometry
    top, left, h, w = geometry
    image = np.full((*shape, 3), 200, np.uint8)
    canvas, got = letterbox(image, 448, cv2.INTER_LINEAR)
    assert got == geometry and canvas.shape == (448, 448, 3) and canvas.dtype == np.uint8
    assert (canvas[top : top + h, left : left + w] == 200).all()
    outside = np.ones((448, 448), bool)
    outside[top : top + h, left : left + w] = False
    assert (canvas[outside] == 0).all()
    mask = (np.random.default_rng(0).random(shape) > 0.5).astype(np.uint8)
    mask_canvas, got = letterbox(mask, 448, cv2.INTER_NEAREST)
    assert got == geometry and mask_canvas.shape == (448, 448)
    assert set(np.unique(mask_canvas)) <= {0, 1}


def test_letterbox_matches_cv2_and_single_channel():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (333, 500, 3), dtype=np.uint8)
    canvas, (top, left, h, w) = letterbox(image)
    expected = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(canvas[top : top + h, left : left + w], expected)
    single = image[..., :1]
    canvas1, _ = letterbox(single, 448, cv2.INTER_NEAREST)
    assert canvas1.shape == (448, 448, 1)


# ---------------------------------------------------------------------------------------------------------------------
# original pipeline and the clean path


def test_reference_trimap_shapes():
    model = small(variant=1, upsample="x4").train()
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (90, 61, 3), dtype=np.uint8)
    mask = (rng.random((90, 61)) > 0.5).astype(np.uint8)
    classes, canvas = reference_trimap(model, image, mask, mask_scale=1.0, size=112)
    assert model.training  # mode restored
    assert classes.shape == (90, 61) and classes.dtype == np.uint8
    assert canvas.shape == (112, 112) and canvas.dtype == np.uint8
    assert set(np.unique(classes)) <= {0, 1, 2} and set(np.unique(canvas)) <= {0, 1, 2}


def test_reference_trimap_pipeline():
    model = small(variant=2, upsample="x2")
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)
    mask = (rng.random((112, 112)) > 0.5).astype(np.uint8)
    classes, canvas = reference_trimap(model, image, mask, mask_scale=1 / 255, size=112)
    # no letterboxing at the native size: the clean path is the canvas
    assert np.array_equal(classes, canvas)
    with torch.no_grad():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy(mask).float()[None, None] / 255
        logits = F.interpolate(model(x, m), size=(112, 112), mode="bilinear", align_corners=False)
    assert np.array_equal(canvas, logits.argmax(1)[0].numpy())


# ---------------------------------------------------------------------------------------------------------------------
# MAE pretrain layout and position-table resampling (§4)


def test_mae_state_dict_fits_variant1_backbone():
    mae = mae_state_dict(64, 4, 4, 14, grid=4, seed=0)
    assert set(mae) == {"model"}
    sd = mae["model"]
    assert sd["pos_embed"].shape == (1, 17, 64) and sd["cls_token"].shape == (1, 1, 64)
    assert sd["patch_embed.proj.weight"].shape == (64, 3, 14, 14) and "norm.weight" in sd
    backbone = ReferenceSegTrimap(variant=1, **SMALL, out_dims=SMALL_OUT).backbone
    loadable = {k: v for k, v in sd.items() if not k.startswith("norm.")}
    loadable["pos_embed"] = interpolate_pos_embed(sd["pos_embed"], 8)
    missing, unexpected = backbone.load_state_dict(loadable, strict=False)
    assert not unexpected and set(missing) == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert torch.equal(
        mae_state_dict(64, 4, 4, 14, 4, seed=0)["model"]["blocks.3.mlp.fc2.bias"], sd["blocks.3.mlp.fc2.bias"]
    )


def test_interpolate_pos_embed():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(1, 1 + 16 * 16, 8, generator=g)
    out = interpolate_pos_embed(table, 32)
    assert out.shape == (1, 1025, 8)
    assert torch.equal(out[:, 0], table[:, 0])
    grid = table[:, 1:].reshape(1, 16, 16, 8).permute(0, 3, 1, 2)
    bicubic = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    assert torch.equal(out[:, 1:], bicubic.permute(0, 2, 3, 1).reshape(1, 1024, 8))
    bilinear = F.interpolate(grid, size=(32, 32), mode="bilinear", align_corners=False)
    assert (bicubic - bilinear).abs().max() > 1e-2
    assert torch.equal(interpolate_pos_embed(table, 16), table)
    # a = -0.75 cubic weights at the half-pixel offsets of a 2x upsample: (-0.03515625, 0.26171875, 0.87890625, ...)
    line = torch.zeros(1, 1, 1, 9)
    line[..., 4] = 1.0
    up = F.interpolate(line, size=(1, 18), mode="bicubic", align_corners=False)[0, 0, 0]
    torch.testing.assert_close(up[7:11], torch.tensor([0.2617188, 0.8789062, 0.8789062, 0.2617188]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.zeros(1, 11, 4), 4)
