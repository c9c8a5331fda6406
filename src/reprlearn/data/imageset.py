"""The one thing every source yields: decoded uint8 images, optional labels."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import fail


@dataclass
class ImageSet:
    """Decoded images (N, H, W, C) uint8, labels (N,) int64 or None, class names."""

    images: np.ndarray
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    name: str = ""
    skipped: list[str] = field(default_factory=list)  # "what: why" for each skipped item
    keys: list[str] | None = None  # where each image came from (a file path, SHARD/KEY, NAME:SPLIT/INDEX)

    def __post_init__(self) -> None:
        if self.images.ndim == 3:  # (N, H, W) grayscale
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise fail(f"{self.name or 'images'}: expected uint8 images shaped (N, H, W[, C]), "
                       f"got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) == 0:
            raise fail(f"{self.name or 'source'} holds no images; point --data at a source with images")
        if self.images.shape[-1] not in (1, 3):
            raise fail(f"{self.name}: images have {self.images.shape[-1]} channels; expected 1 (gray) or 3 (RGB)")
        if self.labels is not None:
            self.labels = np.asarray(self.labels)
            if self.labels.shape != (len(self.images),):
                raise fail(f"{self.name}: {len(self.labels)} labels for {len(self.images)} images; "
                           "give one integer label per image")
            if not np.issubdtype(self.labels.dtype, np.integer):
                raise fail(f"{self.name}: labels must be integers, got {self.labels.dtype}")
            self.labels = self.labels.astype(np.int64)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def num_classes(self) -> int:
        if self.class_names:
            return len(self.class_names)
        return int(self.labels.max()) + 1 if self.labels is not None else 0

    def subset(self, index: np.ndarray, name: str | None = None) -> "ImageSet":
        keys = None if self.keys is None else np.asarray(self.keys, dtype=object)[index].tolist()
        return ImageSet(self.images[index], None if self.labels is None else self.labels[index],
                        self.class_names, name or self.name, list(self.skipped), keys)

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The images as a uint8 (N, C, H, W) tensor on ``device``."""
        return torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).contiguous().to(device)


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
