"""What a random view is: :class:`ViewSpec`, its checks, and named presets.

A ``ViewSpec`` is plain data (it goes into configs and checkpoints as a dict);
:mod:`reprlearn.augment.views` turns it into views. The order in which a view is
made is fixed: one affine warp (random resized crop, horizontal flip, rotation,
translation, resize to ``size``), then colour jitter, grayscale, Gaussian blur
and solarisation, each on a per-sample coin flip.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Sequence

from ..errors import fail

PRESETS = ("simclr", "digits", "none", "auto", "crop", "colour", "crop+colour")
# the parts of the auto recipe the augmentation ablation compares (SimCLR Fig. 5): geometry, then colour
_GEOMETRY_OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip_p=0.0, rotate_degrees=0.0, translate=0.0)
_COLOUR_OFF = dict(jitter_p=0.0, grayscale_p=0.0)
_EXTRAS_OFF = dict(blur_p=0.0, solarize_p=0.0, rotate_degrees=0.0, translate=0.0)


@dataclass
class ViewSpec:
    """How to draw one random view of an image; every random choice is per sample."""

    # Output side in pixels (views are size x size); None keeps the input's height and width.
    size: int | None = None
    # Random resized crop: the crop's area as a fraction of the image's area, drawn uniformly in this range.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # Random resized crop: the crop's width/height ratio, drawn log-uniformly in this range.
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    # Probability of a horizontal flip.
    hflip_p: float = 0.5
    # Probability of colour jitter (brightness, contrast, saturation, hue in one random order per batch).
    jitter_p: float = 0.8
    # Brightness factor drawn uniformly in [max(0, 1 - brightness), 1 + brightness].
    brightness: float = 0.4
    # Contrast factor drawn uniformly in [max(0, 1 - contrast), 1 + contrast]; blends with the mean gray level.
    contrast: float = 0.4
    # Saturation factor drawn uniformly in [max(0, 1 - saturation), 1 + saturation]; RGB images only.
    saturation: float = 0.4
    # Hue shift drawn uniformly in [-hue, hue], in turns of the colour wheel (at most 0.5); RGB images only.
    hue: float = 0.1
    # Probability of converting to grayscale (ITU-R 601 luma, still 3 channels); RGB images only.
    grayscale_p: float = 0.2
    # Probability of a Gaussian blur (kernel about 10% of the output side, odd).
    blur_p: float = 0.5
    # The blur's standard deviation in pixels, drawn uniformly in this range.
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    # Probability of solarisation (x -> 1 - x where x >= 0.5).
    solarize_p: float = 0.0
    # Rotation angle drawn uniformly in [-rotate_degrees, rotate_degrees] degrees.
    rotate_degrees: float = 0.0
    # Small affine shift, drawn uniformly in [-translate, translate] of the output size along each axis.
    translate: float = 0.0

    def validate(self) -> "ViewSpec":
        """Check every field; raise a one-line ReprlearnError naming the bad one. Returns self."""
        if self.size is not None:
            if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
                raise fail(f"ViewSpec.size must be a positive integer or None; got {self.size!r}")
        lo, hi = _pair("crop_scale", self.crop_scale)
        if not 0 < lo <= hi <= 1:
            raise fail(f"ViewSpec.crop_scale must satisfy 0 < low <= high <= 1; got {tuple(self.crop_scale)!r}")
        lo, hi = _pair("crop_ratio", self.crop_ratio)
        if not 0 < lo <= hi:
            raise fail(f"ViewSpec.crop_ratio must satisfy 0 < low <= high; got {tuple(self.crop_ratio)!r}")
        for name in ("hflip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            value = _number(name, getattr(self, name))
            if not 0 <= value <= 1:
                raise fail(f"ViewSpec.{name} is a probability and must be in [0, 1]; got {value!r}")
        for name in ("brightness", "contrast", "saturation"):
            value = _number(name, getattr(self, name))
            if value < 0:
                raise fail(f"ViewSpec.{name} must be >= 0 (0 turns it off); got {value!r}")
        hue = _number("hue", self.hue)
        if not 0 <= hue <= 0.5:
            raise fail(f"ViewSpec.hue is a fraction of the colour wheel and must be in [0, 0.5]; got {hue!r}")
        lo, hi = _pair("blur_sigma", self.blur_sigma)
        if not 0 < lo <= hi:
            raise fail(f"ViewSpec.blur_sigma must satisfy 0 < low <= high; got {tuple(self.blur_sigma)!r}")
        degrees = _number("rotate_degrees", self.rotate_degrees)
        if not 0 <= degrees <= 180:
            raise fail(f"ViewSpec.rotate_degrees must be in [0, 180]; got {degrees!r}")
        translate = _number("translate", self.translate)
        if not 0 <= translate < 1:
            raise fail(f"ViewSpec.translate is a fraction of the size and must be in [0, 1); got {translate!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for YAML configs and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ViewSpec":
        """Inverse of :meth:`to_dict`; unknown keys are a one-line error."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise fail(f"unknown ViewSpec field(s) {', '.join(unknown)}; known fields: {', '.join(sorted(known))}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        return cls(**fixed).validate()


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail(f"ViewSpec.{name} must be a finite number; got {value!r}")
    return float(value)


