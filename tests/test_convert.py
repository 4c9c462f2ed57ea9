"""The conversion front end: safe checkpoint reading, wrappers, dtype upcast, timm resizing, converted directories."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from parity import assert_close, perturb_, save_safetensors

import jaxmatte
from port import convert, load


class _Payload:
    """Pickles to a call that creates a file: loading it must never run that call."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_code_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": _Payload(str(marker))}, path)
    with pytest.raises(load.CheckpointError, match="evil.pth.*weights-only"):
        load.read_checkpoint(path)
    assert not marker.exists()


def test_numpy_metadata_loads_weights_only(tmp_path):
    path = tmp_path / "last_model.pth"
    history = [{"epoch": 0, "sad": np.float64(31.4), "mae": np.float32(0.1)}]
    torch.save({"state_dict": {"w": torch.ones(2)}, "history": history, "best_sad": np.array(3.5)}, path)
    checkpoint = load.read_checkpoint(path)
    assert checkpoint["history"][0]["sad"] == pytest.approx(31.4) and float(checkpoint["best_sad"]) == 3.5
    np.testing.assert_array_equal(load.unwrap_state_dict(checkpoint)["w"], np.ones(2, np.float32))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_half_precision_tensors_are_upcast(tmp_path, dtype, suffix):
    values = torch.randn(3, 5).to(dtype)
    path = tmp_path / f"half{suffix}"
    if suffix == ".pth":
        torch.save({"a.weight": values}, path)
    else:
        from safetensors.torch import save_file

        save_file({"a.weight": values}, str(path))
    state = load.load_state_dict(path)
    assert state["a.weight"].dtype == np.float32
    np.testing.assert_array_equal(state["a.weight"], values.float().numpy())


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "model_state_dict"])
def test_wrappers_and_module_prefix(tmp_path, wrapper):
    inner = {"module.blocks.0.weight": torch.ones(2), "module.norm.bias": torch.zeros(2)}
    path = tmp_path / "wrapped.pth"
    torch.save({wrapper: inner, "epoch": 3, "optimizer": {"state": {}}}, path)
    assert sorted(load.load_state_dict(path)) == ["blocks.0.weight", "norm.bias"]


def test_unreadable_inputs_name_the_file(tmp_path):
    with pytest.raises(load.CheckpointError, match="missing.pth: no such file"):
        load.read_checkpoint(tmp_path / "missing.pth")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(load.CheckpointError, match="garbage.safetensors"):
        load.read_checkpoint(garbage)
    no_tensors = tmp_path / "meta.pth"
    torch.save({"epoch": 1, "note": "nothing here"}, no_tensors)
    with pytest.raises(load.CheckpointError, match="meta.pth: no state dict found"):
        load.load_state_dict(no_tensors)


def test_fp16_release_file_converts_like_fp32(tmp_path):
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=2).eval()
    perturb_(reference)
    half = {k: v.half() for k, v in reference.state_dict().items()}
    torch.save({"model": half}, tmp_path / "half.pth")
    convert.main(["vit", "--src", str(tmp_path / "half.pth"), "--out", str(tmp_path / "out")])
    ported = jaxmatte.load_pretrained(tmp_path / "out")
    expected = {k: v.float().numpy() for k, v in half.items()}
    np.testing.assert_array_equal(
        np.asarray(ported.blocks[1].mlp.fc1.kernel[...]), expected["blocks.1.mlp.fc1.weight"].T
    )
    np.testing.assert_array_equal(np.asarray(ported.pos_embed[...]), expected["pos_embed"])


def _timm_resized(name: str, src, **overrides):
    model = timm.create_model(
        name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(src)}, **overrides
    )
    return model.eval()


def test_timm_resizes_vit_position_embedding_before_conversion(tmp_path):
    name = "vit_tiny_patch16_224"
    source = timm.create_model(name, pretrained=False, num_classes=0).eval()
    perturb_(source)
    src = save_safetensors(source, tmp_path / "vit_tiny.safetensors")
    out = tmp_path / "vit_288"
    convert.run(["vit", "--src", str(src), "--out", str(out), "--timm-model", name, "--img-size", "288"])
    ported = jaxmatte.load_pretrained(out)
    assert ported.config.img_size == (288, 288)

    resized = _timm_resized(name, src, img_size=288)
    assert not np.allclose(resized.pos_embed.detach().numpy()[:, 1:197], source.pos_embed.detach().numpy()[:, 1:])
    x = torch.randn(2, 3, 288, 288, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = resized.forward_features(x)
    tokens = ported(jnp.asarray(x.numpy().transpose(0, 2, 3, 1))).tokens
    assert_close(tokens, expected, name="vit_tiny@288 tokens")


def test_timm_resizes_swin_window_before_conversion(tmp_path):
    name = "swin_tiny_patch4_window7_224"
    source = timm.create_model(name, pretrained=False, num_classes=0).eval()
    perturb_(source)
    src = save_safetensors(source, tmp_path / "swin_tiny.safetensors")
    out = tmp_path / "swin_w8"
    args = [
        "swin",
        "--src",
        str(src),
        "--out",
        str(out),
        "--timm-model",
        name,
        "--img-size",
        "256",
        "--window-size",
        "8",
    ]
    convert.run(args)
    ported = jaxmatte.load_pretrained(out)
    table = ported.layers[0].blocks[0].attn.relative_position_bias_table[...]
    assert table.shape == (15 * 15, 3)

    resized = _timm_resized(name, src, img_size=256, window_size=8)
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = resized.forward_intermediates(x, norm=False, intermediates_only=True)
    stages = ported(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
    for i, (ours, ref) in enumerate(zip(stages, expected, strict=True)):
        assert_close(ours, ref.permute(0, 2, 3, 1), name=f"swin window 8 stage {i}")


def test_resize_options_need_the_timm_model(tmp_path):
    with pytest.raises(SystemExit, match="need --timm-model"):
        convert.run(["vit", "--src", str(tmp_path / "x.pth"), "--out", str(tmp_path / "o"), "--img-size", "448"])


def test_load_pretrained_reports_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        jaxmatte.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"family": "swin", "config": {"no_such_field": 1}}))
    with pytest.raises(ValueError, match="no_such_field"):
        jaxmatte.load_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"family": "nonexistent", "config": {}}))
    with pytest.raises(ValueError, match="unknown model family .nonexistent."):
        jaxmatte.load_pretrained(tmp_path)
