"""Plain-PyTorch reference of the original SegTrimap model (segtrimap.md §2-§4, §7.1, §11.2), written from the spec.

`ReferenceSegTrimap` reproduces the original module tree, so `state_dict()` carries the original key names (§3.4):
`patch_embed_mask.proj`, `backbone.{patch_embed.proj, cls_token, pos_embed, blocks.N.*, fc_norm, head}`,
`neck.down_{4,8,16,32}.I` (nn.Sequential, GELU at the parameter-free indices), `head.convs.I.conv`,
`head.fusion_conv.conv`, `head.up_conv{1,2}.I`, `head.conv_seg`. Variant 1 (`TrimapPlainVitModel`) has the cls token,
the position table, `fc_norm` and the classifier `head` (only `pos_embed[:, 1:]` is used); variant 2
(`NoPosEmbedTrimapPlainVitModel`) has none of them and no positional embedding.

Also here: `perturb_` (informative random weights), `save_original_checkpoint` (the original `.pth` layout with its
pickled CrossEntropyLoss), the letterbox of §7.1, the original inference pipeline plus the clean §11.2 path
(`reference_trimap`), and MAE pretrain files / pos-embed resampling for converter tests (§4).
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHANNELS = {"x1": 256, "x2": 128, "x4": 64}
WIDTH_FACTOR = {"x1": 1, "x2": 2, "x4": 4}
# SimpleClick's neck widths per backbone width (ViT-B / L / H)
SIMPLECLICK_OUT_DIMS = {768: (128, 256, 512, 1024), 1024: (192, 384, 768, 1536), 1280: (240, 480, 960, 1920)}
CLASS_NAMES = {
    1: "isegm.model.is_trimap_plaintvit_model.TrimapPlainVitModel",
    2: "isegm.model.is_trimap_plaintvit_model_noposembed.NoPosEmbedTrimapPlainVitModel",
}


# ---------------------------------------------------------------------------------------------------------------------
# backbone


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B x (h*w) x C, row-major


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def window_partition(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """B x (gh*gw) x C -> (B*nh*nw) x window^2 x C: windows window-row-major in the batch, tokens row-major inside."""
    b, _, c = x.shape
    gh, gw = grid
    nh, nw = gh // window, gw // window
    x = x.reshape(b, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, window * window, c)


def window_unpartition(x: torch.Tensor, grid: tuple[int, int], window: int) -> torch.Tensor:
    """Exact inverse of `window_partition`."""
    gh, gw = grid
    nh, nw = gh // window, gw // window
    c = x.shape[-1]
    x = x.reshape(-1, nh, nw, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, gh * gw, c)


class VisionTransformer(nn.Module):
    """The `backbone.*` subtree; variant 1 holds cls_token / pos_embed / fc_norm / head (only pos_embed[:, 1:] used)."""

    def __init__(
        self,
        *,
        variant: int,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        global_every: int,
    ):
        super().__init__()
        self.variant = variant
        self.patch_size = patch_size
        self.grid = img_size // patch_size
        self.window_size = window_size
        self.global_every = global_every
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        if variant == 1:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid * self.grid, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        if variant == 1:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6)
            self.head = nn.Linear(embed_dim, 1000)

    def is_global(self, i: int) -> bool:
        return (i + 1) % self.global_every == 0

    def global_blocks(self) -> tuple[int, ...]:
        return tuple(i for i in range(len(self.blocks)) if self.is_global(i))

    def forward(
        self, image: torch.Tensor, extra: torch.Tensor, grid: tuple[int, int], record: list | None = None
    ) -> torch.Tensor:
        """Patch tokens (+ extra tokens, + pos_embed[:, 1:] in variant 1) through the blocks; B x (gh*gw) x C.
        `record`, when given, receives the embedded tokens and every block's output (un-partitioned)."""
        x = self.patch_embed(image) + extra
        if self.variant == 1:
            if grid != (self.grid, self.grid):
                raise ValueError(f"variant 1 needs a {self.grid}x{self.grid} token grid, got {grid}")
            x = x + self.pos_embed[:, 1:]
        if any(g % self.window_size for g in grid):
            raise ValueError(f"token grid {grid} is not a multiple of the window {self.window_size}")
        if record is not None:
            record.append(x)
        windowed = False
        for i, block in enumerate(self.blocks):
            if self.is_global(i) and windowed:
                x, windowed = window_unpartition(x, grid, self.window_size), False
            elif not self.is_global(i) and not windowed:
                x, windowed = window_partition(x, grid, self.window_size), True
            x = block(x)
            if record is not None:
                record.append(window_unpartition(x, grid, self.window_size) if windowed else x)
        if windowed:
            x = window_unpartition(x, grid, self.window_size)
        return x


