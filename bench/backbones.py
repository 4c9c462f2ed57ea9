"""JAX (jit) vs PyTorch (eager) latency for the ported backbones: same weights, same input, same machine, one run.

    python bench/backbones.py [--cases ...] [--batch 1] [--repeats 10] [--out bench/results/backbones.md]

Reports median latency and the JAX/torch ratio. On a GPU, bf16 rows (JAX bf16 compute vs torch autocast) are added.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_name, publish  # noqa: E402


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine_name() -> str:
    import jax

    device = jax.devices()[0]
    return device.device_kind if device.platform == "gpu" else cpu_name()


def main(argv: list[str] | None = None) -> int:
    from port import reference

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=list(reference.CASES), choices=list(reference.CASES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    import jaxmatte

    gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
    torch_device = "cuda" if gpu else "cpu"
    if gpu:
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.backends.cudnn.allow_tf32 = False
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in args.cases:
            case = reference.CASES[key]
            model = reference.build_reference(case)
            directory = reference.convert_reference(case, model, Path(tmp) / key)
            x = reference.normalized_batch(case.size, args.batch)
            x_torch = torch.from_numpy(x.transpose(0, 3, 1, 2)).to(torch_device)
            model = model.to(torch_device)
            precisions = [("fp32", jnp.float32, None)] + ([("bf16", jnp.bfloat16, torch.bfloat16)] if gpu else [])
            for label, jax_dtype, autocast_dtype in precisions:
                ours = reference.jax_forward(case, jaxmatte.load_pretrained(directory, dtype=jax_dtype))
                x_jax = jax.device_put(x.astype(np.float32))

                def run_jax(ours=ours, x_jax=x_jax):
                    jax.block_until_ready(ours(x_jax))

                def run_torch(model=model, x_torch=x_torch, autocast_dtype=autocast_dtype):
                    autocast = torch.autocast(torch_device, autocast_dtype, enabled=autocast_dtype is not None)
                    with torch.no_grad(), autocast:
                        out = model(x_torch)
                    if gpu:
                        torch.cuda.synchronize()
                    return out

                t_jax = median_seconds(run_jax, args.repeats)
                t_torch = median_seconds(run_torch, args.repeats)
                rows.append((case.name, label, args.batch, t_jax * 1e3, t_torch * 1e3, t_jax / t_torch))
                print(
                    f"{case.name} {label}: JAX {t_jax * 1e3:.0f} ms, torch {t_torch * 1e3:.0f} ms, "
                    f"ratio {t_jax / t_torch:.2f}",
                    flush=True,
                )

    lines = [
        f"Machine: {machine_name()}; jax {jax.__version__}, torch {torch.__version__}; median of {args.repeats} runs.",
        "",
        "| backbone | precision | batch | JAX jit (ms) | torch eager (ms) | JAX / torch |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {p} | {b} | {tj:.0f} | {tt:.0f} | {r:.2f} |" for n, p, b, tj, tt, r in rows]
    table = "\n".join(lines)
    publish(table, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
