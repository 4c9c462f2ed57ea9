"""Argument helpers shared by the command-line scripts (no JAX import: bad arguments fail fast).

Exit statuses of predict.py and evaluate.py (`EXIT_*`): 0 every image was written / evaluated; 1 some were skipped
(each named on its own line) but at least one was written / evaluated; 2 nothing was, or the command line was wrong
(argparse's own errors are 2 as well).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from jaxmatte.data.io import MAX_PIXELS_ENV, parse_max_pixels, set_max_pixels

EXIT_OK, EXIT_SKIPPED, EXIT_FAILED = 0, 1, 2
DEFAULT_READ_THREADS = min(4, os.cpu_count() or 1)  # predict / evaluate: image reading beside the model


def exit_status(done: int, skipped: int) -> int:
    """0 when nothing was skipped, 1 when something was but at least one item was done, else 2."""
    if done == 0:
        return EXIT_FAILED
    return EXIT_SKIPPED if skipped else EXIT_OK


def count_kinds(kinds: list[str]) -> str:
    """'3 unreadable, 1 too large' from a list of problem kinds, most frequent first."""
    counts: dict[str, int] = {}
    for kind in kinds:
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{count} {kind}" for kind, count in sorted(counts.items(), key=lambda item: -item[1]))


DEVICES = ("auto", "cpu", "gpu")
GPU_EXTRA = "pip install 'jaxmatte[gpu]'"


class DeviceError(RuntimeError):
    """The device asked for is not there (one line)."""


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="where JAX runs: auto (a GPU when JAX finds one, else the CPU), cpu, or gpu (an error when none is "
        "found; default: auto)",
    )


def select_device(choice: str = "auto") -> str:
    """Make JAX run on `choice` and return the start-up line, e.g. ``device: gpu (NVIDIA H100 80GB HBM3) x1, jax
    0.10.2``. Call it before anything starts JAX's backends: ``cpu`` then keeps them to the CPU (on a GPU machine
    too); ``gpu`` raises `DeviceError` when JAX finds no GPU; ``auto`` leaves JAX's own choice ($JAX_PLATFORMS, else
    a GPU when there is one). Imports JAX."""
    if choice not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {choice!r}")
    import jax

    if choice == "cpu":
        jax.config.update("jax_platforms", "cpu")  # takes effect when no backend has started yet
        devices = jax.devices("cpu")
        if jax.default_backend() != "cpu":  # backends were already up: make the CPU the default device
            jax.config.update("jax_default_device", devices[0])
    elif choice == "gpu":
        try:
            devices = jax.devices("gpu")
        except RuntimeError:
            found = ", ".join(sorted({device.platform for device in jax.devices()}))
            raise DeviceError(
                f"--device gpu: JAX finds no GPU (only {found}); install JAX's GPU build with {GPU_EXTRA}"
            ) from None
    else:
        devices = jax.devices()
    return device_line(devices)


def device_line(devices: list[Any]) -> str:
    """``device: PLATFORM (KIND) xN, jax VERSION`` for a list of JAX devices (the kind is left out where it only
    repeats the platform, as on CPUs)."""
    import jax

    platform = devices[0].platform
    kinds = sorted({str(device.device_kind) for device in devices} - {platform})
    processes = f" in {jax.process_count()} processes" if jax.process_count() > 1 else ""
    kind = f" ({', '.join(kinds)})" if kinds else ""
    return f"device: {platform}{kind} x{len(devices)}{processes}, jax {jax.__version__}"


def pixel_limit(text: str) -> int:
    try:
        return parse_max_pixels(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_max_pixels_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--max-pixels",
        type=pixel_limit,
        help=f"refuse images with more pixels than this, from their header (e.g. 150M; default: ${MAX_PIXELS_ENV} "
        "or 100M)",
    )


def apply_max_pixels(args: argparse.Namespace) -> None:
    """Set the reading limit from --max-pixels, else check $JAXMATTE_MAX_PIXELS (ValueError when malformed)."""
    if args.max_pixels is not None:
        set_max_pixels(args.max_pixels)
        return
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if text:
        try:
            set_max_pixels(parse_max_pixels(text))
        except ValueError as exc:
            raise ValueError(f"{MAX_PIXELS_ENV}: {exc}") from None


def writable(folder: Path) -> bool:
    """Whether a file can be created in the existing `folder`: the permission bits, then a probe file that is
    removed at once (the bits do not stop root; a read-only or pseudo file system does)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        handle, probe = tempfile.mkstemp(prefix=".jaxmatte-probe-", dir=folder)
    except OSError:
        return False
    os.close(handle)
    os.unlink(probe)
    return True


