"""Pixel depths: what a stored value means, and the one conversion to the models' float range.

Images are stored as uint8 (0..255), uint16 (0..65535, 16-bit PNG/TIFF) or float32 (given in
[0, 1]). Everything a model sees is float in [0, 1]: value / the type's full-scale value, the
same for every channel (per-channel statistics are the encoder's normalisation, runs.data_info).
A 12-bit scan stored in uint16 therefore lands in [0, 1/16]; the normalisation rescales it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

# full-scale value of each stored type: value / FULL_SCALE is the model's [0, 1]
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
_TORCH_FULL_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def full_scale(dtype) -> float:
    """The stored value that means 1.0 (white, full reflectance) for a stored pixel type."""
    return FULL_SCALE[np.dtype(dtype)]


def unit_float(images: Tensor) -> Tensor:
    """Stored pixels -> float32 in [0, 1]: uint8 / 255, uint16 / 65535; float images are taken as
    already in [0, 1] (what :meth:`ImageSet.tensor` gives for 16-bit and float sets)."""
    scale = _TORCH_FULL_SCALE.get(images.dtype)
    if scale is not None:
        return images.float().div_(scale)
    return images if images.dtype == torch.float32 else images.float()


def to_unit_array(images: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`unit_float`: stored pixels -> float32 in [0, 1]."""
    if images.dtype == np.float32:
        return images
    return images.astype(np.float32) / np.float32(full_scale(images.dtype))
