"""PyTorch reference of the Deep Image Matting teacher and the DCP student, NCHW, for checkpoint and parity tests.

Written from `dim_prune.md` §1/§7: module names reproduce the original state-dict keys (`downK.convJ.cbr_unit.*`,
`upK.conv.cbr_unit.*`, `feature*`, `feature_trans*`). The classes report `models` as their module so that
`save_like_original` pickles them under the same global names as the released checkpoints (`models.DIMModel`, ...).
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

TEACHER_PARAMS = 25_582_595
TEACHER_KEYS = 126
# Widths of the teacher in the 18-entry cfg order of the student (d1c1 .. d5c3, up5 .. up1).
TEACHER_CFG = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 256, 128, 64, 1)
FEATURE_WIDTHS = (128, 256, 512, 512)  # teacher channels of the pooled down2..down5 maps


class conv2DBatchNormRelu(nn.Module):  # original class names throughout
    """Conv (with bias) -> BatchNorm -> optional ReLU, kept in `cbr_unit`."""

    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, with_relu: bool = True):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=True),
            nn.BatchNorm2d(out_channels),
        ]
        if with_relu:
            layers.append(nn.ReLU(inplace=True))
        self.cbr_unit = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr_unit(x)


class _PooledBlock(nn.Module):
    """Shared forward of the encoder blocks: the convs, then a 2x2 max-pool that also returns its indices."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
        for conv in self.convs():
            x = conv(x)
        pre_pool_shape = x.size()
        pooled, indices = self.maxpool_with_argmax(x)
        return pooled, indices, pre_pool_shape

    def convs(self) -> list[nn.Module]:
        return [module for name, module in self.named_children() if name.startswith("conv")]


class segnetDown2(_PooledBlock):
    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv2DBatchNormRelu(in_channels, out_channels, 3, 1)
        self.conv2 = conv2DBatchNormRelu(out_channels, out_channels, 3, 1)
        self.maxpool_with_argmax = nn.MaxPool2d(2, 2, return_indices=True)


class segnetDown3(_PooledBlock):
    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv2DBatchNormRelu(in_channels, out_channels, 3, 1)
        self.conv2 = conv2DBatchNormRelu(out_channels, out_channels, 3, 1)
        self.conv3 = conv2DBatchNormRelu(out_channels, out_channels, 3, 1)
        self.maxpool_with_argmax = nn.MaxPool2d(2, 2, return_indices=True)


class segnetDown2_2(_PooledBlock):
    """Student block with two independent widths."""

    __module__ = "models"

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = conv2DBatchNormRelu(in_channels, mid_channels, 3, 1)
        self.conv2 = conv2DBatchNormRelu(mid_channels, out_channels, 3, 1)
        self.maxpool_with_argmax = nn.MaxPool2d(2, 2, return_indices=True)


class segnetDown3_2(_PooledBlock):
    """Student block with three independent widths."""

    __module__ = "models"

    def __init__(self, in_channels: int, width1: int, width2: int, width3: int):
        super().__init__()
        self.conv1 = conv2DBatchNormRelu(in_channels, width1, 3, 1)
        self.conv2 = conv2DBatchNormRelu(width1, width2, 3, 1)
        self.conv3 = conv2DBatchNormRelu(width2, width3, 3, 1)
        self.maxpool_with_argmax = nn.MaxPool2d(2, 2, return_indices=True)


class segnetUp1(nn.Module):
    """Decoder unit: unpool to the encoder's pre-pool shape, then Conv5x5 + BN (no ReLU)."""

    __module__ = "models"

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.conv = conv2DBatchNormRelu(in_channels, out_channels, 5, 2, with_relu=False)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_shape: torch.Size) -> torch.Tensor:
        return self.conv(self.unpool(x, indices=indices, output_size=output_shape))


