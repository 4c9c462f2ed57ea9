"""Train a model: ``python train.py --config configs/tsr.py[:variant] [--config.a.b=value ...] [--workdir DIR]
[--device auto|cpu|gpu]``.

A bare config name (``--config tsr.py:demo`` or ``tsr:demo``) is looked up in ``configs/``. Overrides must match the
field's type. The workdir defaults to ``runs/<config name>-<variant>``; a workdir holding checkpoints resumes. The
first line printed names the device(s) JAX runs on (``--device cpu`` keeps JAX to the CPU on a GPU machine too).

Exit status: 0 done; 1 the run cannot go on (too many non-finite steps, a workdir holding another model, ...: one
``error:`` line says why); 2 a bad config or override, or ``--device gpu`` without a GPU; 128 + signal number after
SIGTERM / SIGINT, which save a checkpoint first (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys

from jaxmatte.cli import DeviceError, add_device_argument, configure_logging, select_device


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.allow_abbrev = False  # --work is not --workdir
    parser.add_argument("--config", required=True, help="config file, optionally with :variant")
    parser.add_argument("--workdir", default=None, help="run directory (default runs/<name>-<variant>)")
    add_device_argument(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.optim.lr=1e-4)")
        overrides.append(item.removeprefix("--config."))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    try:
        print(select_device(args.device), flush=True)  # before anything starts JAX's backends
    except DeviceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    configure_logging(logging.INFO)
    from jaxmatte.data.pipeline import ensure_absl_flags_parsed
    from jaxmatte.train.loop import Interrupted, TrainingError, default_workdir, load_config, run

    ensure_absl_flags_parsed()
    try:
        config = load_config(args.config, overrides)
    except (FileNotFoundError, KeyError, TypeError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    workdir = args.workdir or str(default_workdir(config))
    try:
        run(config, workdir)
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 128 + err.signum
    return 0


if __name__ == "__main__":
    sys.exit(main())
