"""Convert PyTorch weights into a jaxmatte directory that `jaxmatte.load_pretrained(DIR)` reads.

    python port/convert.py KIND --src FILE --out DIR [options]

Every module of `port/` that declares ``CONVERTERS`` (a tuple of `port.converter.Converter`) adds its kinds;
`python port/convert.py KIND --help` lists a kind's options.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import port  # noqa: E402
from port import load  # noqa: E402
from port.converter import Converted, Converter  # noqa: E402

__all__ = ["Converted", "Converter", "build_parser", "converters", "main", "run"]


def converters() -> dict[str, Converter]:
    """Kind -> converter, from every `port` module's ``CONVERTERS``; a kind declared twice is an error."""
    found: dict[str, Converter] = {}
    for info in sorted(pkgutil.iter_modules(port.__path__), key=lambda i: i.name):
        if info.name in ("convert", "converter"):
            continue
        module = importlib.import_module(f"port.{info.name}")
        for converter in getattr(module, "CONVERTERS", ()):
            if converter.kind in found:
                raise RuntimeError(f"converter kind {converter.kind!r} is declared twice (port.{info.name})")
            found[converter.kind] = converter
    return found


def timm_resized_checkpoint(
    src: Path, model_name: str, img_size: list[int] | None, window_size: int | None, *, allow: tuple[str, ...] = ()
) -> Any:
    """Let timm resample position embeddings / relative-position tables while loading `src` for new sizes.

    `src` is read here (weights-only); timm gets the tensors, never the file."""
    import timm
    import torch

    state_dict = load.unwrap_state_dict(load.read_checkpoint(src, allow=allow), source=str(src))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()}
    overrides: dict[str, Any] = {}
    if img_size:
        overrides["img_size"] = tuple(img_size) if len(img_size) == 2 else img_size[0]
    if window_size:
        overrides["window_size"] = window_size
    overlay = {"state_dict": tensors, "file": None, "url": None, "hf_hub_id": None, "source": None}
    model = timm.create_model(model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay=overlay, **overrides)
    return {k: load._tensor_to_numpy(v) for k, v in model.state_dict().items()}


def non_finite(values: dict[str, np.ndarray]) -> dict[str, int]:
    """Name -> count of NaN/Inf entries, for the floating arrays that have any."""
    counts = {}
    for name, value in values.items():
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            bad = array.size - int(np.count_nonzero(np.isfinite(array)))
            if bad:
                counts[name] = bad
    return counts


def check_finite(converted: Converted, source: str, shown: int = 5) -> dict[str, Any] | None:
    """Warn on stderr when the converted parameters hold NaN/Inf; returns the record for `info` (None if clean)."""
    from jaxmatte.pretrained import stored_values

    counts = non_finite(stored_values(converted.model))
    if not counts:
        return None
    total, names = sum(counts.values()), sorted(counts)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    print(
        f"warning: {source or 'the source'}: {total} non-finite values (NaN/Inf) in {len(names)} parameters: "
        f"{', '.join(names[:shown])}{more}",
        file=sys.stderr,
    )
    return {"values": total, "parameters": len(names), "first": names[:shown]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="port/convert.py", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, converter in converters().items():
        sub = kinds.add_parser(kind, help=converter.help, description=converter.help, allow_abbrev=False)
        src_help = "weights file: .safetensors, .pth, .pt, .bin"
        sub.add_argument("--src", type=Path, required=converter.needs_src, help=src_help)
        sub.add_argument("--out", type=Path, required=True, help="output directory")
        if converter.timm_resizing:
            resize = sub.add_argument_group("resizing with timm before conversion (needs the timm model name)")
            resize.add_argument("--timm-model", help="timm architecture of the file, e.g. vit_base_patch16_224")
            resize.add_argument("--img-size", type=int, nargs="+", metavar="N", help="new input size: S or H W")
            if converter.window_size:
                resize.add_argument("--window-size", type=int, help="new window size")
        converter.add_arguments(sub)
    return parser


def run(argv: list[str] | None = None) -> Converted:
    args = build_parser().parse_args(argv)
    converter = converters()[args.kind]
    timm_model = getattr(args, "timm_model", None)
    img_size = getattr(args, "img_size", None) if converter.timm_resizing else None
    window_size = getattr(args, "window_size", None) if converter.timm_resizing else None
    if timm_model:
        if args.src is None:
            raise SystemExit("--timm-model needs --src")
        checkpoint = timm_resized_checkpoint(
            args.src, timm_model, img_size, window_size, allow=converter.allowed_classes
        )
    elif img_size or window_size:
        raise SystemExit("--img-size/--window-size need --timm-model (timm does the resampling)")
    elif args.src is None or converter.reads_src:
        checkpoint = None
    else:
        checkpoint = load.read_checkpoint(args.src, allow=converter.allowed_classes)
    source = str(args.src) if args.src is not None else ""
    converted = converter.convert(checkpoint, source=source, args=args)
    from jaxmatte import save_pretrained

    info = {"kind": args.kind, **({"source": args.src.name} if args.src else {}), **converted.info}
    unusual = check_finite(converted, source)
    if unusual:
        info["non_finite"] = unusual
    save_pretrained(converted.model, converted.config, args.out, info=info)
    print(f"wrote {args.out} ({type(converted.model).__name__}, {converted.config})")
    return converted


def main(argv: list[str] | None = None) -> int:
    from port.table import PortError

    try:
        run(argv)
    except (PortError, load.CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
