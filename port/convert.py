"""Convert PyTorch weights into a jaxmatte directory that `jaxmatte.load_pretrained(DIR)` reads.

    python port/convert.py KIND --src FILE --out DIR [options]

Each KIND is a module in `port/` providing `add_arguments(parser)` and
`convert(checkpoint, *, source, args) -> Converted`. `python port/convert.py KIND --help` lists its options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flax import nnx  # noqa: E402

from port import load  # noqa: E402

KINDS = {
    "swin": ("port.swin", "timm Swin v1 (plain or features_only `layers_N` keys, Microsoft layout rejected)"),
    "vit": ("port.vit", "MAE / plain ViT (timm or official MAE layout), optional SimpleClick windows"),
    "dinov3": ("port.dinov3", "DINOv3 ViT (timm `Eva` or official Meta layout)"),
    "tsr": ("port.tsr", "TSR-Matte student + refiner (release fp16, training checkpoint or state dict)"),
    "twinswin": ("port.tsr", "TwinSwin-Matte student only (TwinSwin or TSR checkpoints; a refiner is dropped)"),
}


@dataclass
class Converted:
    model: nnx.Module
    config: Any
    info: dict[str, Any] = field(default_factory=dict)


def timm_resized_checkpoint(src: Path, model_name: str, img_size: list[int] | None, window_size: int | None) -> Any:
    """Let timm resample position embeddings / relative-position tables while loading `src` for new sizes."""
    import timm

    overrides: dict[str, Any] = {}
    if img_size:
        overrides["img_size"] = tuple(img_size) if len(img_size) == 2 else img_size[0]
    if window_size:
        overrides["window_size"] = window_size
    model = timm.create_model(
        model_name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(src)}, **overrides
    )
    return {k: load._tensor_to_numpy(v) for k, v in model.state_dict().items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="port/convert.py", description=__doc__.splitlines()[0])
    kinds = parser.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, (module_name, help_text) in KINDS.items():
        sub = kinds.add_parser(kind, help=help_text, description=help_text)
        sub.add_argument("--src", type=Path, required=True, help="weights file: .safetensors, .pth, .pt, .bin")
        sub.add_argument("--out", type=Path, required=True, help="output directory")
        resize = sub.add_argument_group("resizing with timm before conversion (needs the timm model name)")
        resize.add_argument("--timm-model", help="timm architecture the file belongs to, e.g. vit_base_patch16_224")
        resize.add_argument("--img-size", type=int, nargs="+", metavar="N", help="new input size: S or H W")
        if kind == "swin":
            resize.add_argument("--window-size", type=int, help="new window size")
        importlib.import_module(module_name).add_arguments(sub)
    return parser


def run(argv: list[str] | None = None) -> Converted:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(KINDS[args.kind][0])
    window_size = getattr(args, "window_size", None)
    if args.timm_model:
        checkpoint = timm_resized_checkpoint(args.src, args.timm_model, args.img_size, window_size)
    elif args.img_size or window_size:
        raise SystemExit("--img-size/--window-size need --timm-model (timm does the resampling)")
    else:
        checkpoint = load.read_checkpoint(args.src)
    converted = module.convert(checkpoint, source=str(args.src), args=args)
    from jaxmatte import save_pretrained

    info = {"kind": args.kind, "source": args.src.name, **converted.info}
    save_pretrained(converted.model, converted.config, args.out, info=info)
    print(f"wrote {args.out} ({type(converted.model).__name__}, {converted.config})")
    return converted


def main(argv: list[str] | None = None) -> int:
    from port.table import PortError

    try:
        run(argv)
    except (PortError, load.CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
