"""timm Swin v1 weights -> jaxmatte `swin` family (`jaxmatte.backbones.swin.SwinTransformer`).

Accepted layouts (wrappers such as `{'state_dict': ...}` / `{'model': ...}` unwrapped, `module.` stripped, and a
`backbone.` prefix stripped when every key carries it):

- timm `SwinTransformer` state dicts: `patch_embed.{proj,norm}.*`, `layers.N.downsample.{norm.*,reduction.weight}`
  (stages 1..3), `layers.N.blocks.M.{norm1, attn.qkv, attn.proj, attn.relative_position_bias_table, norm2, mlp.fc1,
  mlp.fc2}`, final `norm.*` (ignored unless `--final-norm`), classifier `head.*` / `head.fc.*` (ignored);
- timm `features_only=True` models (`FeatureListNet`): the same names with `layers_N.` (e.g. the TSR checkpoints'
  `backbone.layers_N.`);
- the original Microsoft layout (`{'model': ...}`, PatchMerging at the END of stages 0..2, detected by a
  `layers.0.downsample`): its downsample keys are moved to the start of the next stage (`layers.N.downsample` ->
  `layers.N+1.downsample`), the same renaming timm's `checkpoint_filter_fn` does. Nothing else differs.

Non-persistent buffers (`relative_position_index`, `attn_mask`) are ignored when a file carries them.

Inferred from shapes: patch size, input channels and width (patch-embed kernel), depths (block counts), heads (bias
table columns), windows (bias table rows, (2w-1)^2), MLP ratio (fc1), qkv bias. timm clamps a stage's window to its
feature size when the model is built for a small image, giving smaller tables in that stage; a square clamp is read from
the rows, a non-square one (rows (2h-1)(2w-1)) needs the image size the model was built with: `--built-img-size H W`
(implied by `--img-size` when timm resized the file).

`--preset NAME` checks the file against a named config (tiny, small, base, base384, large or the timm names) and fails
when they disagree. For other input sizes or windows of pretrained files, `--timm-model NAME --img-size ..
--window-size ..` lets timm resample the bias tables before conversion.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxmatte import pretrained
from jaxmatte.backbones.swin import PRESETS, SwinConfig
from jaxmatte.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from port import load
from port.converter import Converted, Converter
from port.table import PortError, Rule, Table, chain, conv, linear, linear_kernel, norm, port

KIND = "swin"

_STAGE = r"layers[._](\d+)"
_BLOCK = _STAGE + r"\.blocks\.(\d+)"
_BLOCK_TARGET = r"layers.\1.blocks.\2"

RULES = chain(
    conv(r"patch_embed\.proj", "patch_embed.proj"),
    norm(r"patch_embed\.norm", "patch_embed.norm"),
    norm(_STAGE + r"\.downsample\.norm", r"layers.\1.downsample.norm"),
    [Rule(_STAGE + r"\.downsample\.reduction\.weight", r"layers.\1.downsample.reduction.kernel", linear_kernel)],
    norm(_BLOCK + r"\.norm1", _BLOCK_TARGET + ".norm1"),
    [Rule(_BLOCK + r"\.attn\.relative_position_bias_table", _BLOCK_TARGET + ".attn.relative_position_bias_table")],
    linear(_BLOCK + r"\.attn\.qkv", _BLOCK_TARGET + ".attn.qkv"),
    linear(_BLOCK + r"\.attn\.proj", _BLOCK_TARGET + ".attn.proj"),
    norm(_BLOCK + r"\.norm2", _BLOCK_TARGET + ".norm2"),
    linear(_BLOCK + r"\.mlp\.fc1", _BLOCK_TARGET + ".mlp.fc1"),
    linear(_BLOCK + r"\.mlp\.fc2", _BLOCK_TARGET + ".mlp.fc2"),
)
FINAL_NORM = norm(r"norm", "norm")
BUFFERS = r".*\.(relative_position_index|attn_mask)"  # non-persistent in timm, persisted by the original code
IGNORED = (r"head\.(fc\.)?(weight|bias)", BUFFERS)
FINAL_NORM_IGNORED = (r"norm\.(weight|bias)",)
# Config fields that the keys and shapes determine (checked against a given config).
STRUCTURE = ("patch_size", "in_chans", "embed_dim", "depths", "num_heads", "mlp_ratio", "qkv_bias")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("swin")
    group.add_argument("--preset", choices=sorted(PRESETS), help="check the weights against this config")
    group.add_argument(
        "--final-norm", action="store_true", help="keep the file's final `norm.*` (applied to the last stage output)"
    )
    group.add_argument("--drop-path-rate", type=float, default=0.0, help="stochastic depth for training (default 0)")
    group.add_argument(
        "--built-img-size",
        type=int,
        nargs="+",
        metavar="N",
        help="image size (S or H W) the file's timm model was built with; only needed for non-square clamped windows",
    )


def table(config: SwinConfig) -> Table:
    """Key table for `config`; without a final norm, a file's `norm.*` is ignored."""
    if config.final_norm:
        return Table(RULES + FINAL_NORM, IGNORED)
    return Table(RULES, IGNORED + FINAL_NORM_IGNORED)


