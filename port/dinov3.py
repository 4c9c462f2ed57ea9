"""DINOv3 ViT weights -> jaxmatte family `dinov3`.

Two key layouts, told apart by their keys:

- timm `Eva` (`vit_*_patch16_dinov3[_qkvb]`): `reg_token`, `blocks.N.gamma_{1,2}`, optional `attn.q_bias`/`attn.v_bias`
  (-> qkv bias [q, 0, v]), SwiGLU as `mlp.fc1_g`/`mlp.fc1_x`/`mlp.fc2`; a `head.*` classifier is ignored.
- official Meta (`dinov3_vit*16_pretrain_*.pth`): `storage_tokens`, `blocks.N.ls{1,2}.gamma`, `attn.qkv.bias` multiplied
  by `attn.qkv.bias_mask` (the structural mask ones/zeros/ones when the mask is missing or non-finite), SwiGLU as
  `mlp.w1`/`mlp.w2`/`mlp.w3`, `rope_embed.periods` compared with the formula (max relative deviation in the info),
  `mask_token` and `local_cls_norm.*` ignored.

Containers: bare state dict, `{'model': ...}` (and the other wrappers of `port.load`), `module.` prefixes, and a
Dinov3_matting whole-model checkpoint (`model_state_dict`, backbone under `encoder.dinov3.`, other keys skipped).

Size (embed dim, depth, MLP kind and width, registers, qkv bias, layer scale) is inferred from the keys; heads = D/64.
With `--preset` the inferred architecture must agree (an all-zero qkv bias is dropped for a preset without one).

RoPE periods: official files store them rounded to bf16. Faithful mode (the default for files that carry periods)
puts the stored values into the config, so the converted model reproduces Meta's code; `--no-faithful-periods` uses
the formula θ^(2k/(d/2)) in float32, as timm does. timm files have no periods and always use the formula.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxmatte.backbones.dinov3 import PRESETS, DinoV3Config, rope_formula_periods
from jaxmatte.pretrained import abstract_model
from port import load
from port.converter import Converted, Converter
from port.table import PortError, Rule, Table, block_count, chain, conv, keys_matching, linear, norm, port

KIND = "dinov3"
WHOLE_MODEL_PREFIX = "encoder.dinov3."
HEAD_DIM = 64
PERIODS_KEY = "rope_embed.periods"
ARCHITECTURE_FIELDS = (
    "embed_dim",
    "depth",
    "num_heads",
    "patch_size",
    "mlp",
    "mlp_hidden",
    "num_register_tokens",
    "layer_scale",
    "qkv_bias",
)

_B = r"blocks\.(\d+)\."
_T = r"blocks.\1."


def _block_rules(gamma: str, mlp: dict[str, str]) -> list[Rule]:
    """Rules shared by both layouts; `gamma` is a regex whose group 2 is 1 or 2, `mlp` maps source -> target names."""
    return chain(
        norm(_B + "norm1", _T + "norm1"),
        norm(_B + "norm2", _T + "norm2"),
        linear(_B + r"attn\.qkv", _T + "attn.qkv"),
        linear(_B + r"attn\.proj", _T + "attn.proj"),
        [Rule(_B + gamma, _T + r"gamma_\2")],
        *[linear(_B + rf"mlp\.{src}", _T + f"mlp.{dst}") for src, dst in mlp.items()],
    )


def _stem_rules(register_key: str) -> list[Rule]:
    return chain(
        [Rule("cls_token", "cls_token"), Rule(register_key, "reg_token")],
        conv(r"patch_embed\.proj", "patch_embed.proj"),
        norm("norm", "norm"),
    )


TIMM_TABLE = Table(
    rules=chain(
        _stem_rules("reg_token"),
        _block_rules(r"gamma_([12])", {"fc1": "fc1", "fc2": "fc2", "fc1_g": "fc1_g", "fc1_x": "fc1_x"}),
    ),
    ignore=(r"head\..*",),
)

OFFICIAL_TABLE = Table(
    rules=chain(
        _stem_rules("storage_tokens"),
        _block_rules(r"ls([12])\.gamma", {"fc1": "fc1", "fc2": "fc2", "w1": "fc1_g", "w2": "fc1_x", "w3": "fc2"}),
    ),
    ignore=("mask_token", r"local_cls_norm\..*", _B + r"attn\.qkv\.bias_mask"),
)


# ------------------------------------------------------------------------------------------------ state dict parsing


def backbone_state_dict(checkpoint: Any, *, source: str = "checkpoint") -> dict[str, np.ndarray]:
    """The backbone's state dict from any accepted container (whole-model files: keys under `encoder.dinov3.`)."""
    state_dict = load.unwrap_state_dict(checkpoint, source=source)
    if any(k.startswith(WHOLE_MODEL_PREFIX) for k in state_dict):
        state_dict = load.select_prefix(state_dict, WHOLE_MODEL_PREFIX)
    return state_dict


