"""SegTrimap training (image + coarse object mask -> trimap; SimpleClick-style MAE ViT, SimpleFPN, all-MLP head).

Variants:

- default: the headline recipe (spec §9): ViT-H/14 at 448 (variant 1, x4 head), NFL + 0.1 DT, Adam 1e-4, MultiStepLR
  [50, 55] per epoch, 55 epochs, batch 32, letterbox padding ignored by the loss;
- faithful: the same with the padding labelled background, as the original trained;
- ce: plain cross-entropy instead of NFL + DT;
- layerwise: the original's `--layerwise-decay` option (layer decay 0.75, weight decay 0.02 on weight matrices), with
  the mask patch embedding in the embedding group (the original leaves it out of every group, so it never trains);
- large / base: MAE ViT-L/16 / ViT-B/16 at 448 (smaller runs);
- demo: a 4-block ViT-S-wide model at 224 on the embedded synthetic matting data (CPU, minutes);
- realdata: the demo model on the 27 alphamatting.com training images of ../shared/realdata with their trimap1 as
  labels (the first 20 in stem order train, the last 7 validate).

Real runs start from MAE: `python port/convert.py segtrimap --mae mae_pretrain_vit_huge.pth --out ckpt/mae_segtrimap`,
then `--config.model.init_from=ckpt/mae_segtrimap`, and set `--config.data.train_roots` / `val_roots` (folders of
`image/` + `alpha/`, `original/` + `mask/` (alpha) or `im/` + `gt/`, with optional `trimap/` folders;
`--config.data.input_mask_dir` for given input masks, otherwise alpha >= 30).
"""

from jaxmatte.models.segtrimap.recipe import demo_settings, faithful_settings, layerwise_settings, segtrimap_config

REALDATA = "../shared/realdata/alphamatting_training_lowres"
VARIANTS = ("default", "faithful", "ce", "layerwise", "large", "base", "demo", "realdata")


def get_config(arg=None):
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {VARIANTS}")
    config = segtrimap_config()
    config.variant = variant
    if variant == "faithful":
        faithful_settings(config)
    elif variant == "ce":
        config.loss.kind = "ce"
    elif variant == "layerwise":
        layerwise_settings(config)
    elif variant in ("large", "base"):
        config.model.preset = f"{variant}_448"
    elif variant in ("demo", "realdata"):
        demo_settings(config)
    if variant == "realdata":
        d = config.data
        d.synthetic_root = ""
        d.train_roots = [REALDATA]
        d.val_roots = [REALDATA]
        d.trimap_dir = f"{REALDATA}/trimap1"
        d.train_select, d.val_select = "0:20", "20:27"
        d.val_batch_size = 7
        config.optim.batch_size = 4
        config.optim.epochs = 25
        config.optim.milestones = (20,)
    return config
