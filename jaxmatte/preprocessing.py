"""How a saved model is fed and read: one typed record, written into every exported or converted directory.

`Preprocessing` holds the geometry (resize policy, canvas side, resampling of images and ground truth), the input
normalisation and how predictions go back to the image (restore interpolation, uint8 quantisation). It is serialised
as ``info["preprocessing"]`` by `to_dict` and read back by `from_dict`; nothing is parsed out of prose.

    record = Preprocessing(resize="stretch", size=224, resample="pil_bilinear", quantization="truncate")
    info = {"preprocessing": record.to_dict()}
    Preprocessing.from_info(info) == record
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

RESIZES = ("letterbox", "stretch", "native")  # native: own resolution, padded to a multiple of `size`
RESAMPLES = ("cv2_linear", "pil_bilinear")  # pil_bilinear: PIL's BILINEAR filter, antialiased when downscaling
MASK_RESAMPLES = ("nearest", "linear")  # ground truth on the canvas: binary masks nearest, soft alpha linear
RESTORES = ("cv2_linear",)
QUANTIZATIONS = ("round", "truncate")  # truncate: the original scripts' (p * 255).astype(uint8)
OUTPUT_KINDS = ("alpha", "trimap")  # how a canvas output is read back: jaxmatte.outputs
KEY = "preprocessing"
LEGACY_LINEAR = "cv2.INTER_LINEAR"
LEGACY_QUANTIZATION = {"x255, truncate to uint8": "truncate", "x255, round to nearest uint8": "round"}


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Geometry, normalisation (of x / 255) and output handling of a model; see the module docstring."""

    resize: str = "letterbox"
    size: int = 1024
    resample: str = "cv2_linear"
    mask_resample: str = "nearest"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    restore: str = "cv2_linear"
    quantization: str = "round"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("resize", RESIZES),
            ("resample", RESAMPLES),
            ("mask_resample", MASK_RESAMPLES),
            ("restore", RESTORES),
            ("quantization", QUANTIZATIONS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"preprocessing {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"preprocessing size must be a positive int, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError(f"mean and std need 3 values each (std > 0), got {self.mean} and {self.std}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def policy(self):
        """The `ResizePolicy` that places images (and ground truth) on the model's canvas."""
        from jaxmatte.data.transforms import ResizePolicy

        return ResizePolicy(self.resize, self.size, resample=self.resample, mask_resample=self.mask_resample)

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with the non-None `changes` applied."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "preprocessing") -> Preprocessing:
        unknown = sorted(set(values) - {f.name for f in fields()})
        if unknown:
            raise ValueError(f"{source}: unknown preprocessing fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None

    @classmethod
    def from_info(cls, info: Mapping[str, Any], *, default: Preprocessing | None = None) -> Preprocessing:
        """The record of a directory's `info`; `default` (else the jaxmatte default) when it has none. Directories
        written before the record existed (``preprocess`` / ``postprocess`` blocks) are translated by `from_legacy`."""
        if KEY in info:
            return cls.from_dict(info[KEY])
        if "preprocess" in info or "postprocess" in info:
            return cls.from_legacy(info, default=default)
        return default or cls()

    @classmethod
    def from_legacy(cls, info: Mapping[str, Any], *, default: Preprocessing | None = None) -> Preprocessing:
        """The record equivalent to the earlier ``preprocess`` / ``postprocess`` blocks (exact values only)."""
        pre, post = dict(info.get("preprocess") or {}), dict(info.get("postprocess") or {})
        base = default or cls()
        for key, where in (("interpolation", pre), ("resize_to_original", post)):
            if key in where and where[key] != LEGACY_LINEAR:
                raise ValueError(f"unsupported {key} {where[key]!r} (only {LEGACY_LINEAR})")
        quantization = post.get("quantization")
        if quantization is not None and quantization not in LEGACY_QUANTIZATION:
            raise ValueError(f"unknown quantization {quantization!r}; known: {sorted(LEGACY_QUANTIZATION)}")
        size = base.size
        if "input_size" in pre:
            given = pre["input_size"]
            sides = [int(v) for v in (given if isinstance(given, list) else [given])]
            if len(set(sides)) != 1:
                raise ValueError(f"input_size must be S or [S, S] (a square), got {pre['input_size']!r}")
            size = sides[0]
        return base.replace(
            resize=pre.get("resize_policy"),
            size=size,
            mean=tuple(pre["mean"]) if "mean" in pre else None,
            std=tuple(pre["std"]) if "std" in pre else None,
            quantization=LEGACY_QUANTIZATION.get(quantization) if quantization else None,
        )

    def describe(self) -> dict[str, Any]:
        """JSON-able summary for reports (geometry as `resize_policy` and `input_size` [S, S])."""
        values = self.to_dict()
        geometry = {"pad_to_multiple": self.size} if self.resize == "native" else {"input_size": [self.size, self.size]}
        return {
            "resize_policy": values.pop("resize"),
            **geometry,
            **{k: v for k, v in values.items() if k != "size"},
        }


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(Preprocessing)