def detect_layout(state_dict: Mapping[str, np.ndarray]) -> str:
    """'official' (Meta names) or 'timm'."""
    official = re.compile(r"storage_tokens|rope_embed\.periods|blocks\.\d+\.(ls[12]\.gamma|attn\.qkv\.bias_mask)")
    return "official" if any(official.fullmatch(k) for k in state_dict) else "timm"


def _first(state_dict: Mapping[str, np.ndarray], pattern: str) -> np.ndarray | None:
    keys = keys_matching(state_dict, pattern)
    return np.asarray(state_dict[keys[0]]) if keys else None


def _merge_qkv_bias(state_dict: dict[str, np.ndarray], layout: str, info: dict[str, Any]) -> list[str]:
    """Rewrite the qkv bias of every block as one (3D,) `attn.qkv.bias` with a zero k third (in place)."""
    problems: list[str] = []
    if layout == "timm":
        for q_key in keys_matching(state_dict, _B + r"attn\.q_bias"):
            v_key = q_key.replace(".q_bias", ".v_bias")
            q, v = state_dict[q_key], state_dict.get(v_key)
            if v is None or q.shape != v.shape or q.ndim != 1:
                continue  # left in place: reported by the table as unexpected / missing
            del state_dict[q_key], state_dict[v_key]
            state_dict[q_key.replace(".q_bias", ".qkv.bias")] = np.concatenate([q, np.zeros_like(q), v])
        return problems
    structural_blocks = 0
    for bias_key in keys_matching(state_dict, _B + r"attn\.qkv\.bias"):
        bias = np.asarray(state_dict[bias_key], np.float32)
        if bias.ndim != 1 or bias.shape[0] % 3:
            continue  # shape problem reported by the table
        third = bias.shape[0] // 3
        structural = np.concatenate([np.ones(third), np.zeros(third), np.ones(third)]).astype(np.float32)
        mask = state_dict.pop(bias_key + "_mask", None)
        if mask is None or mask.shape != bias.shape or not np.isfinite(mask).all():
            mask = structural
            structural_blocks += 1
        effective = bias * mask
        if np.any(effective[third : 2 * third] != 0):
            problems.append(f"{bias_key}: non-zero k bias after bias_mask; the model keeps the k bias at zero")
        state_dict[bias_key] = effective
    info["qkv_bias_mask"] = "structural" if structural_blocks else "stored"
    return problems


def _lookup_architecture(state_dict: Mapping[str, np.ndarray], layout: str) -> DinoV3Config:
    """The config the keys describe (default numerics, formula periods)."""
    weight = state_dict.get("patch_embed.proj.weight")
    if weight is None or np.ndim(weight) != 4:
        raise PortError("cannot infer the DINOv3 size: no 4-D patch_embed.proj.weight in the checkpoint")
    dim, patch = int(weight.shape[0]), int(weight.shape[-1])
    if dim % HEAD_DIM:
        raise PortError(f"patch_embed.proj.weight has width {dim}, not a multiple of the head dim {HEAD_DIM}")
    depth = block_count(state_dict, "blocks")
    registers = state_dict.get("storage_tokens" if layout == "official" else "reg_token")
    gate = _first(state_dict, _B + (r"mlp\.w1\.weight" if layout == "official" else r"mlp\.fc1_g\.weight"))
    fc1 = gate if gate is not None else _first(state_dict, _B + r"mlp\.fc1\.weight")
    hidden = int(fc1.shape[0]) if fc1 is not None and fc1.ndim == 2 else 4 * dim
    mlp = "swiglu" if gate is not None else "gelu"
    ratio = hidden / dim
    if int(dim * ratio) != hidden:
        ratio = (hidden + 0.5) / dim
    gamma = r"ls1\.gamma" if layout == "official" else r"gamma_1"
    return DinoV3Config(
        embed_dim=dim,
        depth=depth,
        num_heads=dim // HEAD_DIM,
        patch_size=patch,
        mlp_ratio=ratio,
        mlp=mlp,
        qkv_bias=bool(keys_matching(state_dict, _B + r"attn\.qkv\.bias")),
        num_register_tokens=int(registers.shape[1]) if registers is not None and registers.ndim == 3 else 0,
        layer_scale=bool(keys_matching(state_dict, _B + gamma)),
    )


