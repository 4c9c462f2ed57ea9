"""Channel pruning of a BN-sparsity-trained DIM (spec §6.3), and the size reports of teacher and students.

The |gamma| of the 13 encoder BNs and of the 5 decoder BNs are pooled per part; each part's threshold is its sorted
values at index ``int(count * rate)``; a layer keeps the channels whose |gamma| is strictly above its part's threshold.
The decoder widths that are unpooled with encoder indices are then raised to match (`UNPOOL_TIES`, by max). Only the
widths carry over: the pruned student starts from a fresh initialisation. up1's count is reported but the student
always outputs one alpha channel.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte.models.dim.modeling import (
    BLOCK_UNITS,
    DECODER_UNITS,
    ENCODER_UNITS,
    UNIT_NAMES,
    UNPOOL_TIES,
    check_widths,
)

CFG_FILE = "pruned_cfg.json"


@dataclasses.dataclass(frozen=True)
class PruneResult:
    widths: tuple[int, ...]  # the 18 student widths (up1 = 1)
    kept: tuple[int, ...]  # channels above the threshold per layer, before the unpooling ties
    original: tuple[int, ...]  # the layers' widths before pruning
    thresholds: tuple[float, float]  # encoder, decoder
    rate: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "cfg": list(self.widths),
            "kept": {name: int(k) for name, k in zip(UNIT_NAMES, self.kept, strict=True)},
            "original": list(self.original),
            "thresholds": {"encoder": self.thresholds[0], "decoder": self.thresholds[1]},
            "rate": self.rate,
        }


def prune_widths(scales: Mapping[str, np.ndarray], rate: float = 0.5) -> PruneResult:
    """The pruned widths from the BN scales by unit name (`modeling.bn_scales`); zero-width layers are an error."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"prune rate must be in [0, 1), got {rate}")
    missing = [name for name in UNIT_NAMES if name not in scales]
    if missing:
        raise ValueError(f"BN scales missing for {missing}")
    magnitudes = [np.abs(np.asarray(scales[name], dtype=np.float32)).reshape(-1) for name in UNIT_NAMES]
    thresholds = []
    for part in (magnitudes[:ENCODER_UNITS], magnitudes[ENCODER_UNITS:]):
        pooled = np.sort(np.concatenate(part))
        thresholds.append(float(pooled[int(pooled.size * rate)]))
    kept = [
        int(np.sum(m > thresholds[0 if i < ENCODER_UNITS else 1]))
        for i, m in enumerate(magnitudes)  # strict comparison, as the original
    ]
    widths = list(kept)
    for decoder, encoder in UNPOOL_TIES:
        widths[decoder] = widths[encoder] = max(widths[decoder], widths[encoder])
    widths[-1] = 1
    problems = check_widths(tuple(widths))
    if problems:
        raise ValueError(
            f"pruning at rate {rate} leaves an unusable network: {'; '.join(problems)} (kept per layer: "
            f"{dict(zip(UNIT_NAMES, kept, strict=True))}); lower the rate or train the sparsity stage longer"
        )
    original = tuple(int(m.size) for m in magnitudes)
    return PruneResult(tuple(widths), tuple(kept), original, (thresholds[0], thresholds[1]), float(rate))


def save_cfg(result: PruneResult, directory: str | Path, report: Mapping[str, Any] | None = None) -> Path:
    path = Path(directory) / CFG_FILE
    path.write_text(json.dumps({**result.to_dict(), **(dict(report) if report else {})}, indent=2) + "\n")
    return path


def load_cfg(path: str | Path) -> tuple[int, ...]:
    """The 18 widths from a ``pruned_cfg.json`` (or the run directory holding one), a JSON list, or an original
    ``pruned.tar`` (``{'cfg': [...]}``, read weights-only); up1 is set to 1 as the student builds it."""
    path = Path(path)
    if path.is_dir():
        path = path / CFG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no pruning cfg (a {CFG_FILE} written by the prune stage, or pruned.tar)")
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        cfg = data["cfg"] if isinstance(data, dict) else data
    else:
        from port.pickled import read_pickled  # pure Python, no torch needed

        data = read_pickled(path)
        if not isinstance(data, dict) or "cfg" not in data:
            raise ValueError(f"{path}: expected a {{'cfg': [18 ints]}} record")
        cfg = data["cfg"]
    cfg = [int(v) for v in np.asarray(cfg).reshape(-1).tolist()]
    if len(cfg) != len(UNIT_NAMES):
        raise ValueError(f"{path}: a cfg has {len(UNIT_NAMES)} widths, got {len(cfg)}")
    cfg[-1] = 1
    problems = check_widths(tuple(cfg))
    if problems:
        raise ValueError(f"{path}: unusable cfg {cfg}: {'; '.join(problems)}")
    return tuple(cfg)


def conv_macs(widths: tuple[int, ...], height: int, width: int, *, in_chans: int = 4) -> int:
    """Multiply-accumulates of the 18 convolutions (biases and BN excluded) at an input of `height` x `width`."""
    macs, cin = 0, in_chans
    h, w = height, width
    sizes = []
    index = 0
    for units in BLOCK_UNITS:
        for _ in range(units):
            macs += h * w * 9 * cin * widths[index]
            cin = widths[index]
            index += 1
        sizes.append((h, w))
        h, w = h // 2, w // 2
    for step in range(DECODER_UNITS):
        h, w = sizes[len(sizes) - 1 - step]
        macs += h * w * 25 * cin * widths[index]
        cin = widths[index]
        index += 1
    return macs
