"""Deep Image Matting teacher and Matting Prune students -> `dim` / `dim_student`.

    python port/convert.py dim --src BEST_checkpoint.tar --out ckpt/dim_teacher
    python port/convert.py dim --src BEST_pruned.tar --cfg pruned.tar --out ckpt/dim_pruned

The released teacher (and every checkpoint the original trainers write) is a pickled whole model inside a dict with
epoch / optimizer, in the zip or the legacy container; `port.pickled` extracts its tensors without importing or running
anything. Plain state dicts (weights-only readable) convert too. The widths (the pruning cfg) are read from the conv
shapes; the ``feature2..5`` projections mark a pruned student. `--cfg` checks them against a ``pruned.tar``.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte import pretrained
from jaxmatte.models.dim.modeling import UNIT_NAMES, DIMConfig, DIMStudentConfig
from jaxmatte.preprocessing import Preprocessing
from port.converter import Converted, Converter, json_ready
from port.table import PortError, Rule, Table, batch_norm, chain, conv, conv_kernel, port

KIND = "dim"
TEACHER_CLASS, STUDENT_CLASS = "models.DIMModel", "models.DIMModel_student"
# the original test: the whole image at its own resolution (no padding), known regions forced, PNG rounded
PREPROCESSING = Preprocessing(resize="native", size=1, mask_resample="nearest", quantization="round")


def _unit_rules(source: str, target: str) -> list[Rule]:
    return chain(
        conv(rf"{source}\.cbr_unit\.0", f"{target}.conv"), batch_norm(rf"{source}\.cbr_unit\.1", f"{target}.bn")
    )


RULES = chain(
    _unit_rules(r"down(\d)\.conv(\d)", r"down\1.conv\2"),
    _unit_rules(r"up(\d)\.conv", r"up\1.conv"),
)
STUDENT_RULES = chain(
    RULES,
    [Rule(r"feature(\d)\.weight", r"feature\1.kernel", conv_kernel)],
    [Rule(r"feature_trans(\d)\.0\.weight", r"feature_trans\1.conv.kernel", conv_kernel)],
    batch_norm(r"feature_trans(\d)\.1", r"feature_trans\1.bn"),
)
IGNORE = (r".*num_batches_tracked",)


def _weight_key(name: str) -> str:
    return f"{name}.cbr_unit.0.weight"


def infer_config(state_dict: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> DIMConfig:
    """Teacher or student config from the conv shapes."""
    missing = [_weight_key(name) for name in UNIT_NAMES if _weight_key(name) not in state_dict]
    if missing:
        raise PortError(f"{source}: not a DIM state dict: missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    widths = tuple(int(np.shape(state_dict[_weight_key(name)])[0]) for name in UNIT_NAMES)
    student = any(key.startswith("feature") for key in state_dict)
    try:
        if not student:
            return DIMConfig(widths=widths)
        projections = [f"feature{level}.weight" for level in range(2, 6)]
        absent = [key for key in projections if key not in state_dict]
        if absent:
            raise PortError(f"{source}: a student checkpoint without {absent}")
        return DIMStudentConfig(
            widths=widths, projection_widths=tuple(int(np.shape(state_dict[k])[0]) for k in projections)
        )
    except ValueError as err:
        raise PortError(f"{source}: {err}") from None


def convert_state_dict(state_dict: Mapping[str, np.ndarray], *, source: str = "checkpoint") -> Converted:
    config = infer_config(state_dict, source=source)
    student = isinstance(config, DIMStudentConfig)
    family = "dim_student" if student else "dim"
    table = Table(STUDENT_RULES if student else RULES, IGNORE)
    model = port(state_dict, table, pretrained.abstract_model(family, config), source=source)
    model.eval()
    return Converted(model, config, {"widths": list(config.widths), "preprocessing": PREPROCESSING.to_dict()})


def read_source(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict, notes) of a pickled-model checkpoint or a plain state dict, never running pickled code."""
    from port import load, pickled

    if path.suffix == ".safetensors":
        return load.unwrap_state_dict(load.read_checkpoint(path), source=str(path)), {"container": "safetensors"}
    try:
        checkpoint = pickled.read_module_checkpoint(path)
    except load.CheckpointError as refused:
        try:  # a plain (or wrapped) state dict needs no module records
            state_dict = load.unwrap_state_dict(load.read_checkpoint(path), source=str(path))
        except load.CheckpointError:
            raise refused from None
        return dict(state_dict), {"container": "state dict"}
    notes = {
        "container": "pickled model",
        "class": checkpoint.class_name,
        "data_parallel": checkpoint.data_parallel,
        "saved_in_training_mode": checkpoint.training,
        "metadata": json_ready(checkpoint.metadata),
    }
    return checkpoint.state_dict, notes


def check_cfg(config: DIMConfig, cfg_path: Path, *, source: str) -> list[int]:
    """The cfg of a ``pruned.tar`` / ``pruned_cfg.json``, checked against the converted widths (up1 excluded:
    the original ignores its entry)."""
    from jaxmatte.models.dim.pruning import load_cfg

    cfg = list(load_cfg(cfg_path))
    if cfg[:-1] != list(config.widths)[:-1]:
        diff = {UNIT_NAMES[i]: (cfg[i], config.widths[i]) for i in range(len(cfg) - 1) if cfg[i] != config.widths[i]}
        raise PortError(f"{source}: widths differ from {cfg_path} (cfg, checkpoint): {diff}")
    return cfg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", type=Path, help="pruned.tar (or pruned_cfg.json) to check a student's widths against")


def convert(checkpoint: Any, *, source: str, args: argparse.Namespace) -> Converted:
    del checkpoint  # read here: the files hold pickled modules
    state_dict, notes = read_source(Path(source))
    converted = convert_state_dict(state_dict, source=source)
    config = converted.config
    expected = STUDENT_CLASS if isinstance(config, DIMStudentConfig) else TEACHER_CLASS
    if notes.get("class", expected) != expected:
        raise PortError(f"{source}: the pickled model is a {notes['class']}, but its keys are those of a {expected}")
    if args.cfg is not None:
        if not isinstance(config, DIMStudentConfig) and not config.pruned:
            raise PortError(f"{source}: --cfg checks a pruned student, but this is a full-width model")
        check_cfg(config, args.cfg, source=source)
        notes["cfg_checked"] = str(args.cfg)
    what = "pruned student" if isinstance(config, DIMStudentConfig) else "teacher" if not config.pruned else "DIM"
    params = sum(int(np.prod(v.shape)) for k, v in state_dict.items() if not k.endswith("num_batches_tracked"))
    print(f"{source}: {what}, widths {list(config.widths)}, {params:,} stored values")
    converted.info.update(notes)
    return converted


CONVERTERS = (
    Converter(
        kind=KIND,
        help="Deep Image Matting teacher or Matting Prune student (pickled-model .tar/.pth, or a state dict)",
        add_arguments=add_arguments,
        convert=convert,
        reads_src=True,
    ),
)

__all__ = ["CONVERTERS", "PREPROCESSING", "RULES", "STUDENT_RULES", "convert", "convert_state_dict", "infer_config"]
