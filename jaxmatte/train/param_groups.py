"""Per-parameter optimizer settings: layer-wise learning-rate decay and the weight-decay mask.

Layer-wise decay (as in BEiT / MAE fine-tuning): a system's `lr_layers(model_config)` hook returns
``(layer_of, top)``, where ``layer_of(keys)`` maps a parameter's path (a tuple of attribute names and list indices,
e.g. ``("backbone", "blocks", 3, "attn", "qkv", "kernel")``) to its layer, 0 for the embeddings up to `top` for the
heads. With ``optim.layer_decay = d`` the parameter's updates (learning rate and decoupled weight decay alike) are
scaled by ``d ** (top - layer)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "register_tokens", "mask_token")


def path_keys(path: tuple) -> tuple:
    """A jax key path as plain keys (names and indices), without nnx's trailing ``value``."""
    keys = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            keys.append(entry.idx)
        elif isinstance(entry, jax.tree_util.GetAttrKey):
            keys.append(entry.name)
        else:
            keys.append(str(entry))
    while keys and keys[-1] == "value":
        keys.pop()
    return tuple(keys)


def layer_scales(params: Any, layer_of: Callable[[tuple], int], top: int, decay: float) -> Any:
    """The tree of learning-rate multipliers ``decay ** (top - layer_of(path))`` for `params`."""

    def scale(path, _):
        layer = int(layer_of(path_keys(path)))
        if not 0 <= layer <= top:
            raise ValueError(f"layer {layer} of parameter {'/'.join(map(str, path_keys(path)))} is outside [0, {top}]")
        return decay ** (top - layer)

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(layer_of: Callable[[tuple], int], top: int, decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its layer's multiplier (see `layer_scales`); stateless."""

    def update(updates, state, params=None):
        del params
        scales = layer_scales(updates, layer_of, top, decay)
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def decay_mask(params: Any) -> Any:
    """True for the parameters that get weight decay under ``optim.weight_decay_on = "matrices"``: every parameter of
    two or more dimensions except position embeddings and learned tokens (biases, norm scales and tokens are
    left alone)."""

    def decays(path, leaf):
        keys = path_keys(path)
        return leaf.ndim >= 2 and not any(k in NO_DECAY_NAMES for k in keys if isinstance(k, str))

    return jax.tree_util.tree_map_with_path(decays, params)
