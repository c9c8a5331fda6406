"""SimCLR-style random views, made in batch on the training device from uint8 images; patch masks
for masked methods (MAE, iBOT, I-JEPA) in ``augment.masks``.

>>> import torch
>>> from reprlearn.augment import preset, two_views
>>> images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
>>> g = torch.Generator().manual_seed(0)
>>> a, b = two_views(images, preset("simclr", 32, 3), g)
>>> a.shape, a.dtype
(torch.Size([16, 3, 32, 32]), torch.float32)
"""

from . import masks, ops
from .spec import PRESETS, ViewSpec, local_crop, local_size, preset
from .views import ViewMaker, augment, multi_crop, two_views

__all__ = [
    "PRESETS",
    "ViewMaker",
    "ViewSpec",
    "augment",
    "local_crop",
    "local_size",
    "masks",
    "multi_crop",
    "ops",
    "preset",
    "two_views",
]
