"""Decoding encoded images to arrays, as people have them, with errors that name the file.

JPEG, PNG, WebP, BMP, GIF (first frame): EXIF orientation is applied; palette, RGBA/LA
(composited on black) and CMYK images become 8-bit grey or RGB. 16-bit grey PNGs stay 16-bit
(uint16); a 16-bit colour PNG is refused (Pillow would cut it to 8 bits: save it as TIFF).
TIFF is read with tifffile: any number of bands, uint8/uint16 kept, other integers kept as
uint16 when they fit 0..65535, floats kept as given when in [0, 1]. ``.npy`` files hold one
array each, read the same way. A set that mixes grey and colour images is stored as RGB (grey
replicated), and one that mixes depths at the deepest (see :func:`common_depth`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import fail
from .pixels import full_scale
from .imageset import unit_range_problem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".npy")
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
NPY_MAGIC = b"\x93NUMPY"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # PIL modes deeper than 8 bits


class BadItem(Exception):
    """One unreadable item; ``skip_bad`` turns these into counted skips."""


def decode_image(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """Bytes -> (H, W, C), upright (EXIF orientation applied): uint8 with C = 1 (grey) or 3 (RGB) for
    8-bit formats; uint16 for 16-bit grey PNG; TIFF and .npy with any C and depth (:func:`as_pixels`)."""
    if not data:
        raise BadItem(f"{where} is an empty (zero-byte) file")
    array = read_npy(data, where) if data[:6] == NPY_MAGIC else read_tiff(data, where) if data[:4] in TIFF_MAGIC \
        else None
    if array is not None:
        return array if image_size is None else resize_center_crop_array(array, image_size)
    _refuse_deep_colour_png(data, where)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # forces a full decode (the first frame of an animation), so a truncated JPEG fails here
            img = ImageOps.exif_transpose(img)
            if img.mode in _DEEP_GREY:  # 16-bit (or 32-bit) grey: kept deep, never cut to 8 bits
                array = as_pixels(np.array(img), where)[..., None]  # a writable copy
                return array if image_size is None else resize_center_crop_array(array, image_size)
            img = to_8bit(img)
            if image_size is not None:
                img = _resize_center_crop(img, image_size)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadItem(f"{where} is not a readable image ({' '.join(str(e).split())[:80]})") from None
    return array[..., None] if array.ndim == 2 else array


def _refuse_deep_colour_png(data: bytes, where: str) -> None:
    """Pillow decodes 16-bit RGB(A)/LA PNGs to 8 bits without a word: refuse them instead."""
    if data[:8] == PNG_MAGIC and len(data) > 25 and data[24] == 16 and data[25] in (2, 4, 6):
        raise BadItem(f"{where} is a 16-bit colour PNG, which would be cut to 8 bits; save it as a 16-bit TIFF "
                      "(tifffile.imwrite) or as .npy to keep its depth")


def read_tiff(data: bytes, where: str) -> np.ndarray | None:
    """A TIFF's first image as (H, W, C): interleaved bands (YXS) as they are; bands stored as planes
    or pages ahead of the rows (SYX, CYX, QYX...) moved last; one plane is C = 1.

    None hands it to Pillow's path: an 8-bit photo layout (palette, CMYK, YCbCr, white-is-zero,
    alpha), which Pillow turns into grey or RGB like any photo, or a compression tifffile has no
    codec for here (LZW, JPEG without imagecodecs) when Pillow reads the layout at full depth."""
    import tifffile

    try:
        tif = tifffile.TiffFile(io.BytesIO(data))
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for a bad file; all mean the same here
        raise BadItem(f"{where} is not a readable TIFF ({' '.join(str(e).split())[:80]})") from None
    with tif:
        page = tif.pages[0]
        if page.bitspersample <= 8 and _photo_layout(page):
            return None
        try:
            series = tif.series[0]
            array, axes = series.asarray(), series.axes
        except Exception as e:  # noqa: BLE001 - as above
            if page.samplesperpixel == 1 or (page.bitspersample <= 8 and page.samplesperpixel == 3):
                return None  # grey at any depth, or 8-bit RGB: Pillow reads these without loss
            hint = "; pip install imagecodecs for its compression" if "imagecodecs" in str(e) else ""
            raise BadItem(f"{where} is not a readable TIFF ({' '.join(str(e).split())[:80]}){hint}") from None
    if axes.endswith("YXS") and array.ndim == 3:
        return as_pixels(array, where)
    if axes.endswith("YX") and array.ndim in (2, 3):
        return as_pixels(array[..., None] if array.ndim == 2 else np.moveaxis(array, 0, -1), where)
    raise BadItem(f"{where} is a TIFF of shape {array.shape} (axes {axes}); give one image per file: "
                  "(H, W), (H, W, bands) or (bands, H, W)")


def _photo_layout(page) -> bool:
    """Whether a TIFF page is laid out as a photo Pillow converts (anything but plain grey or RGB bands)."""
    from tifffile import EXTRASAMPLE, PHOTOMETRIC

    alpha = any(e in (EXTRASAMPLE.ASSOCALPHA, EXTRASAMPLE.UNASSALPHA) for e in page.extrasamples)
    return alpha or page.photometric not in (PHOTOMETRIC.MINISBLACK, PHOTOMETRIC.RGB)


def read_npy(data: bytes, where: str) -> np.ndarray:
    """One image from a .npy file: (H, W) is one channel; of a 3-D array the smaller of the first and
    last axes holds the channels (a tie: the last), so (13, 64, 64) and (64, 64, 13) are both 13 bands."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BadItem(f"{where} is not a readable .npy file ({' '.join(str(e).split())[:80]})") from None
    if array.ndim == 2:
        return as_pixels(array[..., None], where)
    if array.ndim == 3:
        return as_pixels(np.moveaxis(array, 0, -1) if _channels_first(array.shape) else array, where)
    raise BadItem(f"{where} holds an array of shape {array.shape}; save one image per file, "
                  "(H, W), (H, W, C) or (C, H, W)")


