"""High-resolution inference on large synthetic photos: plain prediction at the model's input size vs `--high-res`
(coarse stage at the input size, refiner at full resolution in tiles), scored at full resolution.

    python bench/highres.py --checkpoint runs/tsr-demo [--size 4000x3000] [--scenes hair,wires,mesh,mixed]
        [--tile 1024] [--band 8] [--cache /tmp/highres_bench] [--out bench/results/highres_cpu.md]

Scenes: `jaxmatte.data.synthetic.synthetic_sample` at --size with chosen structures (hair: a soft tuft with 1 px
strands + a solid shape; wires: 1-3 px curves + an object with holes; mesh: a 6-16 px lattice of 1-2 px lines + a
solid shape; mixed: hair, wires and mesh), each over the generator's cluttered background. Thin structures keep their
absolute widths at any photo size, so at 4000 x 3000 they are far below one pixel of a 1024 (or smaller) canvas.

Methods: the checkpoint's own geometry; stretch to 1024 (the released TSR pipeline's geometry); --high-res with the
checkpoint's geometry; --high-res with a 1024 stretch for the coarse stage; --high-res with one window over the whole
photo (untiled, for the tiling's memory and exactness) and with half the tile. Each method runs in its own process:
a warm-up on a black photo of the scene's size compiles every shape first, then each scene is predicted once
(decoded image in, uint8 alpha out: `Predictor.predict_arrays`, the code path of predict.py); the time and the
process's peak resident memory during that image (VmHWM, reset before each image) are recorded.

Scores at full resolution against the 8-bit ground truth: plain MAE, the official SAD / MSE / Grad / Conn over the
whole image, SAD / MSE / Grad over a boundary band (pixels within --band px of ground truth that is not solid:
``dilate(gt > 0) & ~erode(gt == 255)``, which holds every thin structure whole), and the DIS maxFm / wFmeasure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_name, publish  # noqa: E402

SCENES = {
    "hair": ("hair", "solid"),
    "wires": ("wires", "holes"),
    "mesh": ("mesh", "solid"),
    "mixed": ("hair", "wires", "mesh"),
}
SEED = 2024
COLUMNS = ("MAE", "SAD", "MSE", "Grad", "Conn", "band SAD", "band MSE", "band Grad", "maxFm", "wFm")


def methods(tile: int, size: tuple[int, int]) -> dict[str, dict]:
    """Label -> Predictor options."""
    stretch = {"resize_policy": "stretch", "input_size": 1024}
    return {
        "checkpoint geometry": {},
        "stretch 1024": stretch,
        f"high-res, tile {tile}": {"high_res": True, "tile": tile},
        f"high-res (coarse: stretch 1024), tile {tile}": {**stretch, "high_res": True, "tile": tile},
        f"high-res, tile {tile // 2}": {"high_res": True, "tile": tile // 2},
        "high-res, untiled": {"high_res": True, "tile": max(size)},
    }


# ------------------------------------------------------------------------------------------------------------ scenes


def make_scenes(cache: Path, names: list[str], height: int, width: int) -> dict[str, tuple[Path, Path]]:
    """(image PNG, alpha PNG) per scene, generated once into `cache`."""
    from jaxmatte.data.synthetic import synthetic_sample

    scenes = {}
    for index, name in enumerate(names):
        image_path, alpha_path = cache / f"{name}_{width}x{height}.png", cache / f"{name}_{width}x{height}_gt.png"
        if not (image_path.exists() and alpha_path.exists()):
            started = time.perf_counter()
            rng = np.random.default_rng([SEED, index])
            image, alpha = synthetic_sample(rng, height, width, SCENES[name])
            cv2.imwrite(str(image_path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(alpha_path), alpha)
            print(f"scene {name}: {width}x{height} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        scenes[name] = (image_path, alpha_path)
    return scenes


# ------------------------------------------------------------------------------------------------------------ worker


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _reset_peak() -> bool:
    """Reset the process's peak resident memory (Linux `clear_refs` 5); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def worker(checkpoint: str, options: dict, scenes: dict[str, list[str]], out: Path) -> None:
    """Predict every scene with one method; prints one JSON line per scene."""
    from jaxmatte.data.io import read_image
    from jaxmatte.predict import Predictor

    predictor = Predictor(checkpoint, **options)
    warmed: set[tuple[int, ...]] = set()
    out.mkdir(parents=True, exist_ok=True)
    for name, (image_path, _) in scenes.items():
        image = read_image(Path(image_path))
        if image.shape not in warmed:  # compile the canvas and tile shapes of this photo size
            predictor.predict_arrays([np.zeros_like(image)])
            warmed.add(image.shape)
        exact_peak = _reset_peak()
        before = _rss_mb("VmRSS")
        started = time.perf_counter()
        alpha = predictor.predict_arrays([image])[0]
        seconds = time.perf_counter() - started
        peak = _rss_mb("VmHWM") if exact_peak else float("nan")
        cv2.imwrite(str(out / f"{name}.png"), alpha)
        row = {"scene": name, "seconds": seconds, "rss_before_mb": before, "peak_mb": peak}
        if predictor.high_res is not None:
            row["windows"] = len(predictor.high_res.windows(*image.shape[:2]))
        print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------------------------------------- scoring


