"""Decoding encoded images to uint8 arrays, as people have them, with errors that name the file.

JPEG, PNG, WebP, BMP, GIF (first frame) and TIFF of any size: EXIF orientation is applied;
palette, RGBA/LA (composited on black), CMYK, 16-bit and float images become 8-bit grey or RGB.
A set that mixes grey and colour images is stored as RGB (grey replicated), so no photo is
refused for its mode.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import fail

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


class BadItem(Exception):
    """One unreadable item; ``skip_bad`` turns these into counted skips."""


def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """Bytes -> (H, W, C) uint8 with C = 1 (grey) or 3 (RGB), upright (EXIF orientation applied)."""
    if not data:
        raise BadItem(f"{where} is an empty (zero-byte) file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode (the first frame of an animation), so a truncated JPEG fails here
            img = to_8bit(ImageOps.exif_transpose(img))
            if image_size is not None:
                img = _resize_center_crop(img, image_size)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadItem(f"{where} is not a readable image ({' '.join(str(e).split())[:80]})") from None
    return array[..., None] if array.ndim == 2 else array


def to_8bit(img: Image.Image) -> Image.Image:
    """Any PIL mode -> "L" (grey) or "RGB", keeping the full range of 16-bit and float images."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG/TIFF): 0..65535 -> 0..255
        return Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    if img.mode == "F":  # float grey: 0..1 when it fits there, else taken as 0..255
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.nan_to_num(a).round().clip(0, 255).astype(np.uint8))
    if img.mode == "P":  # palette: its transparency (if any) decides between RGBA and RGB
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # composite on black: what a viewer shows on a dark page
        grey = img.mode in ("LA", "La")
        rgba = img.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        flat.alpha_composite(rgba)
        return flat.convert("L" if grey else "RGB")
    return img if img.mode in ("L", "RGB") else img.convert("L" if img.mode == "1" else "RGB")


MAX_DEFAULT_SIZE = 224  # the default storage side for photos of mixed sizes is capped here


def storage_size(paths: list, where: str, sample: int = 256) -> int | None:
    """The image side to store a set of image files at when none was asked for: None when every
    sampled image has one size (kept as it is), else the median shorter side of up to ``sample``
    of them (evenly spaced), capped at 224, and said in one line."""
    if not paths:
        return None
    pick = [paths[i] for i in np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int)]
    sizes = []
    for path in pick:
        try:
            with Image.open(path) as img:  # reads the header only
                sizes.append(img.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            continue  # named (or skipped) when it is decoded
    return side_for_sizes(sizes, where)


def side_for_sizes(sizes: list[tuple[int, int]], where: str) -> int | None:
    """None when every (width, height) is the same, else the median shorter side capped at 224,
    said in one line."""
    if len(set(sizes)) <= 1:
        return None
    side = min(int(np.median([min(w, h) for w, h in sizes])), MAX_DEFAULT_SIZE)
    print(f"{where}: images of {len(set(sizes))} sizes; storing them at {side}x{side} (the median shorter side of "
          f"{len(sizes)} sampled, at most {MAX_DEFAULT_SIZE}; --image-size N to choose)")
    return side


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

    def add(self, key: str, array: np.ndarray, label: int | None, where: str | None = None) -> None:
        """Keep ``array`` under ``key`` (what leads a user back to the item); ``where`` names it in
        messages when that reads better than the key (a table's row and line)."""
        if self.images and array.shape[:2] != self.images[0].shape[:2]:
            first = self.images[0].shape
            self.bad(f"{where or key} is {array.shape[1]}x{array.shape[0]} but earlier images are "
                     f"{first[1]}x{first[0]} "
                     "(pass --image-size N to resize all)")
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
        if len({a.shape[2] for a in self.images}) > 1:  # grey and colour photos mixed: all RGB
            self.images = [a if a.shape[2] == 3 else np.repeat(a, 3, axis=2) for a in self.images]
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
