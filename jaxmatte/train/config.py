"""Experiment configs: the shared defaults every system's recipe starts from, reading config files, overrides, and the
model config of a run.

A recipe is ``configs/<family>.py`` with ``get_config(variant)`` returning `base_config(family)` changed where the
recipe differs (and the sections only its family reads, e.g. TSR's ``teacher``). ``config.model`` is generated from
the family's config dataclass: every field is a placeholder (None = the preset's value), dataclass fields become
nested sections, so ``--config.model.backbone.depths=[2,2,6,2]`` reaches `SwinConfig.depths` with no bridge code.
`model_config` merges the non-None entries over ``config.model.preset`` and lets the system finish it.

    config = load_config("configs/tsr.py:demo", ["optim.lr=3e-4", "model.backbone.depths=[1,1,1,1]"])
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
from ml_collections import config_dict

from jaxmatte import registry
from jaxmatte.data.transforms import Augment

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
RUN_FIELDS = ("family", "preset", "backbone_weights", "init_from")  # config.model entries that are not model fields


# ---------------------------------------------------------------------------------------------------------------------
# Defaults


def base_config(family: str) -> ml_collections.ConfigDict:
    """Every field the shared loop understands, with DIS-style defaults, and the family's ``model`` section."""
    system = registry.system(family)
    c = ml_collections.ConfigDict()
    c.name = family
    c.variant = "default"
    c.seed = 0
    c.model = overrides_section(system.config_cls)
    c.model.family = family
    c.model.preset = "base"
    c.model.backbone_weights = ""  # a converted backbone directory (ImageNet / pretraining weights) for a fresh run
    c.model.init_from = ""  # a directory of this family (release or export) whose weights start a fresh run

    c.data = ml_collections.ConfigDict()
    c.data.train_roots = ["DIS5K/DIS-TR"]
    c.data.val_roots = ["DIS5K/DIS-VD"]
    c.data.train_select = ""  # a slice of the sorted training records, e.g. "0:20"; "" = all
    c.data.val_select = ""  # the same for validation, e.g. "20:27" (two splits of one folder)
    c.data.trimap_dir = ""  # trimaps by stem; "" = the roots' trimaps/ or trimap/ folders, when present
    c.data.input_mask_dir = ""  # given input masks by stem (systems with a mask input); "" = derived by the system
    c.data.val_region = "whole"  # matting metrics over the "whole" image or the trimaps' "unknown" region
    c.data.synthetic = "dis"  # kind of the embedded data written to `synthetic_root`: dis | matting
    c.data.synthetic_root = ""  # non-empty: write synthetic data there and train / validate on it
    c.data.synthetic_train = 96
    c.data.synthetic_val = 16
    c.data.synthetic_size = (192, 320)
    c.data.size = 1024
    c.data.policy = "letterbox"
    c.data.resample = "cv2_linear"  # image resampling onto the canvas: cv2_linear | pil_bilinear
    c.data.mask_resample = "nearest"  # ground truth onto the canvas: nearest (binary masks) | linear (soft alpha)
    c.data.augment = True
    c.data.augmentation = overrides_section(Augment)  # None: `Augment`'s defaults
    c.data.workers = 0
    # training batches prepared ahead by as many threads (at most 16; 0: none, read in the loop); grain's default
    # (500 batches, 16 threads) holds hundreds of full-size batches in memory and competes with the step for CPU
    c.data.prefetch = 4
    c.data.val_batch_size = 1
    c.data.val_limit = 0  # > 0: validate on the first n images only

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4
    c.optim.schedule = "cosine"  # per epoch: cosine (to eta_min) | multistep (x gamma at each milestone epoch)
    c.optim.milestones = ()
    c.optim.gamma = 0.1
    c.optim.eta_min = 1e-6
    c.optim.warmup_epochs = 0
    c.optim.weight_decay = 1e-4
    c.optim.weight_decay_on = "all"  # all | matrices (not biases, norms, position embeddings, tokens)
    c.optim.layer_decay = 1.0  # < 1: layer-wise lr decay (systems with System.lr_layers)
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.clip_norm = 1.0  # <= 0: no clipping
    c.optim.clip_value = 0.0  # > 0: clamp every gradient element to +-clip_value first (before clip_norm)
    c.optim.epochs = 70
    c.optim.batch_size = 2
    c.optim.accum_steps = 4
    # True: a step whose loss, gradient norm or resulting state is non-finite changes nothing (parameters, optimizer
    # state, BatchNorm statistics) and is counted; False: such steps are applied as computed (debugging only)
    c.optim.skip_nonfinite = True
    c.optim.drop_partial_accumulation = False  # True: discard leftover micro-batches at each epoch end

    c.train = ml_collections.ConfigDict()
    c.train.steps = 0  # > 0: stop after this many micro-batches instead of `optim.epochs` epochs
    c.train.compute_dtype = "auto"  # auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
    c.train.log_every = 10
    c.train.val_every = 0  # micro-batches between validations; 0: every epoch
    c.train.val_at_start = False
    c.train.checkpoint_every = 0  # micro-batches between checkpoints; 0: every epoch
    c.train.max_to_keep = 2
    c.train.max_nonfinite_steps = 20  # stop with an error after this many non-finite steps in a row (checked when
    # logging, every train.log_every steps); 0: never
    c.train.best_metric = system.best_metric
    c.train.best_mode = system.best_mode
    c.train.sample_count = 4  # validation images in the samples PNG
    c.train.progress = True
    return c


