"""Methods, one file each, registered by name (``reprlearn methods`` lists them)."""

from .base import (
    METHODS, Ability, DataInfo, EmbedsText, HasDensity, Interpolates, Method, Reconstructs, Samples, abilities,
)

# importing a method module registers it
from . import (  # noqa: E402,F401
    ae, byol, clip, colorization, contractive_ae, cvae, denoising_ae, dino, dinov2, hvae, ibot, ijepa, inpainting,
    jigsaw, mae, moco, robust_ae, rotation, siglip, simclr, sparse_ae, vae,
)

__all__ = ["METHODS", "Method", "DataInfo", "Ability", "Reconstructs", "Interpolates", "Samples", "HasDensity",
           "EmbedsText", "abilities"]
