"""Export a saved model's forward pass as one self-contained file (StableHLO via `jax.export`, its weights, its input
specs and preprocessing record), which `jaxmatte.exported.load_exported` runs without jaxmatte's model code.

    python port/export.py DIR --out model.jax [--batch N|dynamic] [--input-size S] [--precision fp32|bf16]
        [--platforms cpu,cuda] [--canvas HxW]

DIR: anything `jaxmatte.predict.Predictor` reads (a `port/convert.py` directory, a `save_pretrained` directory, a
training workdir: its best/, else last/). The forward pass is the system's inference output (alpha, or trimap
logits) on prepared canvases, at the recorded input size (`--input-size` overrides it) and compute precision.
`--batch N` fixes the batch size; `--batch dynamic` exports a symbolic one (any batch size runs). Models that run
each image at its own size (resize policy native, e.g. DIM) are exported with symbolic height and width (within
the model's minimum side); where the model's code cannot be traced that way, `--canvas HxW` exports one canvas
size. The file layout is described in `jaxmatte/exported.py`.

Exit status: 0 written; 2 a usage error, a directory that holds no model, or a model that cannot be exported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jaxmatte.cli import output_problem, positive_int  # noqa: E402

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
DEFAULT_PLATFORMS = ("cpu", "cuda")
COMPANION_CHANNELS = 1
EXAMPLES = """examples:
  python port/export.py ckpt/tsr_base --out tsr.jax                        # batch 1, recorded size and precision
  python port/export.py runs/tsr --out tsr_b8_bf16.jax --batch 8 --precision bf16
  python port/export.py ckpt/segtrimap_020 --out segtrimap.jax --batch dynamic
  python port/export.py ckpt/dim_pruned --out dim.jax --batch dynamic     # symbolic batch, height and width

