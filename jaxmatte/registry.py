"""Model families and systems by name.

Two records, both filled from the families' own folders and never by the shared code:

- a *model family* (`register`): the config dataclass and the module class, how a saved ``config.json`` turns back
  into a module (backbones are model families too);
- a *system* (`register_system`): a model family that trains, predicts and evaluates end to end. Its `System` says
  everything the shared loop, predictor and evaluator need to know about it: output kind, loss, validation metrics and
  the one that picks ``best/``, trainable parameters, and its hooks (model config, warm start, preparation, export).

Families are found by importing the backbone modules and every package under `jaxmatte.models`; a family adds its
folder and registers itself there.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from jaxmatte.preprocessing import OUTPUT_KINDS  # see jaxmatte.outputs

_FAMILIES: dict[str, tuple[type, type]] = {}
_SYSTEMS: dict[str, System] = {}
_BACKBONE_MODULES = ("jaxmatte.backbones.swin", "jaxmatte.backbones.vit", "jaxmatte.backbones.dinov3")
_discovered = False


def register(name: str, config_cls: type) -> Callable[[type], type]:
    """Class decorator: `@register("swin", SwinConfig)` on the module built as `Model(config, rngs=...)`."""

    def wrap(model_cls: type) -> type:
        _FAMILIES[name] = (config_cls, model_cls)
        model_cls.family = name
        return model_cls

    return wrap


def discover() -> None:
    """Import the backbones and every family package under `jaxmatte.models` (each registers itself)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    for module in _BACKBONE_MODULES:
        importlib.import_module(module)
    import jaxmatte.models as models

    for info in pkgutil.iter_modules(models.__path__):
        if info.ispkg:
            importlib.import_module(f"{models.__name__}.{info.name}")


def family(name: str) -> tuple[type, type]:
    """(config class, model class) of a registered family."""
    if name not in _FAMILIES:
        discover()
    if name not in _FAMILIES:
        raise KeyError(f"unknown model family {name!r}; known: {sorted(_FAMILIES)}")
    return _FAMILIES[name]


# ---------------------------------------------------------------------------------------------------------------------
# Systems


@dataclasses.dataclass(frozen=True)
class System:
    """What the shared training / prediction / evaluation code knows about a system (see the module docstring).

    `make_loss(run_config)` returns a hashable callable ``loss(model, batch) -> (total, terms)`` (a static argument
    of the jitted step). `infer(model, images)` is the eval-mode output the predictor and validation read (alpha:
    (B, H, W, 1) in [0, 1]). `validation` names a suite of `jaxmatte.validation`; `best_metric` / `best_mode` pick
    ``best/``. `trainable` is the nnx filter of the optimised parameters. Hooks (None: nothing to do):
    `configure(model_config, run_config)` finishes the model config (e.g. adds a teacher), `warm_start(model,
    run_config)` fills a fresh model from `model.backbone_weights` / `model.init_from`, `prepare(trainer, model)` runs
    once before the first step of a fresh run, `export(model, model_config)` returns what ``best/`` and ``last/`` save.
    `converters`: the `port/convert.py` kinds that write this family.

    Inputs: `inputs` names the batch entries `infer(model, *inputs)` and the loss read ("image" first; e.g. SegTrimap
    adds "input_mask"). `example(run_config, policy)` returns the per-record field builder of the data pipeline
    (`jaxmatte.data.pipeline.MattingFields` when None): ``fields(record, train) -> (arrays, placement)``.
    `lr_layers(model_config)` returns ``(layer_of, top)`` for layer-wise lr decay (`jaxmatte.train.param_groups`).
    `grad_transform(run_config)` returns an optax transformation applied to the raw gradients before clipping and
    Adam (e.g. DIM pruning's BN-sparsity sub-gradient), or None. `open_split(run_config, roots, train)` opens a
    split's records when the system reads its own layout (default `jaxmatte.data.folders.open_folders`).
    `finish(trainer)` runs once after a run's last step, when ``last/`` has been exported (e.g. DIM's pruning).
    `augment(run_config)` returns the training augmentation (a grain RandomMap on records at the original
    resolution) or None; when the hook itself is None the shared `Augment` of ``data.augmentation`` is used.
    `high_res`: a `jaxmatte.highres.TwoStage` (coarse stage on the canvas, tile-able full-resolution refine stage and
    its receptive-field halo) for the predictor's high-resolution mode, or None when the system has no such split.
    """

    name: str
    make_loss: Callable[[Any], Callable[..., Any]]
    output: str = "alpha"
    validation: str = "dis"
    best_metric: str = "maxFm"
    best_mode: str = "max"
    infer: Callable[[Any, Any], Any] | None = None
    trainable: Any = None
    configure: Callable[[Any, Any], Any] | None = None
    warm_start: Callable[[Any, Any], None] | None = None
    prepare: Callable[[Any, Any], None] | None = None
    export: Callable[[Any, Any], tuple[Any, Any]] | None = None
    converters: tuple[str, ...] = ()
    inputs: tuple[str, ...] = ("image",)
    example: Callable[[Any, Any], Any] | None = None
    augment: Callable[[Any], Any] | None = None
    lr_layers: Callable[[Any], tuple[Callable[[tuple], int], int]] | None = None
    grad_transform: Callable[[Any], Any] | None = None
    open_split: Callable[[Any, Any, bool], Any] | None = None
    finish: Callable[[Any], None] | None = None
    high_res: Any = None

    @property
    def config_cls(self) -> type:
        return family(self.name)[0]

    @property
    def model_cls(self) -> type:
        return family(self.name)[1]


