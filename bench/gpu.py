"""TSR-Matte on one GPU: inference and a training step in JAX and through the PyTorch reference, in one run.

    python bench/gpu.py [--budget-s 290] [--json bench/results/gpu.json] [--parts jax-infer,jax-train,torch]
    python bench/gpu.py --smoke          # the same code on the CPU with a tiny model, for CI

Rows (the released configuration: Swin-B at safe size 896 inside the 1024 px model, random weights):
- JAX inference (`registry.system("tsr").infer`, jit) in bf16 and fp32 compute at batch 1, 8 and 32;
- a JAX training step: `jaxmatte.train.state.train_step` with `configs/tsr.py` (default recipe, teacher off, one
  update per micro-batch), bf16 compute, batch 8;
- the PyTorch reference modules of the parity tests (`tests/tsr_reference.py`: timm Swin + the U-Net decoder + the
  refiner, NCHW) under fp16 autocast, eager and `torch.compile`: inference at batch 1, 8, 32 and a training step
  (AdamW, GradScaler, the same L1 + gradient + SSIM loss on the coarse and refined outputs) at batch 8.

Each row reports images/s and the median latency of a call after warm-up (every call blocked on: JAX
`block_until_ready`, torch CUDA events), the peak device memory (JAX: `device.memory_stats()["peak_bytes_in_use"]`,
the process's high-water mark, so rows run in order of growing footprint and each framework part runs in its own
process; torch: `max_memory_allocated` after a reset), the model FLOPs per image from XLA's cost analysis of the
compiled step (`jit(...).lower(...).compile().cost_analysis()`; torch rows use the JAX count of the same task and
batch) and the MFU: FLOPs per second over the device's dense peak (`PEAK_TFLOPS`; fp32 rows run with JAX's and
torch's default float32 matmul settings, i.e. TF32 tensor cores on Hopper in JAX, and are held against the TF32
peak), plus the fraction of a large matrix product measured on the same device. Inputs are random normal images
(two sets, alternated), never zeros.

`--budget-s`: pieces that would start after the budget (with a rough per-piece allowance for compilation) are
skipped and listed; `--parts` picks parts. The torch part is skipped with a note when torch / timm are not installed
(the `port` extra). `--smoke` runs everything on the CPU with a tiny Swin at 64 px, batches 1 and 2, two iterations,
`torch.compile` with the `eager` backend (tracing only), and writes no result file unless `--json` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PARTS = ("jax-infer", "jax-train", "torch")
GIB = 2**30

# Dense peak TFLOP/s (NVIDIA datasheets, without sparsity): (bf16 / fp16 tensor, tf32 tensor, fp32 CUDA cores).
PEAK_TFLOPS = {
    "H100 SXM": (989.4, 494.7, 66.9),
    "H100 PCIe": (756.5, 378.0, 51.2),
    "H100 NVL": (835.5, 417.5, 60.0),
    "H200 SXM": (989.4, 494.7, 66.9),
    "H200 NVL": (835.5, 417.5, 60.0),
}


def peak_of(device_kind: str) -> tuple[str, tuple[float, float, float]] | None:
    """(name, peaks) of a device kind such as 'NVIDIA H100 80GB HBM3' (the SXM board) or 'NVIDIA H200'."""
    kind = device_kind.upper()
    for chip in ("H200", "H100"):
        if chip in kind:
            board = "NVL" if "NVL" in kind else "PCIe" if "PCIE" in kind else "SXM"
            return f"{chip} {board}", PEAK_TFLOPS[f"{chip} {board}"]
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Settings


def settings(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {
            "batches": (1, 2),
            "train_batch": 2,
            "warmup": 1,
            "iters": 2,
            "train_iters": 2,
            "matmul": 256,
            "torch_compile_backend": "eager",
        }
    return {
        "batches": (1, 8, 32),
        "train_batch": 8,
        "warmup": 3,
        "iters": 20,
        "train_iters": 10,
        "matmul": 8192,
        "torch_compile_backend": "inductor",
    }


def tsr_config(smoke: bool):
    """The released TSR configuration, or a tiny one for `--smoke`."""
    from jaxmatte.backbones import swin
    from jaxmatte.models.tsr import modeling

    if not smoke:
        return modeling.TSR_PRESETS["base"]
    return modeling.TSRConfig(
        backbone=swin.SwinConfig(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4),
        safe_size=64,
        img_size=64,
        decoder_channels=(32, 16, 8),
        head_channels=(8, 8),
        refiner=modeling.RefinerConfig(mid_channels=8, num_blocks=1),
    )


def train_config(smoke: bool):
    """`configs/tsr.py` (default recipe; the demo variant shrunk further for `--smoke`), bf16, one update per step."""
    from jaxmatte.train.config import load_config

    config = load_config(str(REPO / "configs" / ("tsr.py:demo" if smoke else "tsr.py")))
    config.train.compute_dtype = "bfloat16"
    config.optim.accum_steps = 1
    config.teacher.mode = "off"
    if smoke:
        small = tsr_config(True)
        b = config.model.backbone
        b.embed_dim, b.depths, b.num_heads, b.window_size = 16, (1, 1, 1, 1), (1, 2, 4, 8), small.backbone.window_size
        config.model.safe_size = small.safe_size
        config.model.decoder_channels, config.model.head_channels = small.decoder_channels, small.head_channels
        config.model.refiner.mid_channels, config.model.refiner.num_blocks = 8, 1
        config.data.size = small.img_size
    return config


class Deadline:
    """Pieces start only while `elapsed + allowance < budget`."""

    def __init__(self, budget_s: float, start: float):
        self.budget_s, self.start = budget_s, start

    def allows(self, allowance_s: float) -> bool:
        return time.time() - self.start + allowance_s < self.budget_s


def skipped(row: dict[str, Any], reason: str) -> dict[str, Any]:
    print(f"skipped {describe(row)}: {reason}", flush=True)
    return {**row, "status": f"skipped: {reason}"}


def describe(row: dict[str, Any]) -> str:
    return f"{row['framework']} {row['mode']} {row['task']} {row['precision']} batch {row['batch']}"


def median_seconds(run, inputs: list[Any], warmup: int, iters: int, block) -> float:
    """Median wall time of `run(input)` (blocked on with `block`), inputs alternated, after `warmup` calls."""
    for index in range(warmup):
        block(run(inputs[index % len(inputs)]))
    times = []
    for index in range(iters):
        start = time.perf_counter()
        block(run(inputs[index % len(inputs)]))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def host_peak_gib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # ru_maxrss is in KiB on Linux


# ---------------------------------------------------------------------------------------------------------------------
# JAX


def jax_device_peak_gib(device) -> tuple[float, str]:
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / GIB, "device memory_stats peak"
    return host_peak_gib(), "host peak RSS"


def compiled_flops(compiled, lowered) -> tuple[float, str]:
    """FLOPs of one call from XLA's cost analysis of the compiled executable (else of the lowered module)."""
    for source, analysis in (("XLA compiled cost analysis", compiled), ("XLA lowered cost analysis", lowered)):
        cost = analysis.cost_analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        flops = float((cost or {}).get("flops", 0.0))
        if flops > 0:
            return flops, source
    return math.nan, "none"


