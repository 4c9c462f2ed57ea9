"""ViT / MAE backbone: parity with timm (plain) and with a torch SimpleClick window schedule, through the converter."""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import timm
import torch
from flax import nnx
from parity import assert_close, nchw_to_nhwc, perturb_, save_safetensors

import jaxmatte
from jaxmatte.backbones import vit
from port import convert, load
from port import vit as port_vit
from port.table import PortError


def _timed(label, fn, *args, **kwargs):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args, **kwargs))
    print(f"{label}: {time.perf_counter() - start:.2f}s")
    return out


def _timm_vit(name: str, seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **{"num_classes": 0, **overrides}).eval()
    perturb_(model, seed)
    return model


def _image(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def _nhwc(x: torch.Tensor) -> jnp.ndarray:
    return jnp.asarray(nchw_to_nhwc(x))


def windowed_reference(model, x: torch.Tensor, window: int, global_every: int) -> tuple[torch.Tensor, list]:
    """SimpleClick schedule on timm blocks: patch tokens + pos_embed[:, 1:], no class token; windows formed before a
    run of local blocks and undone before a global block and at the end. Returns (final tokens, every block output)."""
    tokens = model.patch_embed(x) + model.pos_embed[:, 1:]
    batch, _, dim = tokens.shape
    h, w = model.patch_embed.grid_size
    nh, nw = h // window, w // window

    def partition(t):
        t = t.reshape(batch, nh, window, nw, window, dim).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(batch * nh * nw, window * window, dim)

    def unpartition(t):
        t = t.reshape(batch, nh, nw, window, window, dim).permute(0, 1, 3, 2, 4, 5)
        return t.reshape(batch, h * w, dim)

    outputs, windowed = [], False
    for i, block in enumerate(model.blocks):
        local = (i + 1) % global_every != 0
        if local and not windowed:
            tokens, windowed = partition(tokens), True
        elif not local and windowed:
            tokens, windowed = unpartition(tokens), False
        tokens = block(tokens)
        outputs.append((unpartition(tokens) if windowed else tokens).reshape(batch, h, w, dim))
    if windowed:
        tokens = unpartition(tokens)
    return tokens, outputs


# ---------------------------------------------------------------------------------------------------------------------
# MAE ViT-B/16 at 448, official MAE file layout


@pytest.fixture(scope="module")
def mae_base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mae_base")
    ref = _timm_vit("vit_base_patch16_224.mae", 0, img_size=448)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    # MAE visualisation checkpoints also carry the pretraining decoder: ignored by the converter
    state["mask_token"] = torch.zeros(1, 1, 512)
    state["decoder_embed.weight"] = torch.zeros(512, 768)
    state["decoder_blocks.0.attn.qkv.weight"] = torch.zeros(1536, 512)
    state["decoder_pred.bias"] = torch.zeros(768)
    torch.save({"model": state}, tmp / "mae_pretrain_vit_base.pth")
    out = tmp / "converted"
    convert.run(["vit", "--src", str(tmp / "mae_pretrain_vit_base.pth"), "--out", str(out)])
    return {"ref": ref, "dir": out, "src": tmp / "mae_pretrain_vit_base.pth", "x": _image((1, 3, 448, 448), 1)}


def _fp32_tokens(case: dict) -> jax.Array:
    """fp32 JAX tokens for the case's input (computed once per module)."""
    if "fp32_tokens" not in case:
        case["fp32_tokens"] = vit.forward(jaxmatte.load_pretrained(case["dir"]), _nhwc(case["x"])).tokens
    return case["fp32_tokens"]


def _assert_bf16_close(case: dict) -> None:
    model16 = jaxmatte.load_pretrained(case["dir"], dtype=jnp.bfloat16)
    ours16 = _timed("jax bf16 forward (jit + run)", vit.forward, model16, _nhwc(case["x"])).tokens
    assert ours16.dtype == jnp.bfloat16
    ours32 = _fp32_tokens(case)
    rel = float(jnp.abs(ours16.astype(jnp.float32) - ours32).max() / jnp.abs(ours32).max())
    print(f"bf16 vs fp32 relative error {rel:.3g}")
    assert rel <= 3e-2


def test_mae_base_448_parity(mae_base):
    ref, out, x = mae_base["ref"], mae_base["dir"], mae_base["x"]
    model = jaxmatte.load_pretrained(out)
    config = model.config
    assert config == vit.ViTConfig(img_size=(448, 448))
    indices = (0, 5, 11)
    with torch.no_grad():
        ref_tokens = _timed("torch forward_features", ref.forward_features, x)
        ref_grids = _timed(
            "torch forward_intermediates",
            ref.forward_intermediates,
            x,
            indices=list(indices),
            norm=False,
            output_fmt="NCHW",
            intermediates_only=True,
        )
    ours = _timed("jax forward (jit + run)", vit.forward, model, _nhwc(x), indices=indices)
    _timed("jax forward (run)", vit.forward, model, _nhwc(x), indices=indices)
    mae_base["fp32_tokens"] = ours.tokens
    diff = assert_close(ours.tokens, ref_tokens, name="tokens")
    print(f"tokens {tuple(ours.tokens.shape)} max|diff| {diff:.3g} (max|ref| {ref_tokens.abs().max():.3g})")
    assert len(ours.intermediates) == len(indices)
    for i, grid, ref_grid in zip(indices, ours.intermediates, ref_grids, strict=True):
        diff = assert_close(grid, nchw_to_nhwc(ref_grid), name=f"block {i}")
        print(f"block {i} {tuple(grid.shape)} max|diff| {diff:.3g} (max|ref| {ref_grid.abs().max():.3g})")
    info = jaxmatte.pretrained.read_config(out)[2]
    assert info["ignored_keys"] == sorted(
        ["decoder_blocks.0.attn.qkv.weight", "decoder_embed.weight", "decoder_pred.bias", "mask_token"]
    )


def test_mae_base_bf16(mae_base):
    _assert_bf16_close(mae_base)


def test_preset_and_cli_options(mae_base):
    """A preset is checked against the file; SimpleClick options only change the config (and drop `norm.*`)."""
    checkpoint = load.read_checkpoint(mae_base["src"])

    def run(*options):
        args = convert.build_parser().parse_args(["vit", "--src", "x.pth", "--out", "unused", *options])
        return port_vit.convert(checkpoint, source="mae_pretrain_vit_base.pth", args=args)

    converted = run("--preset", "simpleclick_base_448")
    assert converted.config == vit.ViTConfig.preset("simpleclick_base_448")
    assert {"norm.weight", "norm.bias", "mask_token"} <= set(converted.info["ignored_keys"])
    # global_every defaults to depth // 4, as in SimpleClick
    assert run("--local-window", "14", "--no-final-norm").config == converted.config
    with pytest.raises(PortError, match=r"patch_size 14 \(file: 16\), .*embed_dim 1280 \(file: 768\), depth 32"):
        run("--preset", "mae_huge")
    with pytest.raises(PortError, match="--global-every needs --local-window"):
        run("--global-every", "3")
    with pytest.raises(PortError, match="not divisible by num_heads"):
        run("--num-heads", "7")


# ---------------------------------------------------------------------------------------------------------------------
# ViT-H/14-shaped MAE with the SimpleClick schedule at 448 (the SegTrimap backbone, reduced depth)


@pytest.fixture(scope="module")
def huge_windowed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("huge_windowed")
    # depth 6, global every 3: local, local, global, local, local, global
    ref = _timm_vit("vit_huge_patch14_224.mae", 3, img_size=448, depth=6)
    save_safetensors(ref, tmp / "vit_huge.safetensors")
    out = tmp / "converted"
    argv = ["vit", "--src", str(tmp / "vit_huge.safetensors"), "--out", str(out)]
    convert.run(argv + ["--local-window", "16", "--global-every", "3", "--no-final-norm"])
    return {"ref": ref, "dir": out, "x": _image((1, 3, 448, 448), 4)}


def test_huge_windowed_parity(huge_windowed):
    ref, out, x = huge_windowed["ref"], huge_windowed["dir"], huge_windowed["x"]
    model = jaxmatte.load_pretrained(out)
    config = model.config
    assert (config.embed_dim, config.num_heads, config.patch_size, config.grid_size) == (1280, 16, 14, (32, 32))
    assert config.global_blocks() == (2, 5) and not config.final_norm and config.num_prefix_tokens == 0
    with torch.no_grad():
        ref_tokens, ref_grids = _timed("torch windowed reference", windowed_reference, ref, x, 16, 3)
    indices = tuple(range(config.depth))
    ours = _timed("jax forward (jit + run)", vit.forward, model, _nhwc(x), indices=indices)
    huge_windowed["fp32_tokens"] = ours.tokens
    diff = assert_close(ours.tokens, ref_tokens, name="tokens")
    print(f"tokens {tuple(ours.tokens.shape)} max|diff| {diff:.3g} (max|ref| {ref_tokens.abs().max():.3g})")
    for i, grid, ref_grid in zip(indices, ours.intermediates, ref_grids, strict=True):
        diff = assert_close(grid, ref_grid, name=f"block {i}")
        kind = "global" if config.is_global(i) else "local"
        print(f"block {i} ({kind}) max|diff| {diff:.3g} (max|ref| {ref_grid.abs().max():.3g})")


def test_huge_windowed_bf16(huge_windowed):
    _assert_bf16_close(huge_windowed)


# ---------------------------------------------------------------------------------------------------------------------
# Tiny models: non-square grids, batch > 1, a schedule that ends on local blocks, other checkpoint layouts

TINY = {"img_size": (64, 96), "patch_size": 16, "embed_dim": 64, "depth": 5, "num_heads": 2}


def _tiny(seed: int, **overrides) -> torch.nn.Module:
    return _timm_vit("vit_base_patch16_224", seed, **{**TINY, **overrides})


def test_tiny_plain_non_square(tmp_path):
    ref = _tiny(10)
    save_safetensors(ref, tmp_path / "tiny.safetensors")
    argv = ["vit", "--src", str(tmp_path / "tiny.safetensors"), "--out", str(tmp_path / "out"), "--num-heads", "2"]
    # a non-square grid cannot be read from the pos_embed length alone: the size is given
    with pytest.raises(PortError, match="non-square"):
        convert.run(argv)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = port_vit.infer_config(state, num_heads=2, img_size=(64, 96))
    model, config = port_vit.convert_state_dict(state, config)
    assert config.grid_size == (4, 6) and config.num_prefix_tokens == 1
    x = _image((2, 3, 64, 96), 11)
    with torch.no_grad():
        ref_tokens = ref.forward_features(x)
        ref_grids = ref.forward_intermediates(x, indices=[1, 4], norm=False, intermediates_only=True)
    ours = vit.forward(model, _nhwc(x), indices=(1, -1))
    assert_close(ours.tokens, ref_tokens, atol=1e-5, name="tokens")
    for grid, ref_grid in zip(ours.intermediates, ref_grids, strict=True):
        assert_close(grid, nchw_to_nhwc(ref_grid), atol=1e-5, name="block")


def test_tiny_windowed_ends_local(tmp_path):
    ref = _tiny(12)
    window, every = 2, 3  # blocks: local, local, global, local, local (then un-partitioned)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    config = port_vit.infer_config(state, num_heads=2, img_size=(64, 96))
    config = dataclasses.replace(config, window_size=window, global_every=every)
    model, _ = port_vit.convert_state_dict(state, config)
    x = _image((2, 3, 64, 96), 13)
    with torch.no_grad():
        ref_tokens, ref_grids = windowed_reference(ref, x, window, every)
        plain = ref.norm(ref.blocks(ref.patch_embed(x) + ref.pos_embed[:, 1:]))
    # the local windows change the result: the comparison below cannot pass with global attention everywhere
    assert (ref.norm(ref_tokens) - plain).abs().max() > 1e-2
    ours = vit.forward(model, _nhwc(x), indices=tuple(range(5)))
    assert_close(ours.tokens, ref.norm(ref_tokens), atol=1e-5, name="tokens")
    for i, (grid, ref_grid) in enumerate(zip(ours.intermediates, ref_grids, strict=True)):
        assert_close(grid, ref_grid, atol=1e-5, name=f"block {i}")


def test_finetuned_layout_fc_norm_no_norm(tmp_path):
    """Fine-tuned MAE files carry fc_norm + head and no norm; keys under `module.backbone.`."""
    ref = _tiny(14, img_size=64, global_pool="avg", num_classes=7)
    assert "fc_norm.weight" in ref.state_dict() and "norm.weight" not in ref.state_dict()
    state = {f"module.backbone.{k}": v for k, v in ref.state_dict().items()}
    torch.save({"model": state}, tmp_path / "finetuned.pth")
    converted = convert.run(
        ["vit", "--src", str(tmp_path / "finetuned.pth"), "--out", str(tmp_path / "out"), "--num-heads", "2"]
    )
    assert not converted.config.final_norm
    model = jaxmatte.load_pretrained(tmp_path / "out")
    x = _image((1, 3, 64, 64), 15)
    with torch.no_grad():
        ref_tokens = ref.forward_features(x)
    assert_close(vit.forward(model, _nhwc(x)).tokens, ref_tokens, atol=1e-5, name="tokens")


def test_pos_grid_resample_like_simpleclick():
    """--pos-grid resizes the patch part as MAE/SimpleClick's interpolate_pos_embed (not timm's antialiased filter)."""
    ref = _tiny(18, img_size=64)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    args = convert.build_parser().parse_args(
        ["vit", "--src", "x.pth", "--out", "unused", "--num-heads", "2", "--pos-grid", "8", "6"]
    )
    converted = port_vit.convert({"model": state}, source="tiny.pth", args=args)
    assert converted.config.img_size == (128, 96)
    ours = np.asarray(converted.model.pos_embed[...])
    with torch.no_grad():
        grid = ref.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2)
        resized = torch.nn.functional.interpolate(grid, size=(8, 6), mode="bicubic", align_corners=False)
        expected = torch.cat([ref.pos_embed[:, :1], resized.permute(0, 2, 3, 1).reshape(1, 48, 64)], dim=1)
        timm_style = timm.layers.resample_abs_pos_embed(ref.pos_embed, (8, 6), num_prefix_tokens=1)
    assert_close(ours, expected, atol=1e-6, name="pos_embed")
    assert np.abs(ours - timm_style.numpy()).max() > 1e-2


