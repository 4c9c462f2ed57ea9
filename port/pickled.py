"""Read PyTorch checkpoints that pickle whole `nn.Module` objects without running anything the file names.

A restricted unpickler (dim_prune.md §3) answers every global from a short allow-list of stand-ins written here
(containers, NumPy tensor rebuilders, storage dtype tags, inert module/optimiser records) and refuses the rest.
Reads the zip container and the legacy stream of torch < 1.6; refuses the old tar layout.
"""

from __future__ import annotations

import _compat_pickle
import io
import pickle
import re
import struct
import tarfile
import zipfile
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from port.load import CheckpointError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001
DATA_PARALLEL = "torch.nn.parallel.data_parallel.DataParallel"
ORIGINAL_MODEL_CLASSES = (
    "DIMModel",
    "segnetDown2",
    "segnetDown3",
    "segnetUp1",
    "conv2DBatchNormRelu",
    "DIMModel_student",
    "segnetDown2_2",
    "segnetDown3_2",
)
OPTIMIZER_CLASSES = ("torch.optim.sgd.SGD", "torch.optim.adam.Adam")
_TORCH_MODULE_CLASS = re.compile(r"torch\.nn\.modules\.[A-Za-z_]\w*\.[A-Za-z_]\w*")


class _NoState:
    """Refuses BUILD: objects of the reader's own making never take state from the file."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError(f"the file tries to set the state of a {type(self).__name__}")


class StorageType(_NoState):
    """A `torch.<Name>Storage` tag: how the raw bytes of a storage are laid out."""

    __slots__ = ("name", "disk_dtype", "source_dtype")

    def __init__(self, name: str, disk_dtype: str, source_dtype: str):
        self.name = name
        self.disk_dtype = np.dtype(disk_dtype)
        self.source_dtype = source_dtype

    @property
    def itemsize(self) -> int:
        return self.disk_dtype.itemsize

    def __repr__(self) -> str:
        return f"torch.{self.name}"


STORAGE_TYPES = {
    tag.name: tag
    for tag in (
        StorageType("FloatStorage", "<f4", "float32"),
        StorageType("DoubleStorage", "<f8", "float64"),
        StorageType("HalfStorage", "<f2", "float16"),
        StorageType("BFloat16Storage", "<u2", "bfloat16"),  # bit pattern, widened to float32
        StorageType("LongStorage", "<i8", "int64"),
        StorageType("IntStorage", "<i4", "int32"),
        StorageType("ShortStorage", "<i2", "int16"),
        StorageType("CharStorage", "i1", "int8"),
        StorageType("ByteStorage", "u1", "uint8"),
        StorageType("BoolStorage", "u1", "bool"),
    )
}


class TensorHandle(_NoState):
    """A tensor read from the file. Hashes by identity (optimiser state is a dict keyed by parameters).

    `array`: the values as NumPy, float16/bfloat16 widened to float32; `source_dtype`: the torch dtype in the file."""

    __slots__ = ("array", "source_dtype", "requires_grad", "is_parameter")

    def __init__(self, source_dtype: str, requires_grad: bool):
        self.array: np.ndarray | None = None  # filled once the storage bytes are read
        self.source_dtype = source_dtype
        self.requires_grad = requires_grad
        self.is_parameter = False

    @property
    def shape(self) -> tuple[int, ...]:
        return () if self.array is None else self.array.shape

    def __repr__(self) -> str:
        kind = "Parameter" if self.is_parameter else "Tensor"
        return f"{kind}({self.source_dtype}, shape={self.shape})"


class ModuleRecord:
    """Inert stand-in for a pickled class (module, DataParallel, optimiser): keeps the pickled state as plain data.
    No method of the original class exists here, so nothing of it can run."""

    class_name: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ModuleRecord:
        record = object.__new__(cls)
        record.state = {}
        return record

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, slots) form
            merged: dict[str, Any] = {}
            for part in state:
                if part is not None and not isinstance(part, dict):
                    raise CheckpointError(f"{self.class_name}: unexpected pickled state {type(part).__name__}")
                merged.update(part or {})
            state = merged
        if not isinstance(state, dict):
            raise CheckpointError(f"{self.class_name}: unexpected pickled state {type(state).__name__}")
        self.state = state

    def __repr__(self) -> str:
        return f"<record {self.class_name}>"


_RECORD_CLASSES: dict[str, type[ModuleRecord]] = {}


def _record_class(qualified_name: str) -> type[ModuleRecord]:
    if qualified_name not in _RECORD_CLASSES:
        short = qualified_name.rpartition(".")[2]
        _RECORD_CLASSES[qualified_name] = type(short, (ModuleRecord,), {"class_name": qualified_name})
    return _RECORD_CLASSES[qualified_name]


class DeviceStub:
    """Stand-in for `torch.device(...)`: records its arguments."""

    __slots__ = ("args",)

    def __init__(self, *args: Any):
        self.args = args

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("the file tries to set the state of a torch.device")

    def __repr__(self) -> str:
        return f"device{self.args!r}"


class _StorageRef(_NoState):
    """A storage named by a persistent id; `view` = (element offset, element count) into the root storage."""

    __slots__ = ("key", "storage_type", "numel", "view")

    def __init__(self, key: str, storage_type: StorageType, numel: int, view: tuple[int, int] | None):
        self.key = key
        self.storage_type = storage_type
        self.numel = numel
        self.view = view

    @property
    def elements(self) -> int:
        return self.numel if self.view is None else self.view[1]


@dataclass
class _PendingTensor:
    handle: TensorHandle
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _index_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(_is_index(v) for v in value)


class _RestrictedUnpickler(pickle.Unpickler):
    """`find_class` answers from the allow-list only; `persistent_load` turns storage ids into `_StorageRef`s.

    `header=True` allows no global and no persistent id (the legacy container's plain-data pickles)."""

    def __init__(self, file: Any, source: str, *, legacy: bool, header: bool = False):
        super().__init__(file, encoding="utf-8")
        self.source = source
        self.legacy = legacy
        self.header = header
        self.pending: list[_PendingTensor] = []
        self.roots: dict[str, StorageType] = {}  # root storage key -> tag of its first use (legacy element size)
        self._allowed = {} if header else self._allow_list()

    def _allow_list(self) -> dict[str, Any]:
        allowed: dict[str, Any] = {
            "collections.OrderedDict": OrderedDict,
            "collections.defaultdict": defaultdict,
            "builtins.dict": dict,
            "builtins.list": list,
            "builtins.set": set,
            "builtins.frozenset": frozenset,
            "builtins.tuple": tuple,
            "torch._utils._rebuild_tensor_v2": self._rebuild_tensor_v2,
            "torch._utils._rebuild_tensor": self._rebuild_tensor,
            "torch._utils._rebuild_parameter": self._rebuild_parameter,
            "torch._utils._rebuild_parameter_with_state": self._rebuild_parameter_with_state,
            "torch.device": DeviceStub,
            "torch.nn.backends.thnn._get_thnn_function_backend": self._thnn_backend,
            DATA_PARALLEL: _record_class(DATA_PARALLEL),
        }
        allowed.update({f"torch.{name}": tag for name, tag in STORAGE_TYPES.items()})
        allowed.update({f"models.{name}": _record_class(f"models.{name}") for name in ORIGINAL_MODEL_CLASSES})
        allowed.update({name: _record_class(name) for name in OPTIMIZER_CLASSES})
        return allowed

    def find_class(self, module: str, name: str) -> Any:
        written = f"{module}.{name}"
        # Protocol-2 pickles spell Python 3 names the Python 2 way (`__builtin__.set`); rename as pickle would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        qualified = f"{module}.{name}"
        if qualified in self._allowed:
            return self._allowed[qualified]
        if not self.header and _TORCH_MODULE_CLASS.fullmatch(qualified):
            return _record_class(qualified)
        shown = qualified if qualified == written else f"{written} ({qualified})"
        raise CheckpointError(
            f"{self.source}: refuses the pickled global {shown}; only plain data, tensors and "
            "inert module/optimiser records are read from pickled-module checkpoints"
        )

    def persistent_load(self, pid: Any) -> Any:
        if self.header or not isinstance(pid, tuple) or not pid:
            raise CheckpointError(f"{self.source}: unexpected persistent id {pid!r:.80}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module" and self.legacy and len(pid) == 4:
            # legacy files store each module class as ('module', class, source file, source text)
            cls = pid[1]
            if not (isinstance(cls, type) and issubclass(cls, ModuleRecord)):
                raise CheckpointError(f"{self.source}: module persistent id names {cls!r:.80}")
            return cls
        if kind != "storage":
            raise CheckpointError(f"{self.source}: unknown persistent id kind {kind!r:.40}")
        expected = 6 if self.legacy else 5
        if len(pid) != expected:
            raise CheckpointError(f"{self.source}: storage persistent id with {len(pid)} fields, expected {expected}")
        storage_type, key, _location, numel = pid[1:5]  # the location (cpu, cuda:0) does not matter here
        view_metadata = pid[5] if self.legacy else None
        if not isinstance(storage_type, StorageType):
            raise CheckpointError(f"{self.source}: storage of unsupported type {storage_type!r:.80}")
        if not isinstance(key, str | int) or not _is_index(numel):
            raise CheckpointError(f"{self.source}: malformed storage persistent id {pid!r:.120}")
        key = str(key)
        self.roots.setdefault(key, storage_type)
        view = None
        if view_metadata is not None:
            # (view key, offset, size), counted in elements of this storage's dtype
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3 and _index_tuple(view_metadata[1:])):
                raise CheckpointError(f"{self.source}: malformed storage view {view_metadata!r:.80}")
            view = (view_metadata[1], view_metadata[2])
            if view[0] + view[1] > numel:
                raise CheckpointError(f"{self.source}: storage view {view} exceeds its storage of {numel} elements")
        return _StorageRef(key, storage_type, numel, view)

    # -- the reader's own versions of torch's rebuild functions --

    def _rebuild_tensor_v2(
        self, storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False, *_ignored: Any
    ) -> TensorHandle:
        if not isinstance(storage, _StorageRef):
            raise CheckpointError(f"{self.source}: tensor without a storage ({type(storage).__name__})")
        if not (_is_index(storage_offset) and _index_tuple(size) and _index_tuple(stride)) or len(size) != len(stride):
            raise CheckpointError(f"{self.source}: malformed tensor layout {storage_offset!r}, {size!r}, {stride!r}")
        if all(size):  # a non-empty tensor must stay inside its storage
            last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            if last >= storage.elements:
                raise CheckpointError(
                    f"{self.source}: tensor of size {size} / stride {stride} at offset "
                    f"{storage_offset} reads past its storage of {storage.elements} elements"
                )
        handle = TensorHandle(storage.storage_type.source_dtype, bool(requires_grad))
        self.pending.append(_PendingTensor(handle, storage, storage_offset, size, stride))
        return handle

    def _rebuild_tensor(self, storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorHandle:
        return self._rebuild_tensor_v2(storage, storage_offset, size, stride)

    def _rebuild_parameter(self, data: Any, requires_grad: Any = True, *_ignored: Any) -> TensorHandle:
        if not isinstance(data, TensorHandle):
            raise CheckpointError(f"{self.source}: parameter wrapping {type(data).__name__}, not a tensor")
        data.is_parameter = True
        data.requires_grad = bool(requires_grad)
        return data

    def _rebuild_parameter_with_state(self, data: Any, requires_grad: Any = True, *_ignored: Any) -> TensorHandle:
        return self._rebuild_parameter(data, requires_grad)

    def _thnn_backend(self, *_ignored: Any) -> None:
        return None


def _widen(values: np.ndarray, storage_type: StorageType) -> np.ndarray:
    if storage_type.source_dtype == "bfloat16":
        widened = np.empty(values.shape, np.float32)
        widened.view(np.uint32)[...] = values.astype(np.uint32) << 16  # bf16 = the upper half of a float32
        return widened
    if storage_type.source_dtype == "float16":
        return values.astype(np.float32)
    if storage_type.source_dtype == "bool":
        return values != 0
    return values


def _materialize(pending: list[_PendingTensor], storage_bytes: Callable[[_StorageRef], bytes], source: str) -> None:
    """Fill every handle: `as_strided` over its storage's elements, then a copy."""
    for item in pending:
        ref = item.storage
        raw = storage_bytes(ref)
        itemsize = ref.storage_type.itemsize
        start, count = (0, ref.numel) if ref.view is None else ref.view
        if len(raw) < (start + count) * itemsize:
            raise CheckpointError(
                f"{source}: storage {ref.key} holds {len(raw)} bytes, needs {(start + count) * itemsize}"
            )
        elements = np.frombuffer(raw, dtype=ref.storage_type.disk_dtype, count=start + count)[start:]
        if all(item.size):
            strides = tuple(s * itemsize for s in item.stride)
            view = np.lib.stride_tricks.as_strided(elements[item.offset :], item.size, strides, writeable=False)
            values = view.copy()
        else:
            values = np.zeros(item.size, dtype=ref.storage_type.disk_dtype)
        item.handle.array = _widen(values, ref.storage_type)


def _load_zip(path: Path) -> Any:
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f"{source}: damaged zip checkpoint ({err})") from err
    with archive:
        pickles = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise CheckpointError(f"{source}: expected one '<folder>/data.pkl' in the zip, found {pickles[:4]}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if order != "little":
                raise CheckpointError(f"{source}: byte order {order!r} is not supported (little-endian only)")
        unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), source, legacy=False)
        root = _run(unpickler)
        cache: dict[str, bytes] = {}

        def storage_bytes(ref: _StorageRef) -> bytes:
            if ref.key not in cache:
                member = f"{prefix}data/{ref.key}"
                if member not in names:
                    raise CheckpointError(f"{source}: storage {ref.key} missing from the zip")
                cache[ref.key] = archive.read(member)
            return cache[ref.key]

        _materialize(unpickler.pending, storage_bytes, source)
    return root


