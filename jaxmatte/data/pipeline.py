"""Grain input pipelines: a random-access source + a `ResizePolicy` -> batches of model inputs.

Training (``train=True``), one epoch = ``len(source) // batch_size`` batches (``ceil`` when ``drop_remainder`` is
False, the last batch then being smaller), repeated forever; the order is reshuffled and the augmentation redrawn
every epoch, all from `seed`::

    source -> seed -> shuffle -> Augment (original resolution) -> policy + normalise -> batch -> repeat

    {"image": float32 (B, S, S, 3) ImageNet-normalised, "mask": float32 (B, S, S, 1) in [0, 1]}

Evaluation (``train=False``): the source in order, ``ceil(len(source) / batch_size)`` batches, one pass. Every batch
has the full batch size: the last one is padded by repeating the last record, flagged ``valid=False``::

    {"image", "mask" as above, "index": int64 (B,) position in the source (re-read the original GT there),
     "name": str (B,), "placement": int32 (B, 6) (see `Placement`, for `ResizePolicy.restore`), "valid": bool (B,)}

The fields come from a `fields(record, train) -> (arrays, placement)` builder: `MattingFields` (image and ground-truth
mask, as above) by default; a system with other inputs or targets gives its own (`jaxmatte.registry.System.example`,
e.g. SegTrimap's image + input mask + class labels + distance map).

`make_iterator` runs a dataset in this process or in worker processes (``mp_prefetch``); both give identical
batches, and `get_state()` / `set_state()` resume at the exact next batch.
"""

from __future__ import annotations

import math
from typing import Any

import grain
import numpy as np

from jaxmatte.data.transforms import ResizePolicy, normalize


def batches_per_epoch(num_records: int, batch_size: int, *, train: bool, drop_remainder: bool = True) -> int:
    """Number of batches `make_dataset` yields per epoch (train) or in its single pass (eval)."""
    if train and drop_remainder:
        return num_records // batch_size
    return math.ceil(num_records / batch_size)


def make_dataset(
    source: Any,
    policy: ResizePolicy,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    augment: Any = None,
    drop_remainder: bool = True,
    fields: Any = None,
) -> grain.MapDataset:
    """A grain `MapDataset` of dict batches; see the module docstring for layout and epoch length.

    `source` returns ``{"image": HxWx3 uint8, "mask": HxW uint8, "name": str}`` for ``source[i]`` (e.g.
    `DISFolders`). `augment` (a grain RandomMap, e.g. `Augment`) and `drop_remainder` apply to training only;
    `fields` builds the arrays of a record (default `MattingFields(policy)`).
    """
    fields = MattingFields(policy) if fields is None else fields
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(source) == 0:
        raise ValueError("the data source is empty")
    if train:
        if len(source) < batch_size and drop_remainder:
            raise ValueError(f"{len(source)} records make no full batch of {batch_size} (drop_remainder=True)")
        dataset = grain.MapDataset.source(source).seed(seed).shuffle()
        if augment is not None:
            dataset = dataset.random_map(augment)
        dataset = dataset.map(TrainExample(fields))
        return dataset.batch(batch_size, drop_remainder=drop_remainder).repeat(None)

    padded = PaddedSource(source, batches_per_epoch(len(source), batch_size, train=False) * batch_size)
    return grain.MapDataset.source(padded).map(EvalExample(fields)).batch(batch_size)


def make_iterator(
    dataset: grain.MapDataset | grain.IterDataset,
    *,
    workers: int = 0,
    prefetch: int = 4,
    buffer_size: int | None = None,
) -> grain.DatasetIterator:
    """An iterator over `dataset`: in this process (``workers=0``) or in `workers` processes (``mp_prefetch``).

    A MapDataset's batches are prepared `prefetch` ahead by as many threads (at most 16; 0: read when asked), not
    grain's default of 500 batches, which holds hundreds of full-size batches in memory. The batches are the same
    either way. `iterator.get_state()` / `set_state(state)` save and restore the position (also through
    ``grain.checkpoint.CheckpointSave / CheckpointRestore``). Close it (`iterator.close()`) when done.
    """
    if isinstance(dataset, grain.MapDataset):
        prefetch = max(0, int(prefetch))
        read = grain.ReadOptions(num_threads=min(prefetch, 16), prefetch_buffer_size=prefetch)
        dataset = dataset.to_iter_dataset(read)
    if workers > 0:
        ensure_absl_flags_parsed()
        options = grain.MultiprocessingOptions(num_workers=workers)
        if buffer_size is not None:
            options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=buffer_size)
        dataset = dataset.mp_prefetch(options)
    return iter(dataset)


def ensure_absl_flags_parsed() -> None:
    """Mark absl flags as parsed, which grain 0.2.18's ``mp_prefetch`` needs outside ``absl.app`` (idempotent)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class MattingFields:
    """A record's image (normalised canvas) and ground-truth mask (float32 canvas in [0, 1]) under `policy`."""

    def __init__(self, policy: ResizePolicy):
        self.policy = policy

    def __call__(self, element: dict[str, Any], train: bool) -> tuple[dict[str, np.ndarray], Any]:
        del train
        image, placement = self.policy.image(element["image"])
        mask = self.policy.mask(element["mask"])
        fields = {"image": normalize(image), "mask": (mask.astype(np.float32) / np.float32(255.0))[..., None]}
        return fields, placement


class TrainExample:
    """A (possibly augmented) record -> the arrays of `fields`, e.g. {"image": float32 SxSx3, "mask": SxSx1}."""

    def __init__(self, fields: Any):
        self.fields = fields

    def __call__(self, element: dict[str, Any]) -> dict[str, np.ndarray]:
        return self.fields(element, True)[0]


class EvalExample:
    """A `PaddedSource` record -> the arrays of `fields` plus index, name, placement and validity."""

    def __init__(self, fields: Any):
        self.fields = fields

    def __call__(self, element: dict[str, Any]) -> dict[str, Any]:
        arrays, placement = self.fields(element, False)
        return {
            **arrays,
            "index": np.int64(element["index"]),
            "name": str(element["name"]),
            "placement": placement.as_array(),
            "valid": np.bool_(element["valid"]),
        }


class PaddedSource:
    """`source` lengthened to `length` by repeating its last record; adds "index" and "valid" to each record."""

    def __init__(self, source: Any, length: int):
        if length < len(source):
            raise ValueError(f"cannot pad {len(source)} records to {length}")
        self.source = source
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} records")
        real = min(index, len(self.source) - 1)
        return {**self.source[real], "index": real, "valid": index < len(self.source)}
