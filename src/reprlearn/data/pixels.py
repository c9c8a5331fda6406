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

from ..errors import fail

# full-scale value of each stored type: value / FULL_SCALE is the model's [0, 1]
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0, np.dtype(np.float32): 1.0}
_TORCH_FULL_SCALE = {torch.uint8: 255.0, torch.uint16: 65535.0}


def full_scale(dtype) -> float:
    """The stored value that means 1.0 (white, full reflectance) for a stored pixel type."""
    return FULL_SCALE[np.dtype(dtype)]


def unit_float(images: Tensor) -> Tensor:
    """Stored pixels -> a new float32 tensor in [0, 1]: uint8 / 255, uint16 / 65535; float images are
    taken as already in [0, 1] (what :meth:`ImageSet.tensor` gives for 16-bit and float sets) and
    copied, so a caller may change the result in place without touching the data set."""
    scale = _TORCH_FULL_SCALE.get(images.dtype)
    if scale is not None:
        return images.float().div_(scale)
    return images.to(torch.float32, copy=True)


def to_unit_array(images: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`unit_float`: stored pixels -> float32 in [0, 1]."""
    if images.dtype == np.float32:
        return images
    return images.astype(np.float32) / np.float32(full_scale(images.dtype))


def display_rgb(image: np.ndarray) -> np.ndarray:
    """One stored image (H, W, C) as 8-bit RGB for a picture (sheets, contact sheets): any depth scaled
    to 0..255, the first three bands of a many-band image, grey repeated into RGB."""
    if image.dtype != np.uint8:
        image = (np.clip(to_unit_array(image), 0, 1) * 255).round().astype(np.uint8)
    return image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)


def require_8bit(images: Tensor, who: str) -> None:
    """Likelihoods over the 256 levels of 8-bit pixels (flows, discrete VAEs, diffusion's bins) mean
    nothing on deeper data: refuse it in one line rather than score it silently wrong."""
    if images.dtype != torch.uint8:
        raise fail(f"{who} models 8-bit pixel levels but the images are {images.dtype} (16-bit or float data); "
                   "train a method without a pixel likelihood (simclr, mae, ...) on it")
