"""Data sources: every source yields an :class:`ImageSet` of decoded images (uint8, uint16 or float32
in [0, 1], any channel count; data/pixels.py says what each depth means) and other named per-image
fields (``ImageSet.field(name)``); shards and folders are read sample by sample by data/samples.py."""

from .imageset import ImageSet, stratified_split
from .pairs import is_pair_source, load_pairs
from .pairset import PairSet
from .sources import load_source

__all__ = ["ImageSet", "PairSet", "is_pair_source", "load_pairs", "load_source", "stratified_split"]
