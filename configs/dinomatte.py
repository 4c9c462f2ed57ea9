"""DINOv3 matting training (frozen DINOv3 ViT + alpha decoder). Variants:

- default: jaxmatte's multi-scale detail decoder on DINOv3-S at 448 (letterbox, aspect kept), the spec's losses and
  recipe (AdamW 1e-4, weight decay 0.01, per-epoch cosine to 1e-7, 50 epochs, batch 8, clip 1.0);
- faithful: the original system (faithful single-scale decoder, PIL bilinear stretch to 224, RoPE rescale in train
  mode, original padding rule) with the same recipe;
- demo / demo_faithful: the detail / faithful decoder with a random-weight DINOv3-S on the embedded soft-alpha synthetic
  data (minutes on two CPU cores);
- realdata / realdata_faithful: the 27 alphamatting.com training images of ../shared/realdata (the first 20 in stem
  order train, the last 7 validate), detail / faithful decoder.

Real runs set `--config.model.backbone_weights=DIR` (a DINOv3 converted with `port/convert.py dinov3`) and
`--config.data.train_roots` / `val_roots` (`rgb_images/` + `alpha_maps/`, DIS `im/` + `gt/`, or `image/` + `alpha/`).
"""

from jaxmatte.models.dinomatte.recipe import demo_settings, detail_settings, dinomatte_config, faithful_settings

REALDATA = "../shared/realdata/alphamatting_training_lowres"
VARIANTS = ("default", "faithful", "demo", "demo_faithful", "realdata", "realdata_faithful")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = dinomatte_config()
    config.variant = variant
    if variant.endswith("faithful"):
        faithful_settings(config)
    elif variant.startswith("demo"):
        detail_settings(config, size=256)
    else:
        detail_settings(config)
    if variant.startswith("demo"):
        demo_settings(config)
    if variant.startswith("realdata"):
        config.data.train_roots = [REALDATA]
        config.data.val_roots = [REALDATA]
        config.data.train_select, config.data.val_select = "0:20", "20:27"
        config.optim.epochs = 30
        config.optim.batch_size = 4
        config.optim.lr = 3e-4
        config.data.val_batch_size = 7
        config.train.compute_dtype = "float32"
        config.train.val_at_start = True
    return config
