"""Decoding encoded images (JPEG/PNG bytes) to uint8 arrays, with errors that name the file."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import fail

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class BadItem(Exception):
    """One unreadable item; ``skip_bad`` turns these into counted skips."""


def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """Bytes -> (H, W, C) uint8 with C = 1 (gray) or 3 (RGB)."""
    if not data:
        raise BadItem(f"{where} is an empty (zero-byte) file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode, so a truncated JPEG fails here
            img = img.convert("L") if img.mode in ("L", "1", "I;16", "I", "F") else img.convert("RGB")
            if image_size is not None:
                img = _resize_center_crop(img, image_size)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadItem(f"{where} is not a readable image ({' '.join(str(e).split())[:80]})") from None
    return array[..., None] if array.ndim == 2 else array


def _resize_center_crop(img: Image.Image, size: int) -> Image.Image:
    """Resize the shorter side to ``size`` then crop the centre square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


@dataclass
class Collector:
    """Accumulates decoded images, checking they agree in shape; records skips."""

    source: str
    skip_bad: bool
    images: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    skipped: list = field(default_factory=list)

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise fail(f"{message}; fix or remove it, or pass --skip-bad to skip unreadable items")
        self.skipped.append(message)

    def add(self, key: str, array: np.ndarray, label: int | None) -> None:
        if self.images and array.shape != self.images[0].shape:
            first = self.images[0].shape
            what = "size" if array.shape[:2] != first[:2] else "channel count"
            self.bad(f"{key} has {what} {array.shape[1]}x{array.shape[0]}x{array.shape[2]} but earlier images are "
                     f"{first[1]}x{first[0]}x{first[2]} (pass --image-size N to resize all)")
            return
        self.images.append(array)
        self.labels.append(label)
        self.keys.append(key)

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        if not self.images:
            raise fail(f"{self.source} holds no readable images; check the path and the file types "
                       f"({', '.join(IMAGE_EXTENSIONS[:3])} ...)")
        labels = None
        if any(label is not None for label in self.labels):
            if any(label is None for label in self.labels):
                missing = self.keys[[label is None for label in self.labels].index(True)]
                raise fail(f"{missing} has no label while other images do; give every image a label or none")
            labels = np.asarray(self.labels, dtype=np.int64)
        return np.stack(self.images), labels


def parse_label(raw: bytes | str, where: str) -> int:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = int(text.strip())
    except ValueError:
        raise BadItem(f"{where} has label {text.strip()[:20]!r}, which is not an integer") from None
    if value < 0:
        raise BadItem(f"{where} has a negative label {value}")
    return value
