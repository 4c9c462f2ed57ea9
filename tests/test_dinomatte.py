"""DINOv3 matting ("dinomatte"): parity with a PyTorch reference of the original system (decoder per stage,
ConvTranspose included, randomised BN statistics, square and non-square grids, boundary refinement, whole model at
224), the converter (containers, key layouts, inference, strict refusals, untrained builds), the detail decoder
(shapes, gradient flow, frozen backbone, RoPE rescale switch), bf16 and the config."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from dinomatte_reference import build_reference, export_state_dict, official_backbone
from flax import nnx
from parity import assert_close, nchw_to_nhwc

from jaxmatte import load_pretrained, losses, pretrained, registry, save_pretrained
from jaxmatte.backbones.dinov3 import DinoV3Config
from jaxmatte.models.dinomatte import PRESETS, DinoMatte, DinoMatteConfig, FaithfulDecoder, forward
from jaxmatte.preprocessing import Preprocessing
from port import dinov3 as port_dinov3
from port import load
from port.dinomatte import CONVERTERS, ORIGINAL_PREPROCESSING, convert, convert_checkpoint
from port.table import PortError

PREFIX = "encoder.dinov3."
WHOLE_ATOL, WHOLE_REL = 1e-4, 1e-4
LAYER_ATOL, LAYER_REL = 3e-4, 1e-5  # decoder activations reach ~60 (fp32 ulp 4e-6); the relative bound binds
TINY_BACKBONE = DinoV3Config(embed_dim=128, depth=4, num_heads=2)
TINY_DETAIL = DinoMatteConfig(
    backbone=TINY_BACKBONE, decoder="detail", decoder_dims=(32, 16, 16), fuse_dim=32, detail_dims=(8, 16, 16)
)


def _image(seed: int, height: int, width: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in state.items()}


def _jax(x: torch.Tensor) -> jax.Array:
    return jnp.asarray(nchw_to_nhwc(x))


def _trainer_container(state: dict[str, np.ndarray], **config) -> dict:
    return {
        "epoch": 7,
        "model_state_dict": state,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "scheduler_state_dict": {"last_epoch": 7},
        "loss": 0.25,
        "config": {"model": {"dino_model_size": "vits16", **config}},
    }


def _save_checkpoint_container(state: dict[str, np.ndarray], **meta) -> dict:
    fields = {"model_size": "vits16", "decoder_dims": [256, 128, 64], "use_boundary_refinement": False} | meta
    return {"model_state_dict": state, **fields, "epoch": 3, "loss": 0.5}


def _assert_same_params(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _compare(ours, ref: dict[str, torch.Tensor], keys=("alpha", "coarse", "logits"), **tol) -> dict[str, float]:
    tol = {"atol": WHOLE_ATOL, "rel": WHOLE_REL} | tol
    return {k: assert_close(getattr(ours, k), nchw_to_nhwc(ref[k]), name=k, **tol) for k in keys}


@nnx.jit(static_argnames="size")
def _decode(decoder, grid, size):
    return decoder(grid, size)


@pytest.fixture(scope="module")
def small():
    """Perturbed ViT-S (depth 2) reference, converted from the trainer's container; outputs at 224x224."""
    ref = build_reference("vit_small_patch16_dinov3", depth=2, seed=0)
    state = export_state_dict(ref, "timm")
    x = _image(1, 224, 224)
    with torch.no_grad():
        out = ref(x)
    converted = convert_checkpoint(_trainer_container(_numpy(state)), source="best_model.pth")
    return SimpleNamespace(
        ref=ref, state=state, x=x, out=out, converted=converted, jax_out=forward(converted.model, _jax(x))
    )


# ----------------------------------------------------------------------------------------------------------- parity


