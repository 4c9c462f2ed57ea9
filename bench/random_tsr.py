"""TSR-Matte models with seeded random weights for the throughput benchmarks (`bench/predict.py`, `bench/gpu.py`).

The model's speed does not depend on the weights' values, but writing its results does: PNG encoding of a noisy
mid-grey map costs several times that of a matte (mostly 0 and 255, soft edges). Weights are drawn with a fan-in
scale, BatchNorm variances in [0.5, 1.5] and scales near 1, as the tests' tiny model is; for predict.py's benchmark
the two output convolutions (the student's logits, the refiner's residual) are scaled by `MATTE_LOGIT_SCALE`, which
saturates most pixels to 0 or 255 as a trained model's mattes are.

Sizes (`CONFIGS`): ``tiny`` (a few-layer Swin, 256 px input: the host side dominates), ``base`` (the released
configuration: Swin-B at safe size 896 inside a 1024 px model, full decoder and refiner widths) and ``base-cpu``
(the released decoder and refiner widths on a Swin-T at 224 inside a 256 px model, for CPUs).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte import pretrained
from jaxmatte.backbones import swin
from jaxmatte.models.tsr import modeling


def _configs() -> dict[str, modeling.TSRConfig]:
    tiny_swin = swin.SwinConfig(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=7)
    return {
        "tiny": modeling.TSRConfig(
            backbone=tiny_swin,
            safe_size=224,
            img_size=256,
            decoder_channels=(64, 32, 16),
            head_channels=(16, 8),
            refiner=modeling.RefinerConfig(mid_channels=16, num_blocks=1),
        ),
        "base": modeling.TSR_PRESETS["base"],
        "base-cpu": dataclasses.replace(modeling.TSR_PRESETS["tiny"], safe_size=224, img_size=256),
    }


CONFIGS = _configs()
OUTPUT_CONVOLUTIONS = ("student.head.out.kernel", "refiner.conv_out.kernel")
MATTE_LOGIT_SCALE = 10.0


def random_values(abstract: Any, seed: int = 0, logit_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Dotted path -> seeded random value for every stored variable of `abstract`; the output convolutions' kernels
    multiplied by `logit_scale`."""
    rng = np.random.default_rng(seed)
    values = {}
    for key, leaf in sorted(pretrained.stored_shapes(abstract).items()):
        shape = leaf.shape
        if key.endswith(".var"):
            values[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif key.endswith(".scale"):
            values[key] = (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) >= 2:
            values[key] = (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        else:
            values[key] = (0.1 * rng.standard_normal(shape)).astype(np.float32)
        if key in OUTPUT_CONVOLUTIONS:
            values[key] *= np.float32(logit_scale)
    return values


def random_tsr(config: modeling.TSRConfig, *, seed: int = 0, dtype: Any = None, logit_scale: float = 1.0) -> Any:
    """The TSR model of `config` (compute `dtype`, float32 parameters) with `random_values`."""
    kwargs = {} if dtype is None else {"dtype": dtype}
    abstract = pretrained.abstract_model("tsr", config, **kwargs)
    return pretrained.fill(abstract, random_values(abstract, seed, logit_scale))


def save_random_tsr(config: modeling.TSRConfig, directory: Path, *, seed: int = 0) -> Path:
    """`random_tsr` with matte-like outputs (`MATTE_LOGIT_SCALE`), saved as a converted release would be (stretch
    to `img_size`, truncation), for predict.py."""
    size = int(config.img_size)
    info = {
        "preprocess": {"resize_policy": "stretch", "input_size": [size, size], "interpolation": "cv2.INTER_LINEAR"},
        "postprocess": {"resize_to_original": "cv2.INTER_LINEAR", "quantization": "x255, truncate to uint8"},
    }
    model = random_tsr(config, seed=seed, logit_scale=MATTE_LOGIT_SCALE)
    return pretrained.save_pretrained(model, config, directory, info=info)
