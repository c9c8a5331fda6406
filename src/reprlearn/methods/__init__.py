"""Methods, one file each, registered by name (``reprlearn methods`` lists them)."""

from importlib import import_module

# name -> the module that registers it. `reprlearn methods` and `reprlearn train --help` read this
# literal table from the source (registry.read_catalog), so listing methods does not import torch;
# tests/test_cli.py checks it against the registry. A new method file adds its line here.
CATALOG = {
    "ae": "ae",
    "barlow-twins": "barlow_twins",
    "byol": "byol",
    "clip": "clip",
    "colorization": "colorization",
    "contractive-ae": "contractive_ae",
    "cvae": "cvae",
    "ddpm": "ddpm",
    "denoising-ae": "denoising_ae",
    "dino": "dino",
    "dinov2": "dinov2",
    "domain-invariant": "domain_invariant",
    "flow": "flow",
    "hvae": "hvae",
    "ibot": "ibot",
    "ijepa": "ijepa",
    "inpainting": "inpainting",
    "jigsaw": "jigsaw",
    "mae": "mae",
    "mlm": "mlm",
    "moco": "moco",
    "robust-ae": "robust_ae",
    "rotation": "rotation",
    "siglip": "siglip",
    "simclr": "simclr",
    "simsiam": "simsiam",
    "sparse-ae": "sparse_ae",
    "swav": "swav",
    "vae": "vae",
    "vicreg": "vicreg",
}

from .base import (  # noqa: E402
    METHODS, Ability, AdaptsDomains, DataInfo, EmbedsText, HasDensity, Interpolates, Method, ModelsText, Reconstructs,
    Samples, abilities,
)

for _module in sorted(set(CATALOG.values())):  # importing a method module registers it
    import_module(f".{_module}", __name__)

__all__ = ["METHODS", "CATALOG", "Method", "DataInfo", "Ability", "AdaptsDomains", "Reconstructs", "Interpolates",
           "Samples", "HasDensity", "EmbedsText", "ModelsText", "abilities"]