# ---------------------------------------------------------------------------------------------------------------------
# neck and head


class SimpleFPN(nn.Module):
    def __init__(self, in_dim: int, out_dims):
        super().__init__()
        c4 = max(2 * out_dims[0], in_dim // 2)
        c8 = max(out_dims[1], in_dim // 2)
        c32 = max(out_dims[3], 2 * in_dim)
        self.down_4 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c4, 2, stride=2),
            nn.GroupNorm(1, c4),
            nn.GELU(),
            nn.ConvTranspose2d(c4, c4 // 2, 2, stride=2),
            nn.GroupNorm(1, c4 // 2),
            nn.Conv2d(c4 // 2, out_dims[0], 1),
            nn.GroupNorm(1, out_dims[0]),
            nn.GELU(),
        )
        self.down_8 = nn.Sequential(
            nn.ConvTranspose2d(in_dim, c8, 2, stride=2),
            nn.GroupNorm(1, c8),
            nn.Conv2d(c8, out_dims[1], 1),
            nn.GroupNorm(1, out_dims[1]),
            nn.GELU(),
        )
        self.down_16 = nn.Sequential(nn.Conv2d(in_dim, out_dims[2], 1), nn.GroupNorm(1, out_dims[2]), nn.GELU())
        self.down_32 = nn.Sequential(
            nn.Conv2d(in_dim, c32, 2, stride=2),
            nn.GroupNorm(1, c32),
            nn.Conv2d(c32, out_dims[3], 1),
            nn.GroupNorm(1, out_dims[3]),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.down_4(x), self.down_8(x), self.down_16(x), self.down_32(x)]


class ConvModule(nn.Module):
    """mmcv ConvModule without norm: 1x1 conv with bias, then ReLU (`activate` has no parameters)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1)
        self.activate = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.conv(x))


def up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(cin, cout, 2, stride=2),
        nn.GroupNorm(1, cout),
        nn.Conv2d(cout, cout, 1),
        nn.GroupNorm(1, cout),
        nn.GELU(),
    )


class TrimapHead(nn.Module):
    """All-MLP head; internal width channels * {1, 2, 4} (= 256 in every mode); every branch exists in every mode."""

    def __init__(self, in_channels, upsample: str, num_classes: int):
        super().__init__()
        if upsample not in CHANNELS:
            raise ValueError(f"upsample must be one of {sorted(CHANNELS)}, got {upsample!r}")
        self.upsample = upsample
        self.channels = CHANNELS[upsample]
        width = self.channels * WIDTH_FACTOR[upsample]
        self.convs = nn.ModuleList(ConvModule(c, width) for c in in_channels)
        self.fusion_conv = ConvModule(width * len(in_channels), width)
        self.up_conv1 = up_block(width, width // 2)
        self.up_conv2 = up_block(width // 2, width // 4)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(self.channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], record: dict | None = None) -> torch.Tensor:
        size = features[0].shape[-2:]
        outs = [
            F.interpolate(conv(f), size=size, mode="bilinear", align_corners=False)
            for conv, f in zip(self.convs, features, strict=True)
        ]
        x = self.fusion_conv(torch.cat(outs, dim=1))
        if record is not None:
            record["fusion"] = x
        if self.upsample in ("x2", "x4"):
            x = self.up_conv1(x)
            if record is not None:
                record["up_conv1"] = x
        if self.upsample == "x4":
            x = self.up_conv2(x)
            if record is not None:
                record["up_conv2"] = x
        return self.conv_seg(self.dropout(x))


# ---------------------------------------------------------------------------------------------------------------------
# whole model


class ReferenceSegTrimap(nn.Module):
    """Original SegTrimap (`TrimapPlainVitModel` variant 1 / `NoPosEmbedTrimapPlainVitModel` variant 2).

    `forward(image, mask)`: image N3HW in [0, 1] (ImageNet-normalised inside), mask N1HW already scaled (fed raw to
    `patch_embed_mask`); returns logits N x num_classes x h x w at the head's resolution (no final resize).
    Defaults are the headline configuration; `window_size` defaults to 224 // patch_size, `global_every` to depth // 4
    (6 when depth is 12, as in SimpleClick)."""

    def __init__(
        self,
        variant: int = 1,
        upsample: str = "x4",
        img_size: int = 448,
        patch_size: int = 14,
        embed_dim: int = 1280,
        depth: int = 32,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        out_dims=None,
        window_size: int | None = None,
        global_every: int | None = None,
        num_classes: int = 3,
    ):
        super().__init__()
        if variant not in (1, 2):
            raise ValueError(f"variant must be 1 or 2, got {variant!r}")
        if out_dims is None:
            if embed_dim not in SIMPLECLICK_OUT_DIMS:
                raise ValueError(f"no default out_dims for embed_dim {embed_dim}; pass out_dims")
            out_dims = SIMPLECLICK_OUT_DIMS[embed_dim]
        if window_size is None:
            window_size = 224 // patch_size
        if global_every is None:
            global_every = 6 if depth == 12 else depth // 4
        self.variant = variant
        self.upsample = upsample
        self.num_classes = num_classes
        self.config = dict(
            variant=variant,
            upsample=upsample,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            out_dims=tuple(out_dims),
            window_size=window_size,
            global_every=global_every,
            num_classes=num_classes,
        )
        self.patch_embed_mask = PatchEmbed(patch_size, 1, embed_dim)
        self.backbone = VisionTransformer(
            variant=variant,
            img_size=img_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            window_size=window_size,
            global_every=global_every,
        )
        self.neck = SimpleFPN(embed_dim, tuple(out_dims))
        self.head = TrimapHead(tuple(out_dims), upsample, num_classes)

    def global_blocks(self) -> tuple[int, ...]:
        return self.backbone.global_blocks()

    def stages(self, image: torch.Tensor, mask: torch.Tensor) -> dict:
        """Intermediates for per-stage parity: 'tokens' (embedded, B x N x C), 'blocks' (list, one B x N x C per block),
        'grid' (B x C x gh x gw), 'neck' (4 NCHW maps), 'fusion', 'up_conv1' / 'up_conv2' (when used), 'logits'."""
        mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
        image = (image - mean) / std
        p = self.backbone.patch_size
        grid = (image.shape[-2] // p, image.shape[-1] // p)
        record: list[torch.Tensor] = []
        tokens = self.backbone(image, self.patch_embed_mask(mask), grid, record)
        b, _, c = tokens.shape
        fmap = tokens.transpose(1, 2).reshape(b, c, *grid)
        neck = self.neck(fmap)
        out = {"tokens": record[0], "blocks": record[1:], "grid": fmap, "neck": neck}
        out["logits"] = self.head(neck, out)
        return out

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.stages(image, mask)["logits"]


# ---------------------------------------------------------------------------------------------------------------------
# weights and checkpoints


def _fan_in(module: nn.Module) -> int:
    w = module.weight
    if isinstance(module, nn.ConvTranspose2d):  # k2 s2, no overlap: each output sees in_channels inputs
        return w.shape[0]
    return math.prod(w.shape[1:])


@torch.no_grad()
def perturb_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic informative weights: conv/linear weights N(0, 1/fan_in), biases 0.1 N(0, 1), norm scales
    1 + 0.1 N(0, 1) and shifts 0.1 N(0, 1), cls_token / pos_embed 0.2 N(0, 1). Returns the model."""
    generator = torch.Generator().manual_seed(seed)

    def draw(t: torch.Tensor, std: float, mean: float = 0.0) -> None:
        t.copy_(mean + std * torch.randn(t.shape, generator=generator, dtype=torch.float32).to(t.dtype))

    for module in model.modules():
        if isinstance(module, nn.LayerNorm | nn.GroupNorm):
            draw(module.weight, 0.1, 1.0)
            draw(module.bias, 0.1)
        elif isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
            draw(module.weight, _fan_in(module) ** -0.5)
            if module.bias is not None:
                draw(module.bias, 0.1)
        for name in ("cls_token", "pos_embed"):
            if isinstance(getattr(module, name, None), nn.Parameter):
                draw(getattr(module, name), 0.2)
    return model


def _param(value, specified: bool = True) -> dict:
    return {"type": "builtin", "value": value, "specified": specified}


def original_config(model: ReferenceSegTrimap) -> dict:
    """SimpleClick's serialised constructor record (§3.1), including the pickled CrossEntropyLoss."""
    cfg = model.config
    size, patch = (cfg["img_size"],) * 2, (cfg["patch_size"],) * 2
    backbone = dict(
        img_size=size,
        patch_size=patch,
        in_chans=3,
        embed_dim=cfg["embed_dim"],
        depth=cfg["depth"],
        num_heads=cfg["num_heads"],
        mlp_ratio=cfg["mlp_ratio"],
        qkv_bias=True,
    )
    neck = dict(in_dim=cfg["embed_dim"], out_dims=list(cfg["out_dims"]))
    head = dict(
        in_channels=list(cfg["out_dims"]),
        in_index=[0, 1, 2, 3],
        dropout_ratio=0.1,
        num_classes=cfg["num_classes"],
        loss_decode=nn.CrossEntropyLoss(),
        align_corners=False,
        upsample=cfg["upsample"],
        channels=CHANNELS[cfg["upsample"]],
    )
    params = {
        "backbone_params": _param(backbone),
        "neck_params": _param(neck),
        "head_params": _param(head),
        "random_split": _param(False),
        "use_disks": _param(True),
        "norm_radius": _param(5),
        "with_prev_mask": _param(True),
        "with_aux_output": _param(False, False),
        "norm_mean_std": _param((list(IMAGENET_MEAN), list(IMAGENET_STD)), False),
        "norm_layer": {"type": "class", "value": "torch.nn.modules.batchnorm.BatchNorm2d", "specified": False},
    }
    return {"class": CLASS_NAMES[model.variant], "params": params}


def save_original_checkpoint(model: ReferenceSegTrimap, path, *, data_parallel: bool = True, epoch: int = 20) -> Path:
    """`torch.save({'state_dict', 'config'})` as the original trainer writes it; keys prefixed `module.` when the run
    used DataParallel. A `path` ending in `.pth` is the file; otherwise it is a folder receiving `{epoch:03d}.pth`.
    Returns the file path."""
    path = Path(path)
    if path.suffix != ".pth":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{epoch:03d}.pth"
    prefix = "module." if data_parallel else ""
    state = {prefix + k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": original_config(model)}, path)
    return path


def mae_state_dict(
    embed_dim: int, depth: int, num_heads: int, patch_size: int, grid: int, seed: int = 0, mlp_ratio: float = 4.0
) -> dict:
    """Random weights in the layout of the official `mae_pretrain_vit_huge.pth` (encoder only, with the final
    `norm.*`), wrapped as `{'model': state}`."""
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
    generator = torch.Generator().manual_seed(seed)
    hidden = int(embed_dim * mlp_ratio)

    def randn(*shape, std=1.0, mean=0.0):
        return mean + std * torch.randn(shape, generator=generator)

    d = embed_dim
    sd = {
        "cls_token": randn(1, 1, d, std=0.02),
        "pos_embed": randn(1, 1 + grid * grid, d, std=0.2),
        "patch_embed.proj.weight": randn(d, 3, patch_size, patch_size, std=(3 * patch_size**2) ** -0.5),
        "patch_embed.proj.bias": randn(d, std=0.1),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": randn(d, std=0.1, mean=1.0),
                p + "norm1.bias": randn(d, std=0.1),
                p + "attn.qkv.weight": randn(3 * d, d, std=d**-0.5),
                p + "attn.qkv.bias": randn(3 * d, std=0.1),
                p + "attn.proj.weight": randn(d, d, std=d**-0.5),
                p + "attn.proj.bias": randn(d, std=0.1),
                p + "norm2.weight": randn(d, std=0.1, mean=1.0),
                p + "norm2.bias": randn(d, std=0.1),
                p + "mlp.fc1.weight": randn(hidden, d, std=d**-0.5),
                p + "mlp.fc1.bias": randn(hidden, std=0.1),
                p + "mlp.fc2.weight": randn(d, hidden, std=hidden**-0.5),
                p + "mlp.fc2.bias": randn(d, std=0.1),
            }
        )
    sd["norm.weight"] = randn(d, std=0.1, mean=1.0)
    sd["norm.bias"] = randn(d, std=0.1)
    return {"model": sd}


def interpolate_pos_embed(pos_embed: torch.Tensor, new_grid) -> torch.Tensor:
    """MAE / SimpleClick resampling of a [1, 1 + g*g, C] table to `new_grid` (int or (h, w)): torch bicubic
    (a = -0.75), align_corners False, no antialias; the cls slot is kept as is."""
    new_h, new_w = (new_grid, new_grid) if isinstance(new_grid, int) else tuple(new_grid)
    c = pos_embed.shape[-1]
    old = math.isqrt(pos_embed.shape[1] - 1)
    if old * old != pos_embed.shape[1] - 1:
        raise ValueError(f"pos_embed of length {pos_embed.shape[1]} is not 1 + a square")
    if (old, old) == (new_h, new_w):
        return pos_embed.clone()
    extra, tokens = pos_embed[:, :1], pos_embed[:, 1:]
    tokens = tokens.reshape(-1, old, old, c).permute(0, 3, 1, 2)
    tokens = F.interpolate(tokens, size=(new_h, new_w), mode="bicubic", align_corners=False)
    return torch.cat([extra, tokens.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# data pipeline (§7.1 evaluation transform) and the original / clean inference


def letterbox_geometry(height: int, width: int, size: int = 448) -> tuple[int, int, int, int]:
    """(top, left, h', w') of LongestMaxSize(size) + centred PadIfNeeded(size, size)."""
    scale = size / float(max(height, width))
    new_h, new_w = (height, width) if scale == 1.0 else (round(height * scale), round(width * scale))  # half to even
    return (size - new_h) // 2, (size - new_w) // 2, new_h, new_w


def letterbox(image_or_mask: np.ndarray, size: int = 448, interpolation: int = cv2.INTER_LINEAR):
    """Resize the longest side to `size` (cv2, `interpolation`: INTER_LINEAR for images, INTER_NEAREST for masks),
    pad with zeros to size x size, centred (top/left get the floor half). Returns (canvas, (top, left, h', w'))."""
    arr = np.asarray(image_or_mask)
    height, width = arr.shape[:2]
    top, left, new_h, new_w = letterbox_geometry(height, width, size)
    if (new_h, new_w) != (height, width):
        resized = cv2.resize(arr, (new_w, new_h), interpolation=interpolation)
        arr = resized.reshape(new_h, new_w, *arr.shape[2:])  # cv2 drops a trailing 1-channel axis
    canvas = np.zeros((size, size, *arr.shape[2:]), dtype=arr.dtype)
    canvas[top : top + new_h, left : left + new_w] = arr
    return canvas, (top, left, new_h, new_w)


@torch.no_grad()
def reference_trimap(
    model: ReferenceSegTrimap, image_rgb_u8: np.ndarray, mask01_u8: np.ndarray, *, mask_scale: float, size: int = 448
) -> tuple[np.ndarray, np.ndarray]:
    """(classes H x W uint8 at the original size (clean path, §11.2), canvas classes size x size uint8 (what the
    original evaluator scores, §10)). The model runs in eval mode, fp32; its mode is restored afterwards."""
    height, width = image_rgb_u8.shape[:2]
    image, (top, left, new_h, new_w) = letterbox(image_rgb_u8, size, cv2.INTER_LINEAR)
    mask, _ = letterbox(mask01_u8, size, cv2.INTER_NEAREST)
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
    mask_t = torch.from_numpy((mask > 0).astype(np.float32))[None, None] * mask_scale
    was_training = model.training
    model.eval()
    try:
        logits = model(image_t, mask_t).float()
    finally:
        model.train(was_training)
    logits = F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)
    canvas = logits.argmax(1)[0].to(torch.uint8).numpy()
    crop = logits[:, :, top : top + new_h, left : left + new_w]
    full = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
    return full.argmax(1)[0].to(torch.uint8).numpy(), canvas
