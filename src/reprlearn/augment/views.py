"""Random views of a batch, made in one pass on the batch's device.

The dataset sits on the training device as a uint8 tensor (N, C, H, W) (float in
[0, 1] for 16-bit and float sources); a batch is an index into it, and :func:`augment`
turns the batch into float views in [0, 1]. Colour jitter and grayscale are for grey
and RGB images; on other channel counts (multispectral bands) they are skipped, said
once. Every sample draws its own crop, flip, angle, shift, jitter factors and
coin flips from the ``generator`` you pass (on the images' device), so the same
seed gives the same views. The order of the four jitter ops is drawn once per
call (as kornia's ColorJitter does), not per sample.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..data.pixels import unit_float
from ..errors import fail
from . import ops
from .spec import ViewSpec, local_crop, preset

_EXPECTED = "(N, C, H, W) with C >= 1 channels, dtype uint8 (0-255), uint16 (0-65535) or float (0-1)"
_colour_skip_said: set[int] = set()  # channel counts whose colour-op skip was already said


def _as_float(images: Any, who: str) -> Tensor:
    if not isinstance(images, Tensor):
        raise fail(f"{who} expects a torch.Tensor shaped {_EXPECTED}; got {type(images).__name__}")
    shape = tuple(images.shape)
    # square images stored channels-last, (N, H, H, C) with C < H, are refused rather than read as H bands
    channels_last = images.dim() == 4 and shape[-1] < shape[1] == shape[2]
    if images.dim() != 4 or min(shape[1:] or (0,)) < 1 or channels_last:
        hint = " (channels-last? use images.permute(0, 3, 1, 2))" if channels_last else ""
        raise fail(f"{who} expects images shaped {_EXPECTED}; got shape {shape}{hint}")
    if images.dtype in (torch.uint8, torch.uint16):
        return unit_float(images)
    if images.dtype in (torch.float32, torch.float64):
        return images
    if images.is_floating_point():
        return images.float()
    raise fail(f"{who} expects images shaped {_EXPECTED}; got dtype {images.dtype}")


def _colour_ops_for(spec: ViewSpec, channels: int) -> bool:
    """Whether colour jitter and grayscale apply: grey and RGB images only. Scaling or mixing the bands
    of a multispectral tile is not the photometric change these ops model, so they are skipped (said
    once per channel count, so a run's log shows it)."""
    if channels in (1, 3):
        return True
    if (spec.jitter_p > 0 or spec.grayscale_p > 0) and channels not in _colour_skip_said:
        _colour_skip_said.add(channels)
        print(f"augment: images have {channels} channels; colour jitter and grayscale apply to grey or RGB "
              "only and are skipped (crops, flips, blur and the rest still apply)")
    return False


def _check_generator(generator: torch.Generator | None, device: torch.device, who: str) -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise fail(f"{who} expects generator to be a torch.Generator or None; got {type(generator).__name__}")
    gd = generator.device
    if gd.type != device.type or (gd.index is not None and device.index is not None and gd.index != device.index):
        raise fail(
            f"{who}: the generator is on {gd} but the images are on {device};"
            f" make it with torch.Generator(device=images.device)"
        )


def _check_spec(spec: Any, who: str) -> ViewSpec:
    if not isinstance(spec, ViewSpec):
        raise fail(f"{who} expects a ViewSpec (see reprlearn.augment.preset); got {type(spec).__name__}")
    return spec.validate()


def _views(x: Tensor, spec: ViewSpec, generator: torch.Generator | None, copies: int) -> Tensor:
    """``copies`` independent views of every image of float x, stacked copy-major: (copies*N, C, oh, ow)."""
    n0, c, height, width = x.shape
    n = n0 * copies
    dev = x.device
    g = generator
    out_size = (spec.size, spec.size) if spec.size is not None else (height, width)
    if n == 0:
        return x.new_zeros((0, c) + out_size)
    src = x if copies == 1 else x.repeat(copies, 1, 1, 1)

    # Geometry: one affine warp for crop + resize + flip + rotation + shift.
    whole = spec.crop_scale[0] >= 1.0
    if whole and spec.hflip_p == 0 and spec.rotate_degrees == 0 and spec.translate == 0 and out_size == (height, width):
        out = src.clone() if src is x else src
    else:
        if whole:
            crop = ops.full_crop(n, height, width, device=dev)
        else:
            crop = ops.sample_crop_params(n, height, width, spec.crop_scale, spec.crop_ratio, g, dev)
        flip = ops.bernoulli(n, spec.hflip_p, g, dev) if spec.hflip_p > 0 else None
        d = spec.rotate_degrees
        angle = ops.uniform(n, -d, d, g, dev) if d > 0 else None
        t = spec.translate
        shift = ops.uniform(2 * n, -t, t, g, dev).view(n, 2) if t > 0 else None
        out = ops.affine_warp(src, crop, out_size, flip, angle, shift)

    # Colour jitter: every sample its own factors, one shared random order per call.
    rgb = c == 3
    colour = _colour_ops_for(spec, c)
    jitter = []
    if spec.brightness > 0:
        jitter.append((ops.adjust_brightness, max(0.0, 1 - spec.brightness), 1 + spec.brightness))
    if spec.contrast > 0:
        jitter.append((ops.adjust_contrast, max(0.0, 1 - spec.contrast), 1 + spec.contrast))
    if rgb and spec.saturation > 0:
        jitter.append((ops.adjust_saturation, max(0.0, 1 - spec.saturation), 1 + spec.saturation))
    if rgb and spec.hue > 0:
        jitter.append((ops.adjust_hue, -spec.hue, spec.hue))
    if colour and spec.jitter_p > 0 and jitter:
        mask = ops.bernoulli(n, spec.jitter_p, g, dev)
        factors = [ops.uniform(n, lo, hi, g, dev) for _, lo, hi in jitter]
        order = torch.randperm(len(jitter), generator=g, device=dev).tolist() if len(jitter) > 1 else [0]
        for i in order:
            out = jitter[i][0](out, factors[i], mask)

    if rgb and spec.grayscale_p > 0:
        out = ops.to_grayscale(out, ops.bernoulli(n, spec.grayscale_p, g, dev))
    if spec.blur_p > 0:
        mask = ops.bernoulli(n, spec.blur_p, g, dev)
        sigma = ops.uniform(n, spec.blur_sigma[0], spec.blur_sigma[1], g, dev)
        out = ops.gaussian_blur(out, sigma, mask)
    if spec.solarize_p > 0:
        out = ops.solarize(out, ops.bernoulli(n, spec.solarize_p, g, dev))
    return out


def augment(images: Tensor, spec: ViewSpec, generator: torch.Generator | None = None) -> Tensor:
    """One random view of every image: (N, C, H, W) uint8, uint16 or [0, 1] float -> (N, C, size, size) float
    in [0, 1].

    ``generator`` (on the images' device) supplies every random number; None uses torch's default one.
    uint8 input gives float32; float32/float64 input keeps its dtype.
    """
    x = _as_float(images, "augment")
    spec = _check_spec(spec, "augment")
    _check_generator(generator, x.device, "augment")
    return _views(x, spec, generator, 1)


def two_views(
    images: Tensor, spec: ViewSpec, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two independent views of every image (one warp for both), as for SimCLR/BYOL/SimSiam."""
    x = _as_float(images, "two_views")
    spec = _check_spec(spec, "two_views")
    _check_generator(generator, x.device, "two_views")
    a, b = _views(x, spec, generator, 2).chunk(2)
    return a, b


def multi_crop(
    images: Tensor,
    global_spec: ViewSpec,
    local_spec: ViewSpec,
    n_global: int = 2,
    n_local: int = 6,
    generator: torch.Generator | None = None,
) -> list[Tensor]:
    """``n_global`` views by ``global_spec`` then ``n_local`` by ``local_spec`` (see :func:`local_crop`)."""
    for name, value in (("n_global", n_global), ("n_local", n_local)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"multi_crop: {name} must be an integer >= 0; got {value!r}")
    if n_global + n_local == 0:
        raise fail("multi_crop: ask for at least one view (n_global + n_local >= 1)")
    x = _as_float(images, "multi_crop")
    global_spec = _check_spec(global_spec, "multi_crop")
    local_spec = _check_spec(local_spec, "multi_crop")
    _check_generator(generator, x.device, "multi_crop")
    views: list[Tensor] = []
    if n_global:
        views.extend(_views(x, global_spec, generator, n_global).chunk(n_global))
    if n_local:
        views.extend(_views(x, local_spec, generator, n_local).chunk(n_local))
    return views


class ViewMaker:
    """Specs, view counts and a seeded generator per device, in one callable.

    ``maker(images)`` returns ``n_global`` global views then ``n_local`` local views.
    When ``n_local > 0`` and no ``local_spec`` is given, :func:`local_crop` of
    ``spec`` is used (sized from ``spec.size`` or the images' height).
    """

    def __init__(
        self,
        spec: ViewSpec,
        local_spec: ViewSpec | None = None,
        n_global: int = 2,
        n_local: int = 0,
        seed: int | None = None,
    ):
        self.spec = _check_spec(spec, "ViewMaker")
        self.local_spec = _check_spec(local_spec, "ViewMaker") if local_spec is not None else None
        for name, value in (("n_global", n_global), ("n_local", n_local)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise fail(f"ViewMaker: {name} must be an integer >= 0; got {value!r}")
        if n_global + n_local == 0:
            raise fail("ViewMaker: ask for at least one view (n_global + n_local >= 1)")
        self.n_global = n_global
        self.n_local = n_local
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    @classmethod
    def from_preset(
        cls,
        name: str,
        image_size: int,
        channels: int,
        n_global: int = 2,
        n_local: int = 0,
        seed: int | None = None,
    ) -> "ViewMaker":
        spec = preset(name, image_size, channels)
        local = local_crop(spec, image_size) if n_local else None
        return cls(spec, local, n_global=n_global, n_local=n_local, seed=seed)

    def generator(self, device: torch.device | str) -> torch.Generator:
        """The generator for ``device``, made (and seeded) on first use."""
        device = torch.device(device)
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(self.seed)
            self._generators[key] = g
        return self._generators[key]

    def __call__(self, images: Tensor) -> list[Tensor]:
        g = self.generator(images.device) if isinstance(images, Tensor) else None
        if self.n_local == 0:
            x = _as_float(images, "ViewMaker")
            return list(_views(x, self.spec, g, self.n_global).chunk(self.n_global))
        local = self.local_spec
        if local is None:
            side = self.spec.size or (images.shape[-2] if isinstance(images, Tensor) and images.dim() == 4 else 1)
            local = local_crop(self.spec, int(side))
        return multi_crop(images, self.spec, local, self.n_global, self.n_local, g)

    def state_dict(self) -> dict[str, Any]:
        """Generator states (for exact resumption) and the specs."""
        return {
            "spec": self.spec.to_dict(),
            "local_spec": self.local_spec.to_dict() if self.local_spec is not None else None,
            "n_global": self.n_global,
            "n_local": self.n_local,
            "seed": self.seed,
            "generators": {k: g.get_state() for k, g in self._generators.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spec = ViewSpec.from_dict(state["spec"])
        self.local_spec = ViewSpec.from_dict(state["local_spec"]) if state.get("local_spec") else None
        self.n_global = int(state["n_global"])
        self.n_local = int(state["n_local"])
        self.seed = state.get("seed")
        self._generators = {}
        for key, gstate in state.get("generators", {}).items():
            self.generator(key).set_state(gstate)
