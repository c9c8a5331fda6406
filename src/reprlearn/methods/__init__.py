"""Methods, one file each, registered by name (``reprlearn methods`` lists them)."""

from ..registry import Registry

METHODS = Registry("method")

# importing a method module registers it
from . import ae, moco, simclr  # noqa: E402,F401

from .base import DataInfo, Method  # noqa: E402

__all__ = ["METHODS", "Method", "DataInfo"]
