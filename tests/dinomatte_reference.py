"""PyTorch reference of the Dinov3_matting system (dinov3_matting.md §2.5, §3, §4), written from the spec.

`MattingReference` has the original state-dict layout: `encoder.dinov3.*` (a timm `Eva` DINOv3, `pretrained=False`,
reduced depth allowed), `decoder.*` (`input_proj`, `decoder_blocks.{i}.conv_block.{0,1,3,4}`, `upsample_blocks.{i}`,
`final_conv.{0,2}`) and optionally `boundary_refiner.{boundary_conv.{0,2,4}, sharpening_weight}`. Its forward is the
original one: inputs that are not multiples of 16 are upsized with the original (both-sides) rule, the backbone's
final-norm patch tokens (`forward_features(x)[:, 5:]`) are reshaped to the patch grid, decoded to a sigmoid map at
stride 4, resized bilinearly to the input size and optionally refined.

`export_state_dict(model, layout)` gives the whole state dict with the backbone in timm or official Meta key layout.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn

from port.reference import perturb_

PATCH = 16
PREFIX_TOKENS = 5
LAST_WIDTH = 64


class DecoderBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 3, padding=1),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(),
            nn.Conv2d(out_dim, out_dim, 3, padding=1),
            nn.BatchNorm2d(out_dim),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(x)


class Decoder(nn.Module):
    """input_proj -> blocks (ConvTranspose k4 s2 p1 + ReLU between them) -> final_conv with sigmoid."""

    def __init__(self, embed_dim: int, decoder_dims=(256, 128, 64)):
        super().__init__()
        dims = list(decoder_dims)
        outs = dims[1:] + [LAST_WIDTH]
        self.input_proj = nn.Conv2d(embed_dim, dims[0], 1)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(i, o) for i, o in zip(dims, outs, strict=True))
        self.upsample_blocks = nn.ModuleList(nn.ConvTranspose2d(o, o, 4, stride=2, padding=1) for o in outs[:-1])
        self.final_conv = nn.Sequential(
            nn.Conv2d(LAST_WIDTH, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 1, 1), nn.Sigmoid()
        )
        for module in self.modules():  # the original's init; ConvTranspose2d keeps torch's default
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def levels(self, grid: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(per-stage features, logits) of an NCHW token grid."""
        x = self.input_proj(grid)
        levels = [x]
        for i, block in enumerate(self.decoder_blocks):
            x = block(x)
            levels.append(x)
            if i < len(self.upsample_blocks):
                x = F.relu(self.upsample_blocks[i](x))
                levels.append(x)
        return levels, self.final_conv[:3](x)

    def forward(self, grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        _, logits = self.levels(grid)
        alpha = self.final_conv[3](logits)
        if tuple(alpha.shape[-2:]) != tuple(size):
            alpha = F.interpolate(alpha, size=size, mode="bilinear", align_corners=False)
        return alpha


class BoundaryRefiner(nn.Module):
    def __init__(self, kernels=(3, 3, 3), hidden: int = 32):
        super().__init__()
        k1, k2, k3 = kernels
        self.boundary_conv = nn.Sequential(
            nn.Conv2d(1, hidden, k1, padding=k1 // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, k2, padding=k2 // 2),
            nn.ReLU(),
            nn.Conv2d(hidden, 1, k3, padding=k3 // 2),
        )
        self.sharpening_weight = nn.Parameter(torch.tensor(0.1))

    def forward(self, alpha: torch.Tensor) -> torch.Tensor:
        return torch.clamp(alpha + self.sharpening_weight * self.boundary_conv(alpha), 0, 1)


class MattingReference(nn.Module):
    def __init__(self, backbone: nn.Module, decoder_dims=(256, 128, 64), boundary_kernels=None):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.dinov3 = backbone
        self.decoder = Decoder(backbone.embed_dim, decoder_dims)
        self.boundary_refiner = BoundaryRefiner(boundary_kernels) if boundary_kernels else None

    def grid(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm patch tokens as an NCHW grid, after the original's resize of non-multiple inputs."""
        height, width = x.shape[-2:]
        if height % PATCH or width % PATCH:
            height, width = (height // PATCH + 1) * PATCH, (width // PATCH + 1) * PATCH
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        tokens = self.encoder.dinov3.forward_features(x)[:, PREFIX_TOKENS:]
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, height // PATCH, width // PATCH)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """{'alpha', 'coarse', 'logits'} for an NCHW image."""
        grid = self.grid(x)
        _, logits = self.decoder.levels(grid)
        coarse = self.decoder(grid, tuple(x.shape[-2:]))
        alpha = self.boundary_refiner(coarse) if self.boundary_refiner is not None else coarse
        return {"alpha": alpha, "coarse": coarse, "logits": logits}


def build_reference(
    name: str = "vit_small_patch16_dinov3",
    *,
    depth: int = 2,
    decoder_dims=(256, 128, 64),
    boundary_kernels=None,
    seed: int = 0,
) -> MattingReference:
    """A perturbed reference in eval mode: biases, norm affines, BN statistics and tokens shifted, layer-scale gammas
    U(0.5, 1), q/k weights x3 (so attention and RoPE matter), sharpening weight 0.5."""
    torch.manual_seed(seed)
    backbone = timm.create_model(name, pretrained=False, num_classes=0, depth=depth)
    model = MattingReference(backbone, decoder_dims, boundary_kernels).eval()
    perturb_(model, seed=seed + 100)
    with torch.no_grad():
        for block in backbone.blocks:
            block.attn.qkv.weight[: 2 * block.attn.qkv.in_features] *= 3.0
        if model.boundary_refiner is not None:
            model.boundary_refiner.sharpening_weight.fill_(0.5)
    return model


def official_backbone(state: dict[str, torch.Tensor], *, seed: int = 0) -> dict[str, torch.Tensor]:
    """timm `Eva` keys -> Meta's layout: `storage_tokens`, `ls{1,2}.gamma`, `attn.qkv.bias` [q, junk, v] with its
    `bias_mask`, a `mask_token` and `rope_embed.periods` (the formula values, so timm's RoPE is reproduced exactly)."""
    generator = torch.Generator().manual_seed(seed)
    renames = (("reg_token", "storage_tokens"), (".gamma_1", ".ls1.gamma"), (".gamma_2", ".ls2.gamma"))
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith((".q_bias", ".v_bias")):
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value.clone()
    dim = state["cls_token"].shape[-1]
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("blocks.")})
    for i in blocks:
        q = state.get(f"blocks.{i}.attn.q_bias", torch.zeros(dim))
        v = state.get(f"blocks.{i}.attn.v_bias", torch.zeros(dim))
        junk = torch.randn(dim, generator=generator)  # removed by the mask
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat([q, junk, v])
        out[f"blocks.{i}.attn.qkv.bias_mask"] = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
    out["mask_token"] = torch.randn(1, dim, generator=generator)
    head_dim = 64
    exponents = 2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2)
    out["rope_embed.periods"] = 100.0**exponents
    return out


def export_state_dict(model: MattingReference, layout: str = "timm", *, seed: int = 0) -> dict[str, torch.Tensor]:
    """The whole-model state dict (detached), backbone under `encoder.dinov3.` in `layout` ('timm' or 'official')."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if layout == "timm":
        return state
    if layout != "official":
        raise ValueError(f"layout must be 'timm' or 'official', got {layout!r}")
    prefix = "encoder.dinov3."
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}
    return {**{prefix + k: v for k, v in official_backbone(backbone, seed=seed).items()}, **rest}


def decoder_parameter_count(embed_dim: int, decoder_dims=(256, 128, 64)) -> int:
    return sum(math.prod(p.shape) for p in Decoder(embed_dim, decoder_dims).parameters())