def _channels_first(shape: tuple) -> bool:
    """The .npy axis rule: of a 3-D image the smaller of the first and last axes holds the channels
    (a tie: the last), so (13, 64, 64) and (64, 64, 13) are both 13 bands."""
    return shape[0] < shape[-1]


def as_pixels(array: np.ndarray, where: str) -> np.ndarray:
    """An image array as a stored pixel type, or refused in one line (never clipped or wrapped):
    uint8 and uint16 as they are; bool as 0/255; other integers as uint16 when all lie in 0..65535;
    floats as float32 when finite and in [0, 1]."""
    if array.dtype in (np.uint8, np.uint16):
        return np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * np.uint8(255)
    if array.size == 0:
        raise BadItem(f"{where} is an empty array")
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 65535:
            raise BadItem(f"{where} is {array.dtype} with values {low}..{high}, outside 0..65535; rescale it "
                          "to uint16, or to float32 in [0, 1]")
        return array.astype(np.uint16)
    if np.issubdtype(array.dtype, np.floating):
        problem = unit_range_problem(array)
        if problem:
            raise BadItem(f"{where} ({array.dtype}) {problem}")
        return array.astype(np.float32)
    raise BadItem(f"{where} has pixel type {array.dtype}; store uint8, uint16 or float32 in [0, 1]")


def resize_center_crop_array(array: np.ndarray, size: int) -> np.ndarray:
    """A deep or many-band (H, W, C) array resized (shorter side to ``size``, bicubic, antialiased, as
    Pillow does for 8-bit images) and centre-cropped square, kept in its type and range."""
    import torch
    import torch.nn.functional as F

    h, w = array.shape[:2]
    if (h, w) == (size, size):
        return array
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    x = torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)[0]
    left, top = (nw - size) // 2, (nh - size) // 2
    out = x[:, top:top + size, left:left + size].permute(1, 2, 0).clamp_(0, full_scale(array.dtype))
    if array.dtype == np.float32:
        return np.ascontiguousarray(out.numpy())
    return out.round_().numpy().astype(array.dtype)


