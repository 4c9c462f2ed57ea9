"""Backbones shared by the systems: Swin v1, plain/MAE ViT (with SimpleClick windows), DINOv3."""
