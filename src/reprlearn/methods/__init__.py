"""Methods, one file each, registered by name (``reprlearn methods`` lists them)."""

from .base import (
    METHODS, Ability, AdaptsDomains, DataInfo, EmbedsText, HasDensity, Interpolates, Method, ModelsText, Reconstructs,
    Samples, abilities,
)

# importing a method module registers it
from . import (  # noqa: E402,F401
    ae, barlow_twins, byol, clip, colorization, contractive_ae, cvae, ddpm, denoising_ae, dino, dinov2, domain_invariant,
    flow, hvae, ibot, ijepa, inpainting, jigsaw, mae, mlm, moco, robust_ae, rotation, siglip, simclr, simsiam, sparse_ae, swav,
    vae, vicreg,
)

__all__ = ["METHODS", "Method", "DataInfo", "Ability", "AdaptsDomains", "Reconstructs", "Interpolates", "Samples",
           "HasDensity", "EmbedsText", "ModelsText", "abilities"]
