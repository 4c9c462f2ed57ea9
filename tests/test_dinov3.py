"""DINOv3 ViT: parity with timm `Eva` (perturbed weights, through the converter), the official Meta key layout,
RoPE tables, bf16, strict conversion and the RoPE rescale switch."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from parity import assert_close, nchw_to_nhwc, perturb_, save_safetensors

from jaxmatte import load_pretrained, pretrained
from jaxmatte.backbones.dinov3 import (
    PRESETS,
    DinoV3Config,
    forward,
    rope_angles,
    rope_coords,
    rope_formula_periods,
    rope_sin_cos,
)
from port import convert as cli
from port.dinov3 import backbone_state_dict, convert_state_dict, convert_state_dict_with_info
from port.table import PortError

INDICES = (0, 5, 11)
SIZE = (224, 288)


def _reference(name: str, seed: int, **overrides) -> torch.nn.Module:
    """Perturbed timm model; q and k weights ×3 so that attention is not near-uniform and RoPE matters
    (dropping RoPE then changes ViT-S tokens by 0.2 instead of 0.013)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **overrides).eval()
    perturb_(model, seed=seed + 100)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * block.attn.qkv.in_features] *= 3.0
    return model


def _image(seed: int, height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _convert(tmp_path, src, *extra: str):
    out = tmp_path / f"jax_{src.stem}_{len(list(tmp_path.iterdir()))}"
    cli.run(["dinov3", "--src", str(src), "--out", str(out), *extra])
    return out


def _run(model, x: torch.Tensor, indices=(), norm_intermediates: bool = False):
    return forward(model, jnp.asarray(nchw_to_nhwc(x)), indices=tuple(indices), norm_intermediates=norm_intermediates)


def _compare(out, final: torch.Tensor, inter: list[torch.Tensor], indices, prefix: int = 5) -> dict[str, float]:
    diffs = {"tokens": assert_close(out.tokens, final, name="final tokens")}
    b, _, d = final.shape
    h, w = out.patch_tokens.shape[1:3]
    diffs["patch_grid"] = assert_close(out.patch_tokens, final[:, prefix:].reshape(b, h, w, d), name="patch grid")
    diffs["cls"] = assert_close(out.cls_token, final[:, 0], name="cls")
    for i, ours, ref in zip(indices, out.intermediates, inter, strict=True):
        diffs[f"block{i}"] = assert_close(ours, nchw_to_nhwc(ref), name=f"block {i}")
    return diffs


def to_official(state: dict[str, torch.Tensor], *, seed: int, mask: bool = True) -> dict[str, torch.Tensor]:
    """timm Eva keys -> Meta's official layout (storage_tokens, ls*.gamma, qkv.bias + bias_mask, mask_token,
    w1/w2/w3 SwiGLU, bf16 rope periods). Garbage is put in the k third of qkv.bias: bias_mask must remove it."""
    g = torch.Generator().manual_seed(seed)
    swiglu = any(".mlp.fc1_g." in k for k in state)
    names = [("reg_token", "storage_tokens"), (".gamma_1", ".ls1.gamma"), (".gamma_2", ".ls2.gamma")]
    if swiglu:
        names += [(".mlp.fc1_g.", ".mlp.w1."), (".mlp.fc1_x.", ".mlp.w2."), (".mlp.fc2.", ".mlp.w3.")]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((".q_bias", ".v_bias")):
            continue
        for old, new in names:
            key = key.replace(old, new)
        out[key] = value.clone()
    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    for i in range(depth):
        q = state.get(f"blocks.{i}.attn.q_bias", torch.zeros(dim))
        v = state.get(f"blocks.{i}.attn.v_bias", torch.zeros(dim))
        k = torch.randn(dim, generator=g)
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, k, v])
        if mask:
            out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["mask_token"] = torch.randn(1, dim, generator=g)
    periods = 100.0 ** (2 * torch.arange(16, dtype=torch.float32) / 32)
    out["rope_embed.periods"] = periods.to(torch.bfloat16)
    return out


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in state.items()}


