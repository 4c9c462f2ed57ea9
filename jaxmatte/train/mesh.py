"""Data parallelism over all local devices: one mesh axis ``data``, replicated state, batches split on ``data``.

The jitted step is an ordinary `jax.jit` function; given a replicated state and a batch sharded on its leading axis,
the compiler inserts the cross-device reductions, so BatchNorm sees the statistics of the global batch (as SyncBN)
and the gradients are global means.

Several hosts: call `jax.distributed.initialize()` at start-up (before any JAX computation) on every host, build the
mesh over `jax.devices()`, let each host read its own slice of the data (``source[jax.process_index()::
jax.process_count()]``) and assemble global batches with `jax.make_array_from_process_local_data`. Single-host runs
(the only ones tested) need none of this.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: list[Any] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over `devices` (default: all local devices)."""
    devices = list(devices if devices is not None else jax.local_devices())
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """`tree` with every array copied to every device of `mesh`."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """The numeric arrays of `batch` split along their first axis over ``data``; other entries are dropped."""
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    size = mesh.devices.size
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            continue
        if value.shape[0] % size:
            raise ValueError(f"batch of {value.shape[0]} does not split over {size} devices ({key!r})")
        out[key] = jax.device_put(value, sharding)
    return out
