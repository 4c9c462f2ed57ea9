"""PyTorch reference of TwinSwin-Matte / TSR-Matte (student U-Net, mask teacher, refiner), NCHW, for parity tests.

Written from the model description: module names reproduce the original checkpoints' keys (`backbone.layers_N.*`,
`up1.conv.double_conv.*`, `head.{1,3,4}.*`, `refiner`'s `conv_in` / `body` / `conv_out`, teacher `stem` / `downN` /
`lat*` / `smooth*`). The backbone is timm's Swin with `features_only=True`.
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn


class DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        super().__init__()
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(
            nn.Conv2d(in_channels, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Up(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels + skip_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        assert x.shape[-2:] == skip.shape[-2:]
        return self.conv(torch.cat([skip, x], dim=1))


class TwinSwinUNet(nn.Module):
    """Student; `forward` returns (logits at the input size, d1, d2)."""

    def __init__(self, backbone: nn.Module, safe_size: int, decoder=(512, 256, 128), head=(64, 32)):
        super().__init__()
        self.safe_size = safe_size
        self.backbone = backbone
        c0, c1, c2, c3 = backbone.feature_info.channels()
        self.up1 = Up(c3, c2, decoder[0])
        self.up2 = Up(decoder[0], c1, decoder[1])
        self.up3 = Up(decoder[1], c0, decoder[2])
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            DoubleConv(decoder[2], head[0]),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            DoubleConv(head[0], head[1]),
            nn.Conv2d(head[1], 1, 1),
        )

    def forward(self, x: torch.Tensor):
        size = x.shape[-2:]
        inner = F.interpolate(x, size=(self.safe_size, self.safe_size), mode="bilinear", align_corners=False)
        x0, x1, x2, x3 = (f.permute(0, 3, 1, 2) for f in self.backbone(inner))  # timm features_only: NHWC
        d1 = self.up1(x3, x2)
        d2 = self.up2(d1, x1)
        d3 = self.up3(d2, x0)
        logits = F.interpolate(self.head(d3), size=size, mode="bilinear", align_corners=True)
        return logits, d1, d2


class MaskEncoder(nn.Module):
    """Teacher FPN; widths `dims` (the original uses embed_dim * (1, 2, 4, 8))."""

    def __init__(self, dims=(128, 256, 512, 1024), groups: int = 8):
        super().__init__()
        c0, c1, c2, c3 = dims
        self.stem = nn.Sequential(nn.Conv2d(1, c0, 4, stride=4), nn.GroupNorm(groups, c0), nn.GELU())
        self.down1 = nn.Sequential(nn.Conv2d(c0, c1, 2, stride=2), DoubleConv(c1, c1))
        self.down2 = nn.Sequential(nn.Conv2d(c1, c2, 2, stride=2), DoubleConv(c2, c2))
        self.down3 = nn.Sequential(nn.Conv2d(c2, c3, 2, stride=2), DoubleConv(c3, c3))
        self.lat3_to_2 = nn.Conv2d(c3, c2, 1)
        self.lat2_to_1 = nn.Conv2d(c2, c1, 1)
        self.smooth2 = nn.Conv2d(c2, c2, 3, padding=1)
        self.smooth1 = nn.Conv2d(c1, c1, 3, padding=1)

    def forward(self, mask: torch.Tensor):
        c1 = self.down1(self.stem(mask))
        c2 = self.down2(c1)
        c3 = self.down3(c2)
        p2 = self.smooth2(c2 + F.interpolate(self.lat3_to_2(c3), size=c2.shape[-2:], mode="nearest"))
        p1 = self.smooth1(c1 + F.interpolate(self.lat2_to_1(p2), size=c1.shape[-2:], mode="nearest"))
        return p2, p1


def conv_bn_relu(cin: int, cout: int, kernel: int, padding: int = 0, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DilatedInceptionBlock(nn.Module):
    def __init__(self, channels: int, fusion_depth: int = 2):
        super().__init__()
        branch = channels // 4
        self.branch1 = conv_bn_relu(channels, branch, 1)
        self.branch2 = conv_bn_relu(channels, branch, 3, 1, 1)
        self.branch3 = conv_bn_relu(channels, branch, 3, 2, 2)
        self.branch4 = conv_bn_relu(channels, branch, 3, 4, 4)
        fusion = [nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels)]
        if fusion_depth == 2:
            fusion += [nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)]
        self.fusion = nn.Sequential(*fusion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)
        return F.relu(self.fusion(out) + x)


class Refiner(nn.Module):
    """`forward` returns the residual Δ; the original's output is sigmoid(coarse_alpha + Δ)."""

    def __init__(self, in_channels: int = 4, mid_channels: int = 64, num_blocks: int = 2, fusion_depth: int = 2):
        super().__init__()
        self.conv_in = conv_bn_relu(in_channels, mid_channels, 3, 1)
        self.body = nn.Sequential(*(DilatedInceptionBlock(mid_channels, fusion_depth) for _ in range(num_blocks)))
        self.conv_out = nn.Conv2d(mid_channels, 1, 3, padding=1, bias=True)

    def forward(self, img: torch.Tensor, coarse_alpha: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.body(self.conv_in(torch.cat([img, coarse_alpha], dim=1))))


def swin_features(name: str, safe_size: int, **overrides) -> nn.Module:
    return timm.create_model(
        name, pretrained=False, features_only=True, out_indices=(0, 1, 2, 3), img_size=safe_size, **overrides
    )


@torch.no_grad()
def tsr_forward(student: TwinSwinUNet, refiner: Refiner, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Eval-mode TSR outputs: the original's refined alpha sigmoid(p + Δ) with p = sigmoid(logits), plus p + Δ."""
    logits, d1, d2 = student(x)
    coarse = torch.sigmoid(logits)
    refined_logits = coarse + refiner(x, coarse)
    return {
        "alpha": torch.sigmoid(refined_logits),
        "refined_logits": refined_logits,
        "coarse_alpha": coarse,
        "coarse_logits": logits,
        "d1": d1,
        "d2": d2,
    }


@torch.no_grad()
def teacher_forward(teacher: MaskEncoder, alpha: torch.Tensor, safe_size: int):
    """Teacher features of a ground-truth alpha, resized with legacy `nearest` to the safe size."""
    return teacher(F.interpolate(alpha, size=(safe_size, safe_size), mode="nearest"))


@torch.no_grad()
def round_to_half_(module: nn.Module) -> None:
    """Round every floating parameter and buffer through fp16 (the release's storage), keeping float32."""
    for tensor in module.state_dict(keep_vars=True).values():
        if tensor.is_floating_point():
            tensor.data.copy_(tensor.data.half().float())


def half_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module.half().state_dict()` without touching the module: floats fp16, `num_batches_tracked` int64."""
    return {k: (v.detach().half() if v.is_floating_point() else v.detach()) for k, v in module.state_dict().items()}


@torch.no_grad()
def calibrate_batch_norm_(module: nn.Module, *inputs: torch.Tensor, gain: float = 1.0) -> None:
    """Set every BatchNorm's running statistics from one train-mode pass over `inputs`, the variances multiplied by
    `gain`**2 (each BN then outputs about 1 / `gain` standard deviations: activations stay at a realistic scale through
    deep random stacks without amplifying rounding noise); the module is left in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    module.train()
    module(*inputs)
    module.eval()
    for bn in norms:
        bn.momentum = 0.1
        bn.running_var.mul_(gain * gain)