def _assert_same_params(a, b) -> None:
    va, vb = pretrained.stored_values(a), pretrained.stored_values(b)
    assert sorted(va) == sorted(vb)
    for key in va:
        np.testing.assert_array_equal(va[key], vb[key], err_msg=key)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Perturbed timm ViT-S/16 at 224x288, converted from safetensors through the CLI, with reference outputs."""
    tmp = tmp_path_factory.mktemp("dinov3_small")
    ref = _reference("vit_small_patch16_dinov3", seed=0)
    src = save_safetensors(ref, tmp / "vit_small_patch16_dinov3.safetensors")
    out_dir = _convert(tmp, src, "--preset", "vit_small_patch16_dinov3")
    x = _image(1, *SIZE)
    with torch.no_grad():
        final, inter = ref.forward_intermediates(x, indices=list(INDICES))
    model = load_pretrained(out_dir)
    return SimpleNamespace(
        tmp=tmp, ref=ref, src=src, dir=out_dir, x=x, final=final, inter=inter, model=model, out=_run(model, x, INDICES)
    )


# ----------------------------------------------------------------------------------------------------------- parity


def test_timm_small_parity(small):
    diffs = _compare(small.out, small.final, small.inter, INDICES)
    print("vit_small_patch16_dinov3 224x288 max|diff|:", diffs, "max|ref|", float(small.final.abs().max()))
    assert small.out.tokens.shape == (2, 5 + 14 * 18, 384)
    normed = _run(small.model, small.x, (-1,), norm_intermediates=True)
    np.testing.assert_array_equal(np.asarray(normed.intermediates[0]), np.asarray(small.out.patch_tokens))
    _, config, info = pretrained.read_config(small.dir)
    assert config == PRESETS["small"]
    assert info["layout"] == "timm" and info["rope_periods"] == "formula"


def test_official_layout(small, tmp_path):
    """The same weights in Meta's layout (.pth, {'model': ...}): formula periods match timm; the stored bf16
    periods (faithful mode, the default for official files) shift the output slightly."""
    official = to_official(small.ref.state_dict(), seed=5)
    src = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save({"model": official}, src)

    plain_dir = _convert(tmp_path, src, "--preset", "vit_small_patch16_dinov3", "--no-faithful-periods")
    plain = load_pretrained(plain_dir)
    _assert_same_params(plain, small.model)  # all-zero q/v bias dropped for the bias-free preset, k garbage masked
    out = _run(plain, small.x, INDICES)
    diffs = _compare(out, small.final, small.inter, INDICES)
    print("official layout, formula periods, max|diff| vs timm:", diffs)
    _, config, info = pretrained.read_config(plain_dir)
    assert config.rope_periods is None and info["layout"] == "official"
    assert 1e-4 < info["rope_periods_max_rel_deviation"] < 2e-3

    faithful_dir = _convert(tmp_path, src)
    _, config, info = pretrained.read_config(faithful_dir)
    bf16_periods = official["rope_embed.periods"].float().numpy()
    assert config.rope_periods == tuple(float(p) for p in bf16_periods)
    assert config.qkv_bias and info["rope_periods"] == "stored (faithful)"
    faithful = _run(load_pretrained(faithful_dir), small.x, INDICES)
    # reference for faithful mode: timm's RoPE (numerically Meta's) with the stored bf16 periods
    formula = small.ref.rope.periods.clone()
    try:
        small.ref.rope.periods.copy_(torch.from_numpy(bf16_periods))
        with torch.no_grad():
            final, inter = small.ref.forward_intermediates(small.x, indices=list(INDICES))
    finally:
        small.ref.rope.periods.copy_(formula)
    diffs = _compare(faithful, final, inter, INDICES)
    print("official layout, faithful bf16 periods, max|diff| vs timm with the same periods:", diffs)
    change = np.abs(np.asarray(faithful.tokens) - np.asarray(out.tokens)).max()
    scale = float(small.final.abs().max())
    print(f"faithful bf16 periods change the tokens by max {change:.3g} (relative {change / scale:.3g})")
    assert 5e-5 < change / scale < 1e-2  # fp32 parity noise is ~1e-6 relative


def test_official_bias_mask_and_containers(small):
    """q/v bias survives the official layout; bias_mask missing or NaN -> structural mask; wrappers and prefixes."""
    ref = _reference("vit_small_patch16_dinov3_qkvb", seed=3, depth=2)
    timm_model, timm_config = convert_state_dict(_numpy(ref.state_dict()))
    assert timm_config.qkv_bias and timm_config.depth == 2
    official = to_official(ref.state_dict(), seed=7)
    model, config, info = convert_state_dict_with_info(_numpy(official), faithful_periods=False)
    assert info["qkv_bias_mask"] == "stored" and config == timm_config
    _assert_same_params(model, timm_model)

    unmasked = to_official(ref.state_dict(), seed=7, mask=False)
    model, _, info = convert_state_dict_with_info(_numpy(unmasked), faithful_periods=False)
    assert info["qkv_bias_mask"] == "structural"
    _assert_same_params(model, timm_model)
    nan_mask = _numpy(official) | {"blocks.1.attn.qkv.bias_mask": np.full(3 * 384, np.nan, np.float32)}
    model, _, info = convert_state_dict_with_info(nan_mask, faithful_periods=False)
    assert info["qkv_bias_mask"] == "structural"
    _assert_same_params(model, timm_model)

    ones_mask = _numpy(official) | {"blocks.0.attn.qkv.bias_mask": np.ones(3 * 384, np.float32)}
    with pytest.raises(PortError, match="non-zero k bias"):
        convert_state_dict(ones_mask)

    whole = {
        "epoch": 4,
        "model_state_dict": {f"encoder.dinov3.{k}": v for k, v in _numpy(official).items()}
        | {"decoder.input_proj.weight": np.zeros((256, 384, 1, 1), np.float32)},
    }
    for container in (whole, {"model": {f"module.{k}": v for k, v in _numpy(official).items()}}):
        model, _ = convert_state_dict(backbone_state_dict(container), faithful_periods=False)
        _assert_same_params(model, timm_model)


def test_qkvb_parity(tmp_path):
    ref = _reference("vit_small_patch16_dinov3_qkvb", seed=11, depth=4)
    assert float(ref.blocks[0].attn.q_bias.detach().abs().max()) > 0.05  # perturbed
    src = save_safetensors(ref, tmp_path / "qkvb.safetensors")
    model = load_pretrained(_convert(tmp_path, src))
    x = _image(12, 160, 128)
    with torch.no_grad():
        final, inter = ref.forward_intermediates(x, indices=[1, 3])
    diffs = _compare(_run(model, x, (1, -1)), final, inter, (1, 3))
    print("vit_small_patch16_dinov3_qkvb (depth 4) 160x128 max|diff|:", diffs)
    assert model.config.qkv_bias


@pytest.mark.parametrize(
    ("name", "depth", "size"),
    [("vit_small_plus_patch16_dinov3", 3, (128, 176)), ("vit_huge_plus_patch16_dinov3", 1, (96, 64))],
)
def test_swiglu_plus_parity(tmp_path, name, depth, size):
    ref = _reference(name, seed=21, depth=depth)
    src = save_safetensors(ref, tmp_path / f"{name}.safetensors")
    preset = name.split("_patch16")[0].removeprefix("vit_")
    out_dir = _convert(tmp_path, src)
    model = load_pretrained(out_dir)
    assert model.config == dataclasses.replace(PRESETS[preset], depth=depth)
    assert model.config.mlp_hidden == ref.blocks[0].mlp.fc1_g.out_features
    x = _image(22, *size)
    with torch.no_grad():
        final, inter = ref.forward_intermediates(x, indices=[depth - 1])
    diffs = _compare(_run(model, x, (depth - 1,)), final, inter, (depth - 1,))
    print(f"{name} (depth {depth}) {size} max|diff|:", diffs)


def test_bf16(small):
    model = load_pretrained(small.dir, dtype=jnp.bfloat16)
    out = _run(model, small.x)
    assert out.tokens.dtype == jnp.bfloat16
    ours = np.asarray(out.tokens, np.float32)
    ref = np.asarray(small.out.tokens)
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    print(f"bf16 vs fp32 relative error {rel:.3g}")
    assert rel <= 3e-2


# ------------------------------------------------------------------------------------------------------------ RoPE


@pytest.mark.parametrize(("h", "w"), [(14, 14), (14, 18), (5, 3), (1, 7)])
def test_rope_tables_match_timm(h, w):
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

    rope = RotaryEmbeddingDinoV3(64, temperature=100, rotate_half=True)
    sin_ref, cos_ref = rope.get_embed(shape=[h, w]).chunk(2, dim=-1)
    sin, cos = rope_sin_cos(h, w, 64)
    assert_close(sin, sin_ref, atol=1e-6, rel=1e-6, name="sin")
    assert_close(cos, cos_ref, atol=1e-6, rel=1e-6, name="cos")
    np.testing.assert_allclose(rope_formula_periods(64), rope.periods.numpy(), rtol=1e-6)


def test_rope_rescale_switch(small):
    x = jnp.asarray(nchw_to_nhwc(small.x[:1, :, :64, :96]))
    two_blocks = {k: v for k, v in pretrained.stored_values(small.model).items() if not k.startswith("blocks.")}
    two_blocks |= {
        k: v for k, v in pretrained.stored_values(small.model).items() if k.startswith(("blocks.0.", "blocks.1."))
    }
    config = dataclasses.replace(small.model.config, depth=2)
    model = pretrained.fill(pretrained.abstract_model("dinov3", config), two_blocks)
    assert model.config.rope_rescale is None
    eval_out = forward(model, x).tokens
    model.train()
    try:
        train_out = forward(model, x).tokens
    finally:
        model.eval()
    np.testing.assert_array_equal(np.asarray(train_out), np.asarray(eval_out))  # off by default

    config = dataclasses.replace(model.config, rope_rescale=2.0)
    augmented = pretrained.fill(pretrained.abstract_model("dinov3", config), pretrained.stored_values(model))
    np.testing.assert_array_equal(np.asarray(forward(augmented, x).tokens), np.asarray(eval_out))  # eval: no rescale
    augmented.train()
    first = np.asarray(forward(augmented, x).tokens)
    second = np.asarray(forward(augmented, x).tokens)
    assert np.abs(first - np.asarray(eval_out)).max() > 1e-3
    assert np.abs(first - second).max() > 1e-3  # new draws on every call

    # one log-uniform factor in [0.5, 2] per block: recover it from the row angle of the longest period (no wrap)
    tables = augmented._rope_tables(4, 6)
    base = rope_angles(rope_coords(4, 6), rope_formula_periods(64))[:, 15]
    scales = [np.median(np.arctan2(np.asarray(sin), np.asarray(cos))[:, 15] / base) for sin, cos in tables]
    assert len(tables) == config.depth
    assert all(0.5 <= s <= 2.0 for s in scales), scales
    assert len({round(float(s), 5) for s in scales}) == config.depth, scales


# ------------------------------------------------------------------------------------------------------ refusals


def test_strict_refusal(small, tmp_path):
    state = _numpy(small.ref.state_dict())
    del state["blocks.0.norm1.weight"]
    state["blocks.0.attn.extra_scale"] = np.ones(384, np.float32)
    state["blocks.1.attn.proj.weight"] = np.zeros((384, 192), np.float32)
    with pytest.raises(PortError) as err:
        convert_state_dict(state)
    message = str(err.value)
    assert "blocks.0.norm1.scale" in message and "missing" in message
    assert "unexpected key blocks.0.attn.extra_scale" in message
    assert "shape mismatch blocks.1.attn.proj.weight" in message

    from safetensors.numpy import save_file

    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad))
    assert cli.main(["dinov3", "--src", str(bad), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
    # a size that disagrees with the requested preset
    assert cli.main(["dinov3", "--src", str(small.src), "--out", str(tmp_path / "b"), "--preset", "base"]) == 2


def test_config_round_trip_and_presets():
    from jaxmatte import registry

    for name, config in PRESETS.items():
        assert (
            registry.config_from_dict(DinoV3Config, json.loads(json.dumps(registry.config_to_dict(config)))) == config
        )
        assert config.head_dim == 64, name
    assert PRESETS["huge_plus"].mlp_hidden == 5120 and PRESETS["small_plus"].mlp_hidden == 1536
    faithful = dataclasses.replace(PRESETS["small"], rope_periods=tuple(float(p) for p in rope_formula_periods(64)))
    assert registry.config_from_dict(DinoV3Config, registry.config_to_dict(faithful)) == faithful
    with pytest.raises(ValueError, match="rope_periods"):
        dataclasses.replace(PRESETS["small"], rope_periods=(1.0, 2.0))
    tiny = pretrained.abstract_model("dinov3", dataclasses.replace(PRESETS["small"], depth=1))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny(jnp.zeros((1, 32, 40, 3)))
    with pytest.raises(ValueError, match="out of range"):
        tiny(jnp.zeros((1, 32, 48, 3)), indices=(1,))