# ---------------------------------------------------------------------------------------------------------------------
# Refusals and errors


def test_strict_refusal(tmp_path):
    ref = _tiny(16, img_size=64)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    del state["blocks.1.norm2.weight"]
    state["blocks.0.attn.q_bias"] = torch.zeros(64)
    state["blocks.2.mlp.fc2.bias"] = torch.zeros(65)
    arrays = {k: v.numpy() for k, v in state.items()}
    with pytest.raises(PortError) as err:
        port_vit.convert_state_dict(arrays, port_vit.infer_config(arrays, num_heads=2))
    message = str(err.value)
    assert "blocks.1.norm2.scale" in message and "missing" in message
    assert "unexpected key blocks.0.attn.q_bias" in message
    assert "blocks.2.mlp.fc2.bias (65,)" in message and "expects (64,)" in message
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "bad.safetensors"))
    argv = ["vit", "--src", str(tmp_path / "bad.safetensors"), "--out", str(tmp_path / "out"), "--num-heads", "2"]
    assert convert.main(argv) == 2
    assert not (tmp_path / "out").exists()


def test_heads_cannot_be_inferred_for_unknown_width():
    state = {k: v.numpy() for k, v in _tiny(17, img_size=64).state_dict().items()}
    with pytest.raises(PortError, match="--num-heads"):
        port_vit.infer_config(state)