def matmul_tflops(size: int, dtype, warmup: int, iters: int) -> float:
    """Measured TFLOP/s of a size^3 matrix product in `dtype` (random normal operands, default precision)."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(jax.random.key(0), 4)
    operands = [jax.random.normal(key, (size, size), jnp.float32).astype(dtype) for key in keys]
    product = jax.jit(lambda pair: pair[0] @ pair[1])
    pairs = [(operands[0], operands[1]), (operands[2], operands[3])]
    seconds = median_seconds(product, pairs, warmup + 1, max(iters, 5), jax.block_until_ready)
    return 2 * size**3 / seconds / 1e12


def run_jax_infer(smoke: bool, deadline: Deadline, emit) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from bench.random_tsr import random_values
    from jaxmatte import pretrained, registry

    s, config = settings(smoke), tsr_config(smoke)
    device = jax.devices()[0]
    ceilings = {
        "bf16": matmul_tflops(s["matmul"], jnp.bfloat16, s["warmup"], s["iters"]),
        "fp32": matmul_tflops(s["matmul"], jnp.float32, s["warmup"], s["iters"]),
    }
    print(f"JAX matmul {s['matmul']}^3: bf16 {ceilings['bf16']:.1f}, fp32 {ceilings['fp32']:.1f} TFLOP/s", flush=True)
    values = random_values(pretrained.abstract_model("tsr", config))
    dtypes = {"bf16": jnp.bfloat16, "fp32": jnp.float32}
    # rows in order of growing activation footprint (batch x bytes per value): the memory peak only grows
    plan = sorted(
        ((b, p) for b in s["batches"] for p in dtypes), key=lambda item: item[0] * (2 if item[1] == "bf16" else 4)
    )
    size = config.img_size
    rng = np.random.default_rng(0)
    states, graphdefs = {}, {}
    for name, dtype in dtypes.items():
        model = pretrained.fill(pretrained.abstract_model("tsr", config, dtype=dtype), values)
        graphdefs[name], states[name] = nnx.split(model)
    inputs = {
        b: [jnp.asarray(rng.standard_normal((b, size, size, 3), np.float32)) for _ in range(2)] for b in s["batches"]
    }

    def forward(graphdef):
        def infer(state, images):
            model = nnx.merge(graphdef, state)
            return registry.system(model.family).infer(model, images).astype(jnp.float32)

        return jax.jit(infer)

    rows = [{"framework": "jax", "mode": "jit", "task": "inference", "precision": p, "batch": b} for b, p in plan]
    if not deadline.allows(60 if not smoke else 0):
        for row in rows:
            emit(skipped(row, "time budget"))
        return
    lowered = [forward(graphdefs[p]).lower(states[p], inputs[b][0]) for b, p in plan]  # tracing: one at a time
    with ThreadPoolExecutor(len(plan)) as pool:  # XLA compilation releases the GIL: all shapes at once
        executables = list(zip(lowered, pool.map(lambda item: item.compile(), lowered), strict=True))
    for row, (lowered, compiled) in zip(rows, executables, strict=True):
        batch, precision = row["batch"], row["precision"]
        if not deadline.allows(0):
            emit(skipped(row, "time budget"))
            continue
        seconds = median_seconds(
            lambda x, c=compiled, st=states[precision]: c(st, x),
            inputs[batch],
            s["warmup"],
            s["iters"],
            jax.block_until_ready,
        )
        flops, flops_source = compiled_flops(compiled, lowered)
        memory, memory_source = jax_device_peak_gib(device)
        analysis = compiled.memory_analysis()
        buffers = None
        if analysis is not None:
            total = analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
            buffers = (total - analysis.alias_size_in_bytes) / GIB
        emit(
            finished(
                row,
                seconds,
                flops / batch,
                flops_source,
                memory,
                memory_source,
                ceilings[precision],
                device.device_kind if device.platform == "gpu" else "cpu",
                xla_buffers_gib=buffers,
            )
        )


def run_jax_train(smoke: bool, deadline: Deadline, emit) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bench.random_tsr import random_values
    from jaxmatte import pretrained
    from jaxmatte.train import state as train_state

    s = settings(smoke)
    device = jax.devices()[0]
    batch = s["train_batch"]
    row = {"framework": "jax", "mode": "jit", "task": "train step", "precision": "bf16", "batch": batch}
    if not deadline.allows(90 if not smoke else 0):
        emit(skipped(row, "time budget"))
        return
    ceiling = matmul_tflops(s["matmul"], jnp.bfloat16, s["warmup"], s["iters"])
    config = train_config(smoke)
    arch = train_state.model_config(config)
    # the module `train_state.build_model` makes, filled from NumPy draws (no per-parameter device initialisation)
    abstract = pretrained.abstract_model("tsr", arch, dtype=train_state.compute_dtype(config.train.compute_dtype))
    model = pretrained.fill(abstract, random_values(abstract))
    model.train()
    tx = train_state.make_optimizer(config.optim, steps_per_epoch=1000)
    loss = train_state.make_loss(config)
    graphdef, state = train_state.init_state(model, tx)
    del model
    size = int(config.data.size)
    rng = np.random.default_rng(0)

    def example():
        mask = (rng.random((batch, size // 16, size // 16, 1)) > 0.5).astype(np.float32)
        mask = np.repeat(np.repeat(mask, 16, axis=1), 16, axis=2)  # blocky masks: edges and flat regions
        return {
            "image": jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32)),
            "mask": jnp.asarray(mask),
        }

    batches = [example(), example()]
    lowered = train_state.train_step.lower(graphdef, tx, loss, state, batches[0])
    compiled = lowered.compile()
    holder = {"state": state}

    def step(data):
        holder["state"], terms = compiled(holder["state"], data)  # the state is donated, as in training
        return terms["total"]

    seconds = median_seconds(step, batches, s["warmup"], s["train_iters"], jax.block_until_ready)
    flops, flops_source = compiled_flops(compiled, lowered)
    memory, memory_source = jax_device_peak_gib(device)
    kind = device.device_kind if device.platform == "gpu" else "cpu"
    emit(finished(row, seconds, flops / batch, flops_source, memory, memory_source, ceiling, kind))


# ---------------------------------------------------------------------------------------------------------------------
# PyTorch (the reference modules of the parity tests)


def torch_tsr_loss(coarse_logits, refined_logits, mask):
    """`jaxmatte.losses.tsr_loss` with the default weights (teacher off): L1 + Sobel gradient + 0.5 (1 - SSIM) on the
    coarse probability, the same with gradient weight 2 on the refined one."""
    import torch
    import torch.nn.functional as F

    def filtered(x, kernel):
        return F.conv2d(x, kernel[None, None].to(x), padding=kernel.shape[-1] // 2)

    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    taps = torch.exp(-((torch.arange(11.0) - 5) ** 2) / (2 * 1.5**2))
    window = torch.outer(taps, taps) / torch.outer(taps, taps).sum()

    def matting(p, g, w_grad):
        l1 = (p - g).abs().mean()
        grad = sum((filtered(p, k) - filtered(g, k)).abs().mean() for k in (sobel_x, sobel_x.T))
        mu_p, mu_g = filtered(p, window), filtered(g, window)
        var_p, var_g = filtered(p * p, window) - mu_p**2, filtered(g * g, window) - mu_g**2
        cov = filtered(p * g, window) - mu_p * mu_g
        c1, c2 = 0.01**2, 0.03**2
        ssim = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))
        return l1 + w_grad * grad + 0.5 * (1 - ssim.mean())

    return matting(torch.sigmoid(coarse_logits), mask, 1.0) + matting(torch.sigmoid(refined_logits), mask, 2.0)


def torch_model(smoke: bool):
    """The reference TSR (student + refiner) as one module: `forward(x)` -> (coarse logits, refined logits)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO / "tests"))  # the parity tests' PyTorch reference of the TSR tree
    import tsr_reference

    config = tsr_config(smoke)
    overrides = {"drop_path_rate": 0.1}  # as the JAX preset (active in the training step only)
    if smoke:
        b = config.backbone
        overrides.update(embed_dim=b.embed_dim, depths=b.depths, num_heads=b.num_heads, window_size=b.window_size)
    backbone = tsr_reference.swin_features("swin_base_patch4_window7_224", config.safe_size, **overrides)

    class TorchTSR(nn.Module):
        def __init__(self):
            super().__init__()
            self.student = tsr_reference.TwinSwinUNet(
                backbone, config.safe_size, config.decoder_channels, config.head_channels
            )
            r = config.refiner
            self.refiner = tsr_reference.Refiner(r.in_chans, r.mid_channels, r.num_blocks, r.fusion_depth)

        def forward(self, x):
            logits, _, _ = self.student(x)
            coarse = torch.sigmoid(logits)
            return logits, coarse + self.refiner(x, coarse)

    torch.manual_seed(0)
    return TorchTSR(), config.img_size


