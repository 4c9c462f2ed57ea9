"""Dinov3_matting checkpoints -> jaxmatte family `dinomatte` (`DinoMatte`); or an untrained decoder on a DINOv3 file.

    python port/convert.py dinomatte --src best_model.pth --out DIR
    python port/convert.py dinomatte --backbone dinov3_vits16_pretrain_lvd1689m.pth --out DIR [--decoder detail]

Accepted `--src` containers (dinov3_matting.md §4; the metadata is read as data only):

- the trainer's `{epoch, model_state_dict, optimizer_state_dict, scheduler_state_dict, loss, config}`;
- `save_checkpoint`'s `{model_state_dict, model_size, decoder_dims, use_boundary_refinement, epoch, loss[,
  optimizer_state_dict]}`;
- a bare state dict (also under `model` / `state_dict`), keys optionally prefixed with `module.`.

The backbone is read from `encoder.dinov3.*` with `port.dinov3` (official or timm layout, qkv `bias_mask`, RoPE periods:
the stored ones for official files unless `--no-faithful-periods`). Decoder (`decoder.*`) and refiner
(`boundary_refiner.*`) go through `TABLE`, strictly in both directions (`num_batches_tracked` is ignored). The
decoder widths, the refiner and its kernel sizes are inferred from the shapes and checked against the container's
`decoder_dims` / `use_boundary_refinement` / `model_size` and its `config['model']` when present.

`--backbone FILE` (without `--src`) builds a decoder initialised as the original does (seeded by `--seed`) on the
converted backbone: the faithful decoder, or jaxmatte's detail decoder with `--decoder detail`; `--preset` picks the
decoder fields of a `DinoMatteConfig` preset (its backbone architecture must match the file).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

from jaxmatte import pretrained
from jaxmatte.backbones.dinov3 import DinoV3Config
from jaxmatte.models.dinomatte.modeling import (
    BOUNDARY_HIDDEN,
    DECODERS,
    FAITHFUL_LAST_WIDTH,
    PAD_RULES,
    PRESETS,
    BoundaryRefinement,
    DinoMatte,
    DinoMatteConfig,
    FaithfulDecoder,
)
from jaxmatte.preprocessing import Preprocessing
from port import dinov3 as port_dinov3
from port import load
from port.converter import Converted, Converter, json_ready
from port.table import PortError, Rule, Table, batch_norm, block_count, chain, conv, port

KIND = "dinomatte"
FAMILY = "dinomatte"
BACKBONE_PREFIX = "encoder.dinov3."
ORIGINAL_SIZE = 224
MODEL_SIZES = {"vits16": 384, "vitb16": 768, "vitl16": 1024}
TRAINER_KEYS = {"scheduler_state_dict", "config"}
SAVE_CHECKPOINT_KEYS = {"model_size", "decoder_dims", "use_boundary_refinement"}

# the original inference: PIL bilinear to 224 (antialiased), ImageNet norm, cv2 INTER_LINEAR back, x255 truncated
ORIGINAL_PREPROCESSING = Preprocessing(
    resize="stretch",
    size=ORIGINAL_SIZE,
    resample="pil_bilinear",
    mask_resample="linear",
    restore="cv2_linear",
    quantization="truncate",
)


def _scalar(a: np.ndarray) -> np.ndarray:
    """0-d `sharpening_weight`; a 1-element array is accepted as well (other sizes fail the shape check)."""
    return a.reshape(()) if a.size == 1 else a


_BLOCK = r"decoder\.decoder_blocks\.(\d+)\.conv_block"
_TARGET = r"decoder.decoder_blocks.\1"
HEAD_RULES = chain(
    conv(r"decoder\.input_proj", "decoder.input_proj"),
    conv(_BLOCK + r"\.0", _TARGET + ".conv1"),
    batch_norm(_BLOCK + r"\.1", _TARGET + ".bn1"),
    conv(_BLOCK + r"\.3", _TARGET + ".conv2"),
    batch_norm(_BLOCK + r"\.4", _TARGET + ".bn2"),
    conv(r"decoder\.upsample_blocks\.(\d+)", r"decoder.upsample_blocks.\1"),  # ConvTranspose2d: same transpose
    conv(r"decoder\.final_conv\.0", "decoder.final_conv.conv"),
    conv(r"decoder\.final_conv\.2", "decoder.final_conv.out"),
    conv(r"boundary_refiner\.boundary_conv\.0", "boundary_refiner.conv1"),
    conv(r"boundary_refiner\.boundary_conv\.2", "boundary_refiner.conv2"),
    conv(r"boundary_refiner\.boundary_conv\.4", "boundary_refiner.conv3"),
    [Rule(r"boundary_refiner\.sharpening_weight", "boundary_refiner.sharpening_weight", _scalar)],
)
IGNORED = (r".*\.num_batches_tracked",)
HEAD_TABLE = Table(HEAD_RULES, IGNORED)
# whole model: the backbone arrives already converted (jaxmatte paths under `backbone.`)
TABLE = Table([Rule(r"backbone\.(.+)", r"backbone.\1"), *HEAD_RULES], IGNORED)


class Parts(NamedTuple):
    """A checkpoint split into the backbone (without `encoder.dinov3.`) and the head (decoder + refiner) state dicts,
    with the container layout and its metadata."""

    backbone: dict[str, np.ndarray]
    head: dict[str, np.ndarray]
    layout: str
    meta: dict[str, Any]


def split_checkpoint(checkpoint: Any, *, source: str = "checkpoint") -> Parts:
    meta: dict[str, Any] = {}
    if isinstance(checkpoint, Mapping) and not load.is_state_dict(checkpoint) and "model_state_dict" in checkpoint:
        keys = set(checkpoint)
        if keys & TRAINER_KEYS:
            layout = "trainer checkpoint"
        elif keys & SAVE_CHECKPOINT_KEYS:
            layout = "save_checkpoint"
        else:
            layout = "container"
        meta = {k: v for k, v in checkpoint.items() if not k.endswith("state_dict")}
        state_dict = load.unwrap_state_dict(checkpoint["model_state_dict"], source=f"{source} ['model_state_dict']")
    else:
        layout = "state dict"
        state_dict = load.unwrap_state_dict(checkpoint, source=source)
    backbone = load.select_prefix(state_dict, BACKBONE_PREFIX)
    head = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIX)}
    return Parts(backbone, head, layout, meta)


# ---------------------------------------------------------------------------------------------------- inference


class HeadArchitecture(NamedTuple):
    decoder_dims: tuple[int, ...]
    boundary_refinement: bool
    boundary_kernels: tuple[int, int, int]


def _shape(state_dict: Mapping[str, np.ndarray], key: str) -> tuple[int, ...] | None:
    value = state_dict.get(key)
    return tuple(np.shape(value)) if value is not None else None


def infer_head(head: Mapping[str, np.ndarray]) -> tuple[HeadArchitecture | None, list[str]]:
    """Decoder widths and refiner settings from the shapes (None and the problems when they cannot be read)."""
    problems: list[str] = []
    proj = _shape(head, "decoder.input_proj.weight")
    blocks = block_count(head, "decoder.decoder_blocks")
    if proj is None or len(proj) != 4:
        problems.append(f"no 4-d decoder.input_proj.weight (got {proj}); is this a Dinov3_matting checkpoint?")
    if not blocks:
        problems.append("no decoder.decoder_blocks.N.* keys")
    if problems:
        return None, problems
    dims = [proj[0]]
    for i in range(blocks):
        out = _shape(head, f"decoder.decoder_blocks.{i}.conv_block.0.weight")
        if out is None or len(out) != 4:
            problems.append(f"no 4-d decoder.decoder_blocks.{i}.conv_block.0.weight (got {out})")
            return None, problems
        dims.append(out[0])
    if dims[-1] != FAITHFUL_LAST_WIDTH:
        problems.append(f"the last decoder block outputs {dims[-1]} channels; the original always has 64")
    kernels: list[int] = []
    refiner = any(k.startswith("boundary_refiner.") for k in head)
    if refiner:
        for index in (0, 2, 4):
            key = f"boundary_refiner.boundary_conv.{index}.weight"
            shape = _shape(head, key)
            if shape is None or len(shape) != 4 or shape[2] != shape[3] or shape[2] % 2 == 0:
                problems.append(f"{key}: expected a square odd 4-d kernel, got {shape}")
                kernels.append(3)
            else:
                kernels.append(shape[2])
        hidden = _shape(head, "boundary_refiner.boundary_conv.0.weight")
        if hidden is not None and len(hidden) == 4 and (hidden[0], hidden[1]) != (BOUNDARY_HIDDEN, 1):
            problems.append(
                f"boundary refiner is 1 -> {BOUNDARY_HIDDEN} -> 1 channels, file has {hidden[1]} -> {hidden[0]}"
            )
    architecture = HeadArchitecture(tuple(int(d) for d in dims[:-1]), refiner, tuple(kernels) if refiner else (3, 3, 3))
    return architecture, problems


def check_metadata(meta: Mapping[str, Any], head: HeadArchitecture, embed_dim: int | None) -> list[str]:
    """Disagreements between the shapes and the container's `decoder_dims`, `use_boundary_refinement`,
    `model_size` (also under `config['model']`)."""
    model_config = meta.get("config", {}).get("model", {}) if isinstance(meta.get("config"), Mapping) else {}
    problems = []
    for where, values, size_key in (("", meta, "model_size"), ("config['model'] ", model_config, "dino_model_size")):
        if not isinstance(values, Mapping):
            continue
        dims = values.get("decoder_dims")
        if dims is not None and tuple(int(d) for d in dims) != head.decoder_dims:
            problems.append(f"{where}decoder_dims {list(dims)} but the weights have {list(head.decoder_dims)}")
        refine = values.get("use_boundary_refinement")
        if refine is not None and bool(refine) != head.boundary_refinement:
            problems.append(
                f"{where}use_boundary_refinement {refine} but the weights have refiner = {head.boundary_refinement}"
            )
        size = values.get(size_key)
        if embed_dim is not None and size in MODEL_SIZES and MODEL_SIZES[size] != embed_dim:
            problems.append(
                f"{where}{size_key} {size!r} (D = {MODEL_SIZES[size]}) but the backbone has D = {embed_dim}"
            )
    return problems


def _head_problems(head_sd: Mapping[str, np.ndarray], config: DinoMatteConfig) -> list[str]:
    """Strict check of the decoder / refiner keys against the abstract head modules."""

    def build():
        modules = {"decoder": FaithfulDecoder(config, rngs=nnx.Rngs(0))}
        if config.boundary_refinement:
            modules["boundary_refiner"] = BoundaryRefinement(config.boundary_kernels, rngs=nnx.Rngs(0))
        return nnx.Dict(modules)

    values, origin, problems = HEAD_TABLE.map(head_sd)
    shapes = pretrained.stored_shapes(nnx.eval_shape(build))
    for target in sorted(values):
        if target not in shapes:
            problems.append(f"key {origin[target]} maps to {target}, which the model does not have")
        elif tuple(values[target].shape) != tuple(shapes[target].shape):
            problems.append(
                f"shape mismatch {origin[target]} {tuple(np.shape(head_sd[origin[target]]))}: model expects "
                f"{tuple(shapes[target].shape)} at {target} (after transform: {tuple(values[target].shape)})"
            )
    problems += [f"missing: nothing fills {t} {tuple(shapes[t].shape)}" for t in sorted(set(shapes) - set(values))]
    return problems


# --------------------------------------------------------------------------------------------------- conversion


def convert_checkpoint(
    checkpoint: Any,
    *,
    source: str = "checkpoint",
    faithful_periods: bool | None = None,
    pad_rule: str = "original",
    rope_rescale_train: bool = False,
    img_size: int = ORIGINAL_SIZE,
    preset: str | None = None,
) -> Converted:
    """A trained Dinov3_matting checkpoint (any accepted container) -> `Converted(model, config, info)`."""
    parts = split_checkpoint(checkpoint, source=source)
    problems: list[str] = []
    backbone_model = backbone_config = None
    backbone_info: dict[str, Any] = {}
    if not parts.backbone:
        problems.append(f"no {BACKBONE_PREFIX}* keys (the backbone is stored in every Dinov3_matting checkpoint)")
    else:
        try:
            backbone_model, backbone_config, backbone_info = port_dinov3.convert_state_dict_with_info(
                parts.backbone, source=f"{BACKBONE_PREFIX}*", faithful_periods=faithful_periods
            )
        except PortError as err:
            problems.append(str(err).replace("\n", "\n  "))
    head, head_problems = infer_head(parts.head)
    problems += head_problems
    embed_dim = backbone_config.embed_dim if backbone_config is not None else None
    config = None
    if head is not None:
        problems += check_metadata(parts.meta, head, embed_dim)
        if embed_dim is None:
            embed_dim = int(parts.head["decoder.input_proj.weight"].shape[1])
        fields = {
            "decoder": "faithful",
            "decoder_dims": head.decoder_dims,
            "boundary_refinement": head.boundary_refinement,
            "boundary_kernels": head.boundary_kernels,
            "img_size": img_size,
            "pad_rule": pad_rule,
            "rope_rescale_train": rope_rescale_train,
        }
        # without a usable backbone, the head is still checked against the width its input_proj declares
        try:
            probe_backbone = backbone_config or DinoV3Config(embed_dim=embed_dim, depth=1, num_heads=1)
            probe = DinoMatteConfig(backbone=probe_backbone, **fields)
        except ValueError as err:
            problems.append(str(err))
        else:
            problems += _head_problems(parts.head, probe)
            if backbone_config is not None:
                config = probe
                if preset is not None:
                    problems += preset_differences(config, preset)
    if problems:
        raise PortError(f"{source}: {len(problems)} problem(s) converting to DinoMatte:\n  " + "\n  ".join(problems))

    state = {f"backbone.{k}": v for k, v in pretrained.stored_values(backbone_model).items()} | parts.head
    model = port(state, TABLE, pretrained.abstract_model(FAMILY, config), source=source)
    info = {
        "container": parts.layout,
        **backbone_info,
        "decoder_dims": list(head.decoder_dims),
        "boundary_refinement": head.boundary_refinement,
        "preprocessing": ORIGINAL_PREPROCESSING.to_dict(),
    }
    info |= {k: json_ready(parts.meta[k]) for k in ("epoch", "loss", "model_size") if k in parts.meta}
    if isinstance(parts.meta.get("config"), Mapping):
        info["original_config"] = json_ready(parts.meta["config"])
    return Converted(model, config, info)


def preset_differences(config: DinoMatteConfig, name: str) -> list[str]:
    """Architecture fields where `config` differs from preset `name` (the qkv bias, present in every official file
    and zero in Meta's weights, is not compared)."""
    preset = DinoMatteConfig.preset(name)
    fields = [f for f in port_dinov3.ARCHITECTURE_FIELDS if f != "qkv_bias"]
    problems = [
        f"backbone {f}: preset {name!r} has {getattr(preset.backbone, f)!r}, file {getattr(config.backbone, f)!r}"
        for f in fields
        if getattr(preset.backbone, f) != getattr(config.backbone, f)
    ]
    for field in ("decoder", "decoder_dims", "boundary_refinement", "boundary_kernels"):
        if getattr(config, field) != getattr(preset, field):
            problems.append(f"{field}: preset {name!r} has {getattr(preset, field)!r}, file {getattr(config, field)!r}")
    return problems


def build_untrained(
    backbone_file: str,
    *,
    decoder: str | None = None,
    preset: str | None = None,
    seed: int = 0,
    faithful_periods: bool | None = None,
    **fields: Any,
) -> Converted:
    """A converted DINOv3 backbone file + a freshly initialised decoder (`fields` override config fields; None values
    are ignored)."""
    source = str(backbone_file)
    state_dict = port_dinov3.backbone_state_dict(load.read_checkpoint(backbone_file), source=source)
    if preset is not None:
        base = DinoMatteConfig.preset(preset)
        requested = dataclasses.replace(base.backbone, rope_periods=None, rope_rescale=None)
    else:
        base = PRESETS["small_detail"] if decoder == "detail" else PRESETS["small"]
        requested = None
    if decoder is not None and decoder not in DECODERS:
        raise PortError(f"{source}: decoder must be one of {DECODERS}, got {decoder!r}")
    backbone, backbone_config, backbone_info = port_dinov3.convert_state_dict_with_info(
        state_dict, requested, source=source, faithful_periods=faithful_periods
    )
    overrides = {k: v for k, v in fields.items() if v is not None} | ({"decoder": decoder} if decoder else {})
    try:
        config = dataclasses.replace(base, backbone=backbone_config, feature_layers=None, **overrides)
    except ValueError as err:
        raise PortError(f"{source}: {err}") from None
    model = DinoMatte(config, rngs=nnx.Rngs(seed))
    values = pretrained.stored_values(model)
    values |= {f"backbone.{k}": v for k, v in pretrained.stored_values(backbone).items()}
    model = pretrained.fill(pretrained.abstract_model(FAMILY, config), values)
    if config.decoder == "detail":
        record = Preprocessing(resize="letterbox", size=config.img_size, mask_resample="linear")
    else:
        record = ORIGINAL_PREPROCESSING.replace(size=config.img_size, quantization="round")
    info = {
        "container": "backbone file (untrained decoder)",
        **backbone_info,
        "decoder": config.decoder,
        "seed": seed,
        "preprocessing": record.to_dict(),
    }
    if preset is not None:
        info["preset"] = preset
    return Converted(model, config, info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("dinomatte")
    group.add_argument(
        "--backbone", help="official or timm DINOv3 file: build an untrained decoder on it (instead of --src)"
    )
    group.add_argument("--decoder", choices=DECODERS, help="with --backbone: decoder to build (default faithful)")
    group.add_argument("--preset", choices=sorted(PRESETS), help="--src: check against it; --backbone: decoder fields")
    group.add_argument("--decoder-dims", type=int, nargs="+", metavar="N", help="with --backbone: decoder widths")
    group.add_argument(
        "--boundary-refinement", action="store_true", default=None, help="with --backbone: add the boundary refiner"
    )
    group.add_argument("--seed", type=int, default=0, help="with --backbone: decoder initialisation seed (default 0)")
    group.add_argument(
        "--pad-rule",
        choices=PAD_RULES,
        help="non-multiple-of-16 inputs (default: original for --src, else independent)",
    )
    group.add_argument("--input-size", type=int, help="nominal input side (default 224; detail presets 448)")
    group.add_argument(
        "--rope-rescale-train",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="RoPE rescale augmentation of the frozen backbone in train mode (the original's behaviour; default off)",
    )
    group.add_argument(
        "--faithful-periods",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the RoPE periods stored in an official backbone (default: yes when present)",
    )


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace) -> Converted:
    """`port/convert.py dinomatte` entry point: `checkpoint` is the `--src` object, or None with `--backbone`."""
    get = lambda name: getattr(args, name.replace("-", "_"), None)  # noqa: E731
    backbone = get("backbone")
    if backbone is not None and checkpoint is not None:
        raise PortError(
            f"{source}: give either --src (a trained checkpoint) or --backbone (untrained decoder), not both"
        )
    if backbone is None:
        if checkpoint is None:
            raise PortError("dinomatte: nothing to convert; give --src CHECKPOINT or --backbone DINOV3_FILE")
        only_untrained = [f"--{n}" for n in ("decoder", "decoder-dims", "boundary-refinement") if get(n) is not None]
        if only_untrained:
            raise PortError(f"{source}: {', '.join(only_untrained)} only apply with --backbone (--src is read as is)")
        return convert_checkpoint(
            checkpoint,
            source=source,
            faithful_periods=get("faithful_periods"),
            pad_rule=get("pad_rule") or "original",
            rope_rescale_train=bool(get("rope_rescale_train")),
            img_size=get("input_size") or ORIGINAL_SIZE,
            preset=get("preset"),
        )
    dims = get("decoder_dims")
    return build_untrained(
        backbone,
        decoder=get("decoder"),
        preset=get("preset"),
        seed=get("seed") or 0,
        faithful_periods=get("faithful_periods"),
        decoder_dims=tuple(dims) if dims else None,
        boundary_refinement=get("boundary_refinement"),
        pad_rule=get("pad_rule"),
        img_size=get("input_size"),
        rope_rescale_train=get("rope_rescale_train"),
    )


CONVERTERS = (
    Converter(
        kind=KIND,
        help="Dinov3_matting checkpoint (DINOv3 + conv decoder), or --backbone FILE for an untrained decoder",
        add_arguments=add_arguments,
        convert=convert,
        needs_src=False,
    ),
)

__all__ = [
    "CONVERTERS",
    "HEAD_TABLE",
    "ORIGINAL_PREPROCESSING",
    "TABLE",
    "build_untrained",
    "convert",
    "convert_checkpoint",
    "split_checkpoint",
]
