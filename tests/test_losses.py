"""jaxmatte.losses against direct PyTorch evaluations of the formulas in tsr_twinswin.md §5 and dinov3_matting.md §5.

References run in float64 on NCHW tensors; ours run in float32 on NHWC arrays. Values must agree to 1e-6 (absolute),
gradients to 1e-5 of their largest magnitude. Values: |diff| <= 1e-6 * max(1, |ref|).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from jaxmatte import losses

BATCH, HEIGHT, WIDTH = 2, 37, 53
VALUE_ATOL = 1e-6
GRAD_REL = 1e-5

SX = [[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]
SY = [[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]
LAP = [[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]


# ------------------------------------------------------------------------------------------------------- inputs


def sigmoid_np(x):
    return 1.0 / (1.0 + np.exp(-x))


def make_target(seed: int) -> np.ndarray:
    """Soft alpha with exact 0 and 1 regions."""
    rng = np.random.default_rng(seed)
    target = rng.uniform(size=(BATCH, HEIGHT, WIDTH, 1))
    target[:, 5:20, 10:30] = 1.0
    target[:, 25:, 40:] = 0.0
    target[1, :4, :] = 1.0
    return target.astype(np.float32)


def make_prob(seed: int, target: np.ndarray) -> np.ndarray:
    """Probabilities with exact 0/1 values, partly equal to the target (ties) and partly not."""
    rng = np.random.default_rng(seed)
    prob = sigmoid_np(3.0 * rng.standard_normal((BATCH, HEIGHT, WIDTH, 1)))
    prob[:, 5:12, 10:20] = 1.0  # equals the target
    prob[:, 27:, 44:] = 0.0  # equals the target
    prob[:, 30:, :8] = 0.0  # target soft there
    prob[0, 0, :] = 1.0
    prob[:, 14:16, 33:35] = target[:, 14:16, 33:35]  # soft ties
    return prob.astype(np.float32)


def make_logits(seed: int) -> np.ndarray:
    """Logits including values beyond and exactly at the ±10 clamp of the structure loss."""
    rng = np.random.default_rng(seed)
    logits = 4.0 * rng.standard_normal((BATCH, HEIGHT, WIDTH, 1))
    logits[:, 2:6, 2:6] = 15.0
    logits[:, 30:33, 40:45] = -12.0
    logits[0, 10, 10:14] = 10.0
    logits[1, 20, 20:24] = -10.0
    return logits.astype(np.float32)


def make_refined(seed: int) -> np.ndarray:
    """Refined logits z_ref in [-8, 8]: sigmoid stays far from the 1e-6 clamp; no constant blocks (no Sobel ties)."""
    rng = np.random.default_rng(seed)
    return (2.5 * rng.standard_normal((BATCH, HEIGHT, WIDTH, 1))).clip(-8.0, 8.0).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    target = make_target(0)
    binary = (make_target(1) > 0.5).astype(np.float32)
    return {
        "target": target,
        "binary": binary,
        "prob": make_prob(2, target),
        "logits": make_logits(3),
        "refined": make_refined(4),
    }


# -------------------------------------------------------------------------------------------- torch references


def t(x: np.ndarray, grad: bool = False) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x)).double().permute(0, 3, 1, 2).contiguous()
    return tensor.requires_grad_(grad)


def nhwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().permute(0, 2, 3, 1).numpy()


def t_conv(x, kernel):
    weight = torch.as_tensor(kernel, dtype=x.dtype)[None, None]
    return F.conv2d(x, weight, padding=weight.shape[-1] // 2)


def t_l1(p, g):
    return (p - g).abs().mean()


def t_grad(p, g):
    return ((t_conv(p, SX) - t_conv(g, SX)).abs() + (t_conv(p, SY) - t_conv(g, SY)).abs()).mean()


def t_ssim(p, g):
    coords = torch.arange(11, dtype=p.dtype) - 5
    taps = torch.exp(-(coords**2) / (2 * 1.5**2))
    window = torch.outer(taps, taps)
    window = window / window.sum()
    mu_p, mu_g = t_conv(p, window), t_conv(g, window)
    var_p = t_conv(p * p, window) - mu_p**2
    var_g = t_conv(g * g, window) - mu_g**2
    cov = t_conv(p * g, window) - mu_p * mu_g
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))
    return ssim_map.mean()


def t_matting(p, g, w_grad=1.0):
    return t_l1(p, g) + w_grad * t_grad(p, g) + 0.5 * (1 - t_ssim(p, g))


def t_feat(students, teachers):
    return sum(F.mse_loss(s.double(), tt.double().detach()) for s, tt in zip(students, teachers, strict=True))


def t_structure(z, g):
    weit = 1 + 5 * torch.abs(F.avg_pool2d(g, kernel_size=31, stride=1, padding=15) - g)
    z = z.clamp(-10, 10)
    wbce = F.binary_cross_entropy_with_logits(z, g, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    p = torch.sigmoid(z)
    inter = (p * g * weit).sum(dim=(2, 3))
    union = ((p + g) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def logit_safe(prob):
    q = prob.clamp(1e-6, 1 - 1e-6)
    return torch.log(q / (1 - q))


def t_tsr_original(coarse_logits, refined_logits, g):
    """The original: refined prob -> clamp -> logit -> sigmoid inside the loss."""
    coarse = t_matting(torch.sigmoid(coarse_logits), g)
    refined = t_matting(torch.sigmoid(logit_safe(torch.sigmoid(refined_logits))), g, w_grad=2.0)
    return coarse + refined


def t_charbonnier(p, g):
    return torch.sqrt((p - g) ** 2 + 1e-6).mean()


def t_laplacian(p, g):
    return (t_conv(p, LAP) - t_conv(g, LAP)).abs().mean()


def t_multiscale_gradient(p, g):
    def magnitude(x):
        return torch.sqrt(t_conv(x, SX) ** 2 + t_conv(x, SY) ** 2 + 1e-8)

    total = 0.0
    for scale in (1, 2, 4):
        p_s = p if scale == 1 else F.avg_pool2d(p, scale, scale)
        g_s = g if scale == 1 else F.avg_pool2d(g, scale, scale)
        weight = torch.exp(magnitude(g_s))
        total = total + (magnitude(p_s) * weight - magnitude(g_s) * weight).abs().mean() / scale
    return total / 3


def t_dinov3(p, g):
    return t_charbonnier(p, g) + 0.5 * t_multiscale_gradient(p, g) + 0.1 * t_laplacian(p, g)


# ----------------------------------------------------------------------------------------------------- checks


def check_value(ours, ref, atol=VALUE_ATOL):
    ours = np.asarray(ours)
    assert ours.dtype == np.float32 and ours.shape == ()
    diff = abs(float(ours) - float(ref))
    assert diff <= atol * max(1.0, abs(float(ref))), (
        f"value {float(ours)!r} vs reference {float(ref)!r}: diff {diff:.3g}"
    )
    return diff


def check_grad(ours, ref, rel=GRAD_REL):
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    assert ours.shape == ref.shape
    assert np.isfinite(ours).all()
    scale = np.abs(ref).max()
    assert scale > 0
    diff = np.abs(ours - ref).max()
    assert diff <= rel * scale, f"gradient diff {diff:.3g} > {rel:g} * {scale:.3g}"
    return diff / scale


PAIR_LOSSES = [
    ("l1", losses.l1, t_l1, "prob"),
    ("sobel_gradient", losses.sobel_gradient, t_grad, "prob"),
    ("ssim", losses.ssim, t_ssim, "prob"),
    ("structure", losses.structure, t_structure, "logits"),
    ("charbonnier", losses.charbonnier, t_charbonnier, "prob"),
    ("laplacian", losses.laplacian, t_laplacian, "prob"),
    ("multiscale_gradient", losses.multiscale_gradient, t_multiscale_gradient, "prob"),
]


@pytest.mark.parametrize(("name", "ours", "ref", "input_key"), PAIR_LOSSES, ids=[case[0] for case in PAIR_LOSSES])
def test_loss_value_and_gradient(data, name, ours, ref, input_key):
    target = data["binary"] if name == "structure" else data["target"]
    pred = data[input_key]
    value, grad = jax.value_and_grad(ours)(jnp.asarray(pred), jnp.asarray(target))
    pred_t = t(pred, grad=True)
    ref_value = ref(pred_t, t(target))
    ref_value.backward()
    check_value(value, ref_value.item())
    check_grad(grad, nhwc(pred_t.grad))


def test_structure_soft_target(data):
    value = losses.structure(data["logits"], data["target"])
    check_value(value, t_structure(t(data["logits"]), t(data["target"])).item())


def test_gradient_ties_and_clamp_edges(data):
    """Where p == g the L1 gradient is 0; logits at or beyond ±10 get none (as torch's scalar clamp)."""
    prob, target = jnp.asarray(data["prob"]), jnp.asarray(data["target"])
    grad = np.asarray(jax.grad(losses.l1)(prob, target))
    assert (grad[:, 5:12, 10:20] == 0).all() and (grad[:, 14:16, 33:35] == 0).all()
    assert (np.abs(grad[:, 30:, :8]) > 0).all()
    grad = np.asarray(jax.grad(losses.structure)(jnp.asarray(data["logits"]), jnp.asarray(data["binary"])))
    assert (grad[:, 2:6, 2:6] == 0).all() and (grad[:, 30:33, 40:45] == 0).all()
    assert (grad[0, 10, 10:14] == 0).all() and (grad[1, 20, 20:24] == 0).all()
    assert (grad[0, 11, 10:14] != 0).all()


def test_ssim_identity_and_range(data):
    target = jnp.asarray(data["target"])
    assert abs(float(losses.ssim(target, target)) - 1.0) <= 1e-6
    assert float(losses.ssim(jnp.asarray(data["prob"]), target)) < 0.9


def test_feature_alignment(data):
    rng = np.random.default_rng(5)
    shapes = [(BATCH, 9, 13, 16), (BATCH, 5, 7, 8)]
    students = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    teachers = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    value, (grad_s, grad_t) = jax.value_and_grad(losses.feature_alignment, argnums=(0, 1))(students, teachers)
    students_t = [torch.from_numpy(s).double().requires_grad_(True) for s in students]
    ref = t_feat(students_t, [torch.from_numpy(x) for x in teachers])
    ref.backward()
    check_value(value, ref.item())
    for ours, ref_s in zip(grad_s, students_t, strict=True):
        check_grad(ours, ref_s.grad.numpy())
    assert all((np.asarray(g) == 0).all() for g in grad_t)
    bf16 = losses.feature_alignment([jnp.asarray(s, jnp.bfloat16) for s in students], teachers)
    assert bf16.dtype == jnp.float32
    with pytest.raises(ValueError, match="shape"):
        losses.feature_alignment(students, teachers[::-1])
    with pytest.raises(ValueError, match="equally many"):
        losses.feature_alignment(students, teachers[:1])


def test_matting_and_dinov3_totals(data):
    prob, target = data["prob"], data["target"]
    total, terms = losses.matting_loss(prob, target)
    check_value(total, t_matting(t(prob), t(target)).item())
    assert set(terms) == {"l1", "grad", "ssim_loss", "total"}
    check_value(terms["ssim_loss"], 1 - t_ssim(t(prob), t(target)).item())
    total, terms = losses.matting_loss(prob, target, w_l1=2.0, w_grad=0.0, w_ssim=1.0)
    check_value(total, 2 * t_l1(t(prob), t(target)).item() + 1 - t_ssim(t(prob), t(target)).item())

    prob_t = t(prob, grad=True)
    ref = t_dinov3(prob_t, t(target))
    ref.backward()
    (total, terms), grad = jax.value_and_grad(losses.dinov3_matting_loss, has_aux=True)(
        jnp.asarray(prob), jnp.asarray(target)
    )
    check_value(total, ref.item())
    check_grad(grad, nhwc(prob_t.grad))
    assert set(terms) == {"charbonnier", "gradient", "laplacian", "total"}
    total, terms = losses.dinov3_matting_loss(prob, target, use_charbonnier=False)
    assert "l1" in terms
    ref = (
        t_l1(t(prob), t(target))
        + 0.5 * t_multiscale_gradient(t(prob), t(target))
        + 0.1 * t_laplacian(t(prob), t(target))
    )
    check_value(total, ref.item())


def test_twinswin_modes(data):
    logits, target, binary = data["logits"], data["target"], data["binary"]
    logits_t = t(logits, grad=True)
    ref = t_matting(torch.sigmoid(logits_t), t(target))
    ref.backward()
    (total, terms), grad = jax.value_and_grad(losses.twinswin_loss, has_aux=True)(
        jnp.asarray(logits), jnp.asarray(target)
    )
    check_value(total, ref.item())
    check_grad(grad, nhwc(logits_t.grad))
    assert "feat" not in terms

    logits_t = t(logits, grad=True)
    ref = 2.0 * t_structure(logits_t, t(binary))
    ref.backward()
    (total, terms), grad = jax.value_and_grad(lambda z: losses.twinswin_loss(z, binary, mode="locator"), has_aux=True)(
        jnp.asarray(logits)
    )
    check_value(total, ref.item())
    check_grad(grad, nhwc(logits_t.grad))
    assert set(terms) == {"structure", "total"}

    rng = np.random.default_rng(6)
    students = [rng.standard_normal((BATCH, 5, 7, 4)).astype(np.float32)]
    teachers = [rng.standard_normal((BATCH, 5, 7, 4)).astype(np.float32)]
    with_feat, terms = losses.twinswin_loss(logits, target, students, teachers)
    plain, _ = losses.twinswin_loss(logits, target)
    feat = t_feat([torch.from_numpy(students[0])], [torch.from_numpy(teachers[0])]).item()
    check_value(terms["feat"], feat)
    check_value(with_feat, float(plain) + 0.2 * feat)
    check_value(losses.twinswin_loss(logits, target, students, teachers, w_feat=0.0)[0], float(plain))
    with pytest.raises(ValueError, match="mode"):
        losses.twinswin_loss(logits, target, mode="segmentation")


def test_tsr_matches_original_where_no_clamp_is_active(data):
    coarse, refined, target = data["logits"], data["refined"], data["target"]
    rng = np.random.default_rng(7)
    students = [rng.standard_normal((BATCH, 5, 7, 4)).astype(np.float32) for _ in range(2)]
    teachers = [rng.standard_normal((BATCH, 5, 7, 4)).astype(np.float32) for _ in range(2)]

    coarse_t, refined_t = t(coarse, grad=True), t(refined, grad=True)
    students_t = [torch.from_numpy(s).double().requires_grad_(True) for s in students]
    ref = t_tsr_original(coarse_t, refined_t, t(target)) + 0.2 * t_feat(
        students_t, [torch.from_numpy(x) for x in teachers]
    )
    ref.backward()

    def loss(c, r, s):
        return losses.tsr_loss(c, r, target, s, teachers)

    (total, terms), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(coarse, refined, students)
    check_value(total, ref.item())
    check_grad(grads[0], nhwc(coarse_t.grad))
    check_grad(grads[1], nhwc(refined_t.grad))
    for ours, ref_s in zip(grads[2], students_t, strict=True):
        check_grad(ours, ref_s.grad.numpy())
    refined_prob = t(sigmoid_np(refined.astype(np.float64)))
    check_value(terms["refined/grad"], t_grad(refined_prob, t(target)).item())
    check_value(terms["coarse/total"], t_matting(torch.sigmoid(t(coarse)), t(target)).item())
    expected = {f"{branch}/{name}" for branch in ("coarse", "refined") for name in ("l1", "grad", "ssim_loss", "total")}
    assert set(terms) == expected | {"feat", "total"}


def test_tsr_faithful_clamp_equals_original_round_trip(data):
    """clamp_refined=True is the original's clamp-logit-sigmoid, also where the clamp is active (|z| = 20)."""
    coarse, target = data["logits"], data["target"]
    refined = data["refined"].copy()
    refined[:, 8:14, 20:30] = 20.0
    refined[:, 30:, 0:10] = -20.0
    coarse_t, refined_t = t(coarse, grad=True), t(refined, grad=True)
    ref = t_tsr_original(coarse_t, refined_t, t(target))
    ref.backward()
    total_fn = jax.value_and_grad(
        lambda c, r: losses.tsr_loss(c, r, target, clamp_refined=True)[0],
        argnums=(0, 1),
    )
    total, (grad_c, grad_r) = total_fn(coarse, refined)
    check_value(total, ref.item())
    check_grad(grad_c, nhwc(coarse_t.grad))
    check_grad(grad_r, nhwc(refined_t.grad))
    assert (np.asarray(grad_r)[:, 8:14, 20:30] == 0).all() and (np.asarray(grad_r)[:, 30:, 0:10] == 0).all()
    unclamped = jax.grad(lambda r: losses.tsr_loss(coarse, r, target)[0])(refined)
    assert (np.asarray(unclamped)[:, 30:, 0:10] != 0).all()


def test_tsr_refined_path_finite_where_fp16_round_trip_breaks(data):
    """§9.2: z_ref = coarse_prob + Δ ≳ 8.3 makes the fp16 sigmoid exactly 1 and the fp16 logit inf."""
    coarse, target = data["logits"], data["target"]
    refined = data["refined"].copy()
    rng = np.random.default_rng(8)
    refined[:, 8:14, 20:30] = 9.0 + rng.uniform(0.0, 1.0, (BATCH, 6, 10, 1))  # fp16 sigmoid rounds to 1.0
    refined[:, 16:20, 20:30] = 7.5 + rng.uniform(0.0, 0.4, (BATCH, 4, 10, 1))  # fp16 0.9995: overflowing backward
    refined = refined.astype(np.float16).astype(np.float32)  # the same values in every precision

    z16 = torch.from_numpy(refined).half().requires_grad_(True)
    prob16 = torch.sigmoid(z16)
    assert (prob16[:, 8:14, 20:30] == 1.0).all()
    logit16 = logit_safe(prob16)
    assert torch.isinf(logit16).any()
    (torch.sigmoid(logit16) - torch.from_numpy(target).half()).abs().sum().backward()
    assert not torch.isfinite(z16.grad).all()

    coarse_t, refined_t = t(coarse, grad=True), t(refined, grad=True)
    ref = t_tsr_original(coarse_t, refined_t, t(target))  # float64: the clamp is inactive at z = 9
    ref.backward()
    for dtype in (jnp.float32, jnp.float16, jnp.bfloat16):
        refined_in = jnp.asarray(refined, dtype)
        (total, terms), (grad_c, grad_r) = jax.value_and_grad(
            lambda c, r: losses.tsr_loss(c, r, target), argnums=(0, 1), has_aux=True
        )(jnp.asarray(coarse), refined_in)
        assert total.dtype == jnp.float32 and all(np.isfinite(np.asarray(v)) for v in terms.values())
        assert np.isfinite(np.asarray(grad_c)).all() and np.isfinite(np.asarray(grad_r, np.float32)).all()
        if dtype == jnp.float32:
            check_value(total, ref.item())
            check_grad(grad_r, nhwc(refined_t.grad))
        if dtype == jnp.float16:
            assert np.abs(np.asarray(grad_r, np.float32)[:, 8:20, 20:30]).max() > 0


def test_bf16_inputs_give_float32_results(data):
    prob, target, logits, binary = data["prob"], data["target"], data["logits"], data["binary"]
    cases = [
        (losses.l1, prob, target),
        (losses.sobel_gradient, prob, target),
        (losses.ssim, prob, target),
        (losses.structure, logits, binary),
        (losses.charbonnier, prob, target),
        (losses.laplacian, prob, target),
        (losses.multiscale_gradient, prob, target),
        (lambda p, g: losses.matting_loss(p, g)[0], prob, target),
        (lambda z, g: losses.tsr_loss(z, z, g)[0], logits, target),
    ]
    for fn, pred, tgt in cases:
        pred_bf16 = jnp.asarray(pred, jnp.bfloat16)
        value = fn(pred_bf16, jnp.asarray(tgt, jnp.bfloat16))
        assert value.dtype == jnp.float32
        # identical to float32 evaluation of the bf16-rounded inputs ...
        rounded = fn(pred_bf16.astype(jnp.float32), jnp.asarray(tgt, jnp.bfloat16).astype(jnp.float32))
        assert abs(float(value) - float(rounded)) <= 1e-6
        # ... and close to the float32 inputs
        assert abs(float(value) - float(fn(pred, tgt))) <= 1e-2 * max(abs(float(fn(pred, tgt))), 1e-3)
        grad = jax.grad(fn)(pred_bf16, jnp.asarray(tgt, jnp.bfloat16))
        assert grad.dtype == jnp.bfloat16 and np.isfinite(np.asarray(grad, np.float32)).all()


def test_jit_matches_eager(data):
    prob, target, logits = data["prob"], data["target"], data["logits"]

    def all_terms(p, z, g, s, te):
        _, tsr = losses.tsr_loss(z, z * 0.5, g, s, te)
        _, dino = losses.dinov3_matting_loss(p, g)
        _, locator = losses.twinswin_loss(z, g, mode="locator")
        return {**tsr, **{f"dino/{k}": v for k, v in dino.items()}, "locator": locator["total"]}

    feats = [np.full((BATCH, 3, 4, 2), 0.5, np.float32)]
    teacher = [np.zeros((BATCH, 3, 4, 2), np.float32)]
    eager = all_terms(prob, logits, target, feats, teacher)
    jitted = jax.jit(all_terms)(prob, logits, target, feats, teacher)
    assert set(eager) == set(jitted)
    for key in eager:
        assert jitted[key].dtype == jnp.float32
        assert math.isclose(float(jitted[key]), float(eager[key]), rel_tol=1e-6, abs_tol=1e-7), key
    check_value(jitted["feat"], 0.25)

    step = jax.jit(jax.value_and_grad(lambda z: losses.tsr_loss(z, z, target)[0]))
    value, grad = step(logits)
    assert np.isfinite(float(value)) and grad.shape == logits.shape
