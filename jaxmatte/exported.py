"""Exported models: a saved model's jitted forward pass serialised with `jax.export` (StableHLO), its weights and what
is needed to feed it, in one file that runs without jaxmatte's model code (no flax, no `jaxmatte.models`, no
registry). `port/export.py` writes it; `load_exported` reads it:

    model = load_exported("model.jax")
    alphas = model.predict_arrays([rgb_uint8, ...])            # as Predictor.predict_arrays: HxW uint8 each
    canvas = model(images)                                       # (B, S, S, 3) normalised float32 -> (B, S, S, 1)
    trimaps = load_exported("segtrimap.jax")(images, masks)      # systems with a second input take it second

File layout (version 1):

    line 1      "jaxmatte-export 1": format name and version
    line 2      the header: one line of UTF-8 JSON, see below (``head -n 2 model.jax`` shows both)
    payload     from the next multiple of 64 bytes: the serialised `jax.export.Exported` (the ``stablehlo``
                section), then the weights (the ``weights`` section): raw little-endian arrays, each starting at a
                multiple of 64 bytes

Header keys: ``format`` ("jaxmatte-export"), ``version`` (1), ``family``, ``output`` ("alpha": alpha in [0, 1];
"trimap": class logits 0 background, 1 unknown, 2 foreground), ``batch`` (an int, or "dynamic": any batch size),
``precision`` ("fp32" / "bf16" compute; weights are float32), ``inputs`` (per input in call order: ``name`` (image,
input_mask, trimap), ``shape`` (ints and symbolic names: "b" the batch, "h" / "w" the canvas of native-size models,
"32*h" when the canvas is padded to a multiple of 32), ``dtype``, ``values``: what the array holds), ``result``
(shape, dtype, values), ``constraints`` (on the symbolic sizes, e.g. "h >= 32"), ``min_side`` (the smallest canvas
side the model takes), ``preprocessing`` (the `jaxmatte.preprocessing.Preprocessing` record, in its
``info["preprocessing"]`` form), ``platforms`` (those the StableHLO was lowered for, e.g. cpu and cuda),
``source`` (checkpoint, jaxmatte and jax versions), and the sections (``offset`` from the payload's start,
``length``, ``sha256``; ``weights.arrays``: each array's ``offset``, ``shape`` and ``dtype``). The exported
function is ``f(weights, *inputs)``, the weights being the list of arrays in file order; `ExportedModel` holds them.

A file that is not an export, is cut short or whose bytes changed gives one `ExportFileError` line naming the file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte import canvas, outputs
from jaxmatte.preprocessing import Preprocessing

FORMAT = "jaxmatte-export"
VERSION = 1
MAGIC = f"{FORMAT} {VERSION}\n".encode()
ALIGN = 64
MAX_HEADER = 64 << 20  # a longer line is not a header
SECTIONS = ("stablehlo", "weights")
REQUIRED = ("family", "output", "batch", "precision", "inputs", "result", "preprocessing", "platforms", *SECTIONS)
INPUT_VALUES = {
    "image": "RGB / 255, minus preprocessing.mean, over preprocessing.std, on the canvas (zero padding)",
    "input_mask": "the object mask in {0, 1} on the canvas, 0 outside the image",
    "trimap": "trimap / 255 on the canvas (0 background, 128/255 unknown, 1 foreground), 0 outside the image",
}
RESULT_VALUES = {
    "alpha": "alpha in [0, 1] on the canvas",
    "trimap": "class logits on the canvas (0 background, 1 unknown, 2 foreground)",
}
GPU_PLATFORMS = ("cuda", "rocm")

__all__ = ["ExportFileError", "ExportedModel", "InputSpec", "load_exported", "read_header", "write_file"]


class ExportFileError(ValueError):
    """A file that cannot be read as an export (one line, naming the file)."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input of an exported forward pass: `shape` holds ints and symbolic sizes ("b", "h", "32*h")."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"
    values: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "values": self.values}

    @property
    def text(self) -> str:
        return f"{self.name} ({', '.join(str(d) for d in self.shape)}) {self.dtype}"


# ------------------------------------------------------------------------------------------------------ the file


