"""Data sources: every source yields an :class:`ImageSet` of decoded uint8 images."""

from .imageset import ImageSet, stratified_split
from .sources import load_source

__all__ = ["ImageSet", "load_source", "stratified_split"]
