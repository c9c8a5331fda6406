"""Backbones (image -> feature vector) and projection heads.

Backbones are registered by name so configs can say ``backbone: resnet18``.
Each factory takes ``in_channels`` and ``image_size`` plus its own keyword
options; :func:`create_backbone` checks those options against the factory's
signature so a typo fails with one line instead of a TypeError traceback.
"""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import fail
from ..registry import Registry

BACKBONES: Registry = Registry("backbone")
register_backbone = BACKBONES.register


def create_backbone(name: str, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    """Build a registered backbone; its ``forward`` maps (N, C, H, W) to (N, feature_dim)."""
    factory = BACKBONES.get(name)
    params = inspect.signature(factory).parameters
    allowed = [p for p in params if p not in ("in_channels", "image_size")]
    for key in kwargs:
        if key not in allowed:
            options = ", ".join(allowed) or "none"
            raise fail(f"unknown option {key!r} for backbone {name!r}; its options are: {options}")
    if in_channels < 1:
        raise fail(f"in_channels must be >= 1, got {in_channels}")
    if image_size < 1:
        raise fail(f"image_size must be >= 1, got {image_size}")
    return factory(in_channels=in_channels, image_size=image_size, **kwargs)


def list_backbones() -> list[str]:
    return BACKBONES.names()


# Import the family modules so their @register_backbone decorators run.
from . import cnn, mlp, resnet, vit  # noqa: E402,F401
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