def test_whole_model_parity_224(small):
    diffs = _compare(small.jax_out, small.out)
    print("ViT-S (depth 2) whole model at 224 max|diff|:", diffs, "max|logits|", float(small.out["logits"].abs().max()))
    alpha = np.asarray(small.jax_out.alpha)
    assert alpha.shape == (2, 224, 224, 1) and small.jax_out.logits.shape == (2, 56, 56, 1)
    assert alpha.dtype == np.float32 and alpha.min() >= 0.0 and alpha.max() <= 1.0
    assert float(small.out["logits"].std()) > 0.5  # informative (not saturated / constant) reference
    config, info = small.converted.config, small.converted.info
    assert config.decoder == "faithful" and config.decoder_dims == (256, 128, 64) and not config.boundary_refinement
    assert config.backbone == dataclasses.replace(PRESETS["small"].backbone, depth=2)
    assert config.pad_rule == "original" and config.backbone.rope_rescale is None
    assert info["container"] == "trainer checkpoint" and info["layout"] == "timm" and info["epoch"] == 7
    assert Preprocessing.from_info(info) == ORIGINAL_PREPROCESSING


@pytest.mark.parametrize(
    ("name", "grid"), [("vit_small_patch16_dinov3", (14, 14)), ("vit_base_patch16_dinov3", (14, 18))], ids=["S", "B"]
)
def test_decoder_parity(small, name, grid):
    """Every decoder stage (ConvTranspose included, BN with randomised running statistics) on a random token grid."""
    if name == "vit_small_patch16_dinov3":
        ref, model = small.ref, small.converted.model
    else:  # ViT-B, official backbone layout, save_checkpoint container
        ref = build_reference(name, depth=1, seed=3)
        state = _numpy(export_state_dict(ref, "official", seed=4))
        model = convert_checkpoint(_save_checkpoint_container(state, model_size="vitb16")).model
    dim = ref.encoder.dinov3.embed_dim
    tokens = 2.0 * torch.randn(2, dim, *grid, generator=torch.Generator().manual_seed(9))
    size = (16 * grid[0], 16 * grid[1])
    with torch.no_grad():
        ref_levels, ref_logits = ref.decoder.levels(tokens)
        ref_alpha = ref.decoder(tokens, size)
    out = _decode(model.decoder, _jax(tokens), size)
    assert len(out.levels) == len(ref_levels) == 6
    diffs = [
        assert_close(o, nchw_to_nhwc(r), atol=LAYER_ATOL, rel=LAYER_REL, name=f"stage {i}")
        for i, (o, r) in enumerate(zip(out.levels, ref_levels, strict=True))
    ]
    diffs.append(assert_close(out.logits, nchw_to_nhwc(ref_logits), atol=LAYER_ATOL, rel=LAYER_REL, name="logits"))
    diffs.append(assert_close(out.alpha, nchw_to_nhwc(ref_alpha), atol=1e-5, rel=1e-5, name="alpha"))
    print(f"{name} decoder on a {grid} grid, max|diff| per stage:", [f"{d:.2g}" for d in diffs])
    assert out.alpha.shape == (2, *size, 1) and out.logits.shape == (2, 4 * grid[0], 4 * grid[1], 1)


def test_pad_rules(small):
    """224x232: the original rule upsizes both sides (240x240); the independent rule only the width (224x240)."""
    x = _image(2, 224, 232)
    with torch.no_grad():
        ref = small.ref(x)
    faithful = forward(small.converted.model, _jax(x))
    diffs = _compare(faithful, ref)
    print("pad_rule='original' at 224x232 max|diff|:", diffs)
    assert faithful.logits.shape == (2, 60, 60, 1) and faithful.alpha.shape == (2, 224, 232, 1)
    config = dataclasses.replace(small.converted.config, pad_rule="independent")
    independent = pretrained.fill(
        pretrained.abstract_model("dinomatte", config), pretrained.stored_values(small.converted.model)
    )
    corrected = forward(independent, _jax(x))
    assert corrected.logits.shape == (2, 56, 60, 1) and corrected.alpha.shape == (2, 224, 232, 1)
    assert np.abs(np.asarray(corrected.alpha) - np.asarray(faithful.alpha)).max() > 1e-3


