"""Backbones (image -> feature vector) and projection heads.

Backbones are registered by name so configs can say ``backbone: resnet18``.
Each factory takes ``in_channels`` and ``image_size`` plus its own keyword
options; :func:`create_backbone` checks those options against the factory's
signature so a typo fails with one line instead of a TypeError traceback.
"""

from .registry import BACKBONES, create_backbone, list_backbones, register_backbone

# Import the family modules so their @register_backbone decorators run.
from . import cnn, mlp, realnvp, resnet, unet, vit  # noqa: E402,F401
from .heads import MLPHead, projection_head  # noqa: E402
from .split_bn import split_batch_norm  # noqa: E402

__all__ = [
    "BACKBONES",
    "register_backbone",
    "create_backbone",
    "list_backbones",
    "MLPHead",
    "projection_head",
    "split_batch_norm",
]
