"""Plain / MAE ViT weights -> jaxmatte `vit` family.

Accepted layouts (`module.` stripped; a `backbone.` prefix stripped when every key carries it):

- timm `VisionTransformer` state dicts (e.g. `vit_base_patch16_224.mae`, `vit_huge_patch14_224.mae`): `cls_token`,
  `pos_embed`, `patch_embed.proj.*`, `blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}.*`, `norm.*`;
- the official MAE files (`{'model': {...}}`, same names). Pretrain files used for visualisation also hold the MAE
  decoder (`mask_token`, `decoder_embed.*`, `decoder_pos_embed`, `decoder_blocks.*`, `decoder_norm.*`,
  `decoder_pred.*`): those keys are ignored, as are the classifier `head.*` and the pooled-feature norm `fc_norm.*`
  (this backbone returns tokens, not pooled features). Fine-tuned MAE files carry `fc_norm` instead of `norm`: the
  config then has no final norm. With `--no-final-norm` (or a config whose `final_norm` is False) a `norm.*` present in
  the file is ignored, e.g. an MAE pretrain file loaded into a SimpleClick backbone.

Inferred from shapes: patch size and input channels (patch-embed kernel), width, depth, MLP ratio, qkv bias, class
token, the position grid (from the `pos_embed` length: a class slot first when `cls_token` exists, none otherwise;
square unless an image size is given). The number of heads cannot be inferred from shapes: `--num-heads`, a
`--preset`, or the default rule (head_dim 64 for widths 192/384/768/1024, 16 heads of 80 for width 1280, i.e. ViT-H/14).

SimpleClick windows (`--local-window`, `--global-every`) are a property of the forward only: no key changes.

Position tables for another grid: `--timm-model NAME --img-size H W` lets timm resample (bicubic with antialias), or
`--pos-grid H W` resamples as MAE / SimpleClick `interpolate_pos_embed` do when they load MAE weights at a new size
(torch bicubic, a = -0.75, align_corners False, no antialias; class slot kept). The two differ by up to about 0.3 on a
16x16 -> 32x32 table; SimpleClick-style backbones (SegTrimap variant 1) were initialised with the latter.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxmatte import pretrained
from jaxmatte.backbones.vit import PRESETS, ViTConfig
from jaxmatte.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from port import load
from port.converter import Converted, Converter
from port.table import PortError, Rule, Table, block_count, chain, conv, linear, norm, port

KIND = "vit"
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}

RULES = chain(
    [Rule(r"cls_token", "cls_token"), Rule(r"pos_embed", "pos_embed")],
    conv(r"patch_embed\.proj", "patch_embed.proj"),
    norm(r"blocks\.(\d+)\.norm1", r"blocks.\1.norm1"),
    linear(r"blocks\.(\d+)\.attn\.qkv", r"blocks.\1.attn.qkv"),
    linear(r"blocks\.(\d+)\.attn\.proj", r"blocks.\1.attn.proj"),
    norm(r"blocks\.(\d+)\.norm2", r"blocks.\1.norm2"),
    linear(r"blocks\.(\d+)\.mlp\.fc1", r"blocks.\1.mlp.fc1"),
    linear(r"blocks\.(\d+)\.mlp\.fc2", r"blocks.\1.mlp.fc2"),
)
FINAL_NORM = norm(r"norm", "norm")
# Classifier parts (act on pooled features, which this backbone does not produce) and the MAE pretraining decoder.
IGNORED = (
    r"head\.(weight|bias)",
    r"fc_norm\.(weight|bias)",
    r"mask_token",
    r"decoder_pos_embed",
    r"decoder_(embed|norm|pred)\.(weight|bias)",
    r"decoder_blocks\.\d+\..+",
)
FINAL_NORM_IGNORED = (r"norm\.(weight|bias)",)
# Config fields that the keys and shapes determine (checked when a config is given).
STRUCTURE = ("patch_size", "in_chans", "embed_dim", "depth", "mlp_ratio", "qkv_bias", "class_token", "use_pos_embed")


def table(config: ViTConfig) -> Table:
    """Key table for `config`; without a final norm, a file's `norm.*` is ignored."""
    if config.final_norm:
        return Table(RULES + FINAL_NORM, IGNORED)
    return Table(RULES, IGNORED + FINAL_NORM_IGNORED)