def test_boundary_refinement_parity():
    """Refiner with kernels (3, 5, 3), a 2-level decoder (128, 64), official layout, bare `module.` state dict."""
    ref = build_reference(depth=1, decoder_dims=(128, 64), boundary_kernels=(3, 5, 3), seed=5)
    state = {f"module.{k}": v for k, v in _numpy(export_state_dict(ref, "official", seed=6)).items()}
    converted = convert_checkpoint(state, source="state.pth")
    config = converted.config
    assert config.decoder_dims == (128, 64) and config.boundary_refinement and config.boundary_kernels == (3, 5, 3)
    assert converted.info["container"] == "state dict" and converted.info["layout"] == "official"
    assert converted.model.boundary_refiner.sharpening_weight.shape == ()
    x = _image(3, 160, 192)
    with torch.no_grad():
        out = ref(x)
    ours = forward(converted.model, _jax(x))
    diffs = _compare(ours, out)
    print("boundary refinement (official layout) 160x192 max|diff|:", diffs)
    assert ours.logits.shape == (2, 20, 24, 1)
    alpha, coarse = np.asarray(ours.alpha), np.asarray(ours.coarse)
    assert np.abs(alpha - coarse).max() > 1e-2  # the refiner acts
    assert np.mean((alpha > 0) & (alpha < 1)) > 0.05  # and is not merely clamped


# ------------------------------------------------------------------------------------------------------ converter


def test_containers_and_layouts(small, tmp_path):
    """The same weights in every container give the same parameters; the official layout gives the same outputs."""
    state = _numpy(small.state)
    expected = pretrained.stored_values(small.converted.model)
    path = tmp_path / "checkpoint_epoch_5.pth"
    torch.save(_trainer_container(small.state, decoder_dims=[256, 128, 64], use_boundary_refinement=False), path)
    variants = {
        "trainer checkpoint": load.read_checkpoint(path),
        "save_checkpoint": _save_checkpoint_container(state),
        "state dict": {f"module.{k}": v for k, v in state.items()},
    }
    for layout, checkpoint in variants.items():
        converted = convert_checkpoint(checkpoint, source=layout)
        assert converted.info["container"] == layout
        _assert_same_params(pretrained.stored_values(converted.model), expected)
    converted = convert_checkpoint({"model": state})
    _assert_same_params(pretrained.stored_values(converted.model), expected)

    official = convert_checkpoint(_trainer_container(_numpy(export_state_dict(small.ref, "official", seed=2))))
    assert official.info["layout"] == "official" and official.info["rope_periods"] == "stored (faithful)"
    assert official.info["qkv_bias_mask"] == "stored"
    diffs = _compare(forward(official.model, _jax(small.x)), small.out)
    print("official layout, whole model at 224 max|diff|:", diffs)


def test_refusals(small):
    state = _numpy(small.state)
    mismatches = [
        (_save_checkpoint_container(state, decoder_dims=[256, 128, 32]), r"decoder_dims \[256, 128, 32\]"),
        (_save_checkpoint_container(state, use_boundary_refinement=True), "use_boundary_refinement True"),
        (_save_checkpoint_container(state, model_size="vitb16"), "model_size 'vitb16'"),
        (_trainer_container(state, decoder_dims=[128, 64]), r"config\['model'\] decoder_dims \[128, 64\]"),
    ]
    for checkpoint, message in mismatches:
        with pytest.raises(PortError, match=message):
            convert_checkpoint(checkpoint, source="bad.pth")

    broken = dict(state)
    broken["decoder.extra.weight"] = np.zeros((3, 3), np.float32)
    del broken["decoder.final_conv.2.bias"], broken[f"{PREFIX}norm.weight"]
    broken["decoder.upsample_blocks.0.weight"] = np.zeros((128, 64, 4, 4), np.float32)
    with pytest.raises(PortError) as err:
        convert_checkpoint(broken, source="broken.pth")
    message = str(err.value)
    assert message.startswith("broken.pth:")
    for part in (
        "unexpected key decoder.extra.weight",
        "missing: nothing fills decoder.final_conv.out.bias",
        "missing: nothing fills norm.scale",  # the backbone's problems are reported alongside
        "shape mismatch decoder.upsample_blocks.0.weight (128, 64, 4, 4)",
    ):
        assert part in message, (part, message)

    with pytest.raises(PortError, match="no encoder.dinov3"):
        convert_checkpoint({k: v for k, v in state.items() if not k.startswith(PREFIX)})
    with pytest.raises(PortError, match="nothing to convert"):
        convert(None, source="-", args=SimpleNamespace())
    with pytest.raises(PortError, match="not both"):
        convert(state, source="x.pth", args=SimpleNamespace(backbone="b.pth"))
    with pytest.raises(PortError, match="--decoder"):
        convert(state, source="x.pth", args=SimpleNamespace(decoder="detail"))
    with pytest.raises(PortError, match="backbone depth"):
        convert(state, source="x.pth", args=SimpleNamespace(preset="small"))  # the file has 2 blocks, the preset 12