def write_file(
    path: str | os.PathLike, header: dict[str, Any], stablehlo: bytes, weights: Sequence[np.ndarray]
) -> Path:
    """Write an export (see the module docstring): `header` gets the sections' offsets, lengths and checksums.
    Written to a temporary file beside `path` and renamed, so a failed write leaves no half file."""
    path = Path(path)
    arrays = [np.ascontiguousarray(np.asarray(weight)) for weight in weights]
    for array in arrays:
        if array.dtype.byteorder == ">":
            raise ValueError(f"weights are stored little-endian, got {array.dtype}")
    weights_offset = _aligned(len(stablehlo))
    entries, chunks, position = [], [], 0
    for array in arrays:
        offset = _aligned(position)
        chunks.extend([bytes(offset - position), memoryview(array).cast("B")])
        entries.append({"offset": offset, "shape": list(array.shape), "dtype": array.dtype.name})
        position = offset + array.nbytes
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    header = {
        "format": FORMAT,
        "version": VERSION,
        **header,
        "stablehlo": {"offset": 0, "length": len(stablehlo), "sha256": hashlib.sha256(stablehlo).hexdigest()},
        "weights": {"offset": weights_offset, "length": position, "sha256": digest.hexdigest(), "arrays": entries},
    }
    encoded = json.dumps(header).encode() + b"\n"  # JSON without indent has no line break inside
    start = len(MAGIC) + len(encoded)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(MAGIC + encoded + bytes(_aligned(start) - start))
            handle.write(stablehlo)
            handle.write(bytes(weights_offset - len(stablehlo)))
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """(header, where the payload starts) of an export; `ExportFileError` when `path` is not one or is cut short."""
    path = Path(path)
    if not path.is_file():
        raise ExportFileError(f"{path}: no such file")
    size = path.stat().st_size
    with open(path, "rb") as handle:
        start = handle.readline(len(MAGIC))
        if not start.startswith(FORMAT.encode()):
            raise ExportFileError(f"{path}: not a jaxmatte export (no '{FORMAT}' line; write one with port/export.py)")
        if not start.startswith(MAGIC):
            first = start.split(b"\n")[0].decode(errors="replace")
            raise ExportFileError(
                f"{path}: export format '{first}' is not the one this jaxmatte reads ({MAGIC.decode().strip()!r})"
            )
        line = handle.readline(MAX_HEADER)
        if not line.endswith(b"\n"):
            raise ExportFileError(f"{path}: truncated or damaged (the header line does not end)")
        try:
            header = json.loads(line.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ExportFileError(f"{path}: damaged header ({err})") from None
    payload = _aligned(len(MAGIC) + len(line))
    missing = [key for key in REQUIRED if key not in header] if isinstance(header, dict) else list(REQUIRED)
    if missing:
        raise ExportFileError(f"{path}: damaged header (no {', '.join(missing)})")
    end = max(int(header[name]["offset"]) + int(header[name]["length"]) for name in SECTIONS)
    if payload + end > size:
        raise ExportFileError(f"{path}: truncated ({payload + end} bytes expected, the file has {size})")
    return header, payload


def load_exported(path: str | os.PathLike, *, verify: bool = True) -> ExportedModel:
    """The export at `path`, ready to run on JAX's default device. `verify`: compare both sections with their
    checksums first (a damaged file is an `ExportFileError`, never a crash or silently wrong weights)."""
    path = Path(path)
    header, payload = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    stablehlo = _section(data, payload, header["stablehlo"])
    weights_bytes = _section(data, payload, header["weights"])
    if verify:
        if hashlib.sha256(stablehlo).hexdigest() != header["stablehlo"]["sha256"]:
            raise ExportFileError(f"{path}: damaged (the StableHLO section does not match its checksum)")
        digest = hashlib.sha256()
        for block in range(0, len(weights_bytes), 1 << 24):
            digest.update(weights_bytes[block : block + (1 << 24)])
        if digest.hexdigest() != header["weights"]["sha256"]:
            raise ExportFileError(f"{path}: damaged (the weights do not match their checksum)")
    import jax
    from jax import export

    platform = jax.devices()[0].platform
    wanted = GPU_PLATFORMS if platform == "gpu" else (platform,)
    if not set(wanted) & set(header["platforms"]):
        raise ExportFileError(
            f"{path}: exported for {', '.join(header['platforms'])}, but JAX runs on {platform} here; export again "
            f"with port/export.py --platforms {','.join([*header['platforms'], wanted[0]])}"
        )
    try:
        exported = export.deserialize(bytearray(stablehlo))
        weights = []
        for entry in header["weights"]["arrays"]:
            dtype = np.dtype(entry["dtype"])
            count = int(np.prod(entry["shape"], dtype=np.int64))
            start = int(entry["offset"])
            array = np.frombuffer(weights_bytes, dtype, count, start).reshape(entry["shape"])
            weights.append(jax.device_put(array))
    except Exception as err:  # a well-formed header over a payload jax cannot read
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportFileError(f"{path}: cannot be read by jax {jax.__version__} ({first})") from None
    del data
    return ExportedModel(path, header, exported, weights)


def _aligned(offset: int) -> int:
    return -(-offset // ALIGN) * ALIGN


def _section(data: np.ndarray, payload: int, entry: dict[str, Any]) -> memoryview:
    start = payload + int(entry["offset"])
    return memoryview(data[start : start + int(entry["length"])])


# ----------------------------------------------------------------------------------------------------- the model


class ExportedModel:
    """An exported forward pass with its weights and metadata (`load_exported`).

    ``model(*inputs)``: the canvas result (float32) of prepared inputs, shaped as `inputs` says. `predict_arrays`:
    the same results as `jaxmatte.predict.Predictor.predict_arrays` of the exported model, with the recorded
    pre- and post-processing (numpy / OpenCV).
    """

    def __init__(self, path: Path, header: dict[str, Any], exported: Any, weights: list[Any]):
        import jax

        self.path = path
        self.header = header
        self.family: str = header["family"]
        self.output: str = header["output"]
        self.batch: int | None = None if header["batch"] == "dynamic" else int(header["batch"])
        self.precision: str = header["precision"]
        self.inputs = tuple(
            InputSpec(spec["name"], tuple(spec["shape"]), spec["dtype"], spec.get("values", ""))
            for spec in header["inputs"]
        )
        self.min_side = int(header.get("min_side", 1))
        self.platforms = tuple(header["platforms"])
        self.preprocessing = Preprocessing.from_dict(header["preprocessing"], source=str(path))
        self._exported = exported
        self._weights = weights
        self._run = jax.jit(exported.call)

    @property
    def companion(self) -> str | None:
        """The second input ("input_mask" or "trimap"), or None."""
        return self.inputs[1].name if len(self.inputs) > 1 else None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary: file, family, output, batch, inputs, preprocessing (`Preprocessing.describe`)."""
        return {
            "export": str(self.path),
            "family": self.family,
            "output": self.output,
            "batch": self.header["batch"],
            "precision": self.precision,
            "inputs": [spec.to_dict() for spec in self.inputs],
            "platforms": list(self.platforms),
            **self.preprocessing.describe(),
        }

    def __call__(self, *inputs: np.ndarray) -> np.ndarray:
        """The float32 canvas result of `inputs` (one array per `InputSpec`, in order), on the host."""
        arrays = self._checked(inputs)
        return np.asarray(self._run(self._weights, *arrays), dtype=np.float32)

    def predict_arrays(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray] | None = None,
        *,
        floats: bool = False,
        batch_size: int | None = None,
    ) -> list[np.ndarray]:
        """HxW uint8 result for each HxWx3 uint8 RGB image (any sizes) [with its object mask / trimap], in order; with
        `floats` (alpha outputs), the HxW float32 alphas before quantisation. Batches of `batch_size` (a fixed-batch
        export: its batch; dynamic: default 1), the last one padded with copies of its last input."""
        size = batch_size or self.batch or 1
        if self.batch is not None and size != self.batch:
            raise ValueError(f"{self.path} runs batches of {self.batch}, not {size}")
        if masks is not None and len(masks) != len(images):
            raise ValueError(f"{len(images)} images but {len(masks)} masks")
        if floats and self.output != "alpha":
            raise ValueError(f"{self.family} predicts {self.output}s; float results exist for alpha outputs only")
        policy, results = self.preprocessing.policy, []
        for start in range(0, len(images), size):
            chunk = range(start, min(start + size, len(images)))
            prepared = [
                canvas.prepare(
                    self.preprocessing,
                    images[i],
                    self.companion,
                    masks[i] if masks is not None else None,
                    family=self.family,
                )
                for i in chunk
            ]
            groups: dict[tuple[int, ...], list[int]] = {}
            for index, (arrays, _) in enumerate(prepared):
                groups.setdefault(arrays[0].shape, []).append(index)
            host: list[Any] = [None] * len(prepared)
            for indices in groups.values():
                inputs = [prepared[i][0] for i in indices]
                inputs.extend([inputs[-1]] * (size - len(inputs)))
                values = self(*(np.stack(column) for column in zip(*inputs, strict=True)))
                for position, index in enumerate(indices):
                    host[index] = values[position]
            for prediction, (_, placement) in zip(host, prepared, strict=True):
                if floats:
                    results.append(policy.restore(prediction, placement))
                else:
                    results.append(
                        outputs.finish(self.output, prediction, placement, policy, self.preprocessing.quantization)
                    )
        return results

    def _checked(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """float32 arrays of `inputs`, checked against the specs (count, rank, fixed sizes, one value per symbol)."""
        if len(inputs) != len(self.inputs):
            names = " and ".join(spec.name for spec in self.inputs)
            raise ValueError(f"{self.family} takes {names} ({len(self.inputs)} arrays), got {len(inputs)}")
        arrays = [np.asarray(array, dtype=np.float32) for array in inputs]
        sizes: dict[str, int] = {}  # symbol -> its value, the same in every input
        for spec, array in zip(self.inputs, arrays, strict=True):
            if array.ndim != len(spec.shape) or not all(
                _fits(want, got, sizes) for want, got in zip(spec.shape, array.shape, strict=True)
            ):
                raise ValueError(f"expected {spec.text}, got {spec.name} of shape {array.shape}")
            if min(array.shape[1:3]) < self.min_side:
                raise ValueError(
                    f"{self.family} needs canvases of at least {self.min_side} px per side, got {array.shape[1:3]}"
                )
        return arrays


def _fits(want: int | str, got: int, sizes: dict[str, int]) -> bool:
    """Whether size `got` fits the spec's `want`: an int, a symbol ("b") or a multiple of one ("32*h")."""
    if isinstance(want, int):
        return want == got
    multiple, _, symbol = want.rpartition("*")
    factor = int(multiple) if multiple else 1
    return got % factor == 0 and sizes.setdefault(symbol, got // factor) == got // factor
