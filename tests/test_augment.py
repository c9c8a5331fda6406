"""Batched views: shapes, reproducibility, parameter distributions, and each op against a formula."""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from reprlearn.augment import (
    PRESETS,
    ViewMaker,
    ViewSpec,
    augment,
    local_crop,
    local_size,
    multi_crop,
    ops,
    preset,
    two_views,
)
from reprlearn.errors import ReprlearnError

# A spec that does nothing; tests switch single ops on with dataclasses.replace.
PLAIN = ViewSpec(
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    hflip_p=0.0,
    jitter_p=0.0,
    grayscale_p=0.0,
    blur_p=0.0,
    solarize_p=0.0,
)
FULL = ViewSpec(size=24, blur_p=0.5, solarize_p=0.2, rotate_degrees=10.0, translate=0.1)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, c: int = 3, h: int = 16, w: int | None = None, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w or h), dtype=torch.uint8, generator=gen(seed))


def binomial_ok(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# ---------------------------------------------------------------- shapes, range, reproducibility


@pytest.mark.parametrize("channels", [1, 3])
def test_output_shape_dtype_and_range(channels):
    x = images(12, channels, 16)
    out = augment(x, FULL, gen())
    assert out.shape == (12, channels, 24, 24)
    assert out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # size=None keeps the input size, also for non-square inputs
    out = augment(images(4, channels, 12, 20), replace(FULL, size=None), gen())
    assert out.shape == (4, channels, 12, 20)
    assert out.min() >= 0 and out.max() <= 1


def test_float_input_accepted_and_matches_uint8():
    x = images(8)
    xf = x.double() / 255
    a = augment(x, FULL, gen(3))
    b = augment(xf, FULL, gen(3))
    assert b.dtype == torch.float64
    torch.testing.assert_close(a.double(), b, atol=1e-4, rtol=0)


def test_same_seed_same_views_different_seed_different():
    x = images(16)
    a = augment(x, FULL, gen(1))
    b = augment(x, FULL, gen(1))
    c = augment(x, FULL, gen(2))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    v1, v2 = two_views(x, FULL, gen(1))
    w1, w2 = two_views(x, FULL, gen(1))
    assert torch.equal(v1, w1) and torch.equal(v2, w2)
    assert not torch.allclose(v1, v2)


def test_parameters_differ_within_a_batch():
    x = images(1).expand(32, -1, -1, -1).contiguous()  # the same image 32 times
    out = augment(x, FULL, gen()).flatten(1)
    distances = torch.cdist(out, out)
    off_diagonal = distances[~torch.eye(32, dtype=torch.bool)]
    assert off_diagonal.min() > 1e-3


def test_two_views_and_multi_crop_shapes():
    x = images(6, 3, 28)
    a, b = two_views(x, replace(FULL, size=None), gen())
    assert a.shape == b.shape == (6, 3, 28, 28)
    spec = preset("simclr", 28, 3)
    local = local_crop(spec, 28)
    assert local.size == local_size(28) == 12 and local.crop_scale == (0.05, 0.4)
    views = multi_crop(x, spec, local, n_global=2, n_local=3, generator=gen())
    assert [v.shape[-1] for v in views] == [28, 28, 12, 12, 12]
    assert all(v.shape[:2] == (6, 3) for v in views)
    assert local_size(8) == 4  # tiny images still get usable local crops


def test_empty_batch():
    out = augment(images(0), FULL, gen())
    assert out.shape == (0, 3, 24, 24)


# ---------------------------------------------------------------- parameter distributions


@pytest.mark.parametrize("hw", [(32, 32), (24, 40)])
def test_crop_params_respect_scale_ratio_and_bounds(hw):
    h, w = hw
    scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
    crop = ops.sample_crop_params(20000, h, w, scale, ratio, gen())
    x0, y0, cw, ch = crop.unbind(1)
    eps = 1e-4
    assert (x0 >= 0).all() and (y0 >= 0).all()
    assert (x0 + cw <= w + eps).all() and (y0 + ch <= h + eps).all()
    area = cw * ch / (h * w)
    log_ratio = torch.log(cw / ch)
    if h == w:  # on square images every box honours both ranges
        assert area.min() >= scale[0] - eps and area.max() <= scale[1] + eps
        assert log_ratio.min() >= math.log(ratio[0]) - eps and log_ratio.max() <= math.log(ratio[1]) + eps
    else:  # the rare fallback may bend the ratio but keeps the area
        assert area.min() >= scale[0] - eps and area.max() <= scale[1] + eps
    # area is spread over the range, not piled at one end
    assert area.mean() > 0.3 and (area < 0.2).float().mean() > 0.05


def test_fixed_scale_and_ratio_give_that_box():
    crop = ops.sample_crop_params(500, 32, 32, (0.25, 0.25), (1.0, 1.0), gen())
    torch.testing.assert_close(crop[:, 2], torch.full((500,), 16.0))
    torch.testing.assert_close(crop[:, 3], torch.full((500,), 16.0))


def test_flip_frequency_matches_probability():
    n, p = 4000, 0.3
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4).expand(n, 1, 4, 4).contiguous()
    out = augment(x, replace(PLAIN, hflip_p=p), gen())
    xf = x.float() / 255
    same = (out - xf).abs().amax(dim=(1, 2, 3)) < 1e-5
    flipped = (out - xf.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (same ^ flipped).all()
    assert binomial_ok(int(flipped.sum()), n, p)


def test_grayscale_frequency_matches_probability():
    n, p = 4000, 0.2
    x = images(n, 3, 4)
    out = augment(x, replace(PLAIN, grayscale_p=p), gen())
    gray = (out[:, 0] == out[:, 1]).all(dim=(1, 2)) & (out[:, 1] == out[:, 2]).all(dim=(1, 2))
    assert binomial_ok(int(gray.sum()), n, p)


def test_jitter_frequency_matches_probability():
    n, p = 3000, 0.8
    x = images(n, 3, 4)
    out = augment(x, replace(PLAIN, jitter_p=p), gen())
    changed = (out - x.float() / 255).abs().amax(dim=(1, 2, 3)) > 1e-6
    assert binomial_ok(int(changed.sum()), n, p)


# ---------------------------------------------------------------- geometry


def test_identity_spec_is_identity():
    x = images(8)
    torch.testing.assert_close(augment(x, PLAIN, gen()), x.float() / 255, atol=0, rtol=0)
    torch.testing.assert_close(augment(x, preset("none", 16, 3), gen()), x.float() / 255, atol=0, rtol=0)


def test_full_crop_warp_is_identity_up_to_interpolation():
    x = images(8).float() / 255
    out = ops.affine_warp(x, ops.full_crop(8, 16, 16), 16)
    assert (out - x).abs().max() < 1e-5


@pytest.mark.parametrize("size", [8, 24])
def test_full_crop_resize_matches_bilinear_interpolate(size):
    x = images(4).float() / 255
    out = ops.affine_warp(x, ops.full_crop(4, 16, 16), size)
    ref = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    assert (out - ref).abs().max() < 1e-5


def test_hflip_alone_is_torch_flip():
    x = images(8)
    out = augment(x, replace(PLAIN, hflip_p=1.0), gen())
    assert (out - torch.flip(x.float() / 255, dims=[-1])).abs().max() < 1e-5


def test_crop_box_selects_that_region():
    x = images(2).float() / 255
    crop = torch.tensor([[4.0, 2.0, 8.0, 8.0], [0.0, 8.0, 8.0, 8.0]])
    out = ops.affine_warp(x, crop, 8)
    assert (out[0] - x[0, :, 2:10, 4:12]).abs().max() < 1e-5
    assert (out[1] - x[1, :, 8:16, 0:8]).abs().max() < 1e-5


def test_rotation_by_90_degrees_is_rot90_counter_clockwise():
    x = images(3).float() / 255
    out = ops.affine_warp(x, ops.full_crop(3, 16, 16), 16, angle=torch.full((3,), 90.0))
    assert (out - torch.rot90(x, 1, dims=(-2, -1))).abs().max() < 1e-5


def test_translation_shifts_content():
    x = images(2).float() / 255
    shift = torch.tensor([[0.25, 0.0], [0.0, -0.125]])  # +4 px right; 2 px up
    out = ops.affine_warp(x, ops.full_crop(2, 16, 16), 16, translate=shift)
    assert (out[0, :, :, 4:] - x[0, :, :, :12]).abs().max() < 1e-5
    assert (out[1, :, :14, :] - x[1, :, 2:, :]).abs().max() < 1e-5


# ---------------------------------------------------------------- colour


def test_to_grayscale_matches_hand_computation():
    x = torch.rand(5, 3, 6, 6, generator=gen())
    gray = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    out = ops.to_grayscale(x)
    assert out.shape == x.shape
    for c in range(3):
        torch.testing.assert_close(out[:, c], gray)
    mask = torch.tensor([True, False, True, False, False])
    out = ops.to_grayscale(x, mask)
    assert torch.equal(out[~mask], x[~mask])
    torch.testing.assert_close(out[mask][:, 1], gray[mask])


def test_hue_zero_is_identity_and_red_turns_green():
    x = torch.rand(6, 3, 8, 8, generator=gen())
    torch.testing.assert_close(ops.adjust_hue(x, torch.zeros(6)), x, atol=1e-5, rtol=0)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    green = ops.adjust_hue(red, torch.tensor([1 / 3]))
    torch.testing.assert_close(green.flatten(), torch.tensor([0.0, 1.0, 0.0]), atol=1e-5, rtol=0)
    blue = ops.adjust_hue(red, torch.tensor([-1 / 3]))
    torch.testing.assert_close(blue.flatten(), torch.tensor([0.0, 0.0, 1.0]), atol=1e-5, rtol=0)


def test_hue_matches_colorsys():
    x = torch.rand(40, 3, 1, 1, generator=gen(5))
    shift = torch.rand(40, generator=gen(6)) - 0.5
    out = ops.adjust_hue(x, shift)
    for i in range(40):
        h, s, v = colorsys.rgb_to_hsv(*x[i, :, 0, 0].tolist())
        ref = colorsys.hsv_to_rgb((h + shift[i].item()) % 1.0, s, v)
        torch.testing.assert_close(out[i, :, 0, 0], torch.tensor(ref, dtype=torch.float32), atol=1e-5, rtol=0)


def test_brightness_contrast_saturation_formulas():
    x = torch.rand(4, 3, 5, 5, generator=gen())
    f = torch.tensor([0.0, 0.5, 1.0, 1.4])
    fv = f.view(-1, 1, 1, 1)
    torch.testing.assert_close(ops.adjust_brightness(x, f), (x * fv).clamp(0, 1))
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
    mean = gray.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(ops.adjust_contrast(x, f), (fv * x + (1 - fv) * mean).clamp(0, 1))
    torch.testing.assert_close(ops.adjust_saturation(x, f), (fv * x + (1 - fv) * gray).clamp(0, 1))
    # factor 0 saturation is grayscale; factor 1 of each is the identity
    torch.testing.assert_close(ops.adjust_saturation(x, f)[0], ops.to_grayscale(x)[0])
    for op in (ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation):
        torch.testing.assert_close(op(x, torch.ones(4)), x)


def test_one_channel_only_brightness_and_contrast_apply():
    x = torch.rand(3, 1, 6, 6, generator=gen())
    f = torch.full((3,), 0.5)
    assert torch.equal(ops.adjust_saturation(x, f), x)
    assert torch.equal(ops.adjust_hue(x, f - 0.4), x)
    assert torch.equal(ops.to_grayscale(x), x)
    assert not torch.allclose(ops.adjust_brightness(x, f), x)
    assert not torch.allclose(ops.adjust_contrast(x, f), x)
    out = augment(images(20, 1, 8), preset("simclr", 8, 1), gen())
    assert out.shape == (20, 1, 8, 8)


def test_solarize_formula():
    x = torch.rand(4, 3, 6, 6, generator=gen())
    torch.testing.assert_close(ops.solarize(x), torch.where(x >= 0.5, 1 - x, x))
    mask = torch.tensor([True, False, False, True])
    out = ops.solarize(x, mask)
    assert torch.equal(out[1:3], x[1:3])


# ---------------------------------------------------------------- blur


def test_blur_keeps_constant_image_and_mean():
    const = torch.full((3, 3, 16, 16), 0.37)
    sigma = torch.tensor([0.1, 1.0, 2.0])
    torch.testing.assert_close(ops.gaussian_blur(const, sigma), const)
    x = torch.rand(3, 3, 32, 32, generator=gen())
    out = ops.gaussian_blur(x, sigma)
    torch.testing.assert_close(out.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=2e-3, rtol=0)
    assert out[2].std() < x[2].std()  # it does smooth


def test_blur_matches_naive_2d_convolution():
    x = torch.rand(4, 3, 20, 20, generator=gen())
    sigma = torch.tensor([0.3, 0.8, 1.5, 2.0])
    k = 5
    out = ops.gaussian_blur(x, sigma, kernel_size=k)
    kernels = ops.gaussian_kernels(sigma, k)
    for i in range(4):
        k2 = torch.outer(kernels[i], kernels[i]).expand(3, 1, k, k)
        padded = F.pad(x[i : i + 1], (k // 2,) * 4, mode="reflect")
        ref = F.conv2d(padded, k2, groups=3)[0]
        torch.testing.assert_close(out[i], ref, atol=1e-5, rtol=0)
    assert ops.blur_kernel_size(32) == 3 and ops.blur_kernel_size(224) == 23
    assert ops.blur_kernel_size(96) % 2 == 1


def test_blur_mask_leaves_others_alone():
    x = torch.rand(4, 3, 16, 16, generator=gen())
    mask = torch.tensor([False, True, False, True])
    out = ops.gaussian_blur(x, torch.full((4,), 1.5), mask)
    assert torch.equal(out[~mask], x[~mask])
    assert not torch.allclose(out[mask], x[mask])


# ---------------------------------------------------------------- specs, presets, errors


def test_presets():
    simclr = preset("simclr", 32, 3)
    assert simclr.crop_scale == (0.08, 1.0) and simclr.hflip_p == 0.5 and simclr.jitter_p == 0.8
    assert (simclr.brightness, simclr.contrast, simclr.saturation, simclr.hue) == (0.4, 0.4, 0.4, 0.1)
    assert simclr.grayscale_p == 0.2 and simclr.blur_p == 0.0 and simclr.solarize_p == 0.0
    assert preset("simclr", 96, 3).blur_p == 0.5
    digits = preset("digits", 8, 1)
    assert digits.hflip_p == 0 and digits.blur_p == 0 and digits.hue == 0 and digits.grayscale_p == 0
    assert 10 <= digits.rotate_degrees <= 15 and digits.translate > 0 and digits.crop_scale[0] >= 0.4
    assert preset("auto", 8, 1) == digits
    assert preset("auto", 32, 3) == simclr
    assert preset("auto", 32, 1) == preset("digits", 32, 1)  # grayscale up to 32 px: glyphs
    assert preset("auto", 33, 1) == preset("simclr", 33, 1)
    for name in PRESETS:
        preset(name, 16, 3).validate()
    with pytest.raises(ReprlearnError, match="simclr"):
        preset("fancy", 32, 3)


@pytest.mark.parametrize(
    "change",
    [
        {"hflip_p": 1.5},
        {"jitter_p": -0.1},
        {"grayscale_p": 2},
        {"blur_p": float("nan")},
        {"solarize_p": "0.5"},
        {"crop_scale": (0.0, 1.0)},
        {"crop_scale": (0.5, 0.2)},
        {"crop_scale": (0.5, 1.2)},
        {"crop_scale": (0.5,)},
        {"crop_ratio": (1.5, 0.5)},
        {"crop_ratio": (0.0, 1.0)},
        {"hue": 0.6},
        {"hue": -0.1},
        {"brightness": -1.0},
        {"blur_sigma": (0.0, 1.0)},
        {"size": 0},
        {"size": 3.5},
        {"rotate_degrees": -5.0},
        {"translate": 1.0},
    ],
)
def test_bad_spec_values_raise(change):
    with pytest.raises(ReprlearnError) as info:
        replace(ViewSpec(), **change).validate()
    assert "\n" not in str(info.value)
    with pytest.raises(ReprlearnError):
        augment(images(2), replace(ViewSpec(), **change), gen())


def test_spec_dict_round_trip():
    spec = preset("digits", 8, 1)
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ReprlearnError, match="unknown ViewSpec"):
        ViewSpec.from_dict({"flip": 0.5})


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(3, 16, 16, dtype=torch.uint8),
        torch.zeros(2, 16, 16, 3, dtype=torch.uint8),
        torch.zeros(2, 3, 16, 16, dtype=torch.int64),
        [[0]],
    ],
)
def test_bad_images_raise_naming_expected_shape(bad):
    with pytest.raises(ReprlearnError, match=r"\(N, C, H, W\)") as info:
        augment(bad, ViewSpec(), gen())
    assert "\n" not in str(info.value)


