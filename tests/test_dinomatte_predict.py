"""DINOv3 matting end to end: a PyTorch reference of the original system (timm / official DINOv3 backbone layouts,
ViT-S and ViT-B at reduced depth, perturbed weights and BN statistics) saved as the original trainer saves it, converted
with the real `port/convert.py dinomatte`, run through the real `predict.py`, against the original `inference.py`
steps: PIL bilinear resize to 224, ToTensor + ImageNet Normalize, model, cv2 INTER_LINEAR back to (W, H), clip, x255
truncated."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dinomatte_reference import build_reference, export_state_dict
from PIL import Image
from scripts import load_script

from jaxmatte.data.io import read_mask
from port import convert

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"wide": (150, 260), "tall": (241, 97), "exact": (224, 224), "small": (61, 83)}  # (H, W)
CASES = [("vit_small_patch16_dinov3", 2, "timm"), ("vit_small_patch16_dinov3", 2, "official")]
CASES += [("vit_base_patch16_dinov3", 1, "timm"), ("vit_base_patch16_dinov3", 1, "official")]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Smooth colour pictures (PNG, one JPEG, one grayscale PNG) with structure the model responds to."""
    folder = tmp_path_factory.mktemp("dinomatte_inputs")
    rng = np.random.default_rng(5)
    for index, (name, shape) in enumerate(SHAPES.items()):
        small = rng.integers(0, 256, (max(2, shape[0] // 8), max(2, shape[1] // 8), 3), dtype=np.uint8)
        picture = cv2.resize(small, shape[::-1], interpolation=cv2.INTER_CUBIC)
        if index == 1:
            Image.fromarray(picture[..., 0]).save(folder / f"{name}.png")
        elif index == 2:
            Image.fromarray(picture).save(folder / f"{name}.jpg", quality=95)
        else:
            Image.fromarray(picture).save(folder / f"{name}.png")
    return folder


def original_inference(model: torch.nn.Module, path: Path) -> np.ndarray:
    """The original `inference.py` for one image: the alpha PNG it writes."""
    from torchvision import transforms

    image = Image.open(path).convert("RGB")
    width, height = image.size
    prepare = transforms.Compose(
        [
            transforms.Resize((224, 224)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    with torch.no_grad():
        alpha = model(prepare(image)[None])["alpha"][0, 0].numpy()
    alpha = np.clip(cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR), 0, 1)
    return (alpha * 255).astype(np.uint8)


@pytest.mark.parametrize(("model_name", "depth", "layout"), CASES, ids=[f"{m[4:9]}-{ly}" for m, _, ly in CASES])
def test_convert_and_predict_match_the_original(model_name, depth, layout, images, tmp_path):
    reference = build_reference(model_name, depth=depth, seed=3)
    state = export_state_dict(reference, layout)
    container = {
        "epoch": 12,
        "model_state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
        "scheduler_state_dict": {"last_epoch": 12},
        "loss": 0.1,
        "config": {"model": {"dino_model_size": "vits16" if "small" in model_name else "vitb16"}},
    }
    src = tmp_path / "best_model.pth"
    torch.save(container, src)
    out_dir = tmp_path / "converted"
    assert convert.main(["dinomatte", "--src", str(src), "--out", str(out_dir)]) == 0

    predictions = tmp_path / "alpha"
    predict = load_script("predict")
    assert predict.main([str(images), "--checkpoint", str(out_dir), "--output", str(predictions)]) == 0
    reference.eval()
    spread = []
    for path in sorted(images.iterdir()):
        expected = original_inference(reference, path)
        ours = read_mask(predictions / f"{path.stem}.png")
        assert ours.shape == expected.shape, path.name
        diff = np.abs(ours.astype(int) - expected.astype(int))
        assert diff.max() <= 3, (path.name, diff.max())
        assert np.mean(diff <= 1) >= 0.995, (path.name, np.mean(diff <= 1))
        spread.append(float(expected.std()))
    assert max(spread) > 5.0  # the reference output varies across the image: the comparison is informative
