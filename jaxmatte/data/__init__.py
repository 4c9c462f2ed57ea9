"""Data: robust image reading and writing, dataset folders (DIS and matting layouts), synthetic data, geometry,
augmentation, grain pipelines.

The grain-based parts (`transforms`, `pipeline`) import JAX through grain, so they load on first use: image I/O
and metric workers that only need `io` start fast.
"""

from importlib import import_module
from typing import Any

from jaxmatte.data.folders import DISFolders, MattingFolders, open_folders
from jaxmatte.data.io import IMAGE_SUFFIXES, ImageReadError, list_images, read_image, read_mask, write_png
from jaxmatte.data.synthetic import write_synthetic_dis
from jaxmatte.data.synthetic_matting import write_synthetic_matting

_LAZY = {
    "Augment": "transforms",
    "Placement": "transforms",
    "ResizePolicy": "transforms",
    "denormalize": "transforms",
    "normalize": "transforms",
    "to_uint8": "transforms",
    "batches_per_epoch": "pipeline",
    "ensure_absl_flags_parsed": "pipeline",
    "make_dataset": "pipeline",
    "make_iterator": "pipeline",
}

__all__ = [
    "IMAGE_SUFFIXES",
    "DISFolders",
    "MattingFolders",
    "ImageReadError",
    "list_images",
    "open_folders",
    "read_image",
    "read_mask",
    "write_png",
    "write_synthetic_dis",
    "write_synthetic_matting",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"jaxmatte.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'jaxmatte.data' has no attribute {name!r}")
