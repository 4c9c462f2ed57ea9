"""TSR-Matte / TwinSwin-Matte checkpoints -> jaxmatte `tsr` (`TSRMatte`) and `twinswin` (`TwinSwinMatte`) families.

Accepted files (fp16 tensors are upcast to float32; `module.` prefixes are stripped from each part):

- the TSR release (`tsr_general_fp16.pth`): `{'state_dict': student, 'refiner_state_dict': refiner, 'meta': {...}}`;
- training checkpoints: `{'epoch', 'state_dict', 'optimizer', 'scheduler', 'scaler', 'best_sad', 'history'[,
  'refiner_state_dict'][, 'teacher_state_dict']}` (entries other than the state dicts are not read);
- a bare student state dict, optionally with the refiner / teacher under `refiner.` / `teacher.` prefixes.

Student keys: `backbone.` (timm Swin `features_only`, `layers_N.`; the plain timm `layers.N.` layout is accepted and its
`norm.*` / `head.*` ignored; the rules and config inference of `port.swin` are reused), `up{1,2,3}.conv.double_conv.*`,
`head.{1,3}.double_conv.*`, `head.4.*`. Refiner: `conv_in.*`, `body.N.{branch1..4,fusion}.*`, `conv_out.*`
(`fusion.3/4` present -> `fusion_depth` 2, absent -> 1). Teacher (only in jaxmatte's own checkpoints): `stem.*`,
`down{1,2,3}.*`, `lat3_to_2`, `lat2_to_1`, `smooth2`, `smooth1`. BatchNorm `num_batches_tracked` is dropped.

Kind `tsr` needs refiner weights (a missing refiner is an error); kind `twinswin` converts the student (and a teacher
present in the file) and drops a refiner. The config is inferred from the shapes; `--preset NAME` checks it against a
named configuration. The safe size defaults to 896 (window 7) / 1152 (window 12); `--safe-size` / `--input-size`
override it and the nominal input size (default: the file's `meta['img_size']`, else 1024).

The converted directory records the preprocessing that reproduces the original `predict.py` (stretch to the input
size with cv2 INTER_LINEAR, ImageNet mean/std, cv2 INTER_LINEAR back to the original size, uint8 truncation).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np

from jaxmatte import pretrained
from jaxmatte.models.tsr.modeling import (
    BACKBONES,
    DROP_PATH_RATE,
    MaskEncoderConfig,
    RefinerConfig,
    TSRConfig,
    TwinSwinConfig,
)
from jaxmatte.preprocessing import KEY as PREPROCESSING_KEY
from jaxmatte.preprocessing import Preprocessing
from port import load
from port import swin as port_swin
from port.converter import Converted, Converter, json_ready
from port.table import PortError, Rule, Table, batch_norm, block_count, chain, conv, norm, port

KINDS = ("tsr", "twinswin")
PARTS = ("student", "refiner", "teacher")
CONTAINER_KEYS = {"refiner": "refiner_state_dict", "teacher": "teacher_state_dict"}
RELEASE_KEYS = {"state_dict", "refiner_state_dict", "meta"}
TRAINING_KEYS = {"epoch", "optimizer", "scheduler", "scaler", "best_sad", "history"}
SAFE_SIZES = {7: 896, 12: 1152}
IMG_SIZE = 1024


def _prefixed(rules: list[Rule], source: str, target: str) -> list[Rule]:
    return [Rule(source + r.source, target + r.target, r.transform) for r in rules]


def double_conv(source: str, target: str) -> list[Rule]:
    """`double_conv.{0,1,3,4}` -> `conv1, bn1, conv2, bn2`."""
    return chain(
        conv(source + r"\.double_conv\.0", target + ".conv1"),
        batch_norm(source + r"\.double_conv\.1", target + ".bn1"),
        conv(source + r"\.double_conv\.3", target + ".conv2"),
        batch_norm(source + r"\.double_conv\.4", target + ".bn2"),
    )


STUDENT_RULES = chain(
    _prefixed(port_swin.RULES, r"backbone\.", "student.backbone."),
    double_conv(r"up([123])\.conv", r"student.up\1.conv"),
    double_conv(r"head\.1", "student.head.stage1"),
    double_conv(r"head\.3", "student.head.stage2"),
    conv(r"head\.4", "student.head.out"),
)
_BLOCK = r"refiner\.body\.(\d+)"
REFINER_RULES = chain(
    conv(r"refiner\.conv_in\.0", "refiner.conv_in.conv"),
    batch_norm(r"refiner\.conv_in\.1", "refiner.conv_in.bn"),
    conv(_BLOCK + r"\.branch([1-4])\.0", r"refiner.body.\1.branch\2.conv"),
    batch_norm(_BLOCK + r"\.branch([1-4])\.1", r"refiner.body.\1.branch\2.bn"),
    conv(_BLOCK + r"\.fusion\.0", r"refiner.body.\1.fusion.conv1"),
    batch_norm(_BLOCK + r"\.fusion\.1", r"refiner.body.\1.fusion.bn1"),
    conv(_BLOCK + r"\.fusion\.3", r"refiner.body.\1.fusion.conv2"),
    batch_norm(_BLOCK + r"\.fusion\.4", r"refiner.body.\1.fusion.bn2"),
    conv(r"refiner\.conv_out", "refiner.conv_out"),
)
TEACHER_RULES = chain(
    conv(r"teacher\.stem\.0", "teacher.stem.conv"),
    norm(r"teacher\.stem\.1", "teacher.stem.norm"),
    conv(r"teacher\.down([123])\.0", r"teacher.down\1.conv"),
    double_conv(r"teacher\.down([123])\.1", r"teacher.down\1.block"),
    *(conv(rf"teacher\.{name}", f"teacher.{name}") for name in ("lat3_to_2", "lat2_to_1", "smooth2", "smooth1")),
)
IGNORED = (
    r".*\.num_batches_tracked",
    *(r"backbone\." + p for p in port_swin.IGNORED + port_swin.FINAL_NORM_IGNORED),
)
TABLE = Table(STUDENT_RULES + REFINER_RULES + TEACHER_RULES, IGNORED)


class Parts(NamedTuple):
    """A checkpoint split into its state dicts (None when absent), its container layout and its `meta`."""

    student: dict[str, np.ndarray]
    refiner: dict[str, np.ndarray] | None
    teacher: dict[str, np.ndarray] | None
    layout: str
    meta: dict[str, Any] | None


def split_checkpoint(checkpoint: Any, *, source: str = "checkpoint") -> Parts:
    """Student / refiner / teacher state dicts of any accepted layout (see the module docstring)."""
    separate: dict[str, Any] = {}
    meta = None
    if isinstance(checkpoint, Mapping) and not load.is_state_dict(checkpoint) and "state_dict" in checkpoint:
        keys = set(checkpoint)
        if "meta" in keys and keys <= RELEASE_KEYS:
            layout = "release"
        elif keys & TRAINING_KEYS:
            layout = "training checkpoint"
        else:
            layout = "container"
        student = load.unwrap_state_dict(checkpoint["state_dict"], source=f"{source} ['state_dict']")
        for part, key in CONTAINER_KEYS.items():
            if checkpoint.get(key) is not None:
                separate[part] = load.unwrap_state_dict(checkpoint[key], source=f"{source} [{key!r}]")
        if isinstance(checkpoint.get("meta"), Mapping):
            meta = json_ready(checkpoint["meta"])
    else:
        layout = "state dict"
        student = load.unwrap_state_dict(checkpoint, source=source)
    parts: dict[str, dict[str, np.ndarray] | None] = {"student": {}, "refiner": None, "teacher": None}
    for key, value in student.items():
        part = next((p for p in CONTAINER_KEYS if key.startswith(p + ".")), "student")
        if part == "student":
            parts["student"][key] = value
        else:
            parts[part] = parts[part] or {}
            parts[part][key[len(part) + 1 :]] = value
    for part, state in separate.items():
        if parts[part] is not None:
            raise PortError(f"{source}: {part} weights found both under {CONTAINER_KEYS[part]!r} and as {part}.* keys")
        parts[part] = state
    if not parts["student"]:
        raise PortError(f"{source}: no student weights (backbone.*, up1.*, ..., head.*)")
    return Parts(parts["student"], parts["refiner"], parts["teacher"], layout, meta)


def _width(state_dict: Mapping[str, np.ndarray], key: str, default: int) -> int:
    value = state_dict.get(key)
    return int(value.shape[0]) if value is not None and value.ndim >= 1 else default


def infer_refiner(state_dict: Mapping[str, np.ndarray], *, source: str = "refiner") -> RefinerConfig:
    """`RefinerConfig` from refiner key names and shapes (without the `refiner.` prefix)."""
    conv_in = state_dict.get("conv_in.0.weight")
    if conv_in is None or conv_in.ndim != 4:
        raise PortError(f"{source}: not a refiner state dict (no conv_in.0.weight; keys {sorted(state_dict)[:8]})")
    blocks = block_count(state_dict, "body")
    deep = [f"body.{b}.fusion.3.weight" in state_dict for b in range(blocks)]
    if any(deep) and not all(deep):
        raise PortError(
            f"{source}: fusion.3 present in blocks {[b for b, d in enumerate(deep) if d]} only; "
            f"expected all {blocks} blocks or none"
        )
    return RefinerConfig(
        in_chans=int(conv_in.shape[1]),
        mid_channels=int(conv_in.shape[0]),
        num_blocks=blocks,
        fusion_depth=2 if all(deep) and blocks else 1,
    )


def infer_teacher(state_dict: Mapping[str, np.ndarray], *, source: str = "teacher") -> MaskEncoderConfig:
    """`MaskEncoderConfig` from teacher key names and shapes (without the `teacher.` prefix)."""
    stem = state_dict.get("stem.0.weight")
    if stem is None or stem.ndim != 4:
        raise PortError(f"{source}: not a MaskEncoder state dict (no stem.0.weight)")
    dims = [int(stem.shape[0])]
    for i in (1, 2, 3):
        dims.append(_width(state_dict, f"down{i}.0.weight", 2 * dims[-1]))
    return MaskEncoderConfig(dims=tuple(dims), patch_size=int(stem.shape[2]))


def infer_config(
    parts: Parts,
    *,
    kind: str = "tsr",
    safe_size: int | None = None,
    img_size: int | None = None,
    drop_path_rate: float = DROP_PATH_RATE,
    source: str = "checkpoint",
) -> TwinSwinConfig:
    """The family's config from the parts' key names and shapes."""
    backbone_sd, _ = port_swin.prepare_state_dict(load.select_prefix(parts.student, "backbone."))
    if not backbone_sd:
        raise PortError(f"{source}: no backbone.* keys in the student weights (first keys {sorted(parts.student)[:8]})")
    found = port_swin.infer_config(backbone_sd, drop_path_rate=drop_path_rate, source=f"{source} backbone")
    if safe_size is None:
        if found.window_size not in SAFE_SIZES:
            raise PortError(f"{source}: no default safe size for window {found.window_size}; pass --safe-size")
        safe_size = SAFE_SIZES[found.window_size]
    backbone = port_swin.infer_config(
        backbone_sd, built_img_size=safe_size, drop_path_rate=drop_path_rate, source=f"{source} backbone"
    )
    if img_size is None:
        meta_size = (parts.meta or {}).get("img_size")
        img_size = int(meta_size) if isinstance(meta_size, int) else IMG_SIZE
    sd = parts.student
    decoder = tuple(
        _width(sd, f"up{i}.conv.double_conv.3.weight", d) for i, d in zip((1, 2, 3), (512, 256, 128), strict=True)
    )
    head = tuple(_width(sd, f"head.{i}.double_conv.3.weight", d) for i, d in zip((1, 3), (64, 32), strict=True))
    try:
        fields: dict[str, Any] = {
            "backbone": backbone,
            "safe_size": safe_size,
            "img_size": img_size,
            "decoder_channels": decoder,
            "head_channels": head,
            "teacher": infer_teacher(parts.teacher, source=f"{source} teacher") if parts.teacher is not None else None,
        }
        if kind == "twinswin":
            return TwinSwinConfig(**fields)
        if parts.refiner is None:
            raise PortError(
                f"{source}: no refiner weights (neither 'refiner_state_dict' nor refiner.* keys); convert the student "
                "alone with the `twinswin` kind"
            )
        return TSRConfig(**fields, refiner=infer_refiner(parts.refiner, source=f"{source} refiner"))
    except ValueError as err:
        if isinstance(err, PortError):
            raise
        raise PortError(f"{source}: inconsistent architecture: {err}") from err


def matching_preset(config: TwinSwinConfig) -> str | None:
    """Name of the preset with the same architecture (ignoring drop-path, nominal input size and teacher)."""
    for name in BACKBONES:
        preset = type(config).preset(name)
        candidate = dataclasses.replace(
            config,
            backbone=dataclasses.replace(config.backbone, drop_path_rate=preset.backbone.drop_path_rate),
            img_size=preset.img_size,
            teacher=None,
        )
        if candidate == preset:
            return name
    return None


def check_preset(config: TwinSwinConfig, name: str, *, source: str = "checkpoint") -> None:
    """One PortError naming every field where the file's architecture differs from preset `name`."""
    preset = type(config).preset(name)
    diffs = []
    for f in dataclasses.fields(preset):
        if f.name in ("teacher", "img_size"):
            continue
        ours, theirs = getattr(config, f.name), getattr(preset, f.name)
        if f.name == "backbone":
            theirs = dataclasses.replace(theirs, drop_path_rate=ours.drop_path_rate)
        if ours != theirs:
            diffs.append(f"{f.name} {theirs} (file: {ours})")
    if diffs:
        raise PortError(f"{source}: the file does not fit preset {name!r}: " + "; ".join(diffs))


