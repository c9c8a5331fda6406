"""Methods, one file each, registered by name (``reprlearn methods`` lists them)."""

from ..registry import Registry

METHODS = Registry("method")

# importing a method module registers it
from . import ae, byol, colorization, contractive_ae, cvae, denoising_ae, dino, hvae, inpainting, jigsaw, mae, moco, robust_ae, rotation, simclr, sparse_ae, vae  # noqa: E402,F401

from .base import DataInfo, Method  # noqa: E402

__all__ = ["METHODS", "Method", "DataInfo"]
