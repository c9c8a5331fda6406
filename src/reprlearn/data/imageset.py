"""The one thing every source yields in memory: columns of named per-image fields (images of
uint8, uint16 or float32; optional labels and keys; any other field a reader collects)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import fail
from .pixels import FULL_SCALE, full_scale


@dataclass
class ImageSet:
    """Decoded images (N, H, W, C), labels (N,) int64 or None, class names.

    Images are uint8 (0..255), uint16 (0..65535: 16-bit PNG/TIFF) or float32 in [0, 1], with any
    number of channels C >= 1 (1 grey, 3 RGB, others as bands: multispectral tiles, stacked scans).
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # "what: why" for each skipped item
    keys: list[str] | None = None  # where each image came from (a file path, SHARD/KEY, NAME:SPLIT/INDEX)
    # any other per-image field by name (a list or an array with one entry per image), e.g. "mask"
    columns: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim == 3:  # (N, H, W) grayscale
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype not in FULL_SCALE:
            raise fail(f"{self.name or 'images'}: expected uint8, uint16 or float32 images shaped (N, H, W[, C]), "
                       f"got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise fail(f"{self.name or 'source'} holds no images; point --data at a source with images")
        if self.images.shape[-1] < 1:
            raise fail(f"{self.name}: images have no channels; store them (N, H, W) or (N, H, W, C)")
        if self.images.dtype == np.float32:
            check_unit_range(self.images, self.name or "images")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (len(self.images),):
                raise fail(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images; "
                           "give one integer label per image")
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise fail(f"{self.name}: labels must be integers, got {self.labels.dtype}")
            self.labels = self.labels.astype(np.int64)
        for name, column in self.columns.items():
            if name in _NAMED or len(column) != len(self.images):
                raise fail(f"{self.name}: field {name!r} has {len(column)} entries for {len(self.images)} images; "
                           f"give one per image (and no field named {', '.join(_NAMED)})")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def max_value(self) -> float:
        """The stored value that means 1.0: 255 for uint8, 65535 for uint16, 1 for float32."""
        return full_scale(self.images.dtype)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    @property
    def fields(self) -> list[str]:
        """The names of the per-image fields this set holds: image, then label and key when present,
        then its other columns."""
        named = ["image"] + ["label"] * (self.labels is not None) + ["key"] * (self.keys is not None)
        return named + list(self.columns)

    def field(self, name: str):
        """One per-image field by name: ``image`` (the (N, H, W, C) array), ``label``, ``key``, or a column."""
        value = {"image": self.images, "label": self.labels, "key": self.keys}.get(name, self.columns.get(name))
        if value is None:
            raise fail(f"{self.name or 'images'} has no field {name!r}; it has {', '.join(self.fields)}")
        return value

    def subset(self, index: np.ndarray, name: str | None = None) -> "ImageSet":
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index],
                        self.class_names, name or self.name, list(self.skipped), take(self.keys, index),
                        {k: take(v, index) for k, v in self.columns.items()})

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The images as an (N, C, H, W) tensor on ``device``: uint8 as stored, other depths as float32
        in [0, 1] (value / :attr:`max_value`; torch indexes and moves float on every device)."""
        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).contiguous()
        if self.images.dtype != np.uint8:
            x = x.float().div_(self.max_value)
        return x.to(device)


_NAMED = ("image", "label", "key")  # the fields held as attributes, never as columns


def take(column, index):
    """Entries ``index`` (integers or a mask) of a column: an array indexed, a list as a list (None stays)."""
    if column is None or isinstance(column, np.ndarray):
        return None if column is None else column[index]
    return [column[i] for i in np.arange(len(column))[index]]  # lists of lists stay lists


def unit_range_problem(images: np.ndarray) -> str | None:
    """What is wrong with float images that must be finite and in [0, 1] (None: nothing); such data is
    refused, never clipped."""
    if not np.isfinite(images).all():
        return "holds NaN or infinite values; replace them (e.g. np.nan_to_num) first"
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        return (f"spans [{low:.4g}, {high:.4g}] but float images must lie in [0, 1]; scale them first, "
                "e.g. per channel (x - min) / (max - min)")
    return None


def check_unit_range(images: np.ndarray, name: str) -> None:
    """Float images must be finite and in [0, 1]: a one-line error otherwise."""
    problem = unit_range_problem(images)
    if problem:
        raise fail(f"{name}: float images {problem}")


def stratified_split(labels: np.ndarray | None, n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): a fixed, class-balanced hold-out when labels exist."""
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        cut = max(1, int(round(n * fraction)))
        return np.sort(perm[cut:]), np.sort(perm[:cut])
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        held.append(idx[: max(1, int(round(len(idx) * fraction)))])
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(n), held_out)
    return keep, held_out