def prepare_state_dict(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """(timm-layout state dict, layout name): `module.`/`backbone.` stripped, buffers dropped, Microsoft downsample
    keys moved."""
    state_dict = load.strip_prefix(load.strip_prefix(state_dict, "module."), "backbone.")
    state_dict = {k: v for k, v in state_dict.items() if not re.fullmatch(BUFFERS, k)}
    features_only = any(re.match(r"layers_\d+\.", k) for k in state_dict)
    if any(re.match(_STAGE + r"\.downsample\.", k) and int(re.match(_STAGE, k).group(1)) == 0 for k in state_dict):
        moved = {}
        for key, value in state_dict.items():
            m = re.match(_STAGE + r"\.downsample\.(.*)", key)
            moved[f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}" if m else key] = value
        return moved, "microsoft"
    return dict(state_dict), "timm features_only" if features_only else "timm"


def _canonical(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {re.sub(r"^layers_(\d+)\.", r"layers.\1.", k): v for k, v in state_dict.items()}


def _size2(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _square_window(rows: int) -> int | None:
    side = math.isqrt(rows)
    return (side + 1) // 2 if side * side == rows and side % 2 == 1 else None


def _window_candidates(rows: int, limit: int) -> list[tuple[int, int]]:
    """(h, w) windows with (2h-1)(2w-1) == rows, both at most `limit`."""
    out = []
    for h in range(1, limit + 1):
        if rows % (2 * h - 1) == 0:
            w2 = rows // (2 * h - 1)
            if w2 % 2 == 1 and (w2 + 1) // 2 <= limit:
                out.append((h, (w2 + 1) // 2))
    return out


def infer_config(
    state_dict: Mapping[str, np.ndarray],
    *,
    window_size: int | None = None,
    built_img_size: int | Sequence[int] | None = None,
    final_norm: bool = False,
    drop_path_rate: float = 0.0,
    source: str = "state dict",
) -> SwinConfig:
    """A `SwinConfig` from key names and shapes of a timm-layout state dict (see `prepare_state_dict`).

    `window_size` is the nominal window (default: the largest table window found); `built_img_size` resolves
    non-square clamped windows.
    """
    sd = _canonical(state_dict)
    proj = sd.get("patch_embed.proj.weight")
    if proj is None or proj.ndim != 4 or proj.shape[2] != proj.shape[3]:
        raise PortError(
            f"{source}: not a Swin state dict (needs a square-kernel patch_embed.proj.weight; first keys: "
            f"{sorted(state_dict)[:8]})"
        )
    embed_dim, in_chans, patch = (int(s) for s in proj.shape[:3])
    stages = sorted({int(m.group(1)) for k in sd if (m := re.match(r"layers\.(\d+)\.blocks\.\d+\.", k))})
    if not stages or stages != list(range(len(stages))):
        raise PortError(f"{source}: Swin stages {stages} are not numbered 0..N-1")
    depths, heads, rows, mlp_ratio, qkv_bias = [], [], [], None, True
    for s in stages:
        blocks = {int(m.group(1)) for k in sd if (m := re.match(rf"layers\.{s}\.blocks\.(\d+)\.", k))}
        depths.append(max(blocks) + 1)
        tables = [sd.get(f"layers.{s}.blocks.{b}.attn.relative_position_bias_table") for b in sorted(blocks)]
        tables = [t for t in tables if t is not None and t.ndim == 2]
        if not tables:
            raise PortError(f"{source}: stage {s} has no attn.relative_position_bias_table")
        rows.append(int(tables[0].shape[0]))
        heads.append(int(tables[0].shape[1]))
        if mlp_ratio is None and (fc1 := sd.get(f"layers.{s}.blocks.0.mlp.fc1.weight")) is not None:
            mlp_ratio = int(fc1.shape[0]) / (embed_dim * 2**s)
        qkv_bias = qkv_bias and any(k.endswith("attn.qkv.bias") and k.startswith(f"layers.{s}.") for k in sd)
    squares = [_square_window(r) for r in rows]
    nominal = window_size or max((w for w in squares if w), default=0)
    if not nominal:
        raise PortError(f"{source}: no square bias table (rows {rows}); pass the window size (--preset NAME)")
    config = SwinConfig(
        patch_size=patch,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(heads),
        window_size=nominal,
        mlp_ratio=mlp_ratio if mlp_ratio is not None else 4.0,
        qkv_bias=qkv_bias,
        drop_path_rate=drop_path_rate,
        final_norm=final_norm,
    )
    built = _size2(built_img_size)
    if built is not None:
        expected = config.built_for(built)
        found = [(r, (2 * h - 1) * (2 * w - 1)) for r, (h, w) in zip(rows, expected.table_windows, strict=True)]
        if any(r != e for r, e in found):
            raise PortError(
                f"{source}: bias tables with {rows} rows do not fit windows {expected.table_windows} of a "
                f"window-{nominal} model built for {built[0]}x{built[1]}"
            )
        return expected
    windows = []
    for s, r in enumerate(rows):
        square = squares[s]
        if square is not None and square <= nominal:
            windows.append((square, square))
            continue
        options = _window_candidates(r, nominal)
        if len(options) != 1:
            raise PortError(
                f"{source}: stage {s} bias table has {r} rows, which fit the windows {options or 'none'} of a "
                f"window-{nominal} model; pass the image size the model was built with (--built-img-size H W)"
            )
        windows.append(options[0])
    if all(w == (nominal, nominal) for w in windows):
        return config
    return dataclasses.replace(config, stage_window_sizes=tuple(windows))


def check_config(found: SwinConfig, config: SwinConfig, *, source: str = "state dict") -> None:
    """One short PortError when the file's architecture (`found`, from `infer_config`) differs from `config`.

    A config without `stage_window_sizes` accepts the file's clamped stage windows."""
    fields = STRUCTURE + ("window_size",)
    diffs = [
        f"{f} {getattr(config, f)} (file: {getattr(found, f)})"
        for f in fields
        if getattr(config, f) != getattr(found, f)
    ]
    if config.stage_window_sizes is not None and found.table_windows != config.table_windows:
        diffs.append(f"stage windows {config.table_windows} (file: {found.table_windows})")
    if diffs:
        raise PortError(f"{source}: the file does not fit the requested config: " + ", ".join(diffs))


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: SwinConfig | None = None,
    *,
    source: str = "state dict",
    final_norm: bool | None = None,
    drop_path_rate: float | None = None,
    built_img_size: int | Sequence[int] | None = None,
) -> tuple[Any, SwinConfig]:
    """(filled `SwinTransformer` in eval mode, config) from any accepted layout.

    `config=None` infers the architecture; a given config (e.g. a preset) is checked against the file: its windows are
    the nominal ones, stages the file built with clamped windows take those. `final_norm` / `drop_path_rate` default to
    the given config's values (False / 0 when inferring).
    """
    state_dict, _ = prepare_state_dict(state_dict)
    final_norm = final_norm if final_norm is not None else bool(config and config.final_norm)
    drop_path_rate = drop_path_rate if drop_path_rate is not None else (config.drop_path_rate if config else 0.0)
    found = infer_config(
        state_dict, built_img_size=built_img_size, final_norm=final_norm, drop_path_rate=drop_path_rate, source=source
    )
    if config is not None:
        check_config(found, config, source=source)
        windows = config.stage_window_sizes if config.stage_window_sizes is not None else found.stage_window_sizes
        found = dataclasses.replace(
            config, stage_window_sizes=windows, final_norm=final_norm, drop_path_rate=drop_path_rate
        )
    abstract = pretrained.abstract_model(KIND, found)
    return port(state_dict, table(found), abstract, source=source), found


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace):
    """`port/convert.py swin` entry point."""
    state_dict = load.unwrap_state_dict(checkpoint, source=source)
    _, layout = prepare_state_dict(state_dict)
    config = PRESETS[args.preset] if args.preset else None
    model, config = convert_state_dict(
        state_dict,
        config,
        source=source,
        final_norm=args.final_norm,
        drop_path_rate=args.drop_path_rate,
        built_img_size=args.built_img_size or args.img_size,
    )
    info = {
        "layout": layout,
        "preset": args.preset,
        "timm_model": args.timm_model,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    return Converted(model, config, info)


CONVERTERS = (
    Converter(
        kind="swin",
        help="timm Swin v1 (plain or features_only `layers_N` keys, Microsoft layout rejected)",
        add_arguments=add_arguments,
        convert=convert,
        timm_resizing=True,
        window_size=True,
    ),
)
