"""The discretised likelihoods over 8-bit pixels and the bits/dim convention: normalisation
over the 256 values, a naive per-bin reference from the CDFs of torch.distributions, the
tails, gradients, the dequantisation bins, and bits/dim on a hand-built case."""

import math

import mpmath
import pytest
import torch
from torch.distributions import Normal

from reprlearn.evaluate.generative import bits_per_dim
from reprlearn.losses import discretized_gaussian_log_prob, discretized_logistic_log_prob, pixel_levels

LIKELIHOODS = {"logistic": discretized_logistic_log_prob, "gaussian": discretized_gaussian_log_prob}
# (location, log-scale) on the [0, 1] scale: narrow and wide, inside, at and beyond the edges
PARAMS = [(0.3, -3.0), (0.0, -8.0), (1.2, -2.0), (0.5, 2.0), (-3.0, -5.0), (0.7, -12.0), (0.51, -6.0), (0.999, -1.0)]
ALL_LEVELS = torch.arange(256, dtype=torch.float64)


def naive_log_prob(cdf, k: int, mean: float, scale: float) -> float:
    """log P(level k) from the formula, bin by bin, in 50-digit arithmetic (mpmath, which
    torch requires through sympy): F(hi) − F(lo), or S(lo) − S(hi) with the survival
    function S(t) = 1 − F(t) = F(−t) right of the mean; edges open to ±∞."""
    with mpmath.workdps(50):
        mean, scale = mpmath.mpf(mean), mpmath.mpf(scale)
        hi = mpmath.inf if k == 255 else ((k + 1) / mpmath.mpf(256) - mean) / scale
        lo = -mpmath.inf if k == 0 else (k / mpmath.mpf(256) - mean) / scale
        mass = cdf(-lo) - cdf(-hi) if lo > 0 else cdf(hi) - cdf(lo)
        return float(mpmath.log(mass))


def logistic_cdf(t):
    return mpmath.mpf(1) if t == mpmath.inf else 1 / (1 + mpmath.exp(-t))


CDFS = {"logistic": logistic_cdf, "gaussian": mpmath.ncdf}


def one_pixel_all_values(f, mean, log_scale, dtype=torch.float64):
    """log P(k) for k = 0..255 of one pixel: the 256 values as a batch of 1-pixel images."""
    x = (ALL_LEVELS / 255).to(dtype).view(256, 1)
    return f(x, torch.tensor(mean, dtype=dtype), torch.tensor(log_scale, dtype=dtype))


@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("mean,log_scale", PARAMS)
def test_one_pixel_sums_to_one_over_its_256_values(name, mean, log_scale):
    for dtype in (torch.float64, torch.float32):
        lp = one_pixel_all_values(LIKELIHOODS[name], mean, log_scale, dtype)
        assert lp.shape == (256,) and torch.isfinite(lp).all() and (lp <= 0).all()
        assert abs(lp.double().exp().sum().item() - 1) < 1e-5


@pytest.mark.parametrize("name", LIKELIHOODS)
@pytest.mark.parametrize("mean,log_scale", [(0.3, -3.0), (0.5, 2.0), (0.8, -4.0), (1.2, -2.0), (0.1, -6.0)])
def test_matches_naive_cdf_differences_bin_by_bin(name, mean, log_scale):
    lp = one_pixel_all_values(LIKELIHOODS[name], mean, log_scale)
    scale = math.exp(log_scale)
    for k in (0, 1, 37, 76, 127, 128, 200, 254, 255):  # far into both tails too
        assert lp[k].item() == pytest.approx(naive_log_prob(CDFS[name], k, mean, scale), rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_far_tails_are_accurate_in_float32(name):
    # pixels 200 levels from a narrow mean, on both sides and in both edge bins: the naive
    # F(hi) - F(lo) is 0 in float32 (log -inf), or 1 - 1 on the right of the mean
    levels, means = [0, 255, 200, 3, 150], [0.9, 0.05, 0.02, 0.95, 0.3]
    x = torch.tensor(levels, dtype=torch.float32).view(-1, 1) / 255
    mean = torch.tensor(means).view(-1, 1)
    lp = LIKELIHOODS[name](x, mean, torch.full_like(mean, -5.0))
    want = torch.tensor([naive_log_prob(CDFS[name], k, m, math.exp(-5.0)) for k, m in zip(levels, means)])
    assert (want < -20).all()
    torch.testing.assert_close(lp, want.float(), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_gradcheck(name):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (3, 1, 2, 2), generator=g).double() / 255
    x[0, 0, 0, 0], x[1, 0, 0, 0] = 0.0, 1.0  # both open edge bins
    mean = (torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64) * 1.2 - 0.1).requires_grad_()
    log_scale = (torch.rand(3, 1, 2, 2, generator=g, dtype=torch.float64) * 4 - 5).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, s: LIKELIHOODS[name](x, m, s), (mean, log_scale))


def test_wide_gaussian_bin_is_the_density_times_the_bin_width():
    # σ much wider than a bin: P(k) ≈ pdf(centre) / 256, the continuous limit (DDPM's decoder)
    lp = one_pixel_all_values(discretized_gaussian_log_prob, 0.5, math.log(0.2))
    centre = (torch.tensor(100.0) + 0.5) / 256
    want = Normal(0.5, 0.2).log_prob(centre.double()) - math.log(256)
    assert lp[100].item() == pytest.approx(want.item(), abs=1e-4)


def test_levels_of_exact_and_dequantised_pixels():
    k = torch.arange(256.0)
    u = torch.rand(10, 256, generator=torch.Generator().manual_seed(0)) * (1 - 1e-6)
    assert torch.equal(pixel_levels(k / 255), k)  # evaluation: x = x_uint8 / 255
    assert torch.equal(pixel_levels((k + u) / 256), k.expand(10, 256))  # training: x = (x_uint8 + u) / 256


def test_bits_per_dim_on_a_hand_built_case():
    # a 2x2 image under a discretised logistic whose pixels put P = 1/2, 1/4, 1/8 and 1 - 2^-5.
    # ln of each: the edge bin P(0) = σ((1/256 − μ)/s) = 1/2 at μ = 1/256; P(255) = σ(−b) with
    # b = (255/256 − μ)/s, so σ(−b) = 2^-2 at b = ln 3, and so on: choose μ for each target P.
    s = 0.01
    targets = torch.tensor([0.5, 0.25, 0.125, 1 - 2 ** -5], dtype=torch.float64)
    logit = torch.log(targets / (1 - targets))  # σ(t) = P  <=>  t = logit P
    # pixel 0 and 2 at level 0 (P = σ(a), a = (1/256 − μ)/s), pixels 1 and 3 at level 255 (P = σ(−b))
    x = torch.tensor([0.0, 1.0, 0.0, 1.0], dtype=torch.float64).view(1, 1, 2, 2)
    mean = torch.stack([1 / 256 - s * logit[0], 255 / 256 + s * logit[1],
                        1 / 256 - s * logit[2], 255 / 256 + s * logit[3]]).view(1, 1, 2, 2)
    nats = -discretized_logistic_log_prob(x, mean, torch.full_like(mean, math.log(s))).item()
    want_bits = -sum(math.log2(p) for p in targets.tolist())  # 1 + 2 + 3 + 0.0458 bits
    assert nats == pytest.approx(want_bits * math.log(2), rel=1e-9)
    assert bits_per_dim(nats, 4) == pytest.approx(want_bits / 4, rel=1e-9)
    # a uniform distribution over the 256 levels is 8 bits/dim
    assert bits_per_dim(3 * 32 * 32 * math.log(256), 3 * 32 * 32) == pytest.approx(8.0)
