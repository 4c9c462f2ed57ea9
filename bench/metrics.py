"""DIS metric set (F/E curves, weighted F, S, MAE, HCE): jaxmatte (process pool) vs pysodmetrics (its usual loop).

    python bench/metrics.py [--source realdata|synthetic] [--images 40] [--size 1024] [--workers N] [--out FILE]

Both sides get the same in-memory uint8 (pred, gt) pairs (decoding is not timed) and compute every key of DIS_KEYS;
jaxmatte uses the pysodmetrics HCE binarisation so the numbers can be compared, and the largest difference per key is
printed. The jaxmatte rows include the pool start-up. realdata = the alphamatting.com training alphas (GT = alpha > 128,
prediction = blurred and noised alpha, 27 images cycled); synthetic = random blobs at --size x --size.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_name, publish  # noqa: E402

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata" / "alphamatting_training_lowres"


def soft_prediction(rng: np.random.Generator, target: np.ndarray) -> np.ndarray:
    soft = cv2.GaussianBlur(target.astype(np.float64), (0, 0), 3.0) + rng.normal(0, 20.0, target.shape)
    return np.clip(np.rint(soft), 0, 255).astype(np.uint8)


def realdata_pairs(n_images: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    alphas = [cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in sorted((REALDATA / "alpha").glob("GT*.png"))]
    pairs = []
    for i in range(n_images):
        alpha = alphas[i % len(alphas)]
        pairs.append((soft_prediction(rng, alpha), np.where(alpha > 128, 255, 0).astype(np.uint8)))
    return pairs


def synthetic_pairs(n_images: int, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for _ in range(n_images):
        noise = cv2.GaussianBlur(rng.random((size, size)), (0, 0), size / 12)
        gt = np.where(noise > np.quantile(noise, rng.uniform(0.4, 0.85)), 255, 0).astype(np.uint8)
        pairs.append((soft_prediction(rng, gt), gt))
    return pairs


def pysodmetrics_results(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    import py_sod_metrics

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = py_sod_metrics.Fmeasure()
        metrics = [
            fm,
            py_sod_metrics.WeightedFmeasure(),
            py_sod_metrics.Smeasure(),
            py_sod_metrics.Emeasure(),
            py_sod_metrics.MAE(),
            py_sod_metrics.HumanCorrectionEffortMeasure(),
        ]
        for pred, gt in pairs:
            for metric in metrics:
                metric.step(pred, gt)
        fm_results = fm.get_results()["fm"]
        _, wfm, sm, em, mae, hce = (metric.get_results() for metric in metrics)
    return {
        "maxFm": float(fm_results["curve"].max()),
        "wFmeasure": float(wfm["wfm"]),
        "MAE": float(mae["mae"]),
        "Smeasure": float(sm["sm"]),
        "meanEm": float(em["em"]["curve"].mean()),
        "HCE": float(hce["hce"]),
        "maxEm": float(em["em"]["curve"].max()),
        "meanFm": float(fm_results["curve"].mean()),
        "adpEm": float(em["em"]["adp"]),
        "adpFm": float(fm_results["adp"]),
    }


def main(argv: list[str] | None = None) -> int:
    from jaxmatte.metrics import DIS_KEYS, evaluate_dis_pairs, summarize_dis

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("realdata", "synthetic"), help="default: realdata when present")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--size", type=int, default=1024, help="synthetic image side")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)

    source = args.source or ("realdata" if (REALDATA / "alpha").is_dir() else "synthetic")
    pairs = realdata_pairs(args.images) if source == "realdata" else synthetic_pairs(args.images, args.size)
    shapes = sorted({gt.shape for _, gt in pairs})
    pixels = sorted(h * w for h, w in shapes)
    size_note = (
        f"{shapes[0][1]}x{shapes[0][0]}"
        if len(shapes) == 1
        else f"{len(shapes)} sizes, {pixels[0] / 1e6:.2f}-{pixels[-1] / 1e6:.2f} Mpixel"
    )

    timings = []
    start = time.perf_counter()
    reference = pysodmetrics_results(pairs)
    timings.append(("pysodmetrics 1.6.2 (loop)", 1, time.perf_counter() - start))
    results = {}
    for workers in dict.fromkeys((1, args.workers)):
        start = time.perf_counter()
        stats = evaluate_dis_pairs(pairs, workers=workers, hce_binarize="pysodmetrics")
        results[workers] = summarize_dis(stats)
        timings.append((f"jaxmatte (workers={workers})", workers, time.perf_counter() - start))

    baseline = timings[0][2]
    lines = [
        f"DIS metric set ({', '.join(DIS_KEYS)}) on {len(pairs)} {source} images ({size_note}).",
        f"Machine: {cpu_name()}; Python {platform.python_version()}, NumPy {np.__version__}, OpenCV {cv2.__version__}.",
        "",
        "| implementation | processes | seconds | images/s | speed-up |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, processes, seconds in timings:
        lines.append(
            f"| {name} | {processes} | {seconds:.2f} | {len(pairs) / seconds:.2f} | {baseline / seconds:.2f}x |"
        )
    differences = {key: max(abs(summary[key] - reference[key]) for summary in results.values()) for key in DIS_KEYS}
    lines += [
        "",
        "Largest |jaxmatte - pysodmetrics| per key: " + ", ".join(f"{k} {v:.1e}" for k, v in differences.items()),
    ]
    table = "\n".join(lines)
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