def _encoder_decoder_forward(model: nn.Module, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Pooled down2..down5 maps and the sigmoid alpha [N, H, W]."""
    down1, indices1, shape1 = model.down1(x)
    down2, indices2, shape2 = model.down2(down1)
    down3, indices3, shape3 = model.down3(down2)
    down4, indices4, shape4 = model.down4(down3)
    down5, indices5, shape5 = model.down5(down4)
    up = model.up5(down5, indices5, shape5)
    up = model.up4(up, indices4, shape4)
    up = model.up3(up, indices3, shape3)
    up = model.up2(up, indices2, shape2)
    up = model.up1(up, indices1, shape1)
    alpha = model.sigmoid(torch.squeeze(up, dim=1))
    return [down2, down3, down4, down5], alpha


class DIMModel(nn.Module):
    """The teacher; `forward` returns ([pooled down2, down3, down4, down5], alpha) as DCP's class does."""

    __module__ = "models"

    def __init__(self, n_classes: int = 1, in_channels: int = 4):
        super().__init__()
        self.in_channels = in_channels
        self.down1 = segnetDown2(in_channels, 64)
        self.down2 = segnetDown2(64, 128)
        self.down3 = segnetDown3(128, 256)
        self.down4 = segnetDown3(256, 512)
        self.down5 = segnetDown3(512, 512)
        self.up5 = segnetUp1(512, 512)
        self.up4 = segnetUp1(512, 256)
        self.up3 = segnetUp1(256, 128)
        self.up2 = segnetUp1(128, 64)
        self.up1 = segnetUp1(64, n_classes)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return _encoder_decoder_forward(self, x)


class DIMModel_student(nn.Module):
    """The pruned student built from the 18 cfg widths; `forward` returns (8 maps, alpha): the pooled down2..down5
    maps, then their `feature2..5` projections to the teacher widths."""

    __module__ = "models"

    def __init__(self, cfg: Sequence[int], in_channels: int = 4):
        super().__init__()
        if len(cfg) != 18:
            raise ValueError(f"cfg needs 18 widths, got {len(cfg)}")
        c = list(cfg)
        self.cfg = c
        self.down1 = segnetDown2_2(in_channels, c[0], c[1])
        self.down2 = segnetDown2_2(c[1], c[2], c[3])
        self.down3 = segnetDown3_2(c[3], c[4], c[5], c[6])
        self.down4 = segnetDown3_2(c[6], c[7], c[8], c[9])
        self.down5 = segnetDown3_2(c[9], c[10], c[11], c[12])
        self.up5 = segnetUp1(c[12], c[13])
        self.up4 = segnetUp1(c[13], c[14])
        self.up3 = segnetUp1(c[14], c[15])
        self.up2 = segnetUp1(c[15], c[16])
        self.up1 = segnetUp1(c[16], 1)  # cfg[17] is unused: the output always has one channel
        self.sigmoid = nn.Sigmoid()
        student_widths = (c[3], c[6], c[9], c[12])
        for level, width, teacher_width in zip(range(2, 6), student_widths, FEATURE_WIDTHS, strict=True):
            setattr(self, f"feature{level}", nn.Conv2d(width, teacher_width, 1, bias=False))
        for level, width, teacher_width in zip(range(2, 6), student_widths, FEATURE_WIDTHS, strict=True):
            connector = nn.Sequential(nn.Conv2d(width, teacher_width, 1, bias=False), nn.BatchNorm2d(teacher_width))
            nn.init.normal_(connector[0].weight, 0.0, (2.0 / teacher_width) ** 0.5)  # k*k*out with k = 1
            nn.init.ones_(connector[1].weight)
            nn.init.zeros_(connector[1].bias)
            setattr(self, f"feature_trans{level}", connector)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        raw, alpha = _encoder_decoder_forward(self, x)
        projections = [getattr(self, f"feature{level}")(f) for level, f in zip(range(2, 6), raw, strict=True)]
        return raw + projections, alpha


MODEL_CLASSES = (
    DIMModel,
    segnetDown2,
    segnetDown3,
    segnetUp1,
    conv2DBatchNormRelu,
    DIMModel_student,
    segnetDown2_2,
    segnetDown3_2,
)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_teacher_size(model: nn.Module) -> None:
    """Raise unless `model` has the teacher's 25,582,595 parameters and 126 state-dict keys (§1)."""
    params, keys = count_parameters(model), len(model.state_dict())
    if params != TEACHER_PARAMS or keys != TEACHER_KEYS:
        raise AssertionError(
            f"teacher has {params} parameters / {keys} keys, expected {TEACHER_PARAMS} / {TEACHER_KEYS}"
        )


@torch.no_grad()
def perturb_(model: nn.Module, seed: int) -> nn.Module:
    """Random conv weights and biases, and BatchNorm affine and running statistics away from (1, 0, 0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(t.shape, generator=gen, dtype=torch.float32).mul_(std).add_(mean).to(t.dtype)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_in = module.weight[0].numel()
            module.weight.copy_(normal(module.weight, (2.0 / fan_in) ** 0.5))
            if module.bias is not None:
                module.bias.copy_(normal(module.bias, 0.1))
        elif isinstance(module, nn.BatchNorm2d):
            module.weight.copy_(normal(module.weight, 0.2, 1.0))
            module.bias.copy_(normal(module.bias, 0.1))
            module.running_mean.copy_(normal(module.running_mean, 0.1))
            var = torch.rand(module.running_var.shape, generator=gen) + 0.5  # U(0.5, 1.5): positive
            module.running_var.copy_(var.to(module.running_var.dtype))
            module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))
    return model


@contextlib.contextmanager
def models_module() -> Iterator[types.ModuleType]:
    """A temporary `models` entry in `sys.modules` holding the reference classes, as the original repositories' own
    `models.py` would be; any previous entry is restored afterwards."""
    module = types.ModuleType("models")
    module.__file__ = __file__  # lets torch's legacy writer embed the class source, as the original files do
    for cls in MODEL_CLASSES:
        setattr(module, cls.__name__, cls)
    missing = object()
    previous = sys.modules.get("models", missing)
    sys.modules["models"] = module
    try:
        yield module
    finally:
        if previous is missing:
            del sys.modules["models"]
        else:
            sys.modules["models"] = previous


def _make_optimizer(model: nn.Module, kind: str) -> torch.optim.Optimizer:
    """An optimiser with real per-parameter state: one step over synthetic gradients with lr 0 (weights unchanged)."""
    params = list(model.parameters())
    if kind == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
    elif kind == "adam":
        optimizer = torch.optim.Adam(params, lr=0.0)
    else:
        raise ValueError(f"unknown optimizer {kind!r}")
    gen = torch.Generator().manual_seed(1)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return optimizer


def save_like_original(
    path: str | Path,
    model: nn.Module,
    *,
    legacy: bool,
    data_parallel: bool,
    with_optimizer: bool = True,
    optimizer: str = "sgd",
    epoch: int = 7,
    epochs_since_improvement: int = 0,
    loss: float | torch.Tensor = 0.0625,
) -> None:
    """Write `model` the way foamliu/DCP do: `torch.save({'epoch', 'epochs_since_improvement', 'loss', 'model',
    'optimizer'})` with the module object pickled by class name. `legacy` selects the pre-1.6 stream format;
    `data_parallel` wraps the model in `nn.DataParallel` with the attributes a one-GPU run records."""
    wrapped: nn.Module = model
    if data_parallel:
        wrapped = nn.DataParallel(model)
        # On a CPU-only machine DataParallel records nothing; mimic a one-GPU training run.
        wrapped.dim = 0
        wrapped.device_ids = [0]
        wrapped.output_device = 0
        wrapped.src_device_obj = torch.device("cuda", 0)
    checkpoint = {
        "epoch": epoch,
        "epochs_since_improvement": epochs_since_improvement,
        "loss": loss,
        "model": wrapped,
        "optimizer": _make_optimizer(model, optimizer) if with_optimizer else None,
    }
    with models_module():
        torch.save(checkpoint, str(path), _use_new_zipfile_serialization=not legacy)


def tie_inputs(batch: int = 2, height: int = 45, width: int = 37, seed: int = 0) -> torch.Tensor:
    """[batch, 4, height, width] inputs (normalised RGB + trimap/255) that make max-pool windows tie: a constant
    block (equal positive activations), a strongly negative block (all zero after ReLU), a checkerboard of two values
    and noise elsewhere; the default size is odd so every pooling level drops a row or a column."""
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, height, width, generator=gen)
    h2, w2 = height // 2, width // 2
    rgb[:, :, :h2, :w2] = 0.75  # constant region
    rgb[:, :, h2:, :w2] = -20.0  # ReLU-dead region
    checker = (torch.arange(height)[:, None] + torch.arange(width)[None, :]) % 2
    rgb[:, :, :h2, w2:] = torch.where(checker[:h2, w2:].bool(), 1.0, -1.0)
    levels = torch.tensor([0.0, 128.0 / 255.0, 1.0])
    trimap = levels[torch.randint(0, 3, (batch, 1, height, width), generator=gen)]
    trimap[:, :, :h2, :] = 128.0 / 255.0
    return torch.cat([rgb, trimap], dim=1)
