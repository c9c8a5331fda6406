"""Batched image operations with per-sample parameters.

Every function takes float images in [0, 1] shaped (N, C, H, W) and per-sample
parameter tensors shaped (N,) (or (N, 4) for crops) on the same device. Nothing
here loops over samples in Python; random numbers come only from the
``generator`` passed to the ``sample_*`` functions, so a seeded generator gives
the same parameters on every run.

Ops that take ``mask`` (a bool tensor (N,)) change only the selected samples and
return the others unchanged (``torch.where``). Colour ops need RGB (C == 3) except
brightness and contrast; on other channel counts they return the input unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma weights (as in PIL's "L" mode and torchvision's rgb_to_grayscale).
LUMA = (0.299, 0.587, 0.114)


# ---------------------------------------------------------------- random parameters


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return generator.device if generator is not None else torch.device("cpu")


def uniform(
    n: int,
    low: float,
    high: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n,) float32 values drawn uniformly in [low, high]."""
    u = torch.rand(n, generator=generator, device=_device(generator, device))
    return low + (high - low) * u


def bernoulli(
    n: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """(n,) bool mask, each True with probability p."""
    return torch.rand(n, generator=generator, device=_device(generator, device)) < p


def sample_crop_params(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> Tensor:
    """Random-resized-crop boxes, one per sample: (n, 4) float32 ``(x0, y0, w, h)`` in pixels.

    As torchvision's RandomResizedCrop: area fraction uniform in ``scale``, aspect
    ratio w/h log-uniform in ``ratio``, the first of ``attempts`` draws that fits
    the image is kept (all attempts are drawn at once). A sample whose draws all
    miss keeps its last area and clamps its ratio into the range that fits, so
    for square images (and ratio ranges holding 1) every box honours both ranges.
    Boxes have sub-pixel sizes and positions (the warp interpolates anyway).
    """
    dev = _device(generator, device)
    u = torch.rand(n, attempts, 2, generator=generator, device=dev)
    pos = torch.rand(n, 2, generator=generator, device=dev)
    area = float(height * width)
    s = scale[0] + (scale[1] - scale[0]) * u[..., 0]
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.sqrt(s * area * r)
    h = torch.sqrt(s * area / r)
    fits = (w <= width) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt (0 when none fit)
    any_fit = fits.any(dim=1)
    s_pick = s.gather(1, first).squeeze(1)
    r_pick = r.gather(1, first).squeeze(1)
    # Fallback: last attempt's area with its ratio clamped to what fits (w <= W needs r <= W/(H s),
    # h <= H needs r >= s H / W), preferring the requested ratio range where the two overlap.
    s_last, r_last = s[:, -1], r[:, -1]
    fit_lo, fit_hi = s_last * (height / width), (width / height) / s_last
    both_lo = torch.clamp(fit_lo, min=ratio[0])
    both_hi = torch.clamp(fit_hi, max=ratio[1])
    overlap = both_lo <= both_hi
    lo = torch.where(overlap, both_lo, fit_lo)
    hi = torch.where(overlap, both_hi, fit_hi)
    r_fallback = torch.minimum(torch.maximum(r_last, lo), hi)
    s_final = torch.where(any_fit, s_pick, s_last)
    r_final = torch.where(any_fit, r_pick, r_fallback)
    w = torch.sqrt(s_final * area * r_final).clamp(max=width)
    h = torch.sqrt(s_final * area / r_final).clamp(max=height)
    x0 = pos[:, 0] * (width - w)
    y0 = pos[:, 1] * (height - h)
    return torch.stack([x0, y0, w, h], dim=1)


def full_crop(n: int, height: int, width: int, device: torch.device | str | None = None) -> Tensor:
    """(n, 4) boxes covering the whole image."""
    box = torch.tensor([0.0, 0.0, float(width), float(height)], device=device)
    return box.expand(n, 4).clone()


# ---------------------------------------------------------------- geometry


def affine_matrix(
    crop: Tensor,
    height: int,
    width: int,
    out_size: tuple[int, int],
    flip: Tensor | None = None,
    angle: Tensor | None = None,
    translate: Tensor | None = None,
) -> Tensor:
    """Per-sample (N, 2, 3) ``affine_grid`` matrices (align_corners=False) for one warp.

    The output is ``translate(rotate(flip(resize(crop(image)))))``: the box
    ``crop`` (N, 4) ``(x0, y0, w, h)`` in pixels of an ``height`` x ``width`` image
    is stretched to ``out_size`` (oh, ow), mirrored left-right where ``flip`` (N,)
    is True, rotated by ``angle`` (N,) degrees counter-clockwise about the centre, and shifted by
    ``translate`` (N, 2) ``(dx, dy)`` as fractions of the output width and height.
    """
    crop = crop.float()
    x0, y0, w, h = crop.unbind(1)
    sx, sy = w / width, h / height
    cx, cy = (2 * x0 + w) / width - 1, (2 * y0 + h) / height - 1
    n = crop.shape[0]
    one = torch.ones(n, device=crop.device)
    zero = torch.zeros(n, device=crop.device)
    # Output normalised coords p (y down) map to input coords c + S F R (p - t), where R turns the
    # sampling grid clockwise on screen, so the content turns counter-clockwise for a positive angle
    # (torchvision's and kornia's convention).
    if angle is not None:
        rad = angle.float() * (math.pi / 180)
        cos, sin = torch.cos(rad), torch.sin(rad)
        oh, ow = out_size
        # Rotation in output pixel space, expressed in normalised coords (non-square outputs stay rigid).
        r00, r01, r10, r11 = cos, -sin * (oh / ow), sin * (ow / oh), cos
    else:
        r00, r01, r10, r11 = one, zero, zero, one
    f = torch.where(flip, -one, one) if flip is not None else one
    m00, m01 = sx * f * r00, sx * f * r01
    m10, m11 = sy * r10, sy * r11
    if translate is not None:
        tx, ty = 2 * translate[:, 0].float(), 2 * translate[:, 1].float()
        cx = cx - (m00 * tx + m01 * ty)
        cy = cy - (m10 * tx + m11 * ty)
    return torch.stack([m00, m01, cx, m10, m11, cy], dim=1).view(n, 2, 3)


def affine_warp(
    x: Tensor,
    crop: Tensor,
    out_size: int | tuple[int, int],
    flip: Tensor | None = None,
    angle: Tensor | None = None,
    translate: Tensor | None = None,
    padding_mode: str = "border",
) -> Tensor:
    """Crop, resize, flip, rotate and shift every sample in one ``grid_sample`` call.

    Bilinear, ``align_corners=False``; see :func:`affine_matrix` for the
    parameters. ``padding_mode="border"`` repeats edge pixels where rotation or
    translation looks outside the image (and keeps upsampled edges from darkening).
    """
    if isinstance(out_size, int):
        out_size = (out_size, out_size)
    n, c, height, width = x.shape
    theta = affine_matrix(crop, height, width, out_size, flip, angle, translate).to(x.dtype)
    grid = F.affine_grid(theta, [n, c, out_size[0], out_size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


# ---------------------------------------------------------------- colour


def _select(mask: Tensor | None, new: Tensor, old: Tensor) -> Tensor:
    if mask is None:
        return new
    return torch.where(mask.view(-1, 1, 1, 1), new, old)


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def grayscale(x: Tensor) -> Tensor:
    """(N, 1, H, W) luma of RGB images (ITU-R 601); 1-channel images as they are, other counts averaged."""
    if x.shape[1] == 3:
        r, g, b = x.unbind(1)
        return (LUMA[0] * r + LUMA[1] * g + LUMA[2] * b).unsqueeze(1)
    if x.shape[1] == 1:
        return x
    return x.mean(dim=1, keepdim=True)


def _blend_factor(factor: Tensor, mask: Tensor | None, x: Tensor) -> Tensor:
    # For x * f and f * x + (1 - f) * y, f = 1 returns x bit for bit (x in [0, 1]), so masking the
    # (N,) factor selects samples exactly like torch.where on the images, at a fraction of the cost.
    f = _per_sample(factor, x)
    if mask is not None:
        f = torch.where(mask.view(-1, 1, 1, 1), f, torch.ones_like(f))
    return f


def adjust_brightness(x: Tensor, factor: Tensor, mask: Tensor | None = None) -> Tensor:
    """x * factor, clamped to [0, 1]."""
    return (x * _blend_factor(factor, mask, x)).clamp_(0, 1)


def adjust_contrast(x: Tensor, factor: Tensor, mask: Tensor | None = None) -> Tensor:
    """Blend with the image's mean gray level: mean + factor * (x - mean), clamped."""
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    f = _blend_factor(factor, mask, x)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def adjust_saturation(x: Tensor, factor: Tensor, mask: Tensor | None = None) -> Tensor:
    """Blend with the grayscale image: gray + factor * (x - gray), clamped. RGB only."""
    if x.shape[1] != 3:
        return x
    gray = grayscale(x)
    f = _blend_factor(factor, mask, x)
    return (f * x + (1 - f) * gray).clamp_(0, 1)


def adjust_hue(x: Tensor, factor: Tensor, mask: Tensor | None = None) -> Tensor:
    """Rotate hue by ``factor`` turns (in [-0.5, 0.5]) through an exact RGB -> HSV -> RGB. RGB only."""
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(dim=1), x.amin(dim=1)
    delta = maxc - minc
    # Hue in sixths of a turn: (g - b)/delta where R is largest, 2 + (b - r)/delta for G, 4 + (r - g)/delta for B.
    num = torch.where(
        maxc == r,
        g - b,
        torch.where(maxc == g, (b - r).add_(delta, alpha=2), (r - g).add_(delta, alpha=4)),
    )
    hue6 = num.div_(torch.where(delta > 0, delta, torch.ones_like(delta)))
    hue6 = hue6.add_(_per_sample(factor, x).squeeze(1), alpha=6)
    # HSV -> RGB: channel n in (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1), k = (n + 6 h) mod 6, n = 5, 3, 1.
    offsets = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(hue6.unsqueeze(1) + offsets, 6.0)
    weight = torch.minimum(k, 4 - k).clamp_(0, 1)
    out = torch.addcmul(maxc.unsqueeze(1), delta.unsqueeze(1), weight, value=-1)
    return _select(mask, out.clamp_(0, 1), x)


def to_grayscale(x: Tensor, mask: Tensor | None = None) -> Tensor:
    """Replace RGB by its ITU-R 601 luma (0.299 R + 0.587 G + 0.114 B) in all 3 channels. RGB only."""
    if x.shape[1] != 3:
        return x
    gray = grayscale(x)
    if mask is None:
        return gray.repeat(1, 3, 1, 1)
    return _select(mask, gray.expand_as(x), x)


def solarize(x: Tensor, mask: Tensor | None = None, threshold: float = 0.5) -> Tensor:
    """x -> 1 - x where x >= threshold."""
    return _select(mask, torch.where(x >= threshold, 1 - x, x), x)


# ---------------------------------------------------------------- blur


def blur_kernel_size(side: int) -> int:
    """Odd kernel of about 10% of the image side (SimCLR), at least 3, less than twice the side."""
    k = max(3, int(0.1 * side))
    if k % 2 == 0:
        k += 1
    return min(k, 2 * max(side - 1, 0) + 1)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """(N, kernel_size) normalised 1-D Gaussian kernels, one per sigma in (N,)."""
    half = kernel_size // 2
    t = torch.arange(-half, half + 1, device=sigma.device, dtype=sigma.dtype)
    k = torch.exp(-(t.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
    return k / k.sum(dim=1, keepdim=True)


def gaussian_blur(
    x: Tensor,
    sigma: Tensor,
    mask: Tensor | None = None,
    kernel_size: int | None = None,
) -> Tensor:
    """Separable Gaussian blur with a per-sample ``sigma`` (N,), reflect padding, grouped convs.

    ``kernel_size`` defaults to :func:`blur_kernel_size` of the smaller image side.
    """
    n, c, height, width = x.shape
    k = kernel_size or blur_kernel_size(min(height, width))
    if k % 2 == 0:
        raise ValueError(f"kernel_size must be odd; got {k}")
    half = k // 2
    if n == 0 or half == 0:
        return x
    kernels = gaussian_kernels(sigma.to(device=x.device, dtype=x.dtype), k)  # (N, k)
    weights = kernels.repeat_interleave(c, dim=0)  # (N*C, k)
    flat = x.reshape(1, n * c, height, width)
    out = F.conv2d(F.pad(flat, (half, half, 0, 0), mode="reflect"), weights.view(n * c, 1, 1, k), groups=n * c)
    out = F.conv2d(F.pad(out, (0, 0, half, half), mode="reflect"), weights.view(n * c, 1, k, 1), groups=n * c)
    return _select(mask, out.view(n, c, height, width).clamp_(0, 1), x)
