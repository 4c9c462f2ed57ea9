"""TSR-Matte / TwinSwin-Matte: whole-model parity with a PyTorch reference through `port/convert.py tsr|twinswin`.

The small reference is a Swin with architecture overrides (depths 1/1/2/1, width 32) at safe size 224, reduced decoder
widths, input 256 x 288 (non-square: the model stretches it to 224 x 224 and resizes the logits back). BatchNorm
affines and biases are perturbed, running statistics are set from a train-mode pass over a *different* input (variances
x 1.5**2, which keeps the random decoder well conditioned), the student's final conv is scaled so that the logits span
several units, and all weights are rounded through fp16 so that the fp16 release file and the fp32 reference hold
identical values.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import tsr_reference as R
from flax import nnx
from parity import assert_close, nchw_to_nhwc, perturb_, timed
from scripts import load_script

import jaxmatte
from jaxmatte import pretrained, registry
from jaxmatte.backbones import swin
from jaxmatte.models.tsr import modeling
from jaxmatte.preprocessing import Preprocessing
from port import convert, load, tsr
from port.table import PortError

SMALL_SWIN = {"depths": (1, 1, 2, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8)}
SAFE = 224
DECODER = (128, 64, 32)
HEAD = (32, 16)
TEACHER_DIMS = (32, 64, 128, 256)  # the original's embed_dim * (1, 2, 4, 8) with embed_dim 32
META = {"model_type": "base", "img_size": 256, "sad_score": 31.4, "description": "synthetic release"}
LOGIT_STD = 1.0
OUTPUTS = ("alpha", "refined_logits", "coarse_alpha", "coarse_logits", "d1", "d2")


def _small_student() -> R.TwinSwinUNet:
    backbone = R.swin_features("swin_tiny_patch4_window7_224", SAFE, **SMALL_SWIN)
    return R.TwinSwinUNet(backbone, SAFE, DECODER, HEAD).eval()


def _prepare_(module, seed, *calibration) -> None:
    """Perturb, calibrate the BN statistics on `calibration` (not the test input), for the student scale the final
    conv so that the logits span several units, round through fp16."""
    perturb_(module, seed)
    R.calibrate_batch_norm_(module, *calibration, gain=1.5)
    if isinstance(module, R.TwinSwinUNet):
        with torch.no_grad():
            logits = module(*calibration)[0]
            module.head[4].weight.mul_(LOGIT_STD / logits.std())
    R.round_to_half_(module)


def _convert(kind, src, out, *options):
    assert convert.main([kind, "--src", str(src), "--out", str(out), "--safe-size", str(SAFE), *options]) == 0
    return jaxmatte.load_pretrained(out)


def _close(ours, ref, name) -> str:
    """assert_close; returns 'max|diff| (relative)' for the log."""
    diff = assert_close(ours, ref, name=name)
    return f"{diff:.1e} ({diff / float(np.abs(np.asarray(ref)).max()):.1e})"


def _compare(out, ref, names, label) -> None:
    diffs = {n: _close(getattr(out, n), nchw_to_nhwc(ref[n]), f"{label} {n}") for n in names}
    print(f"{label}: max|diff| (relative) " + " ".join(f"{n} {d}" for n, d in diffs.items()))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """Reference modules, inputs, outputs and the two saved files (release fp16, training checkpoint)."""
    tmp = tmp_path_factory.mktemp("tsr")
    torch.manual_seed(0)
    student, refiner, teacher = _small_student(), R.Refiner().eval(), R.MaskEncoder(TEACHER_DIMS).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, 256, 288, generator=gen)
    mask = torch.rand(1, 1, 256, 288, generator=gen)
    calibration = torch.randn(1, 3, 256, 288, generator=gen)
    start = time.perf_counter()
    _prepare_(student, 1, calibration)
    with torch.no_grad():
        coarse_calibration = torch.sigmoid(student(calibration)[0])
    _prepare_(refiner, 2, calibration, coarse_calibration)
    mask_calibration = _nearest_to_safe(torch.rand(1, 1, 256, 288, generator=gen))
    _prepare_(teacher, 3, mask_calibration)
    out = R.tsr_forward(student, refiner, x)
    p2, p1 = R.teacher_forward(teacher, mask, SAFE)
    print(f"torch reference (calibration + forward): {time.perf_counter() - start:.2f}s")
    assert float(out["coarse_logits"].std()) > 0.2 and float(out["alpha"].std()) > 0.05  # informative outputs

    release = tmp / "tsr_release_fp16.pth"
    torch.save(
        {"state_dict": R.half_state_dict(student), "refiner_state_dict": R.half_state_dict(refiner), "meta": META},
        release,
    )
    training = tmp / "last_model.pth"
    torch.save(
        {
            "epoch": 7,
            "state_dict": {f"module.{k}": v for k, v in student.state_dict().items()},  # DataParallel prefix
            "refiner_state_dict": refiner.state_dict(),
            "teacher_state_dict": teacher.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "weight_decay": 1e-4, "params": [0, 1]}]},
            "scheduler": {"last_epoch": 7},
            "scaler": {"scale": 65536.0},
            "best_sad": 31.4,
            "history": [{"epoch": 0, "sad": 40.1}],
        },
        training,
    )
    return {
        "tmp": tmp,
        "student": student,
        "refiner": refiner,
        "x": x,
        "mask": mask,
        "calibration": calibration,
        "coarse_calibration": coarse_calibration,
        "out": out,
        "teacher_out": {"p2": p2, "p1": p1},
        "release": release,
        "training": training,
    }


def _nearest_to_safe(mask: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(mask, size=(SAFE, SAFE), mode="nearest")


@pytest.fixture(scope="module")
def release(ref):
    model = _convert("tsr", ref["release"], ref["tmp"] / "release")
    out = timed("jax tsr small (jit + run)", modeling.forward, model, jnp.asarray(nchw_to_nhwc(ref["x"])))
    return {"dir": ref["tmp"] / "release", "model": model, "out": out}


@pytest.fixture(scope="module")
def training(ref):
    model = _convert("tsr", ref["training"], ref["tmp"] / "training", "--input-size", "256")
    out = timed("jax tsr small + teacher (jit + run)", modeling.forward, model, jnp.asarray(nchw_to_nhwc(ref["x"])))
    return {"dir": ref["tmp"] / "training", "model": model, "out": out}


# ---------------------------------------------------------------------------------------------------------------------
# Whole-model parity


def test_release_fp16_parity(ref, release):
    checkpoint = torch.load(ref["release"], weights_only=True)
    assert checkpoint["state_dict"]["up1.conv.double_conv.1.running_var"].dtype == torch.float16
    assert checkpoint["state_dict"]["up1.conv.double_conv.1.num_batches_tracked"].dtype == torch.int64
    assert checkpoint["refiner_state_dict"]["conv_out.weight"].dtype == torch.float16
    _compare(release["out"], ref["out"], OUTPUTS, "release fp16")
    for name in ("alpha", "refined_logits", "coarse_alpha", "coarse_logits"):
        assert getattr(release["out"], name).dtype == jnp.float32
    assert release["out"].alpha.shape == (1, 256, 288, 1)
    np.testing.assert_allclose(release["out"].alpha, jax.nn.sigmoid(release["out"].refined_logits), rtol=0, atol=1e-7)

    family, config, info = pretrained.read_config(release["dir"])
    assert family == "tsr" and isinstance(release["model"], modeling.TSRMatte)
    assert config.teacher is None and release["model"].teacher is None
    assert config.refiner == modeling.RefinerConfig() and config.img_size == 256 and config.safe_size == SAFE
    assert config.decoder_channels == DECODER and config.head_channels == HEAD
    assert config.backbone == dataclasses.replace(
        swin.SwinConfig(window_size=7, **SMALL_SWIN), drop_path_rate=modeling.DROP_PATH_RATE
    )
    assert info["layout"] == "release" and info["meta"] == META and info["parts"] == ["student", "refiner"]
    assert info["preset"] is None and info["kind"] == "tsr"
    pre = Preprocessing.from_info(info)
    assert info["preprocessing"] == pre.to_dict()
    assert pre.resize == "stretch" and pre.size == 256 and pre.resample == "cv2_linear"
    assert pre.mean == tuple(modeling.IMAGENET_MEAN) and pre.std == tuple(modeling.IMAGENET_STD)
    assert pre.restore == "cv2_linear" and pre.quantization == "truncate"


def test_training_layout_parity_and_teacher(ref, training, release):
    _compare(training["out"], ref["out"], OUTPUTS, "training layout")
    _, config, info = pretrained.read_config(training["dir"])
    assert info["layout"] == "training checkpoint" and info["meta"] is None
    assert info["parts"] == ["student", "refiner", "teacher"]
    assert config.teacher == modeling.MaskEncoderConfig(dims=TEACHER_DIMS)
    assert config.teacher == modeling.MaskEncoderConfig.for_features(*config.feature_channels)
    # same (fp16-rounded) weights as the release: student and refiner identical
    ours, theirs = pretrained.stored_values(training["model"]), pretrained.stored_values(release["model"])
    assert set(ours) - set(theirs) == {k for k in ours if k.startswith("teacher.")} and len(set(ours) - set(theirs))
    for key in theirs:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

    mask = jnp.asarray(nchw_to_nhwc(ref["mask"]))
    teacher = nnx.jit(lambda m, a: m.teacher_features(a))
    p2, p1 = timed("jax teacher (jit + run)", teacher, training["model"], mask)
    assert p2.shape == (1, 14, 14, DECODER[0]) and p1.shape == (1, 28, 28, DECODER[1])
    d2 = _close(p2, nchw_to_nhwc(ref["teacher_out"]["p2"]), "teacher p2")
    d1 = _close(p1, nchw_to_nhwc(ref["teacher_out"]["p1"]), "teacher p1")
    print(f"teacher: max|diff| (relative) p2 {d2} p1 {d1}")

    # train() switches the student's BatchNorm to batch statistics, never the teacher's
    model = training["model"]
    model.train()
    try:
        assert model.student.up1.conv.bn1.use_running_average is False
        assert model.refiner.conv_in.bn.use_running_average is False
        frozen = teacher(model, mask)
    finally:
        model.eval()
    np.testing.assert_array_equal(frozen[0], p2)
    np.testing.assert_array_equal(frozen[1], p1)


def test_twinswin_kind(ref, training):
    """Student-only conversion of a TSR training file: the refiner is dropped, the teacher kept."""
    out_dir = ref["tmp"] / "twinswin"
    model = _convert("twinswin", ref["training"], out_dir)
    assert isinstance(model, modeling.TwinSwinMatte) and model.teacher is not None
    family, config, info = pretrained.read_config(out_dir)
    assert family == "twinswin" and type(config) is modeling.TwinSwinConfig
    assert info["dropped"] == ["refiner"] and info["parts"] == ["student", "teacher"]
    assert info["output"] == "student alpha"
    ours, full = pretrained.stored_values(model), pretrained.stored_values(training["model"])
    assert set(ours) == {k for k in full if not k.startswith("refiner.")}
    for key in ours:
        np.testing.assert_array_equal(ours[key], full[key], err_msg=key)
    out = timed("jax twinswin small (jit + run)", modeling.forward, model, jnp.asarray(nchw_to_nhwc(ref["x"])))
    assert isinstance(out, modeling.StudentOutput)
    logits = _close(out.logits, nchw_to_nhwc(ref["out"]["coarse_logits"]), "twinswin logits")
    alpha = _close(out.alpha, nchw_to_nhwc(ref["out"]["coarse_alpha"]), "twinswin alpha")
    d2 = _close(out.d2, nchw_to_nhwc(ref["out"]["d2"]), "twinswin d2")
    print(f"twinswin: max|diff| (relative) logits {logits} alpha {alpha} d2 {d2}")
    no_teacher = ref["tmp"] / "twinswin_no_teacher"
    argv = ["twinswin", "--src", str(ref["training"]), "--out", str(no_teacher), "--safe-size", str(SAFE)]
    assert convert.main([*argv, "--no-teacher"]) == 0
    _, config, info = pretrained.read_config(no_teacher)
    assert config.teacher is None and info["dropped"] == ["refiner", "teacher"]


def test_bare_state_dict_fusion_depth_1(ref, tmp_path):
    """Bare `module.`-prefixed state dict with the refiner under `refiner.`; the pre-HEAD refiner (fusion 1x1/BN)."""
    from safetensors.torch import save_file

    torch.manual_seed(4)
    refiner = R.Refiner(fusion_depth=1).eval()
    _prepare_(refiner, 4, ref["calibration"], ref["coarse_calibration"])
    assert len(refiner.state_dict()) == 68
    state = {f"module.{k}": v for k, v in ref["student"].state_dict().items()}
    state.update({f"module.refiner.{k}": v for k, v in refiner.state_dict().items()})
    src = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(src))
    model = _convert("tsr", src, tmp_path / "out")
    _, config, info = pretrained.read_config(tmp_path / "out")
    assert config.refiner.fusion_depth == 1 and info["layout"] == "state dict" and config.img_size == 1024
    assert model.refiner.body[0].fusion.conv2 is None

    coarse = ref["out"]["coarse_alpha"]
    with torch.no_grad():
        expected = coarse + refiner(ref["x"], coarse)
    refine = nnx.jit(lambda m, image, alpha: m.refiner(image, alpha))
    ours = timed(
        "jax refiner (jit + run)", refine, model, jnp.asarray(nchw_to_nhwc(ref["x"])), jnp.asarray(nchw_to_nhwc(coarse))
    )
    print(f"refiner fusion_depth 1: refined logits {_close(ours, nchw_to_nhwc(expected), 'refiner fusion_depth 1')}")


def test_bf16(ref, release):
    low = jaxmatte.load_pretrained(release["dir"], dtype=jnp.bfloat16)
    out = timed("jax tsr bf16 (jit + run)", modeling.forward, low, jnp.asarray(nchw_to_nhwc(ref["x"])))
    assert out.d1.dtype == jnp.bfloat16
    for name in ("alpha", "refined_logits", "coarse_alpha", "coarse_logits"):
        assert getattr(out, name).dtype == jnp.float32, name
    # the final output within 3e-2; the intermediate student output (~20 bf16 layers of a random, ill-conditioned
    # decoder) only against gross errors
    for name, bound in (("alpha", 3e-2), ("refined_logits", 0.15), ("coarse_alpha", 0.15), ("coarse_logits", 0.15)):
        ours, fp32 = getattr(out, name), getattr(release["out"], name)
        rel = float(jnp.abs(ours - fp32).max() / jnp.abs(fp32).max())
        print(f"bf16 {name}: relative error {rel:.2e}")
        assert rel <= bound, name


# ---------------------------------------------------------------------------------------------------------------------
# Converter strictness


def test_strict_refusal(ref, tmp_path):
    parts = tsr.split_checkpoint(load.read_checkpoint(ref["release"]))
    state = dict(parts.student) | {f"refiner.{k}": v for k, v in parts.refiner.items()}
    del state["up2.conv.double_conv.4.running_var"]
    state["head.5.weight"] = np.zeros((1, 16, 1, 1), np.float32)
    state["refiner.body.1.branch3.0.weight"] = state["refiner.body.1.branch3.0.weight"][:, :-1]
    with pytest.raises(PortError) as err:
        tsr.convert_state_dict(state, safe_size=SAFE)
    message = str(err.value)
    assert "3 problem(s)" in message
    assert "nothing fills student.up2.conv.bn2.var" in message
    assert "unexpected key head.5.weight" in message
    assert "shape mismatch refiner.body.1.branch3.0.weight (16, 63, 3, 3)" in message
    from safetensors.numpy import save_file

    src = tmp_path / "broken.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(src))
    out = tmp_path / "out"
    assert convert.main(["tsr", "--src", str(src), "--out", str(out), "--safe-size", str(SAFE)]) == 2
    assert not out.exists()


def test_refiner_required_and_preset_checked(ref, tmp_path, capsys):
    student_only = tmp_path / "student.pth"
    torch.save({"state_dict": ref["student"].state_dict()}, student_only)
    with pytest.raises(PortError, match="no refiner weights.*`twinswin` kind"):
        tsr.convert_parts(tsr.split_checkpoint(load.read_checkpoint(student_only)), safe_size=SAFE)
    assert convert.main(["tsr", "--src", str(student_only), "--out", str(tmp_path / "a"), "--safe-size", "224"]) == 2
    assert "twinswin" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    argv = ["tsr", "--src", str(ref["release"]), "--out", str(tmp_path / "b"), "--safe-size", "224", "--preset", "base"]
    assert convert.main(argv) == 2
    assert "does not fit preset 'base'" in capsys.readouterr().err
    release = load.read_checkpoint(ref["release"])
    both = {
        "state_dict": {**release["state_dict"], "refiner.conv_out.bias": np.zeros(1, np.float32)},
        "refiner_state_dict": release["refiner_state_dict"],
    }
    with pytest.raises(PortError, match="both under 'refiner_state_dict' and as refiner"):
        tsr.split_checkpoint(both)


# ---------------------------------------------------------------------------------------------------------------------
# The released configuration (shapes only) and building blocks


def _zeros(module) -> dict[str, np.ndarray]:
    return {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in module.state_dict().items()}


def test_base_configuration_keys_and_shapes():
    """Swin-B / 896 student (387 keys), HEAD refiner (80 keys), teacher (54 keys): key mapping onto the abstract
    `base` model, parameter counts, config inference and the 1024 output shapes, without running the forward."""
    with torch.device("meta"):
        student = R.TwinSwinUNet(R.swin_features("swin_base_patch4_window7_224", 896), 896).eval()
        refiner, teacher = R.Refiner(), R.MaskEncoder(embed_dim_dims(128))
        logits, d1, d2 = student(torch.empty(1, 3, 1024, 1024))
    sd, rd, td = _zeros(student), _zeros(refiner), _zeros(teacher)
    assert (len(sd), len(rd), len(td)) == (387, 80, 54)
    assert sum(k.startswith("backbone.") for k in sd) == 325
    torch_counts = [sum(p.numel() for p in m.parameters()) for m in (student, refiner, teacher)]
    assert torch_counts == [99_269_721, 143_041, 31_142_528]

    parts = tsr.Parts(sd, rd, td, "release", {"img_size": 1024})
    config = tsr.infer_config(parts)
    assert config == modeling.TSR_PRESETS["base"].with_teacher()
    assert tsr.matching_preset(config) == "base"
    tsr.check_preset(config, "base")
    abstract = pretrained.abstract_model("tsr", config)
    shapes = pretrained.stored_shapes(abstract)
    values, _, problems = tsr.TABLE.map(tsr.merged_state_dict(parts))
    assert not problems and set(values) == set(shapes)
    assert all(tuple(values[k].shape) == tuple(shapes[k].shape) for k in shapes)
    counts = {}
    for part in ("student", "refiner", "teacher"):
        params = nnx.state(getattr(abstract, part), nnx.Param)
        counts[part] = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    assert list(counts.values()) == torch_counts

    graphdef, state = nnx.split(abstract)
    out = jax.eval_shape(
        lambda s, x: nnx.merge(graphdef, s)(x), state, jax.ShapeDtypeStruct((1, 1024, 1024, 3), jnp.float32)
    )
    assert out.alpha.shape == out.refined_logits.shape == out.coarse_logits.shape == (1, 1024, 1024, 1)
    assert out.d1.shape == nchw_to_nhwc_shape(d1.shape) and out.d2.shape == nchw_to_nhwc_shape(d2.shape)
    assert out.coarse_logits.shape == nchw_to_nhwc_shape(logits.shape)
    assert out.d1.shape == (1, 56, 56, 512) and out.d2.shape == (1, 112, 112, 256)


def embed_dim_dims(embed_dim: int) -> tuple[int, ...]:
    return tuple(embed_dim * m for m in (1, 2, 4, 8))


def nchw_to_nhwc_shape(shape) -> tuple[int, ...]:
    b, c, h, w = shape
    return (b, h, w, c)


def test_teacher_torch_style_init(monkeypatch):
    """PyTorch default distributions from `init_seed`, independent of the model's own RNG stream."""
    config = modeling.TSRConfig(
        backbone=swin.SwinConfig(window_size=7, depths=(1, 1, 1, 1), embed_dim=8, num_heads=(1, 1, 1, 1)),
        safe_size=SAFE,
        decoder_channels=(32, 16, 8),
        head_channels=(8, 8),
        refiner=modeling.RefinerConfig(mid_channels=8, num_blocks=1),
    ).with_teacher(init_seed=5)
    assert config.teacher.dims == (8, 16, 32, 64)
    teacher = modeling.MaskEncoder(config.teacher, rngs=nnx.Rngs(5))
    for path, module in [
        ("down3.block.conv1", teacher.down3.block.conv1),
        ("lat3_to_2", teacher.lat3_to_2),
        ("smooth2", teacher.smooth2),
        ("stem.conv", teacher.stem.conv),
    ]:
        kernel = np.asarray(module.kernel[...])
        bound = 1 / np.sqrt(np.prod(kernel.shape[:-1]))  # fan_in = in * kh * kw
        assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.9 * bound, path
        if kernel.size > 10_000:
            assert abs(kernel.std() / (bound / np.sqrt(3)) - 1) < 0.03, path  # U(-b, b) has std b / sqrt(3)
        if module.bias is not None:
            bias = np.abs(np.asarray(module.bias[...]))
            assert bias.max() <= bound and bias.max() > 0.5 * bound, path
    np.testing.assert_array_equal(teacher.stem.norm.scale[...], 1)
    np.testing.assert_array_equal(teacher.stem.norm.bias[...], 0)
    np.testing.assert_array_equal(teacher.down2.block.bn1.mean[...], 0)
    np.testing.assert_array_equal(teacher.down2.block.bn1.var[...], 1)

    class Stub(nnx.Module):  # stands in for the student and refiner (their eager init is slow and tested elsewhere)
        def __init__(self, config, *, rngs, **kwargs):
            self.draw = nnx.Param(jax.random.normal(rngs.params(), (4,)))

    monkeypatch.setattr(modeling, "TwinSwinUNet", Stub)
    monkeypatch.setattr(modeling, "Refiner", Stub)
    one = modeling.TSRMatte(config, rngs=nnx.Rngs(0))
    two = modeling.TSRMatte(config, rngs=nnx.Rngs(1))
    assert not np.array_equal(one.student.draw[...], two.student.draw[...])
    expected = pretrained.stored_values(teacher)
    for model in (one, two):
        got = pretrained.stored_values(model.teacher)
        assert got.keys() == expected.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    other = modeling.MaskEncoder(dataclasses.replace(config.teacher, init_seed=6), rngs=nnx.Rngs(6))
    assert not np.array_equal(other.stem.conv.kernel[...], teacher.stem.conv.kernel[...])