def overrides_section(config_cls: type) -> ml_collections.ConfigDict:
    """Placeholders for every field of the dataclass `config_cls` (nested sections for dataclass fields; optional
    dataclass fields, which the system's `configure` hook fills, are left out)."""
    section = ml_collections.ConfigDict()
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        hint = hints[f.name]
        arms = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
        target = arms[0] if len(arms) == 1 else None
        if dataclasses.is_dataclass(target):
            if not _is_union(hint):
                section[f.name] = overrides_section(target)
            continue
        origin = typing.get_origin(target) or target
        section[f.name] = config_dict.placeholder(origin if origin in (int, float, bool, str, tuple) else object)
    return section


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def merge_overrides(base: Any, section: ml_collections.ConfigDict) -> Any:
    """`base` with the non-None entries of `section` (nested for dataclass fields); lists become tuples."""
    changes = {}
    for f in dataclasses.fields(base):
        if f.name not in section:
            continue
        value = section[f.name]
        if isinstance(value, ml_collections.ConfigDict):
            merged = merge_overrides(getattr(base, f.name), value)
            if merged != getattr(base, f.name):
                changes[f.name] = merged
        elif value is not None:
            changes[f.name] = _tuples(value)
    return dataclasses.replace(base, **changes) if changes else base


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list | tuple) else value


def model_config(config: ml_collections.ConfigDict) -> Any:
    """The frozen model config of a run: the preset, the non-None ``config.model`` entries, then the system's
    `configure` hook. A model with an `img_size` field takes ``data.size`` unless it is set."""
    system = registry.system(config.model.family)
    result = merge_overrides(system.config_cls.preset(config.model.preset), config.model)
    if "img_size" in {f.name for f in dataclasses.fields(result)} and config.model.get("img_size") is None:
        result = dataclasses.replace(result, img_size=int(config.data.size))
    if system.configure is not None:
        result = system.configure(result, config)
    return result


def customised_backbone(config: ml_collections.ConfigDict) -> bool:
    """Whether the config changes the preset's backbone architecture (for which no pretrained weights exist)."""
    backbone = config.model.get("backbone")
    if not isinstance(backbone, ml_collections.ConfigDict):
        return False
    return any(value is not None for key, value in backbone.items() if key != "drop_path_rate")


# ---------------------------------------------------------------------------------------------------------------------
# Files and overrides


