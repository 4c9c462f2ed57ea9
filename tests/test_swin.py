"""Swin v1 backbone: parity with timm (perturbed weights) through the `port/convert.py swin` CLI, per stage."""

from __future__ import annotations

import dataclasses
import json
import time

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from parity import assert_close, nchw_to_nhwc, perturb_, save_safetensors, timed

import jaxmatte
from jaxmatte import pretrained, registry
from jaxmatte.backbones import swin
from port import convert, load
from port import swin as port_swin
from port.table import PortError

SMALL = {"depths": (1, 1, 2, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}
SMALL_CONFIG = swin.SwinConfig(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), window_size=7)


def _timm_swin(name: str, seed: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs).eval()
    perturb_(model, seed)
    return model


def _image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _features(model: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    """NHWC stage outputs of a timm features_only model or (forward_intermediates) a plain one."""
    with torch.no_grad():
        if isinstance(model, timm.models.SwinTransformer):
            outs = model.forward_intermediates(x, norm=False, output_fmt="NCHW", intermediates_only=True)
            return [nchw_to_nhwc(o) for o in outs]
        return [o.numpy() for o in model(x)]


def _convert(tmp, src, *options) -> nnx.Module:
    out = tmp / "converted"
    assert convert.main(["swin", "--src", str(src), "--out", str(out), *options]) == 0
    return jaxmatte.load_pretrained(out)


def _compare(ours, ref, label, **tol) -> list[float]:
    assert len(ours) == len(ref) == 4
    diffs = [
        assert_close(o, r, name=f"{label} stage {i}", **tol) for i, (o, r) in enumerate(zip(ours, ref, strict=True))
    ]
    print(f"{label}: max|diff| per stage " + " ".join(f"{d:.2e}" for d in diffs))
    return diffs


# ---------------------------------------------------------------------------------------------------------------------
# Full-size references at 896 (shared by module-scoped fixtures; each forward costs seconds on 2 cores)


@pytest.fixture(scope="module")
def base7_896(tmp_path_factory):
    """The TSR backbone: swin_base_patch4_window7_224 features_only at 896, saved as `{'state_dict': backbone.*}`."""
    tmp = tmp_path_factory.mktemp("swin_base7")
    model = _timm_swin("swin_base_patch4_window7_224", 0, features_only=True, out_indices=(0, 1, 2, 3), img_size=896)
    x = _image((1, 3, 896, 896), 0)
    start = time.perf_counter()
    ref = _features(model, x)
    print(f"torch swin-B/7 896: {time.perf_counter() - start:.2f}s")
    src = tmp / "tsr_backbone.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, src)
    del model
    ours = _convert(tmp, src, "--preset", "swin_base_patch4_window7_224")
    out = timed("jax swin-B/7 896 (jit + run)", swin.forward, ours, jnp.asarray(nchw_to_nhwc(x)))
    return {"dir": tmp / "converted", "ref": ref, "out": [np.asarray(o) for o in out]}


def test_base7_896_tsr_backbone(base7_896):
    _compare(base7_896["out"], base7_896["ref"], "swin-B/7 896")
    assert [o.shape for o in base7_896["out"]] == [(1, 224, 224, 128), (1, 112, 112, 256), (1, 56, 56, 512),
                                                   (1, 28, 28, 1024)]  # fmt: skip
    meta = json.loads((base7_896["dir"] / "config.json").read_text())
    assert meta["family"] == "swin"
    assert meta["info"]["layout"] == "timm features_only"
    _, config, _ = pretrained.read_config(base7_896["dir"])
    assert config == swin.PRESETS["swin_base_patch4_window7_224"]


@pytest.fixture(scope="module")
def base12_896(tmp_path_factory):
    """swin_base_patch4_window12_384 built at 896 (pad path everywhere: 224/112/56/28 are not multiples of 12)."""
    tmp = tmp_path_factory.mktemp("swin_base12")
    model = _timm_swin("swin_base_patch4_window12_384", 1, img_size=896)
    assert "head.fc.weight" in model.state_dict()
    x = _image((1, 3, 896, 896), 1)
    ref = _features(model, x)
    src = save_safetensors(model, tmp / "swin_base12.safetensors")
    del model
    ours = _convert(tmp, src)
    out = timed("jax swin-B/12 896 (jit + run)", swin.forward, ours, jnp.asarray(nchw_to_nhwc(x)))
    return {"dir": tmp / "converted", "ref": ref, "out": [np.asarray(o) for o in out]}


def test_base12_896_pad_path(base12_896):
    _compare(base12_896["out"], base12_896["ref"], "swin-B/12 896")
    _, config, _ = pretrained.read_config(base12_896["dir"])
    assert config == swin.PRESETS["swin_base_patch4_window12_384"]


# ---------------------------------------------------------------------------------------------------------------------
# Small models: other sizes, clamped windows, layouts


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Small Swin (1.7 M parameters), features_only keys `layers_N.`, converted once at 224 x 320."""
    tmp = tmp_path_factory.mktemp("swin_small")
    model = _timm_swin("swin_tiny_patch4_window7_224", 2, features_only=True, img_size=(224, 320), **SMALL)
    x = _image((2, 3, 224, 320), 2)
    src = save_safetensors(model, tmp / "small.safetensors")
    ours = _convert(tmp, src)
    return {"dir": tmp / "converted", "src": src, "model": model, "ours": ours, "x": x, "ref": _features(model, x)}


def test_small_non_square(small):
    assert [o.shape[1:3] for o in small["ref"]] == [(56, 80), (28, 40), (14, 20), (7, 10)]
    _compare(swin.forward(small["ours"], jnp.asarray(nchw_to_nhwc(small["x"]))), small["ref"], "small 224x320")
    _, config, _ = pretrained.read_config(small["dir"])
    assert config == SMALL_CONFIG


def test_small_other_input_size(small):
    """One converted model at another input size equals timm built for that size (same weights, same tables)."""
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=(256, 224), **SMALL).eval()
    timm_keys = {k.replace("layers_", "layers."): v for k, v in small["model"].state_dict().items()}
    missing, unexpected = model.load_state_dict(timm_keys, strict=False)
    assert set(missing) == {"norm.weight", "norm.bias", "head.fc.weight", "head.fc.bias"} and not unexpected
    assert [tuple(stage.blocks[0].window_size) for stage in model.layers] == [(7, 7)] * 4  # 8 x 7 last stage pads
    x = _image((1, 3, 256, 224), 3)
    _compare(swin.forward(small["ours"], jnp.asarray(nchw_to_nhwc(x))), _features(model, x), "small 256x224")


@pytest.mark.parametrize(
    ("img_size", "window", "windows"),
    [
        # odd PatchMerging inputs (25 -> 13 -> 7 -> 4, 41 -> 21 -> 11 -> 6), windows clamped non-square
        ((100, 164), 12, ((12, 12), (12, 12), (7, 11), (4, 6))),
        # stage 2 (7 x 10) shifts columns only, stage 3 (4 x 5) clamped
        ((100, 160), 7, ((7, 7), (7, 7), (7, 7), (4, 5))),
        # pad path with shifts (64/32/16 with window 12), last stage clamped to a square 8x8 table
        ((256, 256), 12, ((12, 12), (12, 12), (12, 12), (8, 8))),
    ],
)
def test_small_clamped_windows_and_final_norm(tmp_path, img_size, window, windows):
    model = _timm_swin("swin_tiny_patch4_window7_224", 4, img_size=img_size, window_size=window, **SMALL)
    built = [tuple(b.window_size) for stage in model.layers for b in stage.blocks[:1]]
    assert tuple(built) == windows
    src = save_safetensors(model, tmp_path / "clamped.safetensors")
    size = [str(s) for s in img_size]
    ours = _convert(tmp_path, src, "--final-norm", "--built-img-size", *size)
    _, config, _ = pretrained.read_config(tmp_path / "converted")
    assert config.table_windows == windows and config.final_norm
    assert config == dataclasses.replace(SMALL_CONFIG, window_size=window, final_norm=True).built_for(img_size)
    x = _image((1, 3, *img_size), 4)
    with torch.no_grad():
        ref = model.forward_intermediates(x, norm=True, output_fmt="NCHW", intermediates_only=True)
    _compare(swin.forward(ours, jnp.asarray(nchw_to_nhwc(x))), [nchw_to_nhwc(r) for r in ref], f"clamped {img_size}")
    if windows[2][0] != windows[2][1]:  # a non-square table cannot be read without the built size
        with pytest.raises(PortError, match="--built-img-size"):
            port_swin.convert_state_dict(load.load_state_dict(src))


def test_microsoft_layout_is_remapped(small, tmp_path):
    """Original layout (downsample at the end of stages 0..2, `head.*`, persisted buffers) gives the same parameters."""
    sd = {k.replace("layers_", "layers."): v for k, v in small["model"].state_dict().items()}
    original = {}
    for key, value in sd.items():
        if ".downsample." in key:
            stage = int(key.split(".")[1])
            key = key.replace(f"layers.{stage}.", f"layers.{stage - 1}.", 1)
        original[key] = value
    original["head.weight"] = torch.zeros(10, 256)
    original["layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    original["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 49, 49)
    assert "layers.0.downsample.reduction.weight" in original and "layers.3.downsample.norm.weight" not in original
    src = tmp_path / "original.pth"
    torch.save({"model": original}, src)
    ours = _convert(tmp_path, src)
    assert json.loads((tmp_path / "converted" / "config.json").read_text())["info"]["layout"] == "microsoft"
    expected = pretrained.stored_values(small["ours"])
    got = pretrained.stored_values(ours)
    assert expected.keys() == got.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_preset_must_agree(small, tmp_path):
    out = tmp_path / "out"
    argv = ["swin", "--src", str(small["src"]), "--out", str(out), "--preset", "swin_tiny_patch4_window7_224"]
    assert convert.main(argv) == 2
    assert not out.exists()
    with pytest.raises(PortError, match=r"embed_dim 96 \(file: 32\).*depths"):
        port_swin.convert_state_dict(load.load_state_dict(small["src"]), swin.PRESETS["tiny"])


def test_strict_refusal(small, tmp_path):
    sd = load.load_state_dict(small["src"])
    del sd["layers_2.blocks.1.mlp.fc2.bias"]
    sd["layers_2.blocks.1.attn.extra"] = np.zeros(3, np.float32)
    sd["layers_1.blocks.0.attn.proj.weight"] = sd["layers_1.blocks.0.attn.proj.weight"][:, :-1]
    with pytest.raises(PortError) as err:
        port_swin.convert_state_dict(sd)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "nothing fills layers.2.blocks.1.mlp.fc2.bias" in message
    assert "unexpected key layers_2.blocks.1.attn.extra" in message
    assert "shape mismatch layers_1.blocks.0.attn.proj.weight" in message
    src = tmp_path / "broken.safetensors"
    from safetensors.numpy import save_file

    save_file(sd, str(src))
    assert convert.main(["swin", "--src", str(src), "--out", str(tmp_path / "out")]) == 2


def test_bf16(small):
    x = jnp.asarray(nchw_to_nhwc(small["x"]))
    ref = swin.forward(small["ours"], x)
    low = jaxmatte.load_pretrained(small["dir"], dtype=jnp.bfloat16)
    out = swin.forward(low, x)
    assert out[-1].dtype == jnp.bfloat16
    for i, (o, r) in enumerate(zip(out, ref, strict=True)):
        rel = float(jnp.abs(o.astype(jnp.float32) - r).max() / jnp.abs(r).max())
        print(f"bf16 stage {i}: relative error {rel:.2e}")
        assert rel <= 3e-2


def test_drop_path(small):
    config = dataclasses.replace(SMALL_CONFIG, drop_path_rate=0.5)
    model = swin.SwinTransformer(config, rngs=nnx.Rngs(0, dropout=1))
    nnx.update(model, nnx.state(small["ours"], nnx.Param))
    rates = [b.drop_path1.rate for stage in model.layers for b in stage.blocks]
    np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 5))
    x = jnp.asarray(nchw_to_nhwc(small["x"]))
    reference = swin.forward(small["ours"], x)
    model.train()
    first, second = swin.forward(model, x), swin.forward(model, x)
    assert float(jnp.abs(first[-1] - second[-1]).max()) > 1e-3
    assert float(jnp.abs(first[-1] - reference[-1]).max()) > 1e-3
    model.eval()
    for o, r in zip(swin.forward(model, x), reference, strict=True):
        np.testing.assert_array_equal(np.asarray(o), np.asarray(r))


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks against timm's own functions


@pytest.mark.parametrize("window", [(7, 7), (4, 6), (12, 12)])
def test_relative_position_index_matches_timm(window):
    from timm.models.swin_transformer import get_relative_position_index

    ref = get_relative_position_index(*window).reshape(-1).numpy()
    np.testing.assert_array_equal(swin.relative_position_index(window, window), ref)


def test_central_table_part_for_smaller_windows():
    """A window smaller than the table reads the rows of its own relative offsets."""
    big = swin.relative_position_index((3, 3), (5, 5))
    offsets = np.stack(np.unravel_index(big, (9, 9)), -1) - 4  # (d_row, d_col) of each pair
    rows, cols = np.divmod(np.arange(9), 3)
    expected = np.stack([rows[:, None] - rows[None], cols[:, None] - cols[None]], -1).reshape(-1, 2)
    np.testing.assert_array_equal(offsets, expected)


@pytest.mark.parametrize(("size", "window", "shift"), [((14, 14), (7, 7), (3, 3)), ((16, 28), (12, 12), (6, 6)),
                                                        ((7, 14), (7, 7), (0, 3))])  # fmt: skip
def test_shift_mask_matches_timm(size, window, shift):
    """Region mask on the padded map (16 x 28 with window 12 pads to 24 x 36)."""
    from timm.models.swin_transformer import SwinTransformerBlock

    block = SwinTransformerBlock(dim=8, input_resolution=size, num_heads=1, window_size=window, shift_size=max(shift))
    assert tuple(block.window_size) == window and tuple(block.shift_size) == shift
    ref = block.attn_mask.numpy()
    padded = tuple(-(-s // w) * w for s, w in zip(size, window, strict=True))
    ids = swin.shift_regions(padded, window, shift)
    ours = np.where(ids[:, :, None] == ids[:, None, :], 0.0, swin.MASK_VALUE)
    np.testing.assert_array_equal(ours, ref)


def test_built_for_matches_timm_windows():
    for img_size, window in [((224, 224), 7), ((100, 160), 7), ((96, 416), 12), ((64, 64), 12)]:
        model = timm.create_model(
            "swin_tiny_patch4_window7_224", pretrained=False, img_size=img_size, window_size=window, **SMALL
        )
        built = tuple(tuple(stage.blocks[0].window_size) for stage in model.layers)
        config = dataclasses.replace(SMALL_CONFIG, window_size=window).built_for(img_size)
        assert config.table_windows == built, img_size
        shapes = [tuple(stage.blocks[0].attn.relative_position_bias_table.shape) for stage in model.layers]
        ours = swin.SwinTransformer(config, rngs=nnx.Rngs(0))
        assert [tuple(s.blocks[0].attn.relative_position_bias_table.shape) for s in ours.layers] == shapes


def test_config_round_trip_and_presets():
    config = dataclasses.replace(SMALL_CONFIG, stage_window_sizes=((7, 7), (7, 7), (7, 11), (4, 6)), final_norm=True)
    values = json.loads(json.dumps(registry.config_to_dict(config)))
    assert registry.config_from_dict(swin.SwinConfig, values) == config
    assert swin.PRESETS["base384"] == swin.PRESETS["swin_base_patch4_window12_384"]
    assert swin.SwinConfig.preset("large").window_size == 12 and swin.PRESETS["large"].embed_dim == 192
    for name in ("swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224",
                 "swin_base_patch4_window12_384", "swin_large_patch4_window12_384"):  # fmt: skip
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0)
        abstract = pretrained.abstract_model("swin", swin.PRESETS[name])
        shapes = {k: v.shape for k, v in pretrained.stored_shapes(abstract).items()}
        empty = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in model.state_dict().items()}
        values, _, problems = port_swin.table(swin.PRESETS[name]).map(empty)
        assert not problems
        assert {k: v.shape for k, v in values.items()} == shapes, name
    with pytest.raises(ValueError, match="not divisible"):
        swin.SwinTransformer(SMALL_CONFIG, rngs=nnx.Rngs(0))(jnp.zeros((1, 30, 32, 3)))
