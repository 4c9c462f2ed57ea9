"""Image + coarse object mask -> trimap (a SegTrimap model) -> alpha (a trimap-based matting model such as DIM).

    chain = TrimapToAlpha(Predictor("ckpt/segtrimap"), Predictor("ckpt/dim_pruned"))
    alphas, trimaps = chain.predict_arrays(images, masks)      # HxW uint8 alphas, HxW trimap class ids
    for path, alpha, image, trimap in chain.predict_files(paths, masks=mask_paths): ...

The trimap model's classes become the matting model's trimap as 0 / 128 / 255 at the image's size.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxmatte import outputs
from jaxmatte.data.io import ImageReadError, read_image, read_mask


class TrimapToAlpha:
    def __init__(self, trimap_predictor: Any, alpha_predictor: Any):
        if trimap_predictor.output != "trimap":
            raise ValueError(f"{trimap_predictor.directory}: the first model must predict trimaps")
        if not alpha_predictor.needs_trimap:
            raise ValueError(f"{alpha_predictor.directory}: the second model must read trimaps")
        self.trimap_predictor = trimap_predictor
        self.alpha_predictor = alpha_predictor

    def predict_arrays(
        self, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """(alphas, trimap class ids), each HxW uint8 per image."""
        classes = self.trimap_predictor.predict_arrays(images, masks)
        trimaps = [outputs.to_png("trimap", c) for c in classes]
        return self.alpha_predictor.predict_arrays(images, trimaps), classes

    def predict_files(
        self, paths: Iterable[str | os.PathLike], *, masks: Sequence[str | os.PathLike]
    ) -> Iterator[tuple[Path, Any, np.ndarray | None, np.ndarray | None]]:
        """(path, alpha or the ImageReadError, image, trimap class ids) per file, in order, one batch of the
        matting model at a time."""
        paths = [Path(p) for p in paths]
        if len(masks) != len(paths):
            raise ValueError(f"{len(paths)} images but {len(masks)} masks")
        size = self.alpha_predictor.batch_size
        for start in range(0, len(paths), size):
            loaded = []
            for path, mask in zip(paths[start : start + size], masks[start : start + size], strict=True):
                try:
                    image = read_image(path)
                    small = self.alpha_predictor.size_problem(path, image)  # e.g. DIM's 32 px: reported, not raised
                    if small is not None:
                        raise small
                    loaded.append((path, image, read_mask(mask), None))
                except ImageReadError as error:
                    loaded.append((path, None, None, error))
            good = [item for item in loaded if item[3] is None]
            alphas, classes = self.predict_arrays([g[1] for g in good], [g[2] for g in good]) if good else ([], [])
            results = iter(zip(alphas, classes, strict=True))
            for path, image, _, error in loaded:
                if error is not None:
                    yield path, error, None, None
                else:
                    alpha, trimap = next(results)
                    yield path, alpha, image, trimap
