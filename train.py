"""Train a model: ``python train.py --config configs/tsr.py[:variant] [--config.a.b=value ...] [--workdir DIR]``.

A bare config name (``--config tsr.py:demo`` or ``tsr:demo``) is looked up in ``configs/``. Overrides must match the
field's type. The workdir defaults to ``runs/<config name>-<variant>``; a workdir holding checkpoints resumes.

Exit status: 0 done; 1 the run cannot go on (too many non-finite steps, a workdir holding another model, ...: one
``error:`` line says why); 2 a bad config or override; 128 + signal number after SIGTERM / SIGINT, which save a
checkpoint first (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import logging
import sys


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.allow_abbrev = False  # --work is not --workdir
    parser.add_argument("--config", required=True, help="config file, optionally with :variant")
    parser.add_argument("--workdir", default=None, help="run directory (default runs/<name>-<variant>)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for item in rest:
        if not item.startswith("--config."):
            parser.error(f"unrecognised argument {item!r} (overrides look like --config.optim.lr=1e-4)")
        overrides.append(item.removeprefix("--config."))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
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