def register_system(system: System) -> System:
    """Register `system` (its model family must be registered first); an incomplete record fails here."""
    from jaxmatte import validation

    problems = []
    if system.name not in _FAMILIES:
        problems.append("its model family is not registered (decorate the model with @register first)")
    if not callable(system.make_loss):
        problems.append("make_loss must be callable")
    if system.output not in OUTPUT_KINDS:
        problems.append(f"output must be one of {OUTPUT_KINDS}, got {system.output!r}")
    suite = validation.SUITES.get(system.validation)
    if suite is None:
        problems.append(f"validation must be one of {sorted(validation.SUITES)}, got {system.validation!r}")
    elif system.best_metric not in suite.metrics:
        problems.append(f"best_metric {system.best_metric!r} is not a {system.validation} metric {suite.metrics}")
    if system.best_mode not in ("min", "max"):
        problems.append(f"best_mode must be 'min' or 'max', got {system.best_mode!r}")
    if system.infer is None:
        problems.append("infer (model, images) -> output is required")
    if not system.inputs or system.inputs[0] != "image" or len(set(system.inputs)) != len(system.inputs):
        problems.append(f"inputs must start with 'image' and name each entry once, got {system.inputs}")
    for hook in (
        "configure",
        "warm_start",
        "prepare",
        "export",
        "example",
        "augment",
        "lr_layers",
        "grad_transform",
        "open_split",
        "finish",
    ):
        value = getattr(system, hook)
        if value is not None and not callable(value):
            problems.append(f"{hook} must be callable or None")
    if system.high_res is not None and not all(
        callable(getattr(system.high_res, part, None)) for part in ("coarse", "refine", "halo")
    ):
        problems.append("high_res must be None or have callable coarse, refine and halo (jaxmatte.highres.TwoStage)")
    if system.name in _SYSTEMS and _SYSTEMS[system.name] != system:
        problems.append("a different system is already registered under this name")
    if problems:
        raise ValueError(f"system {system.name!r} cannot be registered: " + "; ".join(problems))
    _SYSTEMS[system.name] = system
    return system


def system(name: str) -> System:
    """The registered system `name`; an unknown name is an error (never another family's defaults)."""
    if name not in _SYSTEMS:
        discover()
    if name not in _SYSTEMS:
        raise KeyError(f"unknown system {name!r}; known: {sorted(_SYSTEMS)}")
    return _SYSTEMS[name]


def systems() -> Mapping[str, System]:
    discover()
    return types.MappingProxyType(_SYSTEMS)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A frozen dataclass config as JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    return value


def config_from_dict(config_cls: type, values: dict[str, Any]) -> Any:
    """Inverse of `config_to_dict`: lists become tuples where the field is a tuple; unknown keys are an error."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{config_cls.__name__} has no fields {unknown}")
    hints = typing.get_type_hints(config_cls)
    return config_cls(**{k: _coerce(hints[k], v) for k, v in values.items()})


def _coerce(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            if arm is not type(None):
                return _coerce(arm, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v) for v in value)
        if args:
            return tuple(_coerce(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    return value
