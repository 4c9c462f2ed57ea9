"""Numerical building blocks with PyTorch semantics on NHWC arrays: resizing, transposed convolution, max pooling with
indices and unpooling, and PyTorch default initialisers."""

from jaxmatte.ops.conv import ConvTranspose2d, conv_transpose
from jaxmatte.ops.init import kernel_fan_in, torch_bias_init, torch_kernel_init
from jaxmatte.ops.pool import max_pool_with_indices, max_unpool, torch_flat_indices
from jaxmatte.ops.resize import resize_bilinear, resize_nearest, resize_nearest_exact

__all__ = [
    "ConvTranspose2d",
    "conv_transpose",
    "kernel_fan_in",
    "max_pool_with_indices",
    "max_unpool",
    "resize_bilinear",
    "resize_nearest",
    "resize_nearest_exact",
    "torch_bias_init",
    "torch_flat_indices",
    "torch_kernel_init",
]
