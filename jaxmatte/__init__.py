"""jaxmatte: JAX/Flax NNX image matting and dichotomous segmentation, with PyTorch weight ports."""

from jaxmatte.pretrained import load_pretrained, save_pretrained

__version__ = "0.1.0"
__all__ = ["__version__", "load_pretrained", "save_pretrained"]