def _architecture(config: DinoV3Config) -> dict[str, Any]:
    return {name: getattr(config, name) for name in ARCHITECTURE_FIELDS}


# ------------------------------------------------------------------------------------------------------- conversion


def convert_state_dict_with_info(
    state_dict: Mapping[str, np.ndarray],
    config: DinoV3Config | None = None,
    *,
    source: str = "checkpoint",
    faithful_periods: bool | None = None,
):
    """(model, config, info) from a bare backbone state dict in either layout.

    `config`: None = inferred from the keys; otherwise its architecture must match the keys (numerics such as
    `rope_rescale` and `drop_path_rate` come from it). `faithful_periods`: None = use stored `rope_embed.periods`
    when the file has them; True/False forces it.
    """
    state_dict = {k: np.asarray(v) for k, v in state_dict.items()}
    layout = detect_layout(state_dict)
    info: dict[str, Any] = {"layout": layout}
    problems = _merge_qkv_bias(state_dict, layout, info)
    stored_periods = state_dict.pop(PERIODS_KEY, None)
    found = _lookup_architecture(state_dict, layout)

    if config is None:
        config = found
    else:
        qkv_keys = keys_matching(state_dict, _B + r"attn\.qkv\.bias")
        if found.qkv_bias and not config.qkv_bias and all(not state_dict[k].any() for k in qkv_keys):
            for key in qkv_keys:
                del state_dict[key]
            found = dataclasses.replace(found, qkv_bias=False)
            info["qkv_bias"] = "all zero, dropped"
        wanted, have = _architecture(config), _architecture(found)
        differences = [
            f"{k}: requested {wanted[k]!r}, checkpoint has {have[k]!r}" for k in wanted if wanted[k] != have[k]
        ]
        if differences:
            raise PortError(
                f"{source}: the checkpoint does not match the requested DINOv3 config (omit the preset to take the "
                "architecture from the file):\n  " + "\n  ".join(differences)
            )

    if stored_periods is not None:
        stored = np.asarray(stored_periods, np.float64).reshape(-1)
        formula = rope_formula_periods(config.head_dim, config.rope_theta).astype(np.float64)
        if stored.shape != formula.shape or not np.isfinite(stored).all() or (stored <= 0).any():
            problems.append(
                f"{PERIODS_KEY} {tuple(np.shape(stored_periods))}: expected {formula.shape[0]} positive finite periods"
            )
        else:
            info["rope_periods_max_rel_deviation"] = float(np.max(np.abs(stored - formula) / formula))
            if faithful_periods is None or faithful_periods:
                config = dataclasses.replace(config, rope_periods=tuple(float(np.float32(p)) for p in stored))
                info["rope_periods"] = "stored (faithful)"
    if faithful_periods and stored_periods is None:
        info["rope_periods_note"] = "faithful periods requested, but the checkpoint stores none"
    info.setdefault("rope_periods", "formula" if config.rope_periods is None else "from the requested config")

    table = OFFICIAL_TABLE if layout == "official" else TIMM_TABLE
    try:
        model = port(state_dict, table, abstract_model("dinov3", config), source=source)
    except PortError as err:
        if problems:
            raise PortError(str(err) + "\n  " + "\n  ".join(problems)) from None
        raise
    if problems:
        raise PortError(f"{source}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return model, config, info


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    config: DinoV3Config | None = None,
    *,
    source: str = "checkpoint",
    faithful_periods: bool | None = None,
):
    """(model, config) from a bare backbone state dict; see `convert_state_dict_with_info`."""
    model, config, _ = convert_state_dict_with_info(
        state_dict, config, source=source, faithful_periods=faithful_periods
    )
    return model, config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("DINOv3")
    group.add_argument("--preset", choices=sorted(PRESETS), help="expected architecture; checked against the keys")
    group.add_argument(
        "--faithful-periods",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the RoPE periods stored in an official file (default: yes when the file has them)",
    )


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace):
    state_dict = backbone_state_dict(checkpoint, source=source)
    preset = getattr(args, "preset", None)
    config = DinoV3Config.preset(preset) if preset else None
    model, config, info = convert_state_dict_with_info(
        state_dict, config, source=source, faithful_periods=getattr(args, "faithful_periods", None)
    )
    if preset:
        info["preset"] = preset
    return Converted(model, config, info)


CONVERTERS = (
    Converter(
        kind="dinov3",
        help="DINOv3 ViT (timm `Eva` or official Meta layout)",
        add_arguments=add_arguments,
        convert=convert,
        timm_resizing=True,
    ),
)