def merged_state_dict(parts: Parts) -> dict[str, np.ndarray]:
    """One state dict in the `TABLE` namespace: the student's backbone in timm layout (buffers dropped, Microsoft
    downsample keys moved), the refiner / teacher (when present) under `refiner.` / `teacher.`."""
    backbone_sd, _ = port_swin.prepare_state_dict(load.select_prefix(parts.student, "backbone."))
    merged = {k: v for k, v in parts.student.items() if not k.startswith("backbone.")}
    merged.update({f"backbone.{k}": v for k, v in backbone_sd.items()})
    for part in ("refiner", "teacher"):
        merged.update({f"{part}.{k}": v for k, v in (getattr(parts, part) or {}).items()})
    return merged


def convert_parts(
    parts: Parts,
    config: TwinSwinConfig | None = None,
    *,
    kind: str = "tsr",
    teacher: bool = True,
    source: str = "checkpoint",
    **infer: Any,
) -> tuple[Any, TwinSwinConfig]:
    """(filled model in eval mode, config). `config=None` infers it (`infer` goes to `infer_config`); a given config
    must fit the file exactly."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not teacher:
        parts = parts._replace(teacher=None)
    if kind == "twinswin":
        parts = parts._replace(refiner=None)
    if config is None:
        config = infer_config(parts, kind=kind, source=source, **infer)
    elif kind == "tsr" and parts.refiner is None:
        raise PortError(f"{source}: no refiner weights; convert the student alone with the `twinswin` kind")
    abstract = pretrained.abstract_model(kind, config)
    return port(merged_state_dict(parts), TABLE, abstract, source=source), config


def convert_state_dict(
    state_dict: Mapping[str, Any],
    config: TwinSwinConfig | None = None,
    *,
    kind: str = "tsr",
    source: str = "state dict",
    **infer: Any,
) -> tuple[Any, TwinSwinConfig]:
    """(model, config) from a checkpoint object or state dict of any accepted layout."""
    return convert_parts(split_checkpoint(state_dict, source=source), config, kind=kind, source=source, **infer)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("tsr / twinswin")
    group.add_argument("--preset", choices=sorted(BACKBONES), help="check the weights against this configuration")
    group.add_argument("--safe-size", type=int, help="backbone input side (default 896 for window 7, 1152 for 12)")
    group.add_argument(
        "--input-size", type=int, help="nominal input side for prediction (default: meta['img_size'], else 1024)"
    )
    group.add_argument(
        "--drop-path-rate",
        type=float,
        default=DROP_PATH_RATE,
        help=f"backbone stochastic depth for later training (default {DROP_PATH_RATE}; identity at inference)",
    )
    group.add_argument("--no-teacher", action="store_true", help="drop teacher weights present in the file")


def preprocessing(config: TwinSwinConfig) -> Preprocessing:
    """How the original `predict.py` feeds and reads the model (faithful mode): stretch with cv2 INTER_LINEAR,
    ImageNet normalisation, cv2 INTER_LINEAR back, x255 truncated."""
    return Preprocessing(resize="stretch", size=config.img_size, resample="cv2_linear", quantization="truncate")


OUTPUTS = {"tsr": "refined alpha (sigmoid(coarse probability + residual))", "twinswin": "student alpha"}


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace):
    """`port/convert.py tsr|twinswin` entry point."""
    kind = args.kind
    parts = split_checkpoint(checkpoint, source=source)
    dropped = [
        p
        for p, present in (
            ("refiner", kind == "twinswin" and parts.refiner is not None),
            ("teacher", args.no_teacher and parts.teacher is not None),
        )
        if present
    ]
    if args.no_teacher:
        parts = parts._replace(teacher=None)
    config = infer_config(
        parts._replace(refiner=None) if kind == "twinswin" else parts,
        kind=kind,
        safe_size=args.safe_size,
        img_size=args.input_size,
        drop_path_rate=args.drop_path_rate,
        source=source,
    )
    if args.preset:
        check_preset(config, args.preset, source=source)
    model, config = convert_parts(parts, config, kind=kind, source=source)
    included = ["student"] + (["refiner"] if kind == "tsr" else []) + (["teacher"] if config.teacher else [])
    info = {
        "layout": parts.layout,
        "meta": parts.meta,
        "preset": matching_preset(config),
        "parts": included,
        "dropped": dropped,
        PREPROCESSING_KEY: preprocessing(config).to_dict(),
        "output": OUTPUTS[kind],
    }
    return Converted(model, config, info)


CONVERTERS = (
    Converter(
        kind="tsr",
        help="TSR-Matte student + refiner (release fp16, training checkpoint or state dict)",
        add_arguments=add_arguments,
        convert=convert,
    ),
    Converter(
        kind="twinswin",
        help="TwinSwin-Matte student only (TwinSwin or TSR checkpoints; a refiner is dropped)",
        add_arguments=add_arguments,
        convert=convert,
    ),
)