def test_generator_on_another_device_raises():
    with pytest.raises(ReprlearnError, match="generator"):
        augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8, device="meta"), ViewSpec(), gen())


def test_view_maker_seeded_and_resumable():
    x = images(8)
    maker = ViewMaker.from_preset("simclr", 16, 3, n_global=2, n_local=2, seed=7)
    views = maker(x)
    assert [v.shape[-1] for v in views] == [16, 16, 7, 7]
    again = ViewMaker.from_preset("simclr", 16, 3, n_global=2, n_local=2, seed=7)(x)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    state = maker.state_dict()
    nxt = maker(x)
    other = ViewMaker(ViewSpec())
    other.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(nxt, other(x)))
    assert not torch.equal(views[0], nxt[0])


@pytest.mark.parametrize("op", [ops.adjust_brightness, ops.adjust_contrast, ops.adjust_saturation, ops.adjust_hue])
def test_colour_mask_leaves_unselected_samples_bit_identical(op):
    x = torch.rand(6, 3, 8, 8, generator=gen())
    mask = torch.tensor([True, False, True, False, True, False])
    factor = torch.full((6,), 0.3)
    out = op(x, factor, mask)
    assert torch.equal(out[~mask], x[~mask])
    torch.testing.assert_close(out[mask], op(x[mask], factor[mask]))


