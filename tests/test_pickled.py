"""The restricted reader of pickled-module checkpoints (`port/pickled.py`, dim_prune.md §3)."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import dim_reference as ref
import numpy as np
import pytest
import torch

from port.load import CheckpointError
from port.pickled import (
    DATA_PARALLEL,
    LEGACY_MAGIC_NUMBER,
    ModuleRecord,
    TensorHandle,
    read_module_checkpoint,
    read_pickled,
)

# Small but consistent student widths (cfg[1] = cfg[16], cfg[3] = cfg[15], cfg[6] = cfg[14], cfg[9] = cfg[13]).
SMALL_CFG = (4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 8, 6, 7, 5, 6, 7, 5, 1)
REPO = Path(__file__).resolve().parents[1]


def small_student(seed: int = 0) -> ref.DIMModel_student:
    return ref.perturb_(ref.DIMModel_student(SMALL_CFG), seed).eval()


def assert_equals_state_dict(read: dict[str, np.ndarray], module: torch.nn.Module) -> None:
    expected = module.state_dict()
    assert list(read) == list(expected)  # same keys, same order
    for key, tensor in expected.items():
        want = tensor.float().numpy() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.numpy()
        assert read[key].dtype == want.dtype, key
        assert read[key].shape == want.shape, key
        np.testing.assert_array_equal(read[key], want, err_msg=key)


# -- round trips --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("data_parallel", [False, True], ids=["plain", "dataparallel"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", None])
def test_student_round_trip(tmp_path, legacy, data_parallel, optimizer):
    model = small_student()
    path = tmp_path / "pruned_1.tar"
    ref.save_like_original(
        path,
        model,
        legacy=legacy,
        data_parallel=data_parallel,
        with_optimizer=optimizer is not None,
        optimizer=optimizer or "sgd",
        epoch=12,
        epochs_since_improvement=3,
        loss=0.125,
    )
    ckpt = read_module_checkpoint(path)
    assert_equals_state_dict(ckpt.state_dict, model)
    assert len(ckpt.state_dict) == 154  # 126 DIM keys + feature2..5 + feature_trans2..5 (conv + 5 BN entries)
    assert ckpt.state_dict["down1.conv1.cbr_unit.0.weight"].shape == (4, 4, 3, 3)
    assert ckpt.state_dict["down1.conv1.cbr_unit.1.num_batches_tracked"].dtype == np.int64
    assert ckpt.state_dict["down1.conv1.cbr_unit.1.num_batches_tracked"].shape == ()
    assert ckpt.class_name == "models.DIMModel_student"
    assert ckpt.data_parallel is data_parallel
    assert ckpt.training is False
    assert ckpt.metadata == {"epoch": 12, "epochs_since_improvement": 3, "loss": 0.125}
    assert "models" not in sys.modules  # the writer's stand-in module is removed again


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_training_flag_recorded(tmp_path, legacy):
    model = small_student().train()
    path = tmp_path / "checkpoint.tar"
    ref.save_like_original(path, model, legacy=legacy, data_parallel=False)
    ckpt = read_module_checkpoint(path)
    assert ckpt.training is True
    assert_equals_state_dict(ckpt.state_dict, model)


class _ThnnBackend:
    """Pickles as torch 1.1 pickled every module's `_backend` attribute."""

    def __reduce__(self):
        from torch.nn.backends import thnn

        return thnn._get_thnn_function_backend, ()


