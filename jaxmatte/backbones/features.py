"""The contract between backbones and decoders / necks: which feature maps a backbone offers and how to get them.

Every backbone module offers

- ``feature_info() -> FeatureInfo``: one `FeatureLevel` (module name, channels, stride) per level it can return
  (Swin: its stages; ViTs: every block), shallow to deep;
- ``forward_intermediates(x, indices=None, *, norm=False) -> list[jax.Array]``: NHWC maps (B, H / stride,
  W / stride, channels) of the chosen levels, in the order asked, prefix / class / register tokens removed; `norm`
  applies the final norm (where the backbone has one) to each map. `indices` accept negative values; None picks the
  default levels (all Swin stages, the last ViT block).

A decoder built from ``feature_info().select(indices)`` is written once for every backbone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class FeatureLevel:
    name: str
    channels: int
    stride: int


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    levels: tuple[FeatureLevel, ...]
    default: tuple[int, ...]

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(level.channels for level in self.levels)

    @property
    def strides(self) -> tuple[int, ...]:
        return tuple(level.stride for level in self.levels)

    def resolve(self, indices: Sequence[int] | None) -> tuple[int, ...]:
        """Non-negative level indices (`default` for None); out of range is a ValueError naming the valid range."""
        count = len(self.levels)
        chosen = self.default if indices is None else tuple(indices)
        bad = [i for i in chosen if not -count <= int(i) < count]
        if bad:
            raise ValueError(f"feature indices {bad} out of range: this backbone has levels -{count}..{count - 1}")
        return tuple(int(i) % count for i in chosen)

    def select(self, indices: Sequence[int] | None) -> FeatureInfo:
        """The info of the chosen levels only (in the order asked)."""
        chosen = self.resolve(indices)
        return FeatureInfo(tuple(self.levels[i] for i in chosen), tuple(range(len(chosen))))


def block_levels(depth: int, channels: int, stride: int) -> FeatureInfo:
    """A plain ViT's levels: one per block `blocks.{i}` at the patch stride; the last block by default."""
    levels = tuple(FeatureLevel(f"blocks.{i}", channels, stride) for i in range(depth))
    return FeatureInfo(levels, (depth - 1,))
