"""SegTrimap checkpoints -> jaxmatte family `segtrimap`; or an untrained SegTrimap on the official MAE weights.

    python port/convert.py segtrimap --src 020.pth --mask-scale 1/255 --out DIR
    python port/convert.py segtrimap --mae mae_pretrain_vit_huge.pth --out DIR [--preset huge_448]

`--src`: the trainer's file, ``{"state_dict": ..., "config": ...}``. Its config record holds a pickled
``torch.nn.CrossEntropyLoss`` object, so the weights-only reader allows exactly that torch class; the record is then
read as data (its class name is checked against the variant) and everything else comes from the tensor shapes:

- variant: ``backbone.pos_embed`` present -> 1 (learned positions; ``cls_token``, ``fc_norm`` and the classifier
  ``head`` are stored but unused and are not converted), absent -> 2 (no positional embedding);
- upsample mode from the input width of ``head.conv_seg.weight`` against the head width (256 -> x1, 128 -> x2,
  64 -> x4 in the headline); width, depth, patch, MLP ratio, neck widths, classes from their shapes; the input size
  from the position table (variant 2: `--img-size`, else the record's ``img_size``, else 448); heads from
  `--num-heads`, else the record's ``backbone_params``, else the ViT rule (16 heads of 80 for width 1280); windows of
  224 / patch tokens with a global block every depth // 4 (`--window-size`, `--global-every` for other trainings).

A leading ``module.`` (DataParallel runs) is stripped when every key carries it; a mix is refused. Every key must be
used and every parameter filled (`port.table`).

`--mask-scale` is required with `--src`: the file does not say whether its masks were {0, 1/255} (ToTensor on a
{0, 1} array, every checkpoint up to 2025-05-12, the README's ``020.pth`` included) or {0, 1}. It is stored in the
converted config (`SegTrimapConfig.mask_scale`), printed, and applied inside the model.

`--mae FILE`: the official MAE pretrain file (``{"model": ...}``) fills the backbone of a fresh `--preset` model
(seeded by `--seed`), its position table resampled to the input grid as the original does (torch bicubic, align_corners
False, class slot kept; 16x16 -> 32x32 for ViT-H/14 at 448); MAE's final ``norm`` and decoder are not used. Variant 2
presets take neither ``pos_embed`` nor ``cls_token``. The mask scale is 1 (jaxmatte trains on {0, 1} masks).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import numpy as np
from flax import nnx

from jaxmatte import pretrained
from jaxmatte.backbones.vit import ViTConfig
from jaxmatte.models.segtrimap.modeling import PRESETS, UPSAMPLE_FACTORS, SegTrimap, SegTrimapConfig
from jaxmatte.preprocessing import Preprocessing
from port import load
from port import vit as port_vit
from port.converter import Converted, Converter, json_ready
from port.table import PortError, Rule, Table, chain, conv, norm, port

KIND = "segtrimap"
FAMILY = "segtrimap"
ORIGINAL_SIZE = 448
WINDOW_PIXELS = 224  # SimpleClick windows cover 224 x 224 pixels
CROSS_ENTROPY = "torch.nn.CrossEntropyLoss"
VARIANT_CLASSES = {1: "TrimapPlainVitModel", 2: "NoPosEmbedTrimapPlainVitModel"}
MASK_SCALES = {"1/255": 1.0 / 255.0, "1": 1.0}

# letterbox to 448 (cv2 INTER_LINEAR, centred zero padding), ImageNet normalisation; logits restored bilinearly
PREPROCESSING = Preprocessing(resize="letterbox", size=ORIGINAL_SIZE)


def _backbone_rules() -> list[Rule]:
    return [Rule(rf"backbone\.{r.source}", f"backbone.{r.target}", r.transform) for r in port_vit.RULES]


def _up_block(source: str, target: str) -> list[Rule]:
    return chain(
        conv(rf"{source}\.0", f"{target}.deconv"),
        norm(rf"{source}\.1", f"{target}.norm1"),
        conv(rf"{source}\.2", f"{target}.proj"),
        norm(rf"{source}\.3", f"{target}.norm2"),
    )


# ConvTranspose2d weights (in, out, kh, kw) take the same transpose as Conv2d's to the (kh, kw, out, in) kernel.
RULES = chain(
    _backbone_rules(),
    conv(r"patch_embed_mask\.proj", "patch_embed_mask.proj"),
    conv(r"neck\.down_4\.0", "neck.down_4.deconv1"),
    norm(r"neck\.down_4\.1", "neck.down_4.norm1"),
    conv(r"neck\.down_4\.3", "neck.down_4.deconv2"),
    norm(r"neck\.down_4\.4", "neck.down_4.norm2"),
    conv(r"neck\.down_4\.5", "neck.down_4.proj"),
    norm(r"neck\.down_4\.6", "neck.down_4.norm3"),
    conv(r"neck\.down_8\.0", "neck.down_8.deconv"),
    norm(r"neck\.down_8\.1", "neck.down_8.norm1"),
    conv(r"neck\.down_8\.2", "neck.down_8.proj"),
    norm(r"neck\.down_8\.3", "neck.down_8.norm2"),
    conv(r"neck\.down_16\.0", "neck.down_16.proj"),
    norm(r"neck\.down_16\.1", "neck.down_16.norm"),
    conv(r"neck\.down_32\.0", "neck.down_32.down"),
    norm(r"neck\.down_32\.1", "neck.down_32.norm1"),
    conv(r"neck\.down_32\.2", "neck.down_32.proj"),
    norm(r"neck\.down_32\.3", "neck.down_32.norm2"),
    conv(r"head\.convs\.(\d+)\.conv", r"head.convs.\1.conv"),
    conv(r"head\.fusion_conv\.conv", "head.fusion_conv.conv"),
    _up_block(r"head\.up_conv1", "head.up_conv1"),
    _up_block(r"head\.up_conv2", "head.up_conv2"),
    conv(r"head\.conv_seg", "head.conv_seg"),
)
# variant 1 stores these, the forward never reads them
UNUSED_VARIANT1 = (r"backbone\.fc_norm\.(weight|bias)", r"backbone\.head\.(weight|bias)")


def table(config: SegTrimapConfig) -> Table:
    return Table(RULES, UNUSED_VARIANT1 if config.variant == 1 else ())


def parse_mask_scale(text: str) -> float:
    """'1/255' or '1' (also 1/255 as a decimal) -> the factor."""
    if text in MASK_SCALES:
        return MASK_SCALES[text]
    try:
        value = float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    for known in MASK_SCALES.values():
        if abs(value - known) <= 1e-9 * known:
            return known
    raise PortError(f"--mask-scale must be 1/255 or 1, got {text!r}")


def mask_scale_name(scale: float) -> str:
    return next((name for name, value in MASK_SCALES.items() if value == scale), repr(scale))


def trainer_state_dict(checkpoint: Any, *, source: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict with one leading `module.` removed, config record) of a trainer file (or a bare state dict)."""
    record: dict[str, Any] = {}
    if isinstance(checkpoint, Mapping) and not load.is_state_dict(checkpoint):
        if "state_dict" not in checkpoint or not load.is_state_dict(checkpoint["state_dict"]):
            found = sorted(map(str, checkpoint))[:12]
            raise PortError(f"{source}: no 'state_dict' of tensors in this file (top level: {found})")
        record = checkpoint.get("config") or {}
        state_dict = dict(checkpoint["state_dict"])
    elif load.is_state_dict(checkpoint):
        state_dict = dict(checkpoint)
    else:
        raise PortError(f"{source}: not a SegTrimap checkpoint (top level is {type(checkpoint).__name__})")
    prefixed = [k.startswith("module.") for k in state_dict]
    if any(prefixed) and not all(prefixed):
        mixed = sorted(k for k in state_dict if not k.startswith("module."))[:5]
        raise PortError(f"{source}: some keys carry 'module.' and some do not (e.g. {mixed}); refusing a mixed file")
    if all(prefixed):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict, record if isinstance(record, Mapping) else {}


