"""Declarative conversion: a table of (regex on the PyTorch key -> NNX path, transform), applied strictly.

Every source key must match exactly one rule or an ignore pattern; every NNX parameter must be filled once with the
right shape. All problems are collected and raised together in one `PortError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flax import nnx

from jaxmatte import pretrained

Transform = Callable[[np.ndarray], np.ndarray]


def identity(a: np.ndarray) -> np.ndarray:
    return a


def linear_kernel(a: np.ndarray) -> np.ndarray:
    """nn.Linear weight (out, in) -> kernel (in, out)."""
    return a.T


def conv_kernel(a: np.ndarray) -> np.ndarray:
    """Conv2d weight (O, I/g, kh, kw) -> (kh, kw, I/g, O); ConvTranspose2d (I, O, kh, kw) -> (kh, kw, O, I)."""
    return a.transpose(2, 3, 1, 0)


@dataclass(frozen=True)
class Rule:
    """`source` is a regex matched against the whole key; `target` a template using its groups (`\\1`, `\\g<name>`)."""

    source: str
    target: str
    transform: Transform = identity


def linear(source: str, target: str) -> list[Rule]:
    return [Rule(rf"{source}\.weight", f"{target}.kernel", linear_kernel), Rule(rf"{source}\.bias", f"{target}.bias")]


def conv(source: str, target: str) -> list[Rule]:
    return [Rule(rf"{source}\.weight", f"{target}.kernel", conv_kernel), Rule(rf"{source}\.bias", f"{target}.bias")]


def norm(source: str, target: str) -> list[Rule]:
    """LayerNorm / GroupNorm affine: weight -> scale."""
    return [Rule(rf"{source}\.weight", f"{target}.scale"), Rule(rf"{source}\.bias", f"{target}.bias")]


def batch_norm(source: str, target: str) -> list[Rule]:
    return norm(source, target) + [
        Rule(rf"{source}\.running_mean", f"{target}.mean"),
        Rule(rf"{source}\.running_var", f"{target}.var"),
    ]


class PortError(ValueError):
    """A checkpoint that does not fit the model; the message lists every problem."""


@dataclass(frozen=True)
class Table:
    rules: Sequence[Rule]
    ignore: Sequence[str] = ()

    def map(self, state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str], list[str]]:
        """(target -> array, target -> source key, problems) for a state dict."""
        compiled = [(re.compile(r.source), r) for r in self.rules]
        ignored = [re.compile(p) for p in self.ignore]
        values: dict[str, np.ndarray] = {}
        origin: dict[str, str] = {}
        problems: list[str] = []
        for key in sorted(state_dict):
            hits = [(m, r) for pattern, r in compiled if (m := pattern.fullmatch(key))]
            if not hits:
                if not any(p.fullmatch(key) for p in ignored):
                    problems.append(f"unexpected key {key} {tuple(np.shape(state_dict[key]))}")
                continue
            if len(hits) > 1:
                problems.append(f"ambiguous key {key}: rules {[r.source for _, r in hits]}")
                continue
            match, rule = hits[0]
            target = match.expand(rule.target)
            if target in values:
                problems.append(f"target {target} filled twice: by {origin[target]} and {key}")
                continue
            values[target] = np.asarray(rule.transform(np.asarray(state_dict[key])))
            origin[target] = key
        return values, origin, problems


def port(
    state_dict: Mapping[str, np.ndarray], table: Table, abstract: nnx.Module, *, source: str = "checkpoint"
) -> nnx.Module:
    """Fill `abstract` (from `pretrained.abstract_model`) from `state_dict` through `table`; strict both ways."""
    values, origin, problems = table.map(state_dict)
    shapes = pretrained.stored_shapes(abstract)
    for target in sorted(values):
        if target not in shapes:
            problems.append(f"key {origin[target]} maps to {target}, which the model does not have")
        elif tuple(values[target].shape) != tuple(shapes[target].shape):
            problems.append(
                f"shape mismatch {origin[target]} {tuple(np.shape(state_dict[origin[target]]))} -> {target} "
                f"{tuple(values[target].shape)} after transform, model expects {tuple(shapes[target].shape)}"
            )
    problems += [f"missing: nothing fills {t} {tuple(shapes[t].shape)}" for t in sorted(set(shapes) - set(values))]
    if problems:
        raise PortError(
            f"{source}: {len(problems)} problem(s) converting to {type(abstract).__name__}:\n  " + "\n  ".join(problems)
        )
    return pretrained.fill(abstract, values)


def keys_matching(state_dict: Mapping[str, np.ndarray], pattern: str) -> list[str]:
    compiled = re.compile(pattern)
    return sorted(k for k in state_dict if compiled.fullmatch(k))


def block_count(state_dict: Mapping[str, np.ndarray], prefix: str = "blocks") -> int:
    """Number of `{prefix}.N.` indices present (0 when none)."""
    indices = {int(m.group(1)) for k in state_dict if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(indices) + 1 if indices else 0


def chain(*groups: Iterable[Rule]) -> list[Rule]:
    return [r for g in groups for r in g]