def resolve_config_path(path: str) -> Path:
    """`path` as given, else inside ``configs/`` (with or without ``.py``)."""
    candidates = [Path(path), CONFIG_DIR / path, CONFIG_DIR / f"{path}.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"config {path!r} not found (looked at {', '.join(map(str, candidates))})")


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """``path.py[:variant]`` -> the config file's ``get_config(variant)``, then ``a.b=value`` overrides."""
    path, _, variant = spec.partition(":")
    file = resolve_config_path(path)
    module_spec = importlib.util.spec_from_file_location(f"_jaxmatte_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(variant) if variant else module.get_config()
    for item in overrides:
        apply_override(config, item)
    return config


def _parse_value(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Set ``a.b=value`` (a leading ``config.`` is ignored). The value is a Python literal or a bare string; it must
    fit the field's type (ints widen to floats, lists become tuples where the field is a tuple)."""
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"override {item!r} is not key=value")
    parts = key.strip().removeprefix("--").removeprefix("config.").split(".")
    parent = config
    for part in parts[:-1]:
        if part not in parent or not isinstance(parent[part], ml_collections.ConfigDict):
            raise KeyError(f"override {item!r}: no section {part!r}")
        parent = parent[part]
    name = parts[-1]
    if name not in parent:
        raise KeyError(f"override {item!r}: unknown field {name!r}; known: {sorted(parent.keys())}")
    if isinstance(parent[name], ml_collections.ConfigDict):
        raise KeyError(f"override {item!r}: {name!r} is a section; set one of {sorted(parent[name].keys())}")
    field_type = parent.get_ref(name).get_type()
    value = raw if field_type is str else _parse_value(raw)
    if field_type is tuple and isinstance(value, list):
        value = _tuples(value)
    if field_type is list and isinstance(value, tuple):
        value = list(value)
    if field_type is bool and not isinstance(value, bool):
        raise TypeError(f"override {item!r}: {name} needs True or False")
    if field_type is int and isinstance(value, bool):
        raise TypeError(f"override {item!r}: {name} needs an integer")
    try:
        parent[name] = value
    except TypeError as err:
        raise TypeError(f"override {item!r}: {err}") from None


def default_workdir(config: ml_collections.ConfigDict) -> Path:
    return Path("runs") / f"{config.name}-{config.variant}"


# ---------------------------------------------------------------------------------------------------------------------
# Resuming with another config


def flat_settings(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of a nested dict (a config's JSON); lists become tuples."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = _tuples(value)
    return flat


def config_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The flattened settings of `config`, as its ``config.json`` holds them."""
    return flat_settings(json.loads(config.to_json_best_effort()))


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key old -> new`` for every flattened setting that differs (missing on one side: ``<none>``)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<none>"), new.get(key, "<none>")
        if before != after:
            lines.append(f"{key} {before!r} -> {after!r}")
    return lines


def config_with(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with the flattened `values` (e.g. an older ``config.json``) set where the field exists and
    the value fits."""
    copy = config.copy_and_resolve_references()
    for key, value in values.items():
        *parents, name = key.split(".")
        parent = copy
        try:
            for part in parents:
                parent = parent[part]
            if name not in parent or isinstance(parent[name], ml_collections.ConfigDict):
                continue
            if isinstance(value, tuple) and parent.get_ref(name).get_type() is list:
                value = list(value)
            parent[name] = value
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return copy


def model_differences(config: ml_collections.ConfigDict, previous: dict[str, Any]) -> list[str]:
    """The model fields in which `config` differs from the flattened settings `previous` of an earlier run (the
    resolved model configs compared, so a changed preset or ``data.size`` counts where it changes the model)."""
    old_family, family = previous.get("model.family"), config.model.family
    if old_family != family:
        return [f"model.family {old_family!r} -> {family!r}"]
    try:
        old = dataclasses.asdict(model_config(config_with(config, previous)))
        new = dataclasses.asdict(model_config(config))
    except Exception:  # an old config this code cannot resolve: compare the raw model section
        now = config_settings(config)
        keys = {k for k in set(previous) | set(now) if k.startswith("model.")}
        keys -= {f"model.{name}" for name in ("backbone_weights", "init_from")}
        return changed_settings({k: previous.get(k) for k in keys}, {k: now.get(k) for k in keys})
    old, new = flat_settings(old, "model."), flat_settings(new, "model.")
    return changed_settings(old, new)
