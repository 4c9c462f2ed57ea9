"""Port-and-parity demo: timm backbones (random weights) converted with `port/convert.py` and checked against torch.

    python port/demo.py [--out runs/port-demo] [--cases swin_b_896 dinov3_s_448 mae_b_448]

For each case: build the timm model offline, save it, convert it, load it with `jaxmatte.load_pretrained`, run both on
the built-in test picture and report max |diff|, relative error and timings; writes `report.md` into `--out`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    from port import reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/port-demo"))
    parser.add_argument("--cases", nargs="+", default=list(reference.CASES), choices=list(reference.CASES))
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    import torch

    import jaxmatte

    rows = []
    for key in args.cases:
        case = reference.CASES[key]
        print(f"[{case.name}] building timm {case.timm_name} (random weights) ...", flush=True)
        model = reference.build_reference(case)
        directory = reference.convert_reference(case, model, args.out)
        ported = jaxmatte.load_pretrained(directory)
        x = reference.normalized_batch(case.size)
        ours = reference.jax_forward(case, ported)
        t0 = time.perf_counter()
        out = np.asarray(jax.block_until_ready(ours(x)))
        jax_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = reference.torch_forward(case, model)(torch.from_numpy(x.transpose(0, 3, 1, 2)))
        torch_time = time.perf_counter() - t0
        diff = float(np.abs(out - ref).max())
        rel = diff / float(np.abs(ref).max())
        ok = diff <= 1e-4 and rel <= 1e-5
        rows.append((case.name, out.shape, diff, rel, jax_first, torch_time, ok))
        print(f"  output {out.shape}: max|diff| {diff:.2e}, relative {rel:.2e} -> {'OK' if ok else 'MISMATCH'}")

    lines = [
        "| backbone | output | max abs diff | relative | JAX compile+run (s) | torch run (s) | parity |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {s} | {d:.2e} | {r:.2e} | {tj:.1f} | {tt:.1f} | {'OK' if ok else 'MISMATCH'} |"
        for n, s, d, r, tj, tt, ok in rows
    ]
    report = args.out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n\nconverted directories and {report} written under {args.out}")
    return 0 if all(row[-1] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
