"""The backbone feature contract: `feature_info` matches what `forward_intermediates` returns, for Swin, ViT and
DINOv3, square and non-square inputs, negative indices, bad indices, under jit."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxmatte.backbones.dinov3 import DinoV3, DinoV3Config
from jaxmatte.backbones.swin import SwinConfig, SwinTransformer
from jaxmatte.backbones.vit import VisionTransformer, ViTConfig

BACKBONES = {
    "swin": (
        lambda: SwinTransformer(
            SwinConfig(embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1), window_size=2), rngs=nnx.Rngs(0)
        ),
        (64, 96),
    ),
    "vit": (
        lambda: VisionTransformer(
            ViTConfig(img_size=(32, 48), patch_size=16, embed_dim=32, depth=3, num_heads=2), rngs=nnx.Rngs(0)
        ),
        (32, 48),
    ),
    "dinov3": (lambda: DinoV3(DinoV3Config(embed_dim=32, depth=3, num_heads=2), rngs=nnx.Rngs(0)), (32, 48)),
}


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_feature_info_matches_the_maps(name):
    build, (height, width) = BACKBONES[name]
    model = build()
    info = model.feature_info()
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, height, width, 3)), jnp.float32)
    everything = tuple(range(len(info.levels)))
    maps = model.forward_intermediates(x, everything)
    assert len(maps) == len(info.levels)
    for level, feature in zip(info.levels, maps, strict=True):
        assert feature.shape == (2, height // level.stride, width // level.stride, level.channels), level
    default = model.forward_intermediates(x)
    assert [m.shape for m in default] == [maps[i].shape for i in info.default]
    np.testing.assert_array_equal(model.forward_intermediates(x, (-1,))[0], maps[-1])
    assert info.select((-1, 0)).channels == (info.channels[-1], info.channels[0])
    with pytest.raises(ValueError, match="out of range"):
        model.forward_intermediates(x, (len(info.levels),))
    jitted = nnx.jit(lambda m, v: m.forward_intermediates(v, (0, -1), norm=True))(model, x)
    assert [j.shape for j in jitted] == [maps[0].shape, maps[-1].shape]


def test_maps_equal_the_existing_outputs():
    swin, (h, w) = BACKBONES["swin"][0](), BACKBONES["swin"][1]
    x = jnp.ones((1, h, w, 3))
    for ours, stage in zip(swin.forward_intermediates(x), swin(x), strict=True):
        np.testing.assert_array_equal(ours, stage)
    dino = BACKBONES["dinov3"][0]()
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 32, 48, 3)), jnp.float32)
    out = dino(x, indices=(1,))
    np.testing.assert_array_equal(dino.forward_intermediates(x, (1,))[0], out.intermediates[0])
    np.testing.assert_allclose(dino.forward_intermediates(x, (-1,), norm=True)[0], out.patch_tokens, atol=1e-6)
    vit = BACKBONES["vit"][0]()
    np.testing.assert_array_equal(vit.forward_intermediates(x, (0,))[0], vit(x, indices=(0,)).intermediates[0])