def output_problem(path: Path, option: str, *, folder: bool) -> str | None:
    """Why `path` cannot be written as a folder (`folder`) or a file, found without leaving anything behind; None if
    it can. Checks what exists (a file where a folder is wanted, or the reverse) and whether the nearest existing
    folder takes a new file (`writable`)."""
    want = "a folder" if folder else "a file"
    if path.exists():
        if path.is_dir() != folder:
            return f"{option} {path}: exists and is {'a folder' if path.is_dir() else 'a file'}, not {want}"
        target = path if folder else path.parent
        if not writable(target) or not (folder or os.access(path, os.W_OK)):
            return f"{option} {path}: not writable"
        return None
    if path.is_symlink():
        return f"{option} {path}: a broken symbolic link"
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        return f"{option} {path}: cannot be created, {existing} is a file"
    if not writable(existing):
        return f"{option} {path}: cannot be created, {existing} is not writable"
    return None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_predictor_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options of a `jaxmatte.predict.Predictor`: device, precision, batch size and preprocessing overrides."""
    add_device_argument(parser)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="compute precision")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument(
        "--resize", choices=("stretch", "letterbox", "native"), help="override the checkpoint's geometry"
    )
    parser.add_argument(
        "--input-size", type=positive_int, help="override the checkpoint's input side (native: pad to a multiple)"
    )
    parser.add_argument(
        "--quantization", choices=("round", "truncate"), help="override the checkpoint's x255 quantisation"
    )
    parser.add_argument(
        "--read-threads",
        type=non_negative_int,
        default=DEFAULT_READ_THREADS,
        help="threads that read, decode and resize images while the model runs (0: in the main thread; default: "
        "min(4, cores) = %(default)s)",
    )


def add_high_res_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--high-res` / `--tile`: the high-resolution mode of systems with a `System.high_res` split (TSR-Matte)."""
    parser.add_argument(
        "--high-res",
        action="store_true",
        help="coarse stage at the checkpoint's input size, refiner at each photo's full resolution in overlapping "
        "tiles (TSR-Matte)",
    )
    parser.add_argument("--tile", type=positive_int, help="with --high-res: tile side in pixels (default 1024)")


def high_res_problem(args: argparse.Namespace) -> str | None:
    """The usage error of `add_high_res_arguments` options, else None."""
    return "--tile needs --high-res" if args.tile is not None and not args.high_res else None


def make_predictor(args: argparse.Namespace, *, resize_policy: str | None = None, input_size: int | None = None) -> Any:
    """A Predictor for `args.checkpoint` from `add_predictor_arguments` options; command-line overrides win over
    `resize_policy` / `input_size` (e.g. from an experiment config). Imports JAX."""
    from jaxmatte.predict import Predictor, precision_dtype

    return Predictor(
        args.checkpoint,
        dtype=precision_dtype(args.precision),
        batch_size=args.batch_size,
        resize_policy=args.resize or resize_policy,
        input_size=args.input_size or input_size,
        quantization=args.quantization,
        read_threads=args.read_threads,
        high_res=getattr(args, "high_res", False),  # predict.py's --high-res / --tile
        tile=getattr(args, "tile", None),
    )


def configure_logging(level: int = logging.WARNING) -> None:
    """One line per record on stderr, `LEVEL logger: message`, for the scripts (train.py: INFO, predict / evaluate:
    WARNING). Kept as is when the root logger already has handlers (an embedding program's, or a test's)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
