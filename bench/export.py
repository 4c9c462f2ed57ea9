"""Exported forward pass vs the live model: file size, export and load time, compile and forward latency.

    python bench/export.py                               # TSR-Matte at the released size, random weights
    python bench/export.py --model base-cpu --repeats 5 --out bench/results/export_cpu.md
    python bench/export.py --checkpoint runs/tsr-demo --batch dynamic

The model (a `--checkpoint` directory, else a TSR-Matte of `bench/random_tsr.py`'s `--model` size with seeded random
weights) is exported with `port/export.py`'s `export_model` for CPU and CUDA, written, loaded back with its checksums
verified, and run on one prepared batch (random RGB images) beside `Predictor.canvas_outputs`; the largest difference
of the two outputs is printed with the times (medians of `--repeats` runs after the first, compiling, one).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_name, publish  # noqa: E402
from bench.random_tsr import CONFIGS, save_random_tsr  # noqa: E402
from jaxmatte.exported import load_exported, write_file  # noqa: E402
from jaxmatte.predict import Predictor  # noqa: E402
from port.export import batch_size, export_model  # noqa: E402


def timed(run) -> tuple[float, object]:
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.allow_abbrev = False
    parser.add_argument("--checkpoint", type=Path, help="a saved model (default: a random TSR-Matte of --model)")
    parser.add_argument("--model", choices=sorted(CONFIGS), default="base", help="random TSR size (default: base)")
    parser.add_argument("--batch", type=batch_size, default=1, help="export batch: N or dynamic (default: 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes after the first (default: 3)")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        directory = args.checkpoint or save_random_tsr(CONFIGS[args.model], Path(scratch) / "model")
        name = str(args.checkpoint) if args.checkpoint else f"TSR-Matte {args.model}, random weights"
        export_seconds, (header, stablehlo, weights) = timed(lambda: export_model(directory, batch=args.batch))
        path = write_file(Path(scratch) / "model.jax", header, stablehlo, weights)
        file_bytes = path.stat().st_size
        load_seconds, model = timed(lambda: load_exported(path))
        batch = args.batch or 1
        predictor = Predictor(directory, batch_size=batch)
        rng = np.random.default_rng(0)
        side = predictor.preprocessing.size
        images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(batch)]
        prepared = [predictor.prepare(image) for image in images]
        stacked = [np.stack(column) for column in zip(*(item[0] for item in prepared), strict=True)]

        rows = {}
        for label, run in (
            ("exported", lambda: model(*stacked)),
            ("live (Predictor)", lambda: predictor.canvas_outputs(prepared)),
        ):
            first, output = timed(run)
            times = [timed(run)[0] for _ in range(args.repeats)]
            rows[label] = (first, statistics.median(times), np.asarray(output))
        difference = float(np.abs(rows["exported"][2] - rows["live (Predictor)"][2]).max())
        parameters = sum(int(np.prod(weight.shape)) for weight in weights)

    lines = [
        f"Model: {name} ({parameters / 1e6:.1f} M stored values), {header['inputs'][0]['shape']} input, fp32.",
        f"Machine: {cpu_name()}; jax {jax.__version__}, {jax.default_backend()}; median of {args.repeats} runs.",
        "",
        f"Export (trace + lower for {', '.join(header['platforms'])} + serialise): {export_seconds:.1f} s; file "
        f"{file_bytes / 1e6:.1f} MB (StableHLO {len(stablehlo) / 1e6:.2f} MB); load with checksums: "
        f"{load_seconds:.2f} s.",
        "",
        "| forward pass | first call (compile + run), s | median, s |",
        "|---|---:|---:|",
        *(f"| {label} | {first:.2f} | {median:.3f} |" for label, (first, median, _) in rows.items()),
        "",
        f"Largest |exported - live| over the canvas output: {difference:.1e}",
    ]
    text = "\n".join(lines)
    publish(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