def to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit PIL mode -> "L" (grey) or "RGB" (deeper grey modes are kept deep by decode_image)."""
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
        suffix = str(path).lower().rpartition(".")[2]
        try:
            if suffix in _HEADER_SIZE:  # formats Pillow cannot open (.npy, many-band TIFF)
                sizes.append(_HEADER_SIZE[suffix](path))
                continue
            with Image.open(path) as img:  # reads the header only
                sizes.append(img.size)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, IndexError):
            continue  # named (or skipped) when it is decoded
    return side_for_sizes(sizes, where)


def _tiff_size(path) -> tuple[int, int]:
    """(width, height) of a TIFF's first page, from its tags."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.pages[0].imagewidth), int(tif.pages[0].imagelength)
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for a bad file
        raise ValueError(str(e)) from None


def _npy_size(path) -> tuple[int, int]:
    """(width, height) of the image in a .npy file, from its header (the axis rule of :func:`read_npy`)."""
    shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
    if len(shape) == 3 and _channels_first(shape):  # (C, H, W)
        shape = shape[1:]
    if len(shape) < 2:
        raise ValueError(f"shape {shape}")
    return int(shape[1]), int(shape[0])


_HEADER_SIZE = {"npy": _npy_size, "tif": _tiff_size, "tiff": _tiff_size}


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
    """Accumulates decoded samples into columns (images, labels, keys and any other named field,
    e.g. captions), checking the images agree in shape; records skips."""

    source: str
    skip_bad: bool
    images: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    keys: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    columns: dict = field(default_factory=dict)  # field name -> one value per kept image

    def bad(self, message: str) -> None:
        if not self.skip_bad:
            raise fail(f"{message}; fix or remove it, or pass --skip-bad to skip unreadable items")
        self.skipped.append(message)

    def add(self, key: str, array: np.ndarray, label: int | None, where: str | None = None, **fields) -> None:
        """Keep ``array`` under ``key`` (what leads a user back to the item) with its other ``fields``;
        ``where`` names it in messages when that reads better than the key (a table's row and line)."""
        if self.images and array.shape[:2] != self.images[0].shape[:2]:
            first = self.images[0].shape
            self.bad(f"{where or key} is {array.shape[1]}x{array.shape[0]} but earlier images are "
                     f"{first[1]}x{first[0]} "
                     "(pass --image-size N to resize all)")
            return
        if self.images and set(fields) != set(self.columns):
            raise ValueError(f"{key}: fields {sorted(fields)} differ from earlier samples' {sorted(self.columns)}")
        self.images.append(array)
        self.labels.append(label)
        self.keys.append(key)
        for name, value in fields.items():
            self.columns.setdefault(name, []).append(value)

    def fields(self) -> dict:
        """The other fields' columns by name: arrays of one shape and type stacked into one (N, ...) array
        (what the decoded-set cache stores), anything else as a list."""
        return {name: np.stack(values) if _one_array_kind(values) else values for name, values in self.columns.items()}

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
            if {a.shape[2] for a in self.images} != {1, 3}:
                counts = sorted({a.shape[2] for a in self.images})
                raise fail(f"{self.source} mixes images of {', '.join(map(str, counts))} channels; "
                           "give every image the same bands")
            self.images = [a if a.shape[2] == 3 else np.repeat(a, 3, axis=2) for a in self.images]
        self.images = common_depth(self.images)
        return np.stack(self.images), labels


def _one_array_kind(values: list) -> bool:
    return bool(values) and all(isinstance(v, np.ndarray) for v in values) and \
        len({(v.shape, v.dtype) for v in values}) == 1


def common_depth(images: list[np.ndarray]) -> list[np.ndarray]:
    """Images of mixed depths at the deepest one, exactly: uint8 -> uint16 as v * 257 (255 -> 65535);
    integers -> float32 as v / full scale. A set of one depth is returned as it is."""
    dtypes = {a.dtype for a in images}
    if len(dtypes) <= 1:
        return images
    if np.dtype(np.float32) in dtypes:
        return [a if a.dtype == np.float32 else a.astype(np.float32) / np.float32(full_scale(a.dtype))
                for a in images]
    return [a.astype(np.uint16) * np.uint16(257) if a.dtype == np.uint8 else a for a in images]


def parse_label(raw: bytes | str, where: str) -> int:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        value = int(text.strip())
    except ValueError:
        raise BadItem(f"{where} has label {text.strip()[:20]!r}, which is not an integer") from None
    if value < 0:
        raise BadItem(f"{where} has a negative label {value}")
    return value
