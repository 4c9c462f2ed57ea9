"""The family house: systems register from their own folders, incomplete records fail at registration, the shared
training code knows no family, configs map onto model configs generically, converters are discovered."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from flax import nnx

from jaxmatte import registry
from jaxmatte.train.config import load_config, model_config

REPO = Path(__file__).resolve().parents[1]
SYSTEMS = ("tsr", "twinswin", "dinomatte")


def test_every_system_is_registered_with_its_family():
    systems = registry.systems()
    assert set(SYSTEMS) <= set(systems)
    for name in SYSTEMS:
        system = registry.system(name)
        config_cls, model_cls = registry.family(name)
        assert (system.config_cls, system.model_cls) == (config_cls, model_cls) and model_cls.family == name
        assert system.output == "alpha" and callable(system.infer)


def test_unknown_system_fails_loudly():
    with pytest.raises(KeyError, match="unknown system 'nope'"):
        registry.system("nope")
    with pytest.raises(KeyError, match="unknown system"):
        model_config(load_config("tsr.py", ["model.family=nope"]))


def _loss(model, batch):
    raise AssertionError("never called")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "not_a_family"}, "model family is not registered"),
        ({"output": "depth"}, "output must be one of"),
        ({"validation": "nope"}, "validation must be one of"),
        ({"best_metric": "IoU"}, "is not a matting metric"),
        ({"best_mode": "lowest"}, "best_mode"),
        ({"infer": None}, "infer"),
        ({"make_loss": None}, "make_loss"),
    ],
)
def test_incomplete_system_is_refused(changes, message):
    base = registry.System(
        name="dinomatte",
        make_loss=lambda config: _loss,
        validation="matting",
        best_metric="MAE",
        best_mode="min",
        infer=lambda model, images: model(images).alpha,
    )
    with pytest.raises(ValueError, match=message):
        registry.register_system(dataclasses.replace(base, **changes))
    assert registry.system("dinomatte").best_metric == "MAE"  # the registered one is untouched


def test_shared_training_code_imports_no_family():
    families = set(registry.systems())
    for path in sorted((REPO / "jaxmatte" / "train").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("jaxmatte.models") for n in names), (path.name, names)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in families, (path.name, node.value)


def test_config_model_section_maps_onto_the_preset_generically():
    config = load_config("dinomatte.py:demo", ["model.backbone.depth=2", "model.decoder_dims=[64, 32, 16]"])
    arch = model_config(config)
    assert arch.backbone.depth == 2 and arch.decoder_dims == (64, 32, 16)
    assert arch.decoder == "detail" and arch.img_size == config.data.size  # preset + data.size
    assert arch.backbone.embed_dim == 384  # untouched fields from the preset
    faithful = model_config(load_config("dinomatte.py:faithful"))
    assert faithful.decoder == "faithful" and faithful.backbone.rope_rescale == 2.0 and faithful.pad_rule == "original"
    with pytest.raises(KeyError, match="unknown field"):
        load_config("dinomatte.py", ["model.backbone.depths=[1]"])
    with pytest.raises(KeyError, match="is a section"):
        load_config("dinomatte.py", ["model.backbone=3"])
    with pytest.raises(TypeError):
        load_config("dinomatte.py", ["model.boundary_refinement=1"])


def test_trainable_parameters_follow_the_system():
    from jaxmatte.train import state

    config = load_config("dinomatte.py:demo", ["model.backbone.depth=1"])
    model = state.build_model(config, model_config(config))
    _, params, rest = state.split_model(model)
    trainable = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
    assert trainable and not any(name.startswith("backbone.") for name in trainable)
    assert any(".".join(map(str, p)).startswith("backbone.") for p, _ in nnx.to_flat_state(rest))
    unfrozen = load_config("dinomatte.py:demo", ["model.backbone.depth=1", "model.freeze_backbone=False"])
    model = state.build_model(unfrozen, model_config(unfrozen))
    _, params, _ = state.split_model(model)
    assert any(".".join(map(str, p)).startswith("backbone.") for p, _ in nnx.to_flat_state(params))


def test_every_system_converter_is_offered_by_port_convert():
    from port import convert

    kinds = convert.converters()
    for name in SYSTEMS:
        for kind in registry.system(name).converters:
            assert kind in kinds, (name, kind)
    assert {"swin", "vit", "dinov3"} <= set(kinds)
