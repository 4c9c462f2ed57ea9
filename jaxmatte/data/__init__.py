"""Data: robust image reading and writing."""

from jaxmatte.data.io import IMAGE_SUFFIXES, ImageReadError, list_images, read_image, read_mask, write_png

__all__ = ["IMAGE_SUFFIXES", "ImageReadError", "list_images", "read_image", "read_mask", "write_png"]