def _run(unpickler: _RestrictedUnpickler) -> Any:
    try:
        return unpickler.load()
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure of a damaged file becomes one clear message
        raise CheckpointError(f"{unpickler.source}: cannot be unpickled ({type(err).__name__}: {err})") from err


def _load_legacy(path: Path) -> Any:
    source = str(path)
    with open(path, "rb") as f:

        def header() -> Any:
            return _run(_RestrictedUnpickler(f, source, legacy=True, header=True))

        if header() != LEGACY_MAGIC_NUMBER:
            raise CheckpointError(f"{source}: not a PyTorch checkpoint (neither zip nor legacy magic number)")
        version = header()
        if version != LEGACY_PROTOCOL_VERSION:
            raise CheckpointError(f"{source}: legacy protocol version {version!r}, expected {LEGACY_PROTOCOL_VERSION}")
        sys_info = header()
        if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) is not True:
            raise CheckpointError(f"{source}: written on a big-endian machine (or no system info); not supported")
        unpickler = _RestrictedUnpickler(f, source, legacy=True)
        root = _run(unpickler)
        keys = header()
        if not isinstance(keys, list) or not all(isinstance(k, str | int) for k in keys):
            raise CheckpointError(f"{source}: malformed storage key list")
        storages: dict[str, bytes] = {}
        for key in map(str, keys):
            if key not in unpickler.roots:
                raise CheckpointError(f"{source}: storage {key} is not used by the pickle")
            count_bytes = f.read(8)
            if len(count_bytes) != 8:
                raise CheckpointError(f"{source}: truncated (storage {key} missing)")
            (count,) = struct.unpack("<q", count_bytes)
            nbytes = count * unpickler.roots[key].itemsize
            if count < 0 or nbytes > 1 << 40:
                raise CheckpointError(f"{source}: storage {key} has an invalid size {count}")
            storages[key] = f.read(nbytes)
            if len(storages[key]) != nbytes:
                raise CheckpointError(f"{source}: truncated (storage {key} has {len(storages[key])} of {nbytes} bytes)")

    def storage_bytes(ref: _StorageRef) -> bytes:
        if ref.key not in storages:
            raise CheckpointError(f"{source}: storage {ref.key} has no data in the file")
        return storages[ref.key]

    _materialize(unpickler.pending, storage_bytes, source)
    return root