@pytest.mark.parametrize("layout", ["timm", "official"])
def test_untrained_build_on_backbone_file(small, tmp_path, layout):
    backbone = {k[len(PREFIX) :]: v for k, v in small.state.items() if k.startswith(PREFIX)}
    if layout == "timm":
        from safetensors.torch import save_file

        path = tmp_path / "vit_small_patch16_dinov3.safetensors"
        save_file({k: v.contiguous() for k, v in backbone.items()}, str(path))
    else:
        path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
        torch.save({"model": official_backbone(backbone, seed=1)}, path)
    expected_backbone, expected_config = port_dinov3.convert_state_dict(load.load_state_dict(path))

    built = convert(None, source=str(path), args=SimpleNamespace(backbone=str(path), seed=0))
    config, model = built.config, built.model
    assert config.decoder == "faithful" and config.backbone == expected_config and built.info["layout"] == layout
    assert config.pad_rule == "independent" and Preprocessing.from_info(built.info).size == 224
    values = pretrained.stored_values(model)
    backbone_values = {k[len("backbone.") :]: v for k, v in values.items() if k.startswith("backbone.")}
    _assert_same_params(backbone_values, pretrained.stored_values(expected_backbone))
    # the original decoder init: kaiming-normal fan_out, zero conv bias, BN 1/0 and 0/1, torch default ConvTranspose
    assert np.std(values["decoder.input_proj.kernel"]) == pytest.approx((2 / 256) ** 0.5, rel=0.05)
    assert not values["decoder.decoder_blocks.0.conv1.bias"].any() and not values["decoder.final_conv.out.bias"].any()
    np.testing.assert_array_equal(values["decoder.decoder_blocks.1.bn2.scale"], 1.0)
    np.testing.assert_array_equal(values["decoder.decoder_blocks.1.bn2.var"], 1.0)
    bound = 1 / (128 * 16) ** 0.5
    assert np.abs(values["decoder.upsample_blocks.0.kernel"]).max() <= bound
    assert np.abs(values["decoder.upsample_blocks.0.bias"]).max() > bound / 10
    again = pretrained.stored_values(convert(None, source="b", args=SimpleNamespace(backbone=str(path))).model)
    reseeded = pretrained.stored_values(
        convert(None, source="b", args=SimpleNamespace(backbone=str(path), seed=1)).model
    )
    _assert_same_params(again, values)
    assert not np.array_equal(reseeded["decoder.input_proj.kernel"], values["decoder.input_proj.kernel"])

    args = SimpleNamespace(backbone=str(path), decoder="detail", boundary_refinement=True, input_size=64)
    detail = convert(None, source=str(path), args=args)
    assert detail.config.decoder == "detail" and detail.config.boundary_refinement
    assert Preprocessing.from_info(detail.info) == Preprocessing(resize="letterbox", size=64, mask_resample="linear")
    assert float(detail.model.boundary_refiner.sharpening_weight[...]) == pytest.approx(0.1)
    if layout == "timm":  # one forward of the untrained detail model
        out = forward(detail.model, jnp.zeros((1, 64, 96, 3)))
        assert out.alpha.shape == out.logits.shape == (1, 64, 96, 1) and np.isfinite(np.asarray(out.alpha)).all()


