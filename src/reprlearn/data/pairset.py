"""PairSet: images and, per image, one or more captions; and its form in the decode cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import fail
from .cache import image_set_arrays, image_set_from, text_lists_arrays, text_lists_from
from .imageset import ImageSet


@dataclass
class PairSet:
    """Images (an :class:`ImageSet`, uint8 (N, H, W, C)) and, per image, one or more captions."""

    images: ImageSet
    captions: list[list[str]]
    name: str = ""
    corrupted: np.ndarray | None = None  # bool (N,): the captions belong to another image (scenes)
    attributes: dict[str, np.ndarray] | None = None  # per-image ints (scenes: n_objects, shape, colour, size)
    attribute_names: dict[str, list[str]] | None = None  # attribute -> names of its values

    def __post_init__(self) -> None:
        n = len(self.images)
        if len(self.captions) != n:
            raise fail(f"{self.name or 'pairs'}: {len(self.captions)} caption lists for {n} images; "
                       "give every image its captions")
        for i, caps in enumerate(self.captions):
            if not caps or not all(isinstance(c, str) and c.strip() for c in caps):
                raise fail(f"{self.name or 'pairs'}: image {i} has no caption or an empty one")
        if self.corrupted is not None:
            self.corrupted = np.asarray(self.corrupted, dtype=bool)
            if self.corrupted.shape != (n,):
                raise fail(f"{self.name}: corrupted has shape {self.corrupted.shape}, expected ({n},)")
        for k, v in (self.attributes or {}).items():
            if np.shape(v) != (n,):
                raise fail(f"{self.name}: attribute {k!r} has shape {np.shape(v)}, expected ({n},)")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, index) -> "PairSet":
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return PairSet(self.images.subset(index), [list(self.captions[i]) for i in index], self.name,
                       None if self.corrupted is None else self.corrupted[index],
                       None if self.attributes is None else {k: v[index] for k, v in self.attributes.items()},
                       self.attribute_names)

    @property
    def fields(self) -> list[str]:
        """The per-image fields: the images' (image, label, key, columns), captions, and any attributes."""
        extra = ["corrupted"] * (self.corrupted is not None) + list(self.attributes or {})
        return [*self.images.fields, "captions", *extra]

    def field(self, name: str):
        """One per-image field by name (see :attr:`fields`)."""
        if name == "captions":
            return self.captions
        if name == "corrupted" and self.corrupted is not None:
            return self.corrupted
        if name in (self.attributes or {}):
            return self.attributes[name]
        if name not in self.images.fields:
            raise fail(f"{self.name or 'pairs'} has no field {name!r}; it has {', '.join(self.fields)}")
        return self.images.field(name)

    def first_captions(self) -> list[str]:
        return [caps[0] for caps in self.captions]


def pair_set_arrays(pairs: PairSet) -> dict[str, np.ndarray]:
    """The cache's arrays for a PairSet: the images' arrays plus captions as utf-8 bytes, ends and counts."""
    return {**image_set_arrays(pairs.images), "name": pairs.name, **text_lists_arrays("caption", pairs.captions)}


def pair_set_from(f) -> PairSet:
    """Inverse of :func:`pair_set_arrays` on an opened .npz."""
    return PairSet(image_set_from(f), text_lists_from(f, "caption"), str(f["name"]))
