"""PairSet: images and, per image, one or more captions; and its form in the decode cache."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import fail
from .cache import image_set_arrays, image_set_from
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

    def first_captions(self) -> list[str]:
        return [caps[0] for caps in self.captions]


def pair_set_arrays(pairs: PairSet) -> dict[str, np.ndarray]:
    """The cache's arrays for a PairSet: the images' arrays plus captions as utf-8 bytes, ends and counts."""
    encoded = [c.encode("utf-8") for caps in pairs.captions for c in caps]
    return {**image_set_arrays(pairs.images), "name": pairs.name,
            "caption_bytes": np.frombuffer(b"".join(encoded), dtype=np.uint8),
            "caption_ends": np.cumsum([len(b) for b in encoded], dtype=np.int64),
            "caption_counts": np.asarray([len(c) for c in pairs.captions], dtype=np.int64)}


def pair_set_from(f) -> PairSet:
    """Inverse of :func:`pair_set_arrays` on an opened .npz."""
    blob = f["caption_bytes"].tobytes()
    ends, counts = f["caption_ends"], f["caption_counts"]
    starts = np.concatenate([[0], ends[:-1]])
    flat = [blob[s:e].decode("utf-8") for s, e in zip(starts, ends)]
    bounds = np.concatenate([[0], np.cumsum(counts)])
    captions = [flat[bounds[i]:bounds[i + 1]] for i in range(len(counts))]
    return PairSet(image_set_from(f), captions, str(f["name"]))
