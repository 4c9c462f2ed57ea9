"""timm reference models and their jaxmatte conversions, side by side (used by the demo and the benchmarks).

A reference is built offline (`pretrained=False`, seeded), saved as safetensors, converted with the real
`port/convert.py`, and loaded back with `jaxmatte.load_pretrained`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxmatte.preprocessing import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    timm_name: str
    size: tuple[int, int]
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    convert_args: tuple[str, ...] = ()


CASES = {
    "swin_b_896": Case(
        "Swin-B features @896",
        "swin",
        "swin_base_patch4_window7_224",
        (896, 896),
        {"features_only": True, "out_indices": (0, 1, 2, 3), "img_size": 896},
    ),
    "dinov3_s_448": Case("DINOv3-S @448", "dinov3", "vit_small_patch16_dinov3", (448, 448)),
    "mae_b_448": Case("MAE ViT-B @448", "vit", "vit_base_patch16_224.mae", (448, 448), {"img_size": 448}),
}


def build_reference(case: Case, seed: int = 0):
    """The timm model in eval mode, random weights made informative by `perturb_`."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(case.timm_name, pretrained=False, num_classes=0, **case.timm_kwargs).eval()
    perturb_(model, seed)
    return model


SHIFTED_TABLES = ("relative_position_bias_table", "cls_token", "reg_token", "pos_embed", "storage_tokens", "mask_token")
LAYER_SCALES = ("gamma", "gamma_1", "gamma_2")


def perturb_(module, seed: int = 0, gamma_range: tuple[float, float] = (0.5, 1.0)) -> None:
    """Make a random-init torch model informative for parity checks: shift every bias, norm affine, BN mean and
    token/position table by 0.1 N(0, 1), draw BN variances from U(0.5, 1.5) and layer-scale gammas from `gamma_range`.
    (Random init hides bugs: zero biases, unit norms, layer scale 1e-5 turning blocks into the identity.)"""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf in LAYER_SCALES:
                low, high = gamma_range
                tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
            elif leaf == "running_var":
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator, dtype=tensor.dtype))
            elif (
                leaf in ("bias", "running_mean", *SHIFTED_TABLES)
                or leaf.endswith("_bias")
                or (leaf == "weight" and tensor.ndim == 1)
            ):
                tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator, dtype=tensor.dtype))


def convert_reference(case: Case, model, workdir: Path) -> Path:
    """Save the reference as safetensors, run `port/convert.py`, return the converted directory."""
    from safetensors.torch import save_file

    from port.convert import run

    workdir.mkdir(parents=True, exist_ok=True)
    src = workdir / f"{case.kind}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(src))
    out = workdir / case.kind
    run([case.kind, "--src", str(src), "--out", str(out), *case.convert_args])
    return out


def torch_forward(case: Case, model) -> Callable[[Any], np.ndarray]:
    """NCHW torch tensor -> the comparable output as numpy (Swin: stage 4 NHWC; ViTs: final-normed tokens)."""
    import torch

    def forward(x):
        with torch.no_grad():
            out = model(x)[-1] if case.kind == "swin" else model.forward_features(x)
        return out.numpy()

    return forward


def jax_forward(case: Case, model: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """A jitted NHWC forward returning the output comparable with `torch_forward`."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, x):
        out = nnx.merge(graphdef, state)(x)
        return out[-1] if case.kind == "swin" else out.tokens

    return lambda x: forward(state, x)


def demo_image(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A deterministic RGB test picture in [0, 1] (gradients, discs, thin lines), HWC float32."""
    import cv2

    h, w = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin(xx / 17.0) * np.cos(yy / 23.0)], axis=-1)
    image = np.ascontiguousarray((image * 255).astype(np.uint8))
    for _ in range(12):
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.circle(image, center, int(rng.integers(h // 20, h // 5)), color, -1, cv2.LINE_AA)
    for _ in range(40):
        p0 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.line(image, p0, p1, tuple(int(c) for c in rng.integers(0, 256, 3)), 1, cv2.LINE_AA)
    return image.astype(np.float32) / 255.0


def normalized_batch(size: tuple[int, int], batch: int = 1) -> np.ndarray:
    """(B, H, W, 3) ImageNet-normalised copies of `demo_image`."""
    images = [demo_image(size, seed=i) for i in range(batch)]
    return ((np.stack(images) - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).astype(np.float32)