def run_torch(smoke: bool, deadline: Deadline, emit) -> None:
    import torch

    s = settings(smoke)
    cuda = torch.cuda.is_available() and not smoke
    torch.backends.cudnn.benchmark = True  # cuDNN picks its convolution algorithms per shape, as XLA autotunes
    device = torch.device("cuda" if cuda else "cpu")
    kind = torch.cuda.get_device_name() if cuda else "cpu"
    autocast_device, autocast_dtype = ("cuda", torch.float16) if cuda else ("cpu", torch.bfloat16)
    precision = "fp16 autocast" if cuda else "bf16 autocast"
    model, size = torch_model(smoke)
    model = model.to(device)
    generator = torch.Generator(device="cpu").manual_seed(0)

    def images(batch):
        return [torch.randn(batch, 3, size, size, generator=generator).to(device) for _ in range(2)]

    def block(value):
        if cuda:
            torch.cuda.synchronize()
        return value

    def timed(run, inputs, warmup, iters):
        """Median seconds per call: CUDA events on the GPU, the host clock after the call on the CPU."""
        for index in range(warmup):
            block(run(inputs[index % 2]))
        if not cuda:
            return median_seconds(run, inputs, 0, iters, block)
        times = []
        for index in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(inputs[index % 2])
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)

    def memory_gib():
        return (
            (torch.cuda.max_memory_allocated() / GIB, "torch max_memory_allocated")
            if cuda
            else (host_peak_gib(), "host peak RSS")
        )

    def reset_memory():
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    pair = [torch.randn(s["matmul"], s["matmul"], generator=generator).to(device, autocast_dtype) for _ in range(4)]
    ceiling_seconds = timed(
        lambda ab: ab[0] @ ab[1], [(pair[0], pair[1]), (pair[2], pair[3])], s["warmup"] + 1, max(s["iters"], 5)
    )
    ceiling = 2 * s["matmul"] ** 3 / ceiling_seconds / 1e12
    del pair
    print(f"torch matmul {s['matmul']}^3 ({autocast_dtype}): {ceiling:.1f} TFLOP/s", flush=True)

    def count_flops(run, x) -> tuple[float, str]:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            run(x)
        return float(counter.get_total_flops()), "torch FlopCounterMode"

    def inference(compiled: bool):
        model.eval()
        target = torch.compile(model, backend=s["torch_compile_backend"]) if compiled else model

        def run(x):
            with torch.inference_mode(), torch.autocast(autocast_device, autocast_dtype):
                return torch.sigmoid(target(x)[1])

        return run

    compile_allowance = 0 if smoke else 75
    for compiled in (False, True):
        mode = f"compile ({s['torch_compile_backend']})" if compiled else "eager"
        run = inference(compiled)
        for batch in s["batches"][:1] if compiled and smoke else s["batches"]:  # smoke: one traced shape
            row = {"framework": "torch", "mode": mode, "task": "inference", "precision": precision, "batch": batch}
            if not deadline.allows(compile_allowance if compiled else 10):
                emit(skipped(row, "time budget"))
                continue
            try:
                inputs = images(batch)
                flops, source = count_flops(inference(False), inputs[0])
                reset_memory()
                seconds = timed(run, inputs, s["warmup"], s["iters"])
                memory, memory_source = memory_gib()
                emit(finished(row, seconds, flops / batch, source, memory, memory_source, ceiling, kind))
            except Exception as exc:  # e.g. out of memory or a compiler failure: recorded, the run goes on
                emit(failed(row, exc))
            finally:
                reset_memory()

        batch = s["train_batch"]
        row = {"framework": "torch", "mode": mode, "task": "train step", "precision": precision, "batch": batch}
        if not deadline.allows(2 * compile_allowance if compiled else 15):
            emit(skipped(row, "time budget"))
            continue
        try:
            model.train()
            target = torch.compile(model, backend=s["torch_compile_backend"]) if compiled else model
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
            scaler = torch.amp.GradScaler(autocast_device, enabled=cuda)
            masks = [
                (torch.rand(batch, 1, size // 16, size // 16, generator=generator) > 0.5).float() for _ in range(2)
            ]
            masks = [torch.repeat_interleave(torch.repeat_interleave(m, 16, 2), 16, 3).to(device) for m in masks]
            data = list(zip(images(batch), masks, strict=True))

            def train(item, target=target, optimizer=optimizer, scaler=scaler):
                x, mask = item
                with torch.autocast(autocast_device, autocast_dtype):
                    coarse, refined = target(x)
                loss = torch_tsr_loss(coarse.float(), refined.float(), mask)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                return loss

            flops, source = count_flops(lambda item: train(item, target=model), data[0])
            reset_memory()
            seconds = timed(train, data, s["warmup"], s["train_iters"])
            memory, memory_source = memory_gib()
            emit(finished(row, seconds, flops / batch, source, memory, memory_source, ceiling, kind))
        except Exception as exc:
            emit(failed(row, exc))
        finally:
            reset_memory()


# ---------------------------------------------------------------------------------------------------------------------
# Rows, table, orchestration


def finished(
    row: dict[str, Any],
    seconds: float,
    flops_per_image: float,
    flops_source: str,
    memory_gib: float,
    memory_source: str,
    ceiling_tflops: float,
    device_kind: str,
    **extra: Any,
) -> dict[str, Any]:
    """The row's numbers; MFU against the datasheet peak of `device_kind`, or against the measured matmul ceiling
    where no peak is known (CPU). fp32 rows: the TF32 peak when the measured float32 matrix product runs faster than
    the CUDA cores' fp32 peak (JAX's default precision uses the tensor cores), else the fp32 peak."""
    known = peak_of(device_kind)
    if known is not None:
        name, (half, tf32, fp32) = known
        unit, peak = "bf16/fp16", half
        if row["precision"] == "fp32":
            unit, peak = ("TF32", tf32) if ceiling_tflops > fp32 else ("fp32", fp32)
        peak_source = f"{name} datasheet, dense {unit}"
    else:
        peak, peak_source = ceiling_tflops, "measured matmul (no datasheet peak for this device)"
    achieved = flops_per_image * row["batch"] / seconds / 1e12
    done = {
        **row,
        "status": "ok",
        "images_per_s": row["batch"] / seconds,
        "latency_ms": 1e3 * seconds,
        "peak_memory_gib": memory_gib,
        "memory_source": memory_source,
        "gflop_per_image": flops_per_image / 1e9,
        "flops_source": flops_source,
        "achieved_tflops": achieved,
        "mfu": achieved / peak,
        "peak_tflops": peak,
        "peak_source": peak_source,
        "matmul_ceiling_tflops": ceiling_tflops,
        "of_matmul_ceiling": achieved / ceiling_tflops,
        "device": device_kind,
        **{key: value for key, value in extra.items() if value is not None},
    }
    print(f"{describe(row)}: {done['images_per_s']:.2f} images/s, {done['latency_ms']:.1f} ms", flush=True)
    return done


def failed(row: dict[str, Any], exc: BaseException) -> dict[str, Any]:
    message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    print(f"failed {describe(row)}: {message}", flush=True)
    return {**row, "status": f"failed: {message}"}


def use_jax_flops(rows: list[dict[str, Any]]) -> None:
    """Torch rows take the XLA FLOP count of the same task and batch (one model-FLOPs figure per row kind); their own
    count stays as ``torch_gflop_per_image``."""
    counts = {(r["task"], r["batch"]): r for r in rows if r["framework"] == "jax" and r["status"] == "ok"}
    for row in rows:
        source = counts.get((row["task"], row["batch"]))
        if row["framework"] != "torch" or row["status"] != "ok" or source is None:
            continue
        row["torch_gflop_per_image"] = row["gflop_per_image"]
        row["gflop_per_image"], row["flops_source"] = source["gflop_per_image"], source["flops_source"]
        achieved = row["gflop_per_image"] * 1e9 * row["batch"] / (row["latency_ms"] / 1e3) / 1e12
        row["achieved_tflops"], row["mfu"] = achieved, achieved / row["peak_tflops"]
        row["of_matmul_ceiling"] = achieved / row["matmul_ceiling_tflops"]


def table(rows: list[dict[str, Any]]) -> str:
    header = "| framework | mode | task | precision | batch | images/s | latency ms | peak GiB | GFLOP/img | MFU "
    header += "| of matmul |"
    lines = [header, "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        head = f"| {r['framework']} | {r['mode']} | {r['task']} | {r['precision']} | {r['batch']} |"
        if r["status"] != "ok":
            lines.append(f"{head} {r['status']} | | | | | |")
            continue
        lines.append(
            f"{head} {r['images_per_s']:.2f} | {r['latency_ms']:.1f} | {r['peak_memory_gib']:.2f} | "
            f"{r['gflop_per_image']:.1f} | {100 * r['mfu']:.1f}% | {100 * r['of_matmul_ceiling']:.1f}% |"
        )
    return "\n".join(lines)


def child(parts: list[str], smoke: bool, budget_s: float, start: float, result: Path) -> int:
    """Run `parts` in this process, one after the other, writing their rows to `result` (a JSON list) as they
    finish."""
    sys.path.insert(0, str(REPO))
    rows: list[dict[str, Any]] = []

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        result.write_text(json.dumps(rows, indent=1))

    runners = {"jax-infer": run_jax_infer, "jax-train": run_jax_train, "torch": run_torch}
    for part in parts:
        runners[part](smoke, Deadline(budget_s, start), emit)
    return 0


def versions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for name in ("jax", "jaxlib", "flax", "torch", "timm"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="examples:\n  python bench/gpu.py --json bench/results/gpu_h100.json\n  python bench/gpu.py --smoke",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU (a check that everything runs)")
    parser.add_argument("--budget-s", type=float, help="skip pieces that would start later (default 290; smoke: none)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, help="write the results here (default: bench/results/gpu.json)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budget = args.budget_s if args.budget_s is not None else (math.inf if args.smoke else 290.0)
    if args.child:
        return child(args.child.split(","), args.smoke, budget, args.start, args.result)

    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    start = time.time()
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    environment = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    environment.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.92")
    environment["PYTHONUNBUFFERED"] = "1"
    if args.smoke:  # the CPU, and little compiler optimisation: the smoke check times nothing that matters
        environment["JAX_PLATFORMS"] = "cpu"
        flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
        environment["XLA_FLAGS"] = f"{environment.get('XLA_FLAGS', '')} {flags}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        if "torch" in parts:
            import importlib.util

            missing = [name for name in ("torch", "timm") if importlib.util.find_spec(name) is None]
            if missing:
                parts.remove("torch")
                notes.append(f"torch part skipped: {', '.join(missing)} not installed (pip install '.[port]')")
                print(notes[-1], flush=True)
        # one process per part (its own memory peak, one framework on the GPU); the smoke check: one per framework
        groups = [[part] for part in parts]
        if args.smoke:
            groups = [
                group for group in ([p for p in parts if p != "torch"], [p for p in parts if p == "torch"]) if group
            ]
        for group in groups:
            result = Path(tmp) / f"{'_'.join(group)}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--child", ",".join(group)]
            command += ["--result", str(result), "--start", str(start), "--budget-s", str(budget)]
            code = subprocess.run(command + (["--smoke"] if args.smoke else []), env=environment, cwd=REPO).returncode
            found = json.loads(result.read_text()) if result.exists() else []
            rows.extend(found)
            if code != 0:
                notes.append(f"{', '.join(group)}: exited with status {code} after {len(found)} row(s)")
                print(notes[-1], flush=True)

    use_jax_flops(rows)
    device = next((row["device"] for row in rows if row["status"] == "ok"), "unknown")
    known = peak_of(device)
    summary = {
        "device": device,
        "smoke": args.smoke,
        "versions": versions(),
        "peak_assumption": (
            f"{known[0]}: dense bf16/fp16 {known[1][0]}, TF32 {known[1][1]}, fp32 {known[1][2]} TFLOP/s (datasheet)"
            if known
            else "no datasheet peak for this device: MFU is against the measured matmul ceiling"
        ),
        "seconds": time.time() - start,
        "notes": notes,
        "rows": rows,
    }
    print()
    print(f"TSR-Matte on {summary['device']} ({summary['peak_assumption']}); {summary['seconds']:.0f} s")
    print(table(rows))
    for note in notes:
        print(f"note: {note}")
    out = args.json or (None if args.smoke else REPO / "bench" / "results" / "gpu.json")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