def _shape(state_dict: Mapping[str, np.ndarray], key: str, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise PortError(
            f"{source}: {key} is missing; not a SegTrimap state dict (first keys: {sorted(state_dict)[:6]})"
        )
    return tuple(int(s) for s in np.shape(state_dict[key]))


def infer_config(
    state_dict: Mapping[str, np.ndarray],
    *,
    mask_scale: float,
    num_heads: int | None = None,
    img_size: int | None = None,
    window_size: int | None = None,
    global_every: int | None = None,
    source: str = "checkpoint",
) -> SegTrimapConfig:
    """The `SegTrimapConfig` of a (prefix-free) original state dict, from key names and shapes."""
    backbone_keys = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    try:
        vit = port_vit.infer_config(
            backbone_keys,
            num_heads=num_heads,
            img_size=(img_size, img_size) if img_size else None,
            source=f"{source} (backbone)",
        )
    except ValueError as err:
        raise PortError(str(err)) from None
    patch, dim = vit.patch_size, vit.embed_dim
    if not vit.use_pos_embed:
        side = img_size or ORIGINAL_SIZE
        vit = dataclasses.replace(vit, img_size=(side, side), class_token=False)
    if vit.img_size[0] != vit.img_size[1]:
        raise PortError(f"{source}: the position table is for {vit.img_size}, SegTrimap inputs are square")
    window = window_size or WINDOW_PIXELS // patch
    vit = dataclasses.replace(
        vit, final_norm=False, window_size=window, global_every=global_every or max(vit.depth // 4, 1)
    )
    mask_proj = _shape(state_dict, "patch_embed_mask.proj.weight", source)
    if mask_proj != (dim, 1, patch, patch):
        raise PortError(f"{source}: patch_embed_mask.proj.weight is {mask_proj}, expected {(dim, 1, patch, patch)}")
    neck_dims = (
        _shape(state_dict, "neck.down_4.5.weight", source)[0],
        _shape(state_dict, "neck.down_8.2.weight", source)[0],
        _shape(state_dict, "neck.down_16.0.weight", source)[0],
        _shape(state_dict, "neck.down_32.2.weight", source)[0],
    )
    head_width = _shape(state_dict, "head.fusion_conv.conv.weight", source)[0]
    classes, seg_in = _shape(state_dict, "head.conv_seg.weight", source)[:2]
    factors = {head_width // f: mode for mode, f in UPSAMPLE_FACTORS.items()}
    if seg_in not in factors:
        raise PortError(
            f"{source}: head.conv_seg takes {seg_in} channels; with a head width of {head_width} the upsample mode "
            f"must give {sorted(factors)} ({', '.join(f'{w} -> {m}' for w, m in sorted(factors.items()))})"
        )
    try:
        return SegTrimapConfig(
            backbone=vit,
            neck_dims=neck_dims,
            head_width=head_width,
            upsample=factors[seg_in],
            num_classes=classes,
            mask_scale=mask_scale,
        )
    except ValueError as err:
        raise PortError(f"{source}: {err}") from None


def check_record(record: Mapping[str, Any], config: SegTrimapConfig, *, source: str) -> list[str]:
    """Consistency of the file's config record with what the keys say; returns notes, raises on a contradiction."""
    notes = []
    cls = record.get("class")
    if isinstance(cls, str):
        expected = VARIANT_CLASSES[config.variant]
        other = VARIANT_CLASSES[3 - config.variant]
        name = cls.rsplit(".", 1)[-1]
        if name == other:
            raise PortError(
                f"{source}: the record names {cls}, but the keys are variant {config.variant} ({expected}): "
                f"{'a pos_embed is present' if config.variant == 1 else 'no pos_embed is present'}"
            )
        notes.append(f"record class {cls}")
    head = _record_value(record, "head_params")
    upsample = head.get("upsample") if isinstance(head, Mapping) else None
    if isinstance(upsample, str) and upsample != config.upsample:
        raise PortError(f"{source}: the record says upsample {upsample!r}, conv_seg's width says {config.upsample!r}")
    return notes


def _record_value(record: Mapping[str, Any], name: str) -> Any:
    params = record.get("params")
    entry = params.get(name) if isinstance(params, Mapping) else None
    return entry.get("value") if isinstance(entry, Mapping) else None


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], config: SegTrimapConfig, *, source: str = "checkpoint"
) -> SegTrimap:
    """A filled `SegTrimap` (eval mode) from a prefix-free original state dict, strictly."""
    model = port(state_dict, table(config), pretrained.abstract_model(FAMILY, config), source=source)
    model.eval()
    return model


def convert_checkpoint(
    checkpoint: Any,
    *,
    source: str,
    mask_scale: float,
    num_heads: int | None = None,
    img_size: int | None = None,
    window_size: int | None = None,
    global_every: int | None = None,
) -> Converted:
    state_dict, record = trainer_state_dict(checkpoint, source=source)
    backbone_record = _record_value(record, "backbone_params")
    if num_heads is None and isinstance(backbone_record, Mapping) and isinstance(backbone_record.get("num_heads"), int):
        num_heads = backbone_record["num_heads"]  # the record's constructor value (shapes cannot tell heads)
    if img_size is None and "backbone.pos_embed" not in state_dict and isinstance(backbone_record, Mapping):
        recorded = backbone_record.get("img_size")  # variant 2 has no table to read the input size from
        sides = list(recorded) if isinstance(recorded, list | tuple) else [recorded]
        if sides and all(isinstance(v, int) for v in sides) and len(set(sides)) == 1:
            img_size = sides[0]
    config = infer_config(
        state_dict,
        mask_scale=mask_scale,
        num_heads=num_heads,
        img_size=img_size,
        window_size=window_size,
        global_every=global_every,
        source=source,
    )
    notes = check_record(record, config, source=source)
    model = convert_state_dict(state_dict, config, source=source)
    unused = sorted(k for k in state_dict if any(re.fullmatch(p, k) for p in table(config).ignore))
    info = {
        "container": "trainer checkpoint" if record else "state dict",
        "variant": config.variant,
        "upsample": config.upsample,
        "mask_scale": mask_scale_name(mask_scale),
        "unused_keys": unused,
        "notes": notes,
        "preprocessing": PREPROCESSING.replace(size=config.img_size).to_dict(),
    }
    if record:
        info["original_config"] = json_ready(record)
    print(
        f"{source}: variant {config.variant} ({'learned positions' if config.variant == 1 else 'no positions'}), "
        f"upsample {config.upsample} (logits {config.logits_size()} px at {config.img_size}), "
        f"mask scale {mask_scale_name(mask_scale)}"
    )
    return Converted(model, config, info)


def build_from_mae(mae_file: str, *, preset: str = "huge_448", seed: int = 0) -> Converted:
    """A fresh `preset` SegTrimap (seeded) whose backbone comes from an official MAE pretrain file."""
    source = str(mae_file)
    config = SegTrimapConfig.preset(preset)
    backbone_config: ViTConfig = config.backbone
    state_dict = port_vit.prepare_state_dict(load.unwrap_state_dict(load.read_checkpoint(mae_file), source=source))
    note = {}
    if backbone_config.use_pos_embed:
        if "pos_embed" not in state_dict:
            raise PortError(f"{source}: no pos_embed; the {preset} preset (variant 1) needs one")
        grid = backbone_config.grid_size
        before = state_dict["pos_embed"].shape[1]
        prefix = int("cls_token" in state_dict)
        if before != prefix + grid[0] * grid[1]:
            state_dict = {**state_dict, "pos_embed": port_vit.resample_pos_embed(state_dict["pos_embed"], grid, prefix)}
            note = {"pos_embed_resampled": f"{before} -> {state_dict['pos_embed'].shape[1]} slots, torch bicubic"}
    else:
        state_dict = {k: v for k, v in state_dict.items() if k not in ("pos_embed", "cls_token")}
        note = {"pos_embed": "not used (variant 2)"}
    backbone, _ = port_vit.convert_state_dict(state_dict, backbone_config, source=source)
    model = SegTrimap(config, rngs=nnx.Rngs(seed))
    values = pretrained.stored_values(model)
    values |= {f"backbone.{k}": v for k, v in pretrained.stored_values(backbone).items()}
    model = pretrained.fill(pretrained.abstract_model(FAMILY, config), values)
    info = {
        "container": "MAE backbone (untrained neck and head)",
        "preset": preset,
        "seed": seed,
        "mask_scale": mask_scale_name(config.mask_scale),
        "ignored_keys": port_vit.ignored_keys(state_dict, backbone_config),
        **note,
        "preprocessing": PREPROCESSING.replace(size=config.img_size).to_dict(),
    }
    return Converted(model, config, info)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("segtrimap")
    group.add_argument(
        "--mask-scale",
        help="with --src (required): the mask values the checkpoint was trained on: 1/255 (ToTensor on {0,1}; every "
        "checkpoint up to 2025-05-12, the README's 020.pth included) or 1",
    )
    group.add_argument("--mae", help="official MAE pretrain file: an untrained SegTrimap on it (instead of --src)")
    group.add_argument("--preset", choices=sorted(PRESETS), help="with --mae: the model to build (default huge_448)")
    group.add_argument("--seed", type=int, default=0, help="with --mae: neck / head initialisation seed")
    group.add_argument("--num-heads", type=int, help="attention heads (default: 16 of 80 for width 1280, else 64 wide)")
    group.add_argument("--img-size", type=int, help="variant 2 (no position table): input side (default 448)")
    group.add_argument("--window-size", type=int, help="local attention window in tokens (default 224 / patch)")
    group.add_argument("--global-every", type=int, help="a global block every K blocks (default depth // 4)")


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace) -> Converted:
    """`port/convert.py segtrimap` entry point: `checkpoint` is the `--src` object, or None with `--mae`."""
    mae = getattr(args, "mae", None)
    if mae is not None:
        if checkpoint is not None:
            raise PortError(f"{source}: give either --src (a trained checkpoint) or --mae (MAE backbone), not both")
        if args.mask_scale is not None and parse_mask_scale(args.mask_scale) != 1.0:
            raise PortError("--mae builds a model for jaxmatte training, which feeds {0, 1} masks (mask scale 1)")
        return build_from_mae(mae, preset=args.preset or "huge_448", seed=args.seed)
    if checkpoint is None:
        raise PortError("segtrimap: nothing to convert; give --src CHECKPOINT --mask-scale 1/255|1, or --mae FILE")
    if args.mask_scale is None:
        raise PortError(
            f"{source}: --mask-scale is required: the file does not record whether its masks were {{0, 1/255}} "
            "(every checkpoint up to 2025-05-12, the README's 020.pth included: --mask-scale 1/255) or {0, 1} "
            "(--mask-scale 1); a wrong scale silently ruins the outputs"
        )
    if args.preset is not None:
        raise PortError(f"{source}: --preset only applies with --mae (--src is read from its shapes)")
    return convert_checkpoint(
        checkpoint,
        source=source,
        mask_scale=parse_mask_scale(args.mask_scale),
        num_heads=args.num_heads,
        img_size=args.img_size,
        window_size=args.window_size,
        global_every=args.global_every,
    )


CONVERTERS = (
    Converter(
        kind=KIND,
        help="SegTrimap trainer checkpoint (--src FILE --mask-scale 1/255|1), or --mae FILE for an untrained model",
        add_arguments=add_arguments,
        convert=convert,
        needs_src=False,
        allowed_classes=(CROSS_ENTROPY,),
    ),
)

__all__ = [
    "CONVERTERS",
    "PREPROCESSING",
    "RULES",
    "build_from_mae",
    "convert",
    "convert_checkpoint",
    "infer_config",
    "parse_mask_scale",
    "trainer_state_dict",
]
