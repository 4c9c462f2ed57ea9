"""End-to-end throughput of predict.py: decode + preprocess + model + postprocess + PNG write, in images/s.

    python bench/predict.py [--model tiny|base|base-cpu] [--images 24] [--batches 1 2 4 8] [--threads 0 4]
        [--precision fp32|bf16] [--repeats 1] [--out bench/results/predict_cpu.md]

A folder of generated JPEGs of photo sizes (1280x960 to 1920x1080, quality 90) is predicted by `predict.py`'s own
`main` with a TSR-Matte of seeded random weights (`bench/random_tsr.py`; `--model base` is the released configuration,
the default on a GPU; on a CPU the default is `base-cpu`, the same widths on a smaller backbone and input). For each
batch size and number of reading threads (`--read-threads`) the predictor is built and compiled once, untimed (the
batch shape is warmed up on one batch), then the whole folder is timed through `main`; the best of `--repeats` runs is
reported. A second table gives each stage alone (one image after another in one thread): decoding, preprocessing, the
model per image (a device-resident batch, blocked on), restoring to the original size and writing the alpha PNG.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.machine import cpu_name, publish  # noqa: E402

SIZES = ((1280, 960), (1920, 1080), (1600, 1200), (1440, 1080))  # (width, height)


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """`count` JPEGs cycling through `SIZES`: smooth colour fields with a soft-edged elliptic object and grain."""
    import cv2
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        width, height = SIZES[index % len(SIZES)]
        coarse = rng.integers(0, 256, (height // 80, width // 80, 3), dtype=np.uint8)
        picture = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        yy, xx = np.mgrid[:height, :width]
        centre, axes = rng.uniform(0.3, 0.7, 2) * (width, height), rng.uniform(0.15, 0.3, 2) * (width, height)
        inside = ((xx - centre[0]) / axes[0]) ** 2 + ((yy - centre[1]) / axes[1]) ** 2
        weight = np.clip((1.2 - inside) * 4, 0, 1)[..., None]
        picture = picture * (1 - weight) + rng.uniform(0, 255, 3) * weight + rng.normal(0, 6, picture.shape)
        path = folder / f"photo_{index:03d}.jpg"
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def load_predict_cli():
    spec = importlib.util.spec_from_file_location("predict_cli_bench", REPO / "predict.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_main(cli, predictor, argv: list[str]) -> float:
    """Seconds of one `predict.py` run over `argv` with `predictor` in place of loading the checkpoint."""
    original = cli.make_predictor
    cli.make_predictor = lambda args, **kwargs: predictor
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
            start = time.perf_counter()
            code = cli.main(argv)
            seconds = time.perf_counter() - start
    finally:
        cli.make_predictor = original
    if code != 0:
        raise RuntimeError(f"predict.py exited with {code}: {err.getvalue()[-2000:]}")
    return seconds


def stage_times(predictor, paths: list[Path], out: Path, batches: list[int]) -> dict[str, float]:
    """Milliseconds per image of each stage alone (medians over `paths`); model: per batch size, per image."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxmatte.data.io import read_image, write_png

    def median_ms(fn, items) -> float:
        times = []
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    images = [read_image(path) for path in paths]
    prepared = [predictor.prepare(image) for image in images]
    canvases = list(predictor.canvas_outputs(prepared))  # the model's outputs, before restoring
    pairs = [(canvas, placement) for canvas, (_, placement) in zip(canvases, prepared, strict=True)]
    alphas = [predictor.finish(canvas, placement) for canvas, placement in pairs]
    stages = {
        "decode": median_ms(read_image, paths),
        "preprocess": median_ms(predictor.prepare, images),
        "restore": median_ms(lambda pair: predictor.finish(*pair), pairs),
        "write": median_ms(lambda item: write_png(out / f"stage_{item[0]}.png", item[1]), list(enumerate(alphas))),
    }
    from jaxmatte.predict import _infer

    for batch in batches:
        inputs = jnp.asarray(np.stack([prepared[i % len(prepared)][0][0] for i in range(batch)]))

        def run(_=None, inputs=inputs):
            jax.block_until_ready(_infer(predictor._graphdef, predictor._state, inputs))

        run()
        stages[f"model, batch {batch}"] = median_ms(run, range(5)) / batch
    return stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--model", choices=("tiny", "base", "base-cpu"), help="default: base on a GPU, else base-cpu")
    parser.add_argument("--images", type=int, default=24, help="photos in the folder (default: 24)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--threads", type=int, nargs="+", help="--read-threads values (default: 0 and min(4, cores))")
    parser.add_argument("--precision", choices=("fp32", "bf16"), help="default: bf16 on a GPU, else fp32")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting; the best is kept")
    parser.add_argument("--out", type=Path, help="markdown table (default: bench/results/predict_<cpu|gpu>.md)")
    parser.add_argument("--no-out", action="store_true", help="print only")
    args = parser.parse_args(argv)

    import jax
    import numpy as np

    from bench.random_tsr import CONFIGS, save_random_tsr
    from jaxmatte.cli import DEFAULT_READ_THREADS
    from jaxmatte.data.io import read_mask
    from jaxmatte.predict import Predictor, precision_dtype

    device = jax.devices()[0]
    gpu = device.platform == "gpu"
    model = args.model or ("base" if gpu else "base-cpu")
    precision = args.precision or ("bf16" if gpu else "fp32")
    threads = args.threads or sorted({0, DEFAULT_READ_THREADS})
    config = CONFIGS[model]
    cli = load_predict_cli()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = write_photos(root / "photos", args.images)
        checkpoint = save_random_tsr(config, root / "model")
        print(f"{args.images} photos, TSR {model} ({config.img_size} px input), {precision}, on {device.device_kind}")
        for batch in args.batches:
            for count in threads:
                dtype = precision_dtype(precision)
                predictor = Predictor(checkpoint, dtype=dtype, batch_size=batch, read_threads=count)
                out = root / "out"
                argv = [str(root / "photos"), "--checkpoint", str(checkpoint), "--output", str(out)]
                argv += ["--batch-size", str(batch), "--read-threads", str(count)]
                warm = root / "warm"
                warm.mkdir(exist_ok=True)
                for path in paths[:batch]:
                    (warm / path.name).write_bytes(path.read_bytes())
                time_main(cli, predictor, [str(warm), *argv[1:]])  # compiles the batch shape
                seconds = min(time_main(cli, predictor, argv) for _ in range(args.repeats))
                rows.append((batch, count, args.images / seconds, 1e3 * seconds / args.images))
                print(f"batch {batch}, read threads {count}: {rows[-1][2]:.2f} images/s", flush=True)
        stages = stage_times(predictor, paths[: min(8, len(paths))], root, args.batches)
        mattes = [read_mask(path) for path in sorted((root / "out").glob("*.png"))]
        saturated = float(np.mean([np.mean((matte == 0) | (matte == 255)) for matte in mattes]))

    baseline = {batch: rate for batch, count, rate, _ in rows if count == threads[0]}
    machine = device.device_kind if gpu else cpu_name()
    lines = [
        f"predict.py on {args.images} JPEG photos (1280x960 to 1920x1080), TSR `{model}` ({config.img_size} px input, "
        f"random weights, mattes {100 * saturated:.0f}% 0 or 255), {precision}, alpha PNGs written; best of "
        f"{args.repeats} run(s) after a warm-up batch.",
        f"Machine: {machine}; jax {jax.__version__}, {os.cpu_count()} CPU cores.",
        "",
        f"| batch | read threads | images/s | ms / image | vs {threads[0]} threads |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {b} | {c} | {r:.2f} | {ms:.0f} | {r / baseline[b]:.2f}x |" for b, c, r, ms in rows]
    lines += ["", "Each stage alone, one image after another (ms per image, median):", ""]
    lines += ["| " + " | ".join(stages) + " |", "|" + "---:|" * len(stages)]
    lines += ["| " + " | ".join(f"{value:.1f}" for value in stages.values()) + " |"]
    table = "\n".join(lines)
    default = REPO / "bench" / "results" / f"predict_{'gpu' if gpu else 'cpu'}.md"
    publish(table, None if args.no_out else args.out or default)
    return 0


if __name__ == "__main__":
    sys.exit(main())