then, without jaxmatte's model code:
  from jaxmatte.exported import load_exported
  alphas = load_exported("tsr.jax").predict_arrays([rgb_uint8])"""


class ExportRefused(ValueError):
    """A model that cannot be exported as asked (one line)."""


def batch_size(text: str) -> int | None:
    """--batch: a positive int, or "dynamic" (None)."""
    if text == "dynamic":
        return None
    try:
        return positive_int(text)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"expected a positive batch size or 'dynamic', got {text!r}") from None


def platforms(text: str) -> tuple[str, ...]:
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in chosen if name not in PLATFORMS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"platforms are a comma-separated subset of {', '.join(PLATFORMS)}; got {text!r}"
        )
    return chosen


def canvas_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        height, width = (int(part) for part in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 480x640), got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
    return height, width


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Export a saved model's forward pass (StableHLO, weights, input specs, preprocessing) to one "
        "file that runs without jaxmatte's model code.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("directory", type=Path, help="converted directory, save_pretrained directory or workdir")
    parser.add_argument("--out", type=Path, required=True, help="the export file to write (e.g. model.jax)")
    parser.add_argument(
        "--batch", type=batch_size, default=1, help="batch size, or 'dynamic' for any (default: %(default)s)"
    )
    parser.add_argument("--input-size", type=positive_int, help="override the recorded canvas side (native: multiple)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="compute precision")
    parser.add_argument(
        "--platforms",
        type=platforms,
        default=DEFAULT_PLATFORMS,
        help=f"platforms to lower for, comma-separated (default: {','.join(DEFAULT_PLATFORMS)})",
    )
    parser.add_argument(
        "--canvas", type=canvas_size, help="native-size models: export this one canvas size HxW instead of any"
    )
    return parser


def export_model(
    directory: str | Path,
    *,
    batch: int | None = 1,
    input_size: int | None = None,
    precision: str = "fp32",
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
    canvas: tuple[int, int] | None = None,
) -> tuple[dict[str, Any], bytes, list[Any]]:
    """(header, serialised `jax.export.Exported`, weights) of the model in `directory`; see the module docstring.
    `batch` None: a symbolic batch. `ExportRefused` when the model cannot be exported as asked."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from jax import export

    import jaxmatte
    from jaxmatte import exported as exported_file
    from jaxmatte import pretrained
    from jaxmatte.predict import Predictor, precision_dtype

    predictor = Predictor(directory, dtype=precision_dtype(precision), input_size=input_size)
    pre, family = predictor.preprocessing, predictor.family
    minimum = int(getattr(predictor.model, "min_input_size", 1))
    multiple = pre.size
    names = ["image", *([predictor.companion] if predictor.companion else [])]
    channels = {"image": 3, **{name: COMPANION_CHANNELS for name in names[1:]}}

    symbols, constraints = [], []
    if batch is None:
        symbols.append("b")
    if pre.policy.fixed_shape:
        if canvas is not None:
            raise ExportRefused(
                f"--canvas is for models that run at each image's own size; {family} runs on a "
                f"{pre.size}x{pre.size} canvas (set its side with --input-size)"
            )
        spatial: list[Any] = [pre.size, pre.size]
    elif canvas is not None:
        bad = [side for side in canvas if side % multiple or side < minimum]
        if bad:
            raise ExportRefused(
                f"--canvas {canvas[0]}x{canvas[1]}: {family} canvases are multiples of {multiple} of at least "
                f"{minimum} px per side"
            )
        spatial = list(canvas)
    else:
        symbols += ["h", "w"]
        spatial = [f"{multiple}*{s}" if multiple > 1 else s for s in ("h", "w")]
        constraints = [f"{side} >= {minimum}" for side in spatial] if minimum > multiple else []
    dims = export.symbolic_shape(", ".join(symbols), constraints=constraints) if symbols else ()
    scope = dict(zip(symbols, dims, strict=True))

    def size(dim: Any) -> Any:
        if isinstance(dim, int):
            return dim
        factor, _, symbol = dim.rpartition("*")
        return int(factor) * scope[symbol] if factor else scope[symbol]

    leading = batch if batch is not None else "b"
    shapes = {name: [leading, *spatial, channels[name]] for name in names}
    specs = [jax.ShapeDtypeStruct(tuple(size(d) for d in shapes[name]), jnp.float32) for name in names]

    graphdef, stored, rest = nnx.split(predictor.model, pretrained.STORED, ...)
    leaves, treedef = jax.tree.flatten(stored)
    infer = predictor.system.infer

    def forward(weights: list[Any], *inputs: Any) -> Any:
        model = nnx.merge(graphdef, jax.tree.unflatten(treedef, weights), rest)
        return infer(model, *inputs).astype(jnp.float32)

    weight_specs = [jax.ShapeDtypeStruct(leaf.shape, leaf.dtype) for leaf in leaves]
    try:
        result = export.export(jax.jit(forward), platforms=platforms)(weight_specs, *specs)
    except Exception as err:
        if pre.policy.fixed_shape or canvas is not None:
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportRefused(
            f"{family} runs each image at its own size, and its forward pass cannot be traced with symbolic height "
            f"and width ({first}); export each canvas size you need with --canvas HxW (an image's size rounded up "
            f"to multiples of {multiple}, at least {minimum} px per side, e.g. --canvas {max(480, minimum)}x"
            f"{max(640, minimum)} for a 480x640 image)"
        ) from None
    (out,) = result.out_avals
    header = {
        "family": family,
        "output": predictor.output,
        "batch": batch if batch is not None else "dynamic",
        "precision": precision,
        "inputs": [
            exported_file.InputSpec(name, tuple(shapes[name]), "float32", exported_file.INPUT_VALUES[name]).to_dict()
            for name in names
        ],
        "result": {
            "shape": [d if isinstance(d, int) else str(d) for d in out.shape],
            "dtype": "float32",
            "values": exported_file.RESULT_VALUES[predictor.output],
        },
        "constraints": constraints,
        "min_side": minimum,
        "preprocessing": pre.to_dict(),
        "platforms": list(result.platforms),
        "source": {"checkpoint": str(predictor.directory), "jaxmatte": jaxmatte.__version__, "jax": jax.__version__},
    }
    return header, result.serialize(), [np.asarray(leaf) for leaf in leaves]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = output_problem(args.out, "--out", folder=False)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from jaxmatte.exported import write_file

    try:
        header, stablehlo, weights = export_model(
            args.directory,
            batch=args.batch,
            input_size=args.input_size,
            precision=args.precision,
            platforms=args.platforms,
            canvas=args.canvas,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = write_file(args.out, header, stablehlo, weights)
    inputs = ", ".join(f"{spec['name']} ({', '.join(str(d) for d in spec['shape'])})" for spec in header["inputs"])
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {header['family']} -> {header['output']}, batch "
        f"{header['batch']}, {header['precision']}, inputs {inputs}, for {', '.join(header['platforms'])}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