def _pair(name: str, value: Any) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise fail(f"ViewSpec.{name} must be a pair (low, high); got {value!r}")
    return _number(name, value[0]), _number(name, value[1])


def preset(name: str, image_size: int, channels: int) -> ViewSpec:
    """A named recipe for images of side ``image_size`` with ``channels`` channels.

    - ``simclr``: SimCLR's recipe (crop scale (0.08, 1), flip 0.5, jitter 0.8 with
      (0.4, 0.4, 0.4, 0.1), grayscale 0.2); Gaussian blur 0.5 only for images of at
      least 64 px, as SimCLR drops blur on CIFAR.
    - ``digits``: tiny grayscale glyphs (e.g. 8x8 digits): gentle crops, no flips
      (a flip changes a digit's identity), rotation within +-12 degrees, shifts of 10%,
      brightness and contrast jitter only.
    - ``none``: the identity (the image itself, resized to ``image_size``).
    - ``auto``: chosen by content (:func:`auto_preset`): ``digits`` for grayscale images of at most
      32 px (glyphs: MNIST's 28 px, the 8 px digits), else ``simclr``.
    - ``crop``, ``colour``, ``crop+colour``: parts of the ``auto`` recipe for these images, for
      the augmentation ablation: ``crop`` keeps its random resized crop and flip only; ``colour``
      its colour jitter and grayscale only (no geometry at all); ``crop+colour`` both, without
      the rest (blur, solarisation, rotation, translation). ``auto`` itself is the full recipe.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise fail(f"image_size must be a positive integer; got {image_size!r}")
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise fail(f"channels must be a positive integer; got {channels!r}")
    if name in ("crop", "colour", "crop+colour"):
        full = preset("auto", image_size, channels)
        off = {"crop": {**_COLOUR_OFF, **_EXTRAS_OFF}, "colour": {**_GEOMETRY_OFF, **_EXTRAS_OFF},
               "crop+colour": _EXTRAS_OFF}[name]
        return replace(full, **off).validate()
    if name == "auto":
        name = auto_preset(image_size, channels)[0]
    if name == "simclr":
        spec = ViewSpec(size=image_size, blur_p=0.5 if image_size >= 64 else 0.0)
    elif name == "digits":
        spec = ViewSpec(
            size=image_size,
            crop_scale=(0.5, 1.0),
            crop_ratio=(0.8, 1.25),
            hflip_p=0.0,
            jitter_p=0.8,
            brightness=0.4,
            contrast=0.4,
            saturation=0.0,
            hue=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
            rotate_degrees=12.0,
            translate=0.1,
        )
    elif name == "none":
        spec = ViewSpec(
            size=image_size,
            crop_scale=(1.0, 1.0),
            crop_ratio=(1.0, 1.0),
            hflip_p=0.0,
            jitter_p=0.0,
            brightness=0.0,
            contrast=0.0,
            saturation=0.0,
            hue=0.0,
            grayscale_p=0.0,
            blur_p=0.0,
        )
    else:
        raise fail(f"unknown augmentation preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return spec.validate()


# auto by content, first match wins: (rule, preset, why). Small grayscale images are glyphs (digits,
# letters, MNIST's 28 px): a flip or a hard crop changes what they show. Everything else is treated
# as photos and gets SimCLR's recipe (Chen et al. 2020).
GRAYSCALE_GLYPH_MAX = 32
AUTO_RULES = (
    (lambda size, channels: channels == 1 and size <= GRAYSCALE_GLYPH_MAX, "digits",
     "grayscale images of at most 32 px: no flips, gentle crops"),
    (lambda size, channels: channels == 1, "simclr", "grayscale images larger than 32 px: SimCLR's recipe"),
    (lambda size, channels: True, "simclr", "colour images: SimCLR's recipe (crops, flips, colour jitter)"),
)


def auto_preset(image_size: int, channels: int) -> tuple[str, str]:
    """The preset ``auto`` stands for on images of this side and channel count, and why (for the plan)."""
    return next((name, why) for rule, name, why in AUTO_RULES if rule(image_size, channels))


def local_size(image_size: int) -> int:
    """Side of a multi-crop local view: 3/7 of the image side (96 for 224), at least 4 px."""
    return max(4, round(image_size * 3 / 7))


def local_crop(spec: ViewSpec, image_size: int, scale: tuple[float, float] = (0.05, 0.4)) -> ViewSpec:
    """The small-crop companion of a global ``spec`` for multi-crop (DINO/SwAV style).

    Same colour and geometry recipe, but crops cover ``scale`` of the image area
    (default (0.05, 0.4)) and are resized to :func:`local_size` of ``image_size``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise fail(f"image_size must be a positive integer; got {image_size!r}")
    return replace(spec, size=local_size(image_size), crop_scale=tuple(scale)).validate()
