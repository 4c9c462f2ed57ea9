"""The machine a benchmark ran on, for its results table."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """CPU model and core count, e.g. 'AMD EPYC, 2 cores'."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


def publish(table: str, out: Path | None) -> None:
    """Print a results table and, with `out`, write it there (folders made)."""
    print("\n" + table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table.rstrip("\n") + "\n")
        print(f"\nwritten to {out}")