def test_torch_1_1_style_module_dicts(tmp_path):
    """Module `__dict__`s as torch 1.1 pickled them (the teacher release): a `_backend` call to the thnn backend
    getter, OrderedDict containers, none of the newer hook dicts or `_non_persistent_buffers_set`."""
    model = small_student()
    expected = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    newer = (
        "_non_persistent_buffers_set",
        "_backward_pre_hooks",
        "_forward_hooks_with_kwargs",
        "_is_full_backward_hook",
    )
    for module in model.modules():
        for name in ("_parameters", "_buffers", "_modules"):
            module.__dict__[name] = OrderedDict(module.__dict__[name])
        for name in newer:
            module.__dict__.pop(name, None)
        module.__dict__["_backend"] = _ThnnBackend()
    path = tmp_path / "BEST_checkpoint.tar"
    ref.save_like_original(path, model, legacy=True, data_parallel=True, loss=torch.tensor(0.5))
    ckpt = read_module_checkpoint(path)
    assert list(ckpt.state_dict) == list(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(ckpt.state_dict[key], value, err_msg=key)
    assert ckpt.metadata["loss"] == 0.5  # a scalar tensor becomes a plain number
    raw = read_pickled(path)["model"].state["_modules"]["module"]
    assert "_backend" in raw.state and raw.state["_backend"] is None


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """The released teacher's layout: legacy stream, DataParallel(DIMModel), SGD with momentum state, eval mode."""
    model = ref.perturb_(ref.DIMModel(), seed=3).eval()
    path = tmp_path_factory.mktemp("teacher") / "BEST_checkpoint.tar"
    ref.save_like_original(path, model, legacy=True, data_parallel=True, optimizer="sgd")
    return path, model


def test_teacher_full_width(teacher_file):
    path, model = teacher_file
    ref.check_teacher_size(model)
    ckpt = read_module_checkpoint(path)
    assert_equals_state_dict(ckpt.state_dict, model)
    assert len(ckpt.state_dict) == ref.TEACHER_KEYS == 126
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    params = sum(v.size for k, v in ckpt.state_dict.items() if not k.endswith(statistics))
    assert params == ref.TEACHER_PARAMS == 25_582_595
    assert ckpt.state_dict["up1.conv.cbr_unit.0.weight"].shape == (1, 64, 5, 5)
    assert ckpt.state_dict["down5.conv3.cbr_unit.1.running_var"].shape == (512,)
    assert ckpt.class_name == "models.DIMModel"
    assert ckpt.data_parallel is True
    assert ckpt.training is False


def test_teacher_raw_records(teacher_file):
    """DataParallel record with its device stub, module source ids resolved, optimiser keyed by the parameters."""
    path, model = teacher_file
    root = read_pickled(path)
    wrapper = root["model"]
    assert isinstance(wrapper, ModuleRecord) and wrapper.class_name == DATA_PARALLEL
    assert wrapper.state["src_device_obj"].args == ("cuda", 0)
    teacher = wrapper.state["_modules"]["module"]
    assert teacher.class_name == "models.DIMModel"
    conv = teacher.state["_modules"]["down1"].state["_modules"]["conv1"].state["_modules"]["cbr_unit"]
    assert conv.class_name == "torch.nn.modules.container.Sequential"
    assert [c.class_name for c in conv.state["_modules"].values()] == [
        "torch.nn.modules.conv.Conv2d",
        "torch.nn.modules.batchnorm.BatchNorm2d",
        "torch.nn.modules.activation.ReLU",
    ]
    optimizer = root["optimizer"]
    assert optimizer.class_name == "torch.optim.sgd.SGD"
    state = optimizer.state["state"]
    params = optimizer.state["param_groups"][0]["params"]
    assert len(params) == len(list(model.parameters())) == 72  # 18 conv+BN units x (weight, bias, gamma, beta)
    # the state dict is keyed by the very handles the model records hold
    weight = conv.state["_modules"]["0"].state["_parameters"]["weight"]
    assert isinstance(weight, TensorHandle) and weight.is_parameter
    assert any(p is weight for p in params)
    assert set(map(id, state)) == set(map(id, params))
    for param, entry in state.items():
        assert entry["momentum_buffer"].shape == param.shape


def test_torch_weights_only_refuses_these_files(teacher_file, tmp_path):
    """Why this reader exists: torch's own safe loader rejects pickled modules (legacy teacher, zip student)."""
    path, _ = teacher_file
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(path, weights_only=True)
    student_path = tmp_path / "BEST_pruned.tar"
    ref.save_like_original(student_path, small_student(), legacy=False, data_parallel=False)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(student_path, weights_only=True)


def test_reader_needs_neither_torch_nor_the_original_code(tmp_path):
    path = tmp_path / "BEST_pruned.tar"
    ref.save_like_original(path, small_student(), legacy=True, data_parallel=True)
    script = (
        "import sys; from port.pickled import read_module_checkpoint as r; c = r(sys.argv[1]); "
        "assert len(c.state_dict) == 154; bad = {'torch', 'models'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, cwd=REPO, timeout=60)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_widened(tmp_path, legacy, dtype):
    model = small_student().to(dtype)
    path = tmp_path / "half.tar"
    ref.save_like_original(path, model, legacy=legacy, data_parallel=False, optimizer="adam")
    ckpt = read_module_checkpoint(path)
    assert_equals_state_dict(ckpt.state_dict, model)  # float32 values equal to torch's own widening
    assert ckpt.state_dict["up2.conv.cbr_unit.0.weight"].dtype == np.float32
    assert ckpt.state_dict["up2.conv.cbr_unit.1.num_batches_tracked"].dtype == np.int64
    handle = read_pickled(path)["model"].state["_modules"]["feature5"].state["_parameters"]["weight"]
    assert handle.source_dtype == str(dtype).removeprefix("torch.")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_tensor_layouts_and_plain_values(tmp_path, legacy):
    """Offsets and strides into a shared storage, scalars, empty tensors, integer/bool dtypes, containers."""
    big = torch.arange(20, dtype=torch.float32) * 0.5 - 3
    tensors = {
        "slice": big[3:9].view(2, 3),
        "transposed": big.view(4, 5).t(),
        "step": big[1::3],
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
        "int32": torch.arange(-3, 4, dtype=torch.int32),
        "int8": torch.tensor([-128, 5, 127], dtype=torch.int8),
        "uint8": torch.tensor([0, 200, 255], dtype=torch.uint8),
        "int16": torch.tensor([-32768, 7], dtype=torch.int16),
        "bool": torch.tensor([True, False, True]),
        "bf16": torch.tensor([1.5, -2.25, 3e38], dtype=torch.bfloat16),
    }
    payload = {
        "model": None,
        "tensors": tensors,
        "nested": OrderedDict(a=[1, 2.5, "x", None, (True, -7)], b={frozenset({1, 2}), 3}),
        "loss": torch.tensor(0.75),
    }
    path = tmp_path / "layouts.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    root = read_pickled(path)
    for name, tensor in tensors.items():
        want = tensor.float().numpy() if tensor.dtype == torch.bfloat16 else tensor.numpy()
        got = root["tensors"][name].array
        assert got.dtype == want.dtype and got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert got.flags.writeable and got.flags.owndata  # copied out of the file's bytes
    assert root["nested"] == payload["nested"] and type(root["nested"]) is OrderedDict
    assert root["loss"].array.item() == 0.75


def test_handles_hash_by_identity(tmp_path):
    same = torch.ones(3)
    path = tmp_path / "keys.pt"
    torch.save({"model": None, "pairs": {torch.ones(3): "a", same: "b"}, "again": same}, path)
    root = read_pickled(path)
    keys = list(root["pairs"])
    assert len(keys) == 2 and all(isinstance(k, TensorHandle) for k in keys)
    assert root["again"] is keys[1]  # pickle memo: one object, one handle


# -- hand-built legacy files: storage views, byte order, bounds ---------------------------------------------------


class _FakeStorage:
    def __init__(self, persistent_id: tuple):
        self.persistent_id = persistent_id


class _FakeTensor:
    """Pickles as torch does: `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`."""

    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple):
        self.args = (storage, offset, size, stride, False, OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


class _IdPickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.persistent_id if isinstance(obj, _FakeStorage) else None


def legacy_bytes(obj, storages: list[tuple[str, int, bytes]], *, little_endian: bool = True) -> bytes:
    """A legacy container: magic, version, sys info, the object pickle, the key list, then per storage an int64
    element count and the raw bytes."""
    sys_info = {"protocol_version": 1001, "little_endian": little_endian, "type_sizes": {"short": 2, "int": 4}}
    out = io.BytesIO()
    for header in (LEGACY_MAGIC_NUMBER, 1001, sys_info):
        pickle.dump(header, out, protocol=2)
    if isinstance(obj, bytes):
        out.write(obj)
    else:
        _IdPickler(out, protocol=2).dump(obj)
    pickle.dump([key for key, _, _ in storages], out, protocol=2)
    for _, count, raw in storages:
        out.write(struct.pack("<q", count) + raw)
    return out.getvalue()


def test_legacy_storage_views(tmp_path):
    """Old torch stored tensors over storage views (view key, element offset, element count); torch agrees."""
    root_values = np.arange(12, dtype=np.float32) * 1.25
    view_a = _FakeStorage(("storage", torch.FloatStorage, "root", "cuda:0", 12, ("view_a", 2, 6)))
    view_b = _FakeStorage(("storage", torch.FloatStorage, "root", "cuda:0", 12, ("view_b", 8, 4)))
    whole = _FakeStorage(("storage", torch.FloatStorage, "root", "cuda:0", 12, None))
    obj = {
        "a": _FakeTensor(view_a, 1, (2, 2), (1, 3)),
        "b": _FakeTensor(view_b, 0, (4,), (1,)),
        "all": _FakeTensor(whole, 0, (3, 4), (4, 1)),
    }
    path = tmp_path / "views.pt"
    path.write_bytes(legacy_bytes(obj, [("root", 12, root_values.tobytes())]))
    got = read_pickled(path)
    expected_a = np.lib.stride_tricks.as_strided(root_values[3:], (2, 2), (4, 12))
    np.testing.assert_array_equal(got["a"].array, expected_a)
    np.testing.assert_array_equal(got["b"].array, root_values[8:12])
    np.testing.assert_array_equal(got["all"].array, root_values.reshape(3, 4))
    from_torch = torch.load(path, map_location="cpu", weights_only=True)
    for key in obj:
        np.testing.assert_array_equal(got[key].array, from_torch[key].numpy(), err_msg=key)


def test_legacy_view_past_its_storage_refused(tmp_path):
    view = _FakeStorage(("storage", torch.FloatStorage, "root", "cpu", 4, ("v", 2, 6)))
    path = tmp_path / "bad_view.pt"
    path.write_bytes(legacy_bytes({"t": _FakeTensor(view, 0, (2,), (1,))}, [("root", 4, bytes(16))]))
    with pytest.raises(CheckpointError, match="exceeds its storage"):
        read_pickled(path)


@pytest.mark.parametrize(
    ("size", "stride", "offset"),
    [((4, 4), (4, 1), 0), ((8,), (1,), 1), ((2,), (1000,), 0), ((3,), (1,), 2**40)],
)
def test_tensor_reading_past_its_storage_refused(tmp_path, size, stride, offset):
    storage = _FakeStorage(("storage", torch.FloatStorage, "0", "cpu", 8, None))
    path = tmp_path / "oob.pt"
    path.write_bytes(legacy_bytes({"t": _FakeTensor(storage, offset, size, stride)}, [("0", 8, bytes(32))]))
    with pytest.raises(CheckpointError, match="reads past its storage"):
        read_pickled(path)


def test_storage_shorter_than_declared_refused(tmp_path):
    storage = _FakeStorage(("storage", torch.FloatStorage, "0", "cpu", 8, None))
    path = tmp_path / "short.pt"
    path.write_bytes(legacy_bytes({"t": _FakeTensor(storage, 0, (8,), (1,))}, [("0", 2, bytes(8))]))
    with pytest.raises(CheckpointError, match="holds 8 bytes, needs 32"):
        read_pickled(path)


def test_big_endian_refused(tmp_path):
    legacy = tmp_path / "big_legacy.pt"
    legacy.write_bytes(legacy_bytes({"model": None}, [], little_endian=False))
    with pytest.raises(CheckpointError, match="big-endian"):
        read_pickled(legacy)
    zipped = tmp_path / "big.pt"
    torch.save({"model": None, "t": torch.ones(2)}, zipped)
    rewrite_zip(zipped, "byteorder", b"big")
    with pytest.raises(CheckpointError, match="byte order 'big'"):
        read_pickled(zipped)


def test_unsupported_storage_type_named(tmp_path):
    path = tmp_path / "complex.pt"
    torch.save({"model": None, "t": torch.ones(2, dtype=torch.complex64)}, path)
    with pytest.raises(CheckpointError, match=r"torch\.ComplexFloatStorage"):
        read_pickled(path)


# -- refused payloads ---------------------------------------------------------------------------------------------


def op_str(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_global(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()


def op_call(callable_ops: bytes, *args: bytes) -> bytes:
    """callable(*args) through MARK ... TUPLE, REDUCE."""
    return callable_ops + b"(" + b"".join(args) + b"tR"


def checkpoint_pickle(model_ops: bytes, protocol: int = 2) -> bytes:
    """{'model': <model_ops>} as a pickle."""
    return bytes([0x80, protocol]) + b"}" + op_str("model") + model_ops + b"s."


def payloads(marker: Path) -> dict[str, tuple[str, bytes]]:
    """name -> (the global the error must name, pickle); every payload that can would create `marker`."""
    touch = op_str(f"touch {marker}")
    write = op_str(f"open({str(marker)!r}, 'w').close()")
    import_os_first = b"".join(  # __import__('os') kept in the memo, then getattr(it, 'system')('touch ...')
        [op_call(op_global("builtins", "__import__"), op_str("os")), b"p0\n0"]
    ) + op_call(op_call(op_global("builtins", "getattr"), b"g0\n", op_str("system")), touch)
    return {
        "os.system": ("os.system", checkpoint_pickle(op_call(op_global("os", "system"), touch))),
        "posix.system": ("posix.system", checkpoint_pickle(op_call(op_global("posix", "system"), touch))),
        "stack_global": (
            "posix.system",
            checkpoint_pickle(op_call(op_str("posix") + op_str("system") + b"\x93", touch), protocol=4),
        ),
        "eval": ("builtins.eval", checkpoint_pickle(op_call(op_global("builtins", "eval"), write))),
        "eval_py2_name": ("builtins.eval", checkpoint_pickle(op_call(op_global("__builtin__", "eval"), write))),
        "exec": ("builtins.exec", checkpoint_pickle(op_call(op_global("builtins", "exec"), write))),
        "getattr": (
            "builtins.getattr",
            checkpoint_pickle(
                op_call(
                    op_call(
                        op_global("builtins", "getattr"),
                        op_call(op_global("builtins", "__import__"), op_str("os")),
                        op_str("system"),
                    ),
                    touch,
                )
            ),
        ),
        "__import__": ("builtins.__import__", checkpoint_pickle(import_os_first)),
        "subprocess.Popen": (
            "subprocess.Popen",
            checkpoint_pickle(
                op_call(op_global("subprocess", "Popen"), b"(" + op_str("touch") + op_str(str(marker)) + b"l")
            ),
        ),
        "functools.partial": (
            "functools.partial",
            checkpoint_pickle(op_call(op_call(op_global("functools", "partial"), op_global("os", "system"), touch))),
        ),
        "numpy_reconstruct": (
            "numpy.core.multiarray._reconstruct",
            checkpoint_pickle(
                op_call(
                    op_global("numpy.core.multiarray", "_reconstruct"),
                    op_global("numpy", "ndarray"),
                    b"(K\x00t",
                    op_str("b"),
                )
            ),
        ),
        "runpy": ("runpy.run_path", checkpoint_pickle(op_call(op_global("runpy", "run_path"), op_str("x.py")))),
        "sys": ("sys.exit", checkpoint_pickle(op_call(op_global("sys", "exit"), op_str("bye")))),
        "operator": (
            "operator.attrgetter",
            checkpoint_pickle(op_call(op_global("operator", "attrgetter"), op_str("system"))),
        ),
        "unknown_model_class": ("models.Evil", checkpoint_pickle(op_call(op_global("models", "Evil")))),
        "torch_function": ("torch.load", checkpoint_pickle(op_call(op_global("torch", "load"), op_str("x.pt")))),
        "torch_tensor_subclass": (
            "torch._tensor._rebuild_from_type_v2",
            checkpoint_pickle(op_call(op_global("torch._tensor", "_rebuild_from_type_v2"))),
        ),
    }


def zip_container(path: Path, data_pkl: bytes) -> Path:
    """A zip checkpoint as current torch writes it, with `data.pkl` replaced."""
    torch.save({"model": None}, path)
    rewrite_zip(path, "data.pkl", data_pkl)
    return path


def rewrite_zip(path: Path, member: str, content: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        entries = [(info, archive.read(info)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w") as archive:
        for info, data in entries:
            archive.writestr(info, content if info.filename.endswith("/" + member) else data)


def test_hand_built_containers_are_valid(tmp_path):
    """The builders make files torch itself reads (so refusals below are about the payload, not the container)."""
    benign = checkpoint_pickle(op_call(op_global("collections", "OrderedDict")))
    zipped = zip_container(tmp_path / "benign.pt", benign)
    legacy = tmp_path / "benign_legacy.pt"
    legacy.write_bytes(legacy_bytes(benign, []))
    for path in (zipped, legacy):
        assert torch.load(path, weights_only=True) == {"model": OrderedDict()}
        assert read_pickled(path) == {"model": OrderedDict()}


CONTROL = ("os.system", "posix.system", "stack_global", "eval", "eval_py2_name", "exec", "getattr", "__import__")


@pytest.mark.parametrize("name", CONTROL + ("functools.partial",))
def test_payloads_are_live(tmp_path, name):
    """Control: an unrestricted unpickler runs the payload and the marker appears."""
    marker = tmp_path / "marker"
    _, data = payloads(marker)[name]
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("container", ["zip", "legacy"])
@pytest.mark.parametrize("name", list(payloads(Path("m"))))
def test_payload_refused_and_nothing_runs(tmp_path, container, name):
    marker = tmp_path / "marker"
    global_name, data = payloads(marker)[name]
    path = tmp_path / "evil.tar"
    if container == "zip":
        zip_container(path, data)
    else:
        path.write_bytes(legacy_bytes(data, []))
    with pytest.raises(CheckpointError, match=global_name.replace(".", r"\.")) as err:
        read_module_checkpoint(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_reduce_object_written_by_torch_refused(tmp_path, legacy):
    """A `__reduce__` payload next to a real model, written by torch.save itself."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.tar"
    with ref.models_module():
        payload = {"epoch": 1, "model": small_student(), "optimizer": _Evil(marker)}
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=rf"{os.system.__module__}\.system"):
        read_module_checkpoint(path)
    assert not marker.exists()


def test_header_pickles_allow_no_globals(tmp_path):
    marker = tmp_path / "marker"
    out = io.BytesIO()
    pickle.dump(LEGACY_MAGIC_NUMBER, out, protocol=2)
    out.write(b"\x80\x02" + op_call(op_global("os", "system"), op_str(f"touch {marker}")) + b".")
    path = tmp_path / "evil_header.pt"
    path.write_bytes(out.getvalue())
    with pytest.raises(CheckpointError, match=r"os\.system"):
        read_pickled(path)
    assert not marker.exists()


def test_allowed_objects_cannot_be_altered(tmp_path):
    """BUILD (set state) on the reader's own stand-ins is refused: a file cannot rewrite a dtype tag for later
    files, nor a tensor handle."""
    slot_state = b"(N}" + op_str("disk_dtype") + op_str("f8") + b"stb"
    tag = checkpoint_pickle(op_global("torch", "FloatStorage") + slot_state)
    device = checkpoint_pickle(op_call(op_global("torch", "device"), op_str("cpu")) + b"}b")
    for name, data in (("tag", tag), ("device", device)):
        path = tmp_path / f"{name}.pt"
        path.write_bytes(legacy_bytes(data, []))
        with pytest.raises(CheckpointError, match="tries to set the state"):
            read_pickled(path)
    torch.save({"model": None, "t": torch.ones(2)}, tmp_path / "ok.pt")
    assert read_pickled(tmp_path / "ok.pt")["t"].array.dtype == np.float32


def test_module_tree_loop_refused(tmp_path):
    state = b"}(" + op_str("training") + b"\x89" + op_str("_modules") + b"}" + op_str("again") + b"g0\nsu"
    model = op_global("models", "DIMModel") + b")\x81p0\n" + state + b"b"
    path = tmp_path / "loop.pt"
    path.write_bytes(legacy_bytes(checkpoint_pickle(model), []))
    with pytest.raises(CheckpointError, match="loops"):
        read_module_checkpoint(path)


# -- refused or unusable files ------------------------------------------------------------------------------------


def test_tar_file_refused(tmp_path):
    path = tmp_path / "old.tar"
    with tarfile.open(path, "w") as archive:
        info = tarfile.TarInfo("storages")
        info.size = 4
        archive.addfile(info, io.BytesIO(b"abcd"))
    with pytest.raises(CheckpointError, match="tar archive"):
        read_module_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.2, 0.6, 0.999])
def test_truncated_file_refused(tmp_path, legacy, fraction):
    path = tmp_path / "checkpoint.tar"
    ref.save_like_original(path, small_student(), legacy=legacy, data_parallel=True)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match=str(path)):
        read_module_checkpoint(path)


def test_garbage_and_empty_files_refused(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        read_pickled(empty)
    text = tmp_path / "notes.pt"
    text.write_bytes(b"hello, this is not a checkpoint\n" * 40)
    with pytest.raises(CheckpointError, match=str(text)):
        read_pickled(text)
    with pytest.raises(CheckpointError, match="no such file"):
        read_pickled(tmp_path / "missing.pt")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_root_must_be_a_dict_with_a_pickled_model(tmp_path, legacy):
    zip_flag = not legacy
    not_dict = tmp_path / "list.pt"
    torch.save([torch.ones(2), 3], not_dict, _use_new_zipfile_serialization=zip_flag)
    with pytest.raises(CheckpointError, match="expected a dict with a 'model' entry.*found a list"):
        read_module_checkpoint(not_dict)
    assert read_pickled(not_dict)[1] == 3
    no_model = tmp_path / "weights.pt"
    torch.save({"state_dict": small_student().state_dict()}, no_model, _use_new_zipfile_serialization=zip_flag)
    with pytest.raises(CheckpointError, match=r"'model' entry.*found keys \['state_dict'\]"):
        read_module_checkpoint(no_model)
    state_dict_model = tmp_path / "sd.pt"
    torch.save({"model": small_student().state_dict()}, state_dict_model, _use_new_zipfile_serialization=zip_flag)
    with pytest.raises(CheckpointError, match="not a pickled module.*port.load"):
        read_module_checkpoint(state_dict_model)


def test_tie_inputs_make_pooling_windows_tie():
    x = ref.tie_inputs(batch=2, height=45, width=37)
    assert x.shape == (2, 4, 45, 37)
    trimap = x[:, 3]
    assert set(torch.unique(trimap).tolist()) <= set(torch.tensor([0.0, 128.0 / 255.0, 1.0]).tolist())
    model = small_student().eval()
    with torch.no_grad():
        after_relu = model.down1.conv2(model.down1.conv1(x))
        _, indices = torch.nn.functional.max_pool2d(after_relu, 2, 2, return_indices=True)
        windows = after_relu[..., :44, :36].unfold(2, 2, 2).unfold(3, 2, 2).reshape(*indices.shape, 4)
        ties = (windows == windows.amax(-1, keepdim=True)).sum(-1) > 1
        assert ties.float().mean() > 0.25  # many windows have several maxima (zeros after ReLU, constant blocks)
        features, alpha = model(x)
    assert alpha.shape == (2, 45, 37) and len(features) == 8
    assert [f.shape[1] for f in features] == [7, 6, 5, 7, 128, 256, 512, 512]