def test_position_grid_mismatch():
    model = vit.VisionTransformer(vit.ViTConfig(**{**TINY, "depth": 1}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"4x6 token grid.*got a 6x6 grid.*--img-size 96 96"):
        model(jnp.zeros((1, 96, 96, 3)))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        model(jnp.zeros((1, 64, 90, 3)))


def test_windowed_refuses_prefix_tokens():
    config = vit.ViTConfig(**{**TINY, "depth": 2, "window_size": 2, "global_every": 2})
    model = vit.VisionTransformer(config, rngs=nnx.Rngs(0))
    tokens = jnp.zeros((1, 1 + 24, 64))
    with pytest.raises(ValueError, match="prefix token"):
        model.run_blocks(tokens, (4, 6), num_prefix=1)
    with pytest.raises(ValueError, match="not a multiple of the window size"):
        vit.VisionTransformer(vit.ViTConfig(**{**TINY, "window_size": 4, "global_every": 2}), rngs=nnx.Rngs(0))(
            jnp.zeros((1, 64, 96, 3))
        )


# ---------------------------------------------------------------------------------------------------------------------
# Schedule and window layout


def test_window_partition_layout_and_inverse():
    batch, h, w, dim, window = 2, 4, 6, 3, 2
    tokens = jnp.arange(batch * h * w * dim, dtype=jnp.float32).reshape(batch, h * w, dim)
    windows = vit.window_partition(tokens, (h, w), window)
    grid = np.asarray(tokens).reshape(batch, h, w, dim)
    expected = [
        grid[b, r * window : (r + 1) * window, c * window : (c + 1) * window].reshape(window * window, dim)
        for b in range(batch)
        for r in range(h // window)
        for c in range(w // window)
    ]
    np.testing.assert_array_equal(windows, np.stack(expected))
    np.testing.assert_array_equal(vit.window_unpartition(windows, (h, w), window), tokens)


def test_presets_and_schedule():
    huge = vit.ViTConfig.preset("simpleclick_huge_448")
    assert huge.global_blocks() == (7, 15, 23, 31) and huge.grid_size == (32, 32) and huge.window_size == 16
    assert vit.ViTConfig.preset("simpleclick_base_448").global_blocks() == (2, 5, 8, 11)
    assert vit.ViTConfig.preset("mae_huge").global_blocks() == tuple(range(32))
    for name, config in vit.PRESETS.items():
        restored = jaxmatte.registry.config_from_dict(vit.ViTConfig, jaxmatte.registry.config_to_dict(config))
        assert restored == config, name
    with pytest.raises(ValueError, match="global_every"):
        vit.ViTConfig(window_size=14)