def prepare_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Strip a leading `module.` and, when every key carries it, `backbone.`."""
    return load.strip_prefix(load.strip_prefix(state_dict, "module."), "backbone.")


def default_num_heads(embed_dim: int) -> int:
    if embed_dim not in DEFAULT_HEADS:
        raise PortError(
            f"cannot infer the number of heads for width {embed_dim} (known widths {sorted(DEFAULT_HEADS)}); "
            "pass --num-heads or --preset"
        )
    return DEFAULT_HEADS[embed_dim]


def infer_config(
    state_dict: Mapping[str, np.ndarray],
    *,
    num_heads: int | None = None,
    img_size: tuple[int, int] | None = None,
    source: str = "state dict",
) -> ViTConfig:
    """A `ViTConfig` from key names and shapes (all blocks global, final norm iff `norm.*` exists)."""
    proj = state_dict.get("patch_embed.proj.weight")
    qkv = state_dict.get("blocks.0.attn.qkv.weight")
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    if proj is None or qkv is None or fc1 is None or proj.ndim != 4:
        raise PortError(
            f"{source}: not a ViT state dict (needs patch_embed.proj.weight, blocks.0.attn.qkv.weight, "
            f"blocks.0.mlp.fc1.weight; first keys: {sorted(state_dict)[:8]})"
        )
    embed_dim, in_chans, ph, pw = (int(s) for s in proj.shape)
    if ph != pw:
        raise PortError(f"{source}: non-square patch {ph}x{pw} is not supported")
    class_token = "cls_token" in state_dict
    use_pos_embed = "pos_embed" in state_dict
    if use_pos_embed:
        slots = int(state_dict["pos_embed"].shape[1])
        patches = slots - 1 if class_token else slots
        grid = _grid_for(patches, img_size, ph)
        if grid is None:
            fits = f"the token grid of img_size {img_size}" if img_size else "a square token grid"
            raise PortError(
                f"{source}: pos_embed has {slots} slots ({patches} patches), which do not fit {fits}; a non-square "
                "grid needs the image size (--timm-model NAME --img-size H W, or infer_config(..., img_size=(H, W)))"
            )
        size = (grid[0] * ph, grid[1] * ph)
    else:
        size = tuple(img_size) if img_size else (224, 224)
    return ViTConfig(
        img_size=size,
        patch_size=ph,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=block_count(state_dict, "blocks"),
        num_heads=num_heads or default_num_heads(embed_dim),
        mlp_ratio=int(fc1.shape[0]) / embed_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state_dict,
        class_token=class_token,
        use_pos_embed=use_pos_embed,
        final_norm="norm.weight" in state_dict,
    )


def _grid_for(patches: int, img_size: tuple[int, int] | None, patch: int) -> tuple[int, int] | None:
    if img_size:
        grid = (img_size[0] // patch, img_size[1] // patch)
        return grid if grid[0] * grid[1] == patches else None
    side = math.isqrt(patches)
    return (side, side) if side > 0 and side * side == patches else None


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], config: ViTConfig | None = None, *, source: str = "state dict"
) -> tuple[Any, ViTConfig]:
    """(filled `VisionTransformer` in eval mode, config). `config=None` infers it (default heads rule); a given config
    is checked strictly against the keys and shapes."""
    state_dict = prepare_state_dict(state_dict)
    if config is None:
        config = infer_config(state_dict, source=source)
    else:
        check_config(state_dict, config, source=source)
    abstract = pretrained.abstract_model(KIND, config)
    return port(state_dict, table(config), abstract, source=source), config


def check_config(state_dict: Mapping[str, np.ndarray], config: ViTConfig, *, source: str = "state dict") -> None:
    """One short PortError when the file's architecture differs from `config` (instead of a problem per key).

    Files that are not recognisable ViTs are left to the strict port, which lists every key."""
    found = None
    for img_size in (config.img_size, None):  # the config's grid, else a square one
        try:
            found = infer_config(state_dict, num_heads=config.num_heads, img_size=img_size, source=source)
            break
        except ValueError:  # PortError, or heads that do not divide the file's width
            continue
    if found is None:
        return
    fields = STRUCTURE + (("img_size",) if config.use_pos_embed else ())
    diffs = [
        f"{f} {getattr(config, f)} (file: {getattr(found, f)})"
        for f in fields
        if getattr(config, f) != getattr(found, f)
    ]
    if diffs:
        hint = "; resample the position table with --pos-grid H W" if found.img_size != config.img_size else ""
        raise PortError(f"{source}: the file does not fit the requested config: " + ", ".join(diffs) + hint)


def resample_pos_embed(pos_embed: np.ndarray, grid_hw: tuple[int, int], num_prefix: int) -> np.ndarray:
    """MAE / SimpleClick `interpolate_pos_embed`: the square patch part resized with torch bicubic (align_corners
    False, no antialias) to `grid_hw`, row-major; the first `num_prefix` slots (class token) kept unchanged."""
    import torch
    import torch.nn.functional as F

    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise PortError(f"pos_embed patch part has {patches.shape[1]} slots, not a square grid; cannot resample")
    grid = torch.from_numpy(np.array(patches, np.float32)).reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=tuple(grid_hw), mode="bicubic", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(1, grid_hw[0] * grid_hw[1], -1).numpy()
    return np.concatenate([prefix, resized], axis=1)


def ignored_keys(state_dict: Mapping[str, np.ndarray], config: ViTConfig) -> list[str]:
    """Keys of `state_dict` that `convert_state_dict(state_dict, config)` drops on purpose."""
    patterns = [re.compile(p) for p in table(config).ignore]
    return sorted(k for k in prepare_state_dict(state_dict) if any(p.fullmatch(k) for p in patterns))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ViT options")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="start from a named config (checked against the file); otherwise everything is inferred from shapes",
    )
    group.add_argument(
        "--num-heads",
        type=int,
        help="attention heads; shapes cannot tell them. Default: the preset's, else head_dim 64 for widths "
        "192/384/768/1024 and 16 heads (of 80) for width 1280 (ViT-H/14)",
    )
    group.add_argument(
        "--local-window",
        type=int,
        metavar="TOKENS",
        help="SimpleClick local attention: window side in tokens, e.g. 16 for ViT-H/14 and 14 for ViT-B/16 "
        "(224 / patch). Default: the preset's (none: every block global)",
    )
    group.add_argument(
        "--global-every",
        type=int,
        metavar="K",
        help="with --local-window: blocks with (i+1) %% K == 0 are global (default depth // 4, as SimpleClick)",
    )
    group.add_argument(
        "--pos-grid",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="resample pos_embed to this token grid as MAE/SimpleClick do (torch bicubic, no antialias), e.g. 32 32 "
        "for ViT-H/14 at 448",
    )
    group.add_argument(
        "--no-final-norm",
        action="store_true",
        help="no final LayerNorm (SimpleClick backbones); a norm.* in the file is then ignored",
    )


def config_from_args(state_dict: Mapping[str, np.ndarray], args: argparse.Namespace, *, source: str) -> ViTConfig:
    img_size = getattr(args, "img_size", None)
    if img_size:
        img_size = (img_size[0], img_size[-1])
    elif args.pos_grid and "patch_embed.proj.weight" in state_dict:
        patch = int(state_dict["patch_embed.proj.weight"].shape[-1])
        img_size = (args.pos_grid[0] * patch, args.pos_grid[1] * patch)
    if args.preset:
        config = PRESETS[args.preset]
        if args.num_heads:
            config = dataclasses.replace(config, num_heads=args.num_heads)
        if img_size:
            config = dataclasses.replace(config, img_size=img_size)
    else:
        config = infer_config(state_dict, num_heads=args.num_heads, img_size=img_size, source=source)
    if args.no_final_norm:
        config = dataclasses.replace(config, final_norm=False)
    if args.local_window is not None:
        every = args.global_every or max(config.depth // 4, 1)
        config = dataclasses.replace(config, window_size=args.local_window, global_every=every)
    elif args.global_every is not None:
        if config.window_size is None:
            raise PortError("--global-every needs --local-window (or a windowed --preset)")
        config = dataclasses.replace(config, global_every=args.global_every)
    return config


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace):
    state_dict = prepare_state_dict(load.unwrap_state_dict(checkpoint, source=source))
    resampled = {}
    if args.pos_grid:
        if "pos_embed" not in state_dict:
            raise PortError(f"{source}: --pos-grid given, but the file has no pos_embed")
        before = state_dict["pos_embed"].shape[1]
        prefix = int("cls_token" in state_dict)
        state_dict = {**state_dict, "pos_embed": resample_pos_embed(state_dict["pos_embed"], args.pos_grid, prefix)}
        resampled = {"pos_embed_resampled": f"{before} -> {state_dict['pos_embed'].shape[1]} slots, torch bicubic"}
    try:
        config = config_from_args(state_dict, args, source=source)
    except ValueError as err:
        if isinstance(err, PortError):
            raise
        raise PortError(f"{source}: {err}") from err
    model, config = convert_state_dict(state_dict, config, source=source)
    info = {
        "input": "NHWC RGB in [0, 1], normalised with mean/std",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "ignored_keys": ignored_keys(state_dict, config),
        **resampled,
    }
    return Converted(model, config, info)


CONVERTERS = (
    Converter(
        kind="vit",
        help="MAE / plain ViT (timm or official MAE layout), optional SimpleClick windows",
        add_arguments=add_arguments,
        convert=convert,
        timm_resizing=True,
    ),
)