def test_ablation_presets_keep_only_their_part():
    """crop / colour / crop+colour (the augmentation experiment's arms) are parts of the auto recipe:
    crop leaves a uniform image's value alone, colour leaves every pixel where it was."""
    flat = torch.full((64, 3, 32, 32), 100, dtype=torch.uint8)
    dot = torch.zeros((64, 3, 32, 32), dtype=torch.uint8)
    dot[:, :, 9, 21] = 255
    where = lambda v: v.sum(1).flatten(1).argmax(1)  # noqa: E731 - the brightest pixel of each view
    crop, colour, both = (preset(n, 32, 3) for n in ("crop", "colour", "crop+colour"))
    torch.testing.assert_close(augment(flat, crop, gen()), flat.float() / 255, atol=1e-5, rtol=0)
    assert (where(augment(dot, crop, gen())) != 9 * 32 + 21).any()  # the crop moves the dot
    assert (where(augment(dot, colour, gen())) == 9 * 32 + 21).all()  # colour never moves it
    assert (augment(flat, colour, gen()) - 100 / 255).abs().amax() > 0.05  # ... but changes values
    assert (augment(flat, both, gen()) - 100 / 255).abs().amax() > 0.05
    assert (where(augment(dot, both, gen())) != 9 * 32 + 21).any()
    full = preset("auto", 32, 3)
    assert both == replace(full, blur_p=0.0, solarize_p=0.0, rotate_degrees=0.0, translate=0.0)
    assert preset("crop", 8, 1).crop_scale == preset("digits", 8, 1).crop_scale  # the auto recipe's crop