def test_cli(small, tmp_path):
    """`port/convert.py dinomatte`: the CLI discovers the converter; a preset mismatch is a clear failure."""
    from port import convert as cli

    assert CONVERTERS[0].kind == "dinomatte" and cli.converters()["dinomatte"] is CONVERTERS[0]
    src = tmp_path / "best_model.pth"
    torch.save(_trainer_container(small.state), src)
    assert cli.main(["dinomatte", "--src", str(src), "--out", str(tmp_path / "out")]) == 0
    loaded = load_pretrained(tmp_path / "out")
    _assert_same_params(pretrained.stored_values(loaded), pretrained.stored_values(small.converted.model))
    assert cli.main(["dinomatte", "--src", str(src), "--out", str(tmp_path / "b"), "--preset", "base"]) == 2


# --------------------------------------------------------------------------------------------- detail decoder, train


def _loss(model, x, target):
    total, _ = losses.dinov3_matting_loss(model(x).alpha, target)
    return total


@nnx.jit
def _grads(model, x, target):
    return nnx.grad(_loss)(model, x, target)


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "trainable"])
def test_detail_decoder_gradients(freeze):
    config = dataclasses.replace(TINY_DETAIL, freeze_backbone=freeze, boundary_refinement=True)
    model = DinoMatte(config, rngs=nnx.Rngs(0))
    model.train()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 64, 80, 3)), jnp.float32)
    target = jnp.asarray(rng.uniform(size=(2, 64, 80, 1)), jnp.float32)
    grads = {pretrained.path_name(p): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(_grads(model, x, target))}
    decoder_kernels = [k for k in grads if k.startswith("decoder.") and k.endswith("kernel")]
    assert len(decoder_kernels) == 15
    assert all(np.abs(grads[k]).max() > 0 for k in decoder_kernels), [k for k in decoder_kernels if not grads[k].any()]
    assert np.abs(grads["boundary_refiner.sharpening_weight"]) > 0
    backbone = [v for k, v in grads.items() if k.startswith("backbone.")]
    if freeze:
        assert all(not v.any() for v in backbone)
    else:
        assert np.abs(grads["backbone.patch_embed.proj.kernel"]).max() > 0
    # train mode: the decoder's BN statistics moved
    assert np.abs(np.asarray(model.decoder.fuse16.bn.mean[...])).max() > 0
    model.eval()
    out = forward(model, x[:, :50, :70])  # non-multiple input: rounded up for the backbone, alpha at the input size
    assert out.alpha.shape == (2, 50, 70, 1) and out.logits.shape == (2, 64, 80, 1)


@pytest.mark.parametrize("rescale", [True, False], ids=["rope_rescale_train", "default"])
def test_rope_rescale_switch(rescale):
    config = DinoMatteConfig(backbone=dataclasses.replace(TINY_BACKBONE, depth=2), rope_rescale_train=rescale)
    assert config.backbone.rope_rescale == (2.0 if rescale else None)
    model = DinoMatte(config, rngs=nnx.Rngs(0))
    for block in model.backbone.blocks:  # layer scale 1 (not 1e-5) and sharper attention, so that RoPE matters
        block.gamma_1[...] = jnp.ones_like(block.gamma_1[...])
        block.gamma_2[...] = jnp.ones_like(block.gamma_2[...])
        kernel = block.attn.qkv.kernel[...]
        block.attn.qkv.kernel[...] = kernel.at[:, : 2 * kernel.shape[0]].multiply(5.0)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 48, 64, 3)), jnp.float32)
    model.eval()
    reference = np.asarray(model.features(x)[0][0])
    model.train()
    first, second = (np.asarray(model.features(x)[0][0]) for _ in range(2))
    if rescale:
        assert np.abs(first - reference).max() > 1e-3 and np.abs(first - second).max() > 1e-3
    else:
        np.testing.assert_array_equal(first, reference)
        np.testing.assert_array_equal(second, reference)


# ---------------------------------------------------------------------------------------------------- bf16, config


