"""jaxmatte: JAX/Flax NNX image matting and dichotomous segmentation, with PyTorch weight ports."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_pretrained", "save_pretrained"]


def __getattr__(name: str) -> Any:
    # JAX is imported only when a model is needed, so metric workers and image I/O start fast.
    if name in ("load_pretrained", "save_pretrained"):
        from jaxmatte import pretrained

        return getattr(pretrained, name)
    raise AttributeError(f"module 'jaxmatte' has no attribute {name!r}")
