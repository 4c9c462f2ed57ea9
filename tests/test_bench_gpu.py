"""`bench/gpu.py --smoke`: the GPU benchmark's whole code path on the CPU with a tiny model. Every planned row runs and
reports finite, positive numbers, in the JSON and in the printed table (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBERS = ("images_per_s", "latency_ms", "peak_memory_gib", "gflop_per_image", "achieved_tflops", "mfu", "peak_tflops")


def test_smoke_run_reports_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    rows = summary["rows"]
    planned = {("jax", "jit", "inference", precision, batch) for precision in ("bf16", "fp32") for batch in (1, 2)}
    planned.add(("jax", "jit", "train step", "bf16", 2))
    if importlib.util.find_spec("torch") and importlib.util.find_spec("timm"):
        torch_rows = [("eager", "inference", 1), ("eager", "inference", 2), ("eager", "train step", 2)]
        torch_rows += [("compile (eager)", "inference", 1), ("compile (eager)", "train step", 2)]
        planned |= {("torch", mode, task, "bf16 autocast", batch) for mode, task, batch in torch_rows}
    found = {(r["framework"], r["mode"], r["task"], r["precision"], r["batch"]) for r in rows}
    assert found == planned and len(rows) == len(planned)
    for row in rows:
        assert row["status"] == "ok", row
        for key in NUMBERS:
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["peak_source"].startswith("measured matmul")  # no datasheet peak for a CPU
    jax_flops = {(r["task"], r["batch"]): r["gflop_per_image"] for r in rows if r["framework"] == "jax"}
    for row in rows:  # torch rows are held to the XLA count of the same task and batch; their own count is kept
        if row["framework"] == "torch" and (row["task"], row["batch"]) in jax_flops:
            assert row["gflop_per_image"] == jax_flops[row["task"], row["batch"]]
            assert row["torch_gflop_per_image"] > 0
    table = [line for line in done.stdout.splitlines() if line.startswith(("| jax |", "| torch |"))]
    assert len(table) == len(rows)
    for line in table:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert all(math.isfinite(float(cell.rstrip("%"))) for cell in cells[5:]), line
