"""The backbone registry: name -> factory, and ``create_backbone`` that checks its options."""

from __future__ import annotations

import inspect

from torch import nn

from ..errors import fail
from ..registry import Registry

BACKBONES: Registry = Registry("backbone")
register_backbone = BACKBONES.register


def create_backbone(name: str, in_channels: int = 3, image_size: int = 32, **kwargs) -> nn.Module:
    """Build a registered backbone (or ``timm:NAME``, a timm model); its ``forward`` maps (N, C, H, W)
    to (N, feature_dim)."""
    if name.startswith("timm:"):
        from .timm_backbone import timm_backbone

        if kwargs:
            raise fail(f"backbone {name} takes no options here; timm's defaults for the model are used")
        return timm_backbone(name[len("timm:"):], in_channels, image_size)
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
