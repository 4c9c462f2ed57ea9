"""The one interface every converter in `port/` offers; `port/convert.py KIND` dispatches to it.

A converter module declares ``CONVERTERS = (Converter(kind, help, add_arguments, convert), ...)``. `convert` takes
the checkpoint object read by `port.load` (or `None` for converters that read their own files), the source name and
the parsed arguments, and returns a `Converted` (module, config, info) that `save_pretrained` writes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flax import nnx


@dataclass
class Converted:
    model: nnx.Module
    config: Any
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Converter:
    """`kind` is the CLI subcommand; `timm_resizing` adds the `--timm-model/--img-size` options (and
    `--window-size` with `window_size`); `needs_src`: whether `--src` is required (a converter reading its own files
    takes `checkpoint=None` without it); `allowed_classes`: torch classes (dotted names) the weights-only reader may
    rebuild for this kind's files (e.g. a loss object pickled into a trainer's config record); `reads_src`: the
    converter reads `--src` itself (e.g. with `port.pickled`) and gets ``checkpoint=None``."""

    kind: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    convert: Callable[..., Converted]
    timm_resizing: bool = False
    window_size: bool = False
    needs_src: bool = True
    allowed_classes: tuple[str, ...] = ()
    reads_src: bool = False


def json_ready(value: Any) -> Any:
    """Checkpoint metadata (read as data) as JSON-able values: mappings, sequences, arrays, scalars; the rest repr'd."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)