def boundary_band(gt: np.ndarray, radius: int) -> np.ndarray:
    """Pixels within `radius` of ground truth that is not solid foreground."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    near = cv2.dilate((gt > 0).astype(np.uint8), kernel) > 0
    solid = cv2.erode((gt == 255).astype(np.uint8), kernel) > 0
    return near & ~solid


def score(pred: np.ndarray, gt: np.ndarray, band_radius: int) -> dict[str, float]:
    from jaxmatte.metrics.dis import dis_image_row, dis_image_stats
    from jaxmatte.metrics.matting import alpha_mae, matting_image_metrics

    whole = matting_image_metrics(pred, gt)
    trimap = np.where(boundary_band(gt, band_radius), 128, 0).astype(np.uint8)
    band = matting_image_metrics(pred, gt, trimap)
    dis = dis_image_row(dis_image_stats(pred, gt))
    return {
        "MAE": alpha_mae(pred, gt),
        **whole,
        "band SAD": band["SAD"],
        "band MSE": band["MSE"],
        "band Grad": band["Grad"],
        "maxFm": dis["maxFm"],
        "wFm": dis["wFmeasure"],
        "band share": float(np.mean(trimap == 128)),
    }


def fmt(value: float, column: str) -> str:
    if column in ("MSE", "band MSE"):
        return f"{value * 1e3:.2f}"
    if column in ("MAE", "maxFm", "wFm"):
        return f"{value:.4f}"
    return f"{value:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--checkpoint", required=True, help="a TSR model directory or training workdir")
    parser.add_argument("--size", default="4000x3000", help="photo WIDTHxHEIGHT (default 4000x3000)")
    parser.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated subset of {', '.join(SCENES)}")
    parser.add_argument("--tile", type=int, default=1024, help="tile side of the high-res rows (default 1024)")
    parser.add_argument("--band", type=int, default=8, help="boundary band radius in pixels (default 8)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/highres_bench"), help="scenes and predictions")
    parser.add_argument("--out", type=Path, help="also write the markdown report here")
    parser.add_argument("--only", help="run only the methods whose label contains this text")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        job = json.loads(args.worker)
        worker(args.checkpoint, job["options"], job["scenes"], Path(job["out"]))
        return 0

    width, height = (int(v) for v in args.size.lower().split("x"))
    names = [name.strip() for name in args.scenes.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENES]
    if unknown:
        parser.error(f"unknown scenes {unknown}; known: {', '.join(SCENES)}")
    args.cache.mkdir(parents=True, exist_ok=True)
    scenes = make_scenes(args.cache, names, height, width)
    jobs = methods(args.tile, (height, width))
    if args.only:
        jobs = {label: options for label, options in jobs.items() if args.only in label}

    runs: dict[str, dict[str, dict]] = {}
    for index, (label, options) in enumerate(jobs.items()):
        out = args.cache / f"method{index}"
        job = {"options": options, "scenes": {k: [str(p) for p in v] for k, v in scenes.items()}, "out": str(out)}
        command = [sys.executable, __file__, "--checkpoint", args.checkpoint, "--worker", json.dumps(job)]
        print(f"running: {label}", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        if done.returncode != 0:
            print(done.stderr[-4000:], file=sys.stderr)
            return 1
        rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        runs[label] = {row["scene"]: {**row, "alpha": out / f"{row['scene']}.png"} for row in rows}

    truth = {name: cv2.imread(str(paths[1]), cv2.IMREAD_GRAYSCALE) for name, paths in scenes.items()}
    untiled = runs.get("high-res, untiled")
    lines = [
        f"# High-resolution inference ({width}x{height} synthetic photos)",
        "",
        f"`python bench/highres.py --checkpoint {args.checkpoint} --size {args.size} --tile {args.tile} "
        f"--band {args.band}`; {cpu_name()}; checkpoint {args.checkpoint}. MSE columns x1e3; SAD, Grad, Conn / 1000 "
        f"(official scale); band: within {args.band} px of non-solid ground truth. Time: prediction of one decoded "
        "photo (compiled beforehand); peak: the process's peak resident memory during that photo (RSS before it in "
        "brackets).",
        "",
        "| method | scene | " + " | ".join(COLUMNS) + " | time (s) | peak MB (before) | max diff vs untiled |",
        "|---|---|" + "---|" * (len(COLUMNS) + 3),
    ]
    means: dict[str, dict[str, float]] = {}
    for label, rows in runs.items():
        collected = []
        for name in names:
            row = rows[name]
            pred = cv2.imread(str(row["alpha"]), cv2.IMREAD_GRAYSCALE)
            values = score(pred, truth[name], args.band)
            values.update(seconds=row["seconds"], peak=row["peak_mb"], before=row["rss_before_mb"])
            diff = "-"
            if untiled is not None and label.startswith("high-res,"):
                reference = cv2.imread(str(untiled[name]["alpha"]), cv2.IMREAD_GRAYSCALE)
                values["diff"] = float(np.abs(pred.astype(int) - reference.astype(int)).max())
                diff = f"{values['diff']:.0f}"
            collected.append(values)
            cells = " | ".join(fmt(values[c], c) for c in COLUMNS)
            lines.append(
                f"| {label} | {name} | {cells} | {values['seconds']:.1f} | {values['peak']:.0f} "
                f"({values['before']:.0f}) | {diff} |"
            )
        means[label] = {key: float(np.mean([v[key] for v in collected])) for key in collected[0]}
    lines += [
        "",
        f"Mean over the {len(names)} scenes ({', '.join(names)}; band share of the pixels: "
        f"{np.mean([score_band_share(truth[n], args.band) for n in names]) * 100:.1f} %):",
        "",
        "| method | " + " | ".join(COLUMNS) + " | time (s) | peak MB |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for label, values in means.items():
        cells = " | ".join(fmt(values[c], c) for c in COLUMNS)
        lines.append(f"| {label} | {cells} | {values['seconds']:.1f} | {values['peak']:.0f} |")
    report = "\n".join(lines) + "\n"
    publish(report, args.out)
    return 0


def score_band_share(gt: np.ndarray, radius: int) -> float:
    return float(np.mean(boundary_band(gt, radius)))


if __name__ == "__main__":
    sys.exit(main())