def _small_config() -> modeling.TSRConfig:
    return modeling.TSRConfig(
        backbone=swin.SwinConfig(window_size=7, **SMALL_SWIN),
        safe_size=SAFE,
        img_size=256,
        decoder_channels=DECODER,
        head_channels=HEAD,
    )


def test_batch_norm_train_mode_matches_torch():
    """DoubleConv in train mode: batch statistics, momentum 0.1; PyTorch stores the unbiased variance."""
    torch.manual_seed(0)
    reference = R.DoubleConv(8, 6, 4)
    perturb_(reference, 0)
    ours = modeling.DoubleConv(8, 6, 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    seq = reference.double_conv
    for dst, conv_index, bn_index in (("1", 0, 1), ("2", 3, 4)):
        getattr(ours, f"conv{dst}").kernel[...] = jnp.asarray(
            seq[conv_index].weight.detach().numpy().transpose(2, 3, 1, 0)
        )
        bn, src = getattr(ours, f"bn{dst}"), seq[bn_index]
        bn.scale[...], bn.bias[...] = jnp.asarray(src.weight.detach().numpy()), jnp.asarray(src.bias.detach().numpy())
        bn.mean[...], bn.var[...] = jnp.asarray(src.running_mean.numpy()), jnp.asarray(src.running_var.numpy())
    old_var = np.asarray(ours.bn2.var[...])
    x = torch.randn(2, 8, 10, 12) * 3 + 1
    ours.train()
    reference.train()
    out = ours(jnp.asarray(nchw_to_nhwc(x)))
    with torch.no_grad():
        expected = reference(x)
    assert_close(out, nchw_to_nhwc(expected), name="DoubleConv train mode", rel=1e-5)
    np.testing.assert_allclose(ours.bn2.mean[...], seq[4].running_mean.numpy(), rtol=1e-5, atol=1e-6)
    n = 2 * 10 * 12
    unbiased_update = (seq[4].running_var.numpy() - 0.9 * old_var) / 0.1
    np.testing.assert_allclose(ours.bn2.var[...], 0.9 * old_var + 0.1 * unbiased_update * (n - 1) / n, rtol=1e-5)
    for dst, bn_index in (("1", 1), ("2", 4)):  # eval with identical running statistics
        getattr(ours, f"bn{dst}").var[...] = jnp.asarray(seq[bn_index].running_var.numpy())
    ours.eval()
    reference.eval()
    with torch.no_grad():
        expected = reference(x)
    assert_close(ours(jnp.asarray(nchw_to_nhwc(x))), nchw_to_nhwc(expected), name="DoubleConv eval", atol=2e-5)


def test_configs_presets_and_round_trip():
    expected = {
        "tiny": ("tiny", 896),
        "small": ("small", 896),
        "base": ("base", 896),
        "base384": ("base384", 1152),
        "large": ("large", 1152),
    }
    for name, (swin_name, safe) in expected.items():
        for table in (modeling.PRESETS, modeling.TSR_PRESETS):
            config = table[name]
            assert config.safe_size == safe and config.img_size == 1024
            assert config.backbone == dataclasses.replace(swin.PRESETS[swin_name], drop_path_rate=0.1)
            assert config.decoder_channels == (512, 256, 128) and config.head_channels == (64, 32)
            grids = [safe // 4 // 2**i for i in range(4)]
            assert all(g % config.backbone.window_size == 0 for g in grids)  # no window padding at the safe size
        assert modeling.TSRConfig.preset(name) == modeling.TSR_PRESETS[name]
    assert type(modeling.TSR_PRESETS["base"]) is modeling.TSRConfig
    assert modeling.TSR_PRESETS["base"].refiner == modeling.RefinerConfig(fusion_depth=2, mid_channels=64)
    # teacher widths follow the decoder (the original's embed_dim rule only fits `base`)
    assert modeling.TSR_PRESETS["base"].with_teacher().teacher.dims == embed_dim_dims(128)
    assert modeling.TSR_PRESETS["large"].with_teacher().teacher.dims == embed_dim_dims(128)
    config = dataclasses.replace(
        _small_config().with_teacher(init_seed=3), detach_coarse=True, refiner=modeling.RefinerConfig(fusion_depth=1)
    )
    values = json.loads(json.dumps(registry.config_to_dict(config)))
    assert registry.config_from_dict(modeling.TSRConfig, values) == config
    assert registry.family("tsr") == (modeling.TSRConfig, modeling.TSRMatte)
    assert registry.family("twinswin") == (modeling.TwinSwinConfig, modeling.TwinSwinMatte)
    with pytest.raises(ValueError, match="not a multiple of the backbone stride 32"):
        dataclasses.replace(_small_config(), safe_size=240)
    with pytest.raises(ValueError, match="do not give the decoder features"):
        dataclasses.replace(_small_config(), teacher=modeling.MaskEncoderConfig(dims=embed_dim_dims(96)))
    with pytest.raises(ValueError, match="fusion_depth"):
        modeling.RefinerConfig(fusion_depth=3)
    with pytest.raises(ValueError, match="without a teacher"):
        pretrained.abstract_model("tsr", _small_config()).teacher_features(jnp.zeros((1, 224, 224, 1)))


# ---------------------------------------------------------------------------------------------------------------------
# The released pipeline end to end: fp16 release file -> port/convert.py -> predict.py, against the original's steps


def _original_predict(student, refiner, rgb: np.ndarray, size: int) -> np.ndarray:
    """The original TSR `predict.py` in PyTorch (fp32 with the released weights): stretch to size x size with OpenCV
    bilinear, ImageNet normalisation, student -> refiner, bilinear back to (w, h), x255 truncated to uint8."""
    import cv2

    h, w = rgb.shape[:2]
    x = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    x = (x - np.array(modeling.IMAGENET_MEAN, np.float32)) / np.array(modeling.IMAGENET_STD, np.float32)
    alpha = R.tsr_forward(student, refiner, torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))["alpha"]
    alpha = cv2.resize(alpha[0, 0].numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
    return (alpha * 255).astype(np.uint8)


def test_release_predict_matches_original_pipeline(ref, release, tmp_path):

    import cv2

    from port.reference import demo_image

    predict_cli = load_script("predict")

    inputs = tmp_path / "in"
    inputs.mkdir()
    pictures = {"landscape": (300, 420), "portrait": (333, 211)}
    for stem, size in pictures.items():
        rgb = (demo_image(size, seed=len(stem)) * 255).astype(np.uint8)
        cv2.imwrite(str(inputs / f"{stem}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert predict_cli.main([str(inputs), "--checkpoint", str(release["dir"]), "--output", str(tmp_path / "out")]) == 0

    for stem, (h, w) in pictures.items():
        rgb = cv2.cvtColor(cv2.imread(str(inputs / f"{stem}.png")), cv2.COLOR_BGR2RGB)
        expected = _original_predict(ref["student"], ref["refiner"], rgb, META["img_size"])
        ours = cv2.imread(str(tmp_path / "out" / f"{stem}.png"), cv2.IMREAD_GRAYSCALE)
        assert ours.shape == (h, w)
        assert expected.std() > 5, "uninformative reference alpha"
        diff = np.abs(ours.astype(np.int16) - expected.astype(np.int16))
        within_one = float((diff <= 1).mean())
        print(f"{stem}: max grey-level diff {diff.max()}, within 1 level {within_one:.5f}")
        assert within_one >= 0.999 and diff.max() <= 2


def test_calibrating_frozen_batchnorm_matches_torch_train_mode():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5, 6, 8)) * 2 + 1).astype(np.float32)
    reference = torch.nn.BatchNorm2d(8)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.uniform_(-0.5, 0.5)
    norm = modeling.FrozenBatchNorm(8, dtype=jnp.float32, param_dtype=jnp.float32)
    norm.scale[...] = jnp.asarray(reference.weight.detach().numpy())
    norm.bias[...] = jnp.asarray(reference.bias.detach().numpy())
    norm.calibrating = True
    reference.train()
    for _ in range(2):  # two updates: the running statistics compound with momentum 0.1
        expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
        np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(norm.mean[...]), reference.running_mean.numpy(), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(norm.var[...]), reference.running_var.numpy(), atol=1e-6, rtol=1e-6)
    norm.calibrating = False
    reference.eval()
    expected = reference(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(np.asarray(norm(jnp.asarray(x))), expected, atol=1e-5, rtol=1e-5)


def test_teacher_readout_depth_to_space_is_pixel_shuffle():
    from jaxmatte.models.tsr.teacher import depth_to_space

    x = np.random.default_rng(1).standard_normal((2, 3, 4, 64)).astype(np.float32)
    expected = torch.nn.functional.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), 8).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(depth_to_space(jnp.asarray(x), 8)), expected.numpy())
    with pytest.raises(ValueError, match="64 channels"):
        depth_to_space(jnp.zeros((1, 2, 2, 63)), 8)
