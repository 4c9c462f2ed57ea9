"""Argument helpers shared by the command-line scripts (no JAX import: bad arguments fail fast)."""

from __future__ import annotations

import argparse
from typing import Any


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def add_predictor_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Options of a `jaxmatte.predict.Predictor`: precision, batch size and preprocessing overrides."""
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="compute precision")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (default: 1)")
    parser.add_argument(
        "--resize", choices=("stretch", "letterbox", "native"), help="override the checkpoint's geometry"
    )
    parser.add_argument(
        "--input-size", type=positive_int, help="override the checkpoint's input side (native: pad to a multiple)"
    )
    parser.add_argument(
        "--quantization", choices=("round", "truncate"), help="override the checkpoint's x255 quantisation"
    )


def make_predictor(args: argparse.Namespace, *, resize_policy: str | None = None, input_size: int | None = None) -> Any:
    """A Predictor for `args.checkpoint` from `add_predictor_arguments` options; command-line overrides win over
    `resize_policy` / `input_size` (e.g. from an experiment config). Imports JAX."""
    from jaxmatte.predict import Predictor, precision_dtype

    return Predictor(
        args.checkpoint,
        dtype=precision_dtype(args.precision),
        batch_size=args.batch_size,
        resize_policy=args.resize or resize_policy,
        input_size=args.input_size or input_size,
        quantization=args.quantization,
    )