def test_bf16(small, tmp_path):
    save_pretrained(small.converted.model, small.converted.config, tmp_path / "dm", info=small.converted.info)
    _assert_same_params(
        pretrained.stored_values(load_pretrained(tmp_path / "dm")), pretrained.stored_values(small.converted.model)
    )
    out = forward(load_pretrained(tmp_path / "dm", dtype=jnp.bfloat16), _jax(small.x))
    for name in ("alpha", "logits"):
        ours, ref = np.asarray(getattr(out, name)), np.asarray(getattr(small.jax_out, name))
        assert ours.dtype == np.float32 and np.isfinite(ours).all()
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"faithful bf16 vs fp32 {name}: relative {rel:.3g}")
        assert rel <= 5e-2

    values = pretrained.stored_values(DinoMatte(TINY_DETAIL, rngs=nnx.Rngs(2)))
    x = jnp.asarray(np.random.default_rng(3).standard_normal((1, 64, 64, 3)), jnp.float32)
    fp32, bf16 = (
        forward(pretrained.fill(pretrained.abstract_model("dinomatte", TINY_DETAIL, dtype=dtype), values), x)
        for dtype in (jnp.float32, jnp.bfloat16)
    )
    rel = np.abs(np.asarray(bf16.logits) - np.asarray(fp32.logits)).max() / np.abs(np.asarray(fp32.logits)).max()
    print(f"detail bf16 vs fp32 logits: relative {rel:.3g}")
    assert bf16.alpha.dtype == jnp.float32 and rel <= 5e-2


def test_config_presets_and_validation():
    for name, config in PRESETS.items():
        round_trip = registry.config_from_dict(DinoMatteConfig, json.loads(json.dumps(registry.config_to_dict(config))))
        assert round_trip == config, name
    counts = {"small": 1_073_153, "base": 1_171_457, "large": 1_236_993}  # spec §3
    for name, count in counts.items():
        decoder = nnx.eval_shape(lambda name=name: FaithfulDecoder(PRESETS[name], rngs=nnx.Rngs(0)))
        params = nnx.state(decoder, nnx.Param)
        assert sum(x.size for x in jax.tree.leaves(params)) == count, name
    assert PRESETS["huge_plus"].backbone.embed_dim == 1280
    assert PRESETS["faithful"].backbone.rope_rescale == 2.0 and PRESETS["faithful"].pad_rule == "original"
    assert PRESETS["small"].backbone.rope_rescale is None and PRESETS["small_detail"].decoder == "detail"
    assert PRESETS["small"].levels == (2, 5, 8, 11)
    assert dataclasses.replace(TINY_DETAIL, backbone=dataclasses.replace(TINY_BACKBONE, depth=2)).levels == (0, 0, 0, 1)
    assert dataclasses.replace(TINY_DETAIL, feature_layers=(-1, 0, 1, 2)).levels == (3, 0, 1, 2)

    original, independent = PRESETS["faithful"], PRESETS["small"]
    assert original.backbone_size(224, 232) == (240, 240) and independent.backbone_size(224, 232) == (224, 240)
    assert original.backbone_size(224, 224) == independent.backbone_size(224, 224) == (224, 224)
    assert original.backbone_size(200, 200) == independent.backbone_size(200, 200) == (208, 208)

    invalid = [
        ({"decoder": "unet"}, "decoder must be one of"),
        ({"decoder": "detail", "decoder_dims": (64, 32)}, "needs 3 decoder_dims"),
        ({"boundary_kernels": (3, 4, 3)}, "boundary_kernels"),
        ({"img_size": 230}, "img_size"),
        ({"pad_rule": "reflect"}, "pad_rule"),
        ({"feature_layers": (0, 1)}, "feature_layers"),
        ({"backbone": dataclasses.replace(TINY_BACKBONE, drop_path_rate=0.1)}, "drop_path_rate"),
    ]
    for fields, message in invalid:
        with pytest.raises(ValueError, match=message):
            DinoMatteConfig(**fields)
    with pytest.raises(KeyError, match="unknown dinomatte preset"):
        DinoMatteConfig.preset("tiny")
    assert DinoMatteConfig.preset("small", img_size=448).img_size == 448