def read_pickled(path: str | Path) -> Any:
    """The checkpoint's object as the restricted unpickler rebuilds it: real containers, `TensorHandle`s for tensors
    (`.array`), `ModuleRecord`s (`.class_name`, `.state`) for modules and optimisers, `DeviceStub`s."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    with open(path, "rb") as f:
        lead = f.read(4)
    if not lead:
        raise CheckpointError(f"{path}: empty file")
    try:
        if lead == b"PK\x03\x04":
            return _load_zip(path)
        if tarfile.is_tarfile(path):
            raise CheckpointError(f"{path}: a tar archive (the very old PyTorch tar layout): not supported")
        return _load_legacy(path)
    except CheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - e.g. a zip member cut short: one clear message
        raise CheckpointError(f"{path}: damaged checkpoint ({type(err).__name__}: {err})") from err


@dataclass
class ModuleCheckpoint:
    """The weights of a pickled module: `state_dict` equals the original `model.state_dict()` (NumPy, float16 and
    bfloat16 widened to float32); `class_name` is the pickled class (below a DataParallel wrapper)."""

    state_dict: dict[str, np.ndarray]
    class_name: str
    training: bool
    data_parallel: bool
    metadata: dict[str, Any] = field(default_factory=dict)


def _mapping(record: ModuleRecord, attribute: str, source: str) -> Mapping[str, Any]:
    value = record.state.get(attribute, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"{source}: {record.class_name}.{attribute} is a {type(value).__name__}, not a dict")
    return value


def _collect_state(
    record: ModuleRecord, prefix: str, out: dict[str, np.ndarray], source: str, ancestors: tuple[int, ...] = ()
) -> None:
    """`state_dict()` order: own parameters, own persistent buffers, then the children."""
    if id(record) in ancestors or len(ancestors) > 64:
        raise CheckpointError(f"{source}: module tree loops or is too deep at {prefix or 'the root'}")
    skipped = record.state.get("_non_persistent_buffers_set") or set()
    if not isinstance(skipped, set | frozenset):
        raise CheckpointError(f"{source}: {prefix}_non_persistent_buffers_set is a {type(skipped).__name__}")
    entries = list(_mapping(record, "_parameters", source).items())
    entries += [(n, b) for n, b in _mapping(record, "_buffers", source).items() if n not in skipped]
    for name, value in entries:
        if value is None:
            continue
        if not isinstance(name, str) or not isinstance(value, TensorHandle) or value.array is None:
            raise CheckpointError(f"{source}: {prefix}{name} is a {type(value).__name__}, not a tensor")
        out[f"{prefix}{name}"] = value.array
    for name, child in _mapping(record, "_modules", source).items():
        if child is None:
            continue
        if not isinstance(name, str) or not isinstance(child, ModuleRecord):
            raise CheckpointError(f"{source}: submodule {prefix}{name} is a {type(child).__name__}")
        _collect_state(child, f"{prefix}{name}.", out, source, (*ancestors, id(record)))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, TensorHandle) and value.array is not None and value.array.ndim == 0:
        return value.array.item()
    return _NOT_PLAIN


_NOT_PLAIN = object()


def read_module_checkpoint(path: str | Path) -> ModuleCheckpoint:
    """The state dict of the `model` entry of a foamliu/DCP-style checkpoint ({epoch, ..., model, optimizer}).

    The optimiser is ignored; other top-level entries go to `metadata` when they are plain values."""
    source = str(path)
    root = read_pickled(path)
    if not isinstance(root, dict) or "model" not in root:
        found = f"keys {sorted(map(str, root))[:12]}" if isinstance(root, dict) else f"a {type(root).__name__}"
        raise CheckpointError(f"{source}: expected a dict with a 'model' entry (a pickled module), found {found}")
    model = root["model"]
    if not isinstance(model, ModuleRecord):
        hint = " (a state dict: read it with port.load)" if isinstance(model, Mapping) else ""
        raise CheckpointError(f"{source}: 'model' is a {type(model).__name__}, not a pickled module{hint}")
    data_parallel = model.class_name == DATA_PARALLEL
    if data_parallel:
        model = _mapping(model, "_modules", source).get("module")
        if not isinstance(model, ModuleRecord):
            raise CheckpointError(f"{source}: DataParallel without a wrapped 'module'")
    if model.class_name in OPTIMIZER_CLASSES:
        raise CheckpointError(f"{source}: 'model' holds an optimiser ({model.class_name})")
    state: dict[str, np.ndarray] = {}
    _collect_state(model, "", state, source)
    training = model.state.get("training", False)
    if not isinstance(training, bool):
        raise CheckpointError(f"{source}: the module's training flag is a {type(training).__name__}")
    metadata = {str(k): _plain(v) for k, v in root.items() if k not in ("model", "optimizer")}
    metadata = {k: v for k, v in metadata.items() if v is not _NOT_PLAIN}
    return ModuleCheckpoint(state, model.class_name, training, data_parallel, metadata)
