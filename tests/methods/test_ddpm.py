"""DDPM: the closed form q(x_t | x_0) against iterating the forward process; the posterior
q(x_{t-1} | x_t, x_0) against Bayes' rule by Monte Carlo; the per-step KL against a Monte Carlo
estimate of E_q[log q - log p]; the schedules against their formulas; the bound's estimator
(stratified) against the full sum; the reverse mean of the true noise against the posterior mean;
the sampler and the bound with the exact E[ε | x_t] for Gaussian data (moments, closed-form
Σ L_{t−1}, 0 on a point mass); the decoder term normalised over the 8-bit levels; and a
short run on digits (samples, bits/dim, features)."""

import math

import pytest
import torch

from fakedata import one_line_error
from reprlearn.api import build_method, data_info, resolve_config
from reprlearn.data.run_data import load_run_data
from reprlearn.methods.ddpm import Diffusion, beta_schedule


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def digits():
    cfg, _ = resolve_config("ddpm", {})
    train = load_run_data(cfg, captions=False).train
    return train.tensor(), data_info(train)


def make(info, **options):
    torch.manual_seed(0)
    options.setdefault("feature_t", min(20, options.get("timesteps", 1000)))
    cfg, method_cfg = resolve_config("ddpm", options)
    return build_method(cfg, method_cfg, info)


def test_schedules_follow_their_formulas():
    lin = beta_schedule("linear", 1000)
    assert lin[0].item() == pytest.approx(1e-4) and lin[-1].item() == pytest.approx(0.02)
    cos = beta_schedule("cosine", 1000)
    f = lambda t: math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ab = torch.cumprod(1 - cos, 0)
    for t in (1, 10, 500, 900):
        assert ab[t - 1].item() == pytest.approx(f(t) / f(0), rel=1e-6)
    assert cos.max().item() <= 0.999


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_closed_form_q_xt_given_x0_matches_iterating_the_forward_process(schedule):
    """x_t from t steps of x_s = √(1-β_s) x_{s-1} + √β_s ε_s has mean √ᾱ_t x_0 and variance 1 - ᾱ_t."""
    T = 50
    betas = beta_schedule(schedule, T)
    d = Diffusion(betas)
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.7, 0.0], dtype=torch.float64)
    n = 200_000
    x = x0.expand(n, 3).clone()
    for t in range(1, T + 1):
        b = betas[t - 1].item()  # the naive loop reads β_t straight from the schedule
        x = math.sqrt(1 - b) * x + math.sqrt(b) * torch.randn(n, 3, generator=g, dtype=torch.float64)
        if t in (1, 5, 20, T):
            ab = d.alpha_bar[t - 1].item()
            se = math.sqrt((1 - ab) / n)
            assert (x.mean(0) - math.sqrt(ab) * x0).abs().max() < 5 * se
            assert (x.var(0) - (1 - ab)).abs().max() < 5 * (1 - ab) * math.sqrt(2 / n) + 1e-12
            # and q_sample draws from that same law
            xt = d.q_sample(x0.float().expand(n, 3), torch.full((n,), t), torch.randn(n, 3, generator=g))
            assert (xt.double().mean(0) - x.mean(0)).abs().max() < 7 * se + 1e-6


def test_posterior_matches_bayes_by_monte_carlo():
    """Sample x_{t-1} ~ q(x_{t-1}|x_0), x_t ~ q(x_t|x_{t-1}); among draws with x_t near a value, x_{t-1}
    has the posterior's mean and variance (a joint Gaussian's conditional, computed from the samples)."""
    T, t = 100, 30
    betas = beta_schedule("linear", T)
    d = Diffusion(betas)
    g = torch.Generator().manual_seed(1)
    x0, n = 0.8, 2_000_000
    ab_prev, b = d.alpha_bar[t - 2].item(), betas[t - 1].item()
    prev = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * torch.randn(n, generator=g, dtype=torch.float64)
    xt = math.sqrt(1 - b) * prev + math.sqrt(b) * torch.randn(n, generator=g, dtype=torch.float64)
    # conditional of the (Gaussian) joint from sample moments: E[prev | xt] = a + c xt, Var = residual variance
    c = torch.cov(torch.stack([prev, xt]))[0, 1] / xt.var()
    a = prev.mean() - c * xt.mean()
    resid = (prev - a - c * xt).var()
    value = 0.3
    mean, var = d.q_posterior(torch.tensor([[x0]]), torch.tensor([[value]]), torch.tensor([t]))
    assert mean.item() == pytest.approx((a + c * value).item(), abs=2e-3)
    assert var.item() == pytest.approx(resid.item(), rel=1e-2)


def test_step_kl_matches_monte_carlo(digits):
    """KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) closed form against mean of log q − log p over draws
    from q, the densities written out from N's formula; for a perturbed (non-zero) network."""
    _, info = digits
    for variance in ("small", "large"):
        m = make(info, timesteps=100, variance=variance).double()
        with torch.no_grad():
            for p in m.unet.conv_out.parameters():
                p.normal_(0, 0.1)
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
        t = torch.tensor([2, 40])
        xt = m.diffusion.q_sample(x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        with torch.no_grad():
            kl = m.step_kl(x0, xt, t)
            mean_q, var_q = m.diffusion.q_posterior(x0, xt, t)
            mean_p = m.diffusion.p_mean(xt, t, m.unet.denoise(xt, t))
        # σ_t² read from the formulas: β_t (large) or β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) (small), t = 2 and 40
        betas, ab = beta_schedule("linear", 100), torch.cumprod(1 - beta_schedule("linear", 100), 0)
        var_p = torch.stack([betas[t - 1] if variance == "large" else betas[t - 1] * (1 - ab[t - 2]) / (1 - ab[t - 1])
                             for t in (2, 40)]).view(2, 1, 1, 1)
        n = 20000
        s = mean_q + var_q.sqrt() * torch.randn(n, *x0.shape, generator=g, dtype=torch.float64)

        def log_normal(x, mu, var):
            return (-0.5 * (x - mu) ** 2 / var - 0.5 * torch.log(2 * math.pi * var)).flatten(2).sum(2)

        mc = (log_normal(s, mean_q, var_q) - log_normal(s, mean_p, var_p)).mean(0)
        se = (log_normal(s, mean_q, var_q) - log_normal(s, mean_p, var_p)).std(0) / math.sqrt(n)
        assert ((mc - kl).abs() < 5 * se + 1e-6).all(), (variance, mc, kl, se)


def test_prior_term_is_kl_of_q_xT_to_standard_normal(digits):
    _, info = digits
    m = make(info, timesteps=10)
    x0 = torch.randn(3, 1, 8, 8)
    ab = m.diffusion.alpha_bar[-1].item()
    q = torch.distributions.Normal(math.sqrt(ab) * x0, math.sqrt(1 - ab))
    ref = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    assert torch.allclose(m.prior_term(x0), ref, rtol=1e-4)


def test_stratified_bound_estimates_the_full_sum(digits):
    """With the per-step term replaced by a known function of t (f(t) = 1000/t + t, per image; the real
    terms fall as about 1/t), the estimate from K log-spaced strata averages to Σ_{t=2}^T f(t), and
    --bound-steps 0 gives that sum exactly."""
    images, info = digits
    x = images[:4].float() / 255
    T = 40
    exact = sum(1000 / t + t for t in range(2, T + 1))
    full, est = make(info, timesteps=T, bound_steps=0), make(info, timesteps=T, bound_steps=5)
    for m in (full, est):
        m.step_kl = lambda x0, xt, t: 1000 / t.double() + t.double()
    g = torch.Generator().manual_seed(0)
    assert torch.allclose(full.bound_terms(x, g)["diffusion"], torch.full((4,), exact, dtype=torch.float64))
    draws = torch.stack([est.bound_terms(x, g)["diffusion"] for _ in range(300)]).flatten()
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * se.item() and se.item() < 0.005 * exact


# ---------------------------------------------------------------- the reverse process against exact answers


def naive_constants(schedule, T):
    """ᾱ_t (index t, ᾱ_0 = 1), β_t (index t) and β̃_t, from the schedule by a plain loop (Ho et al. 2020)."""
    betas = [0.0] + beta_schedule(schedule, T).tolist()
    alpha_bar = [1.0]
    for t in range(1, T + 1):
        alpha_bar.append(alpha_bar[-1] * (1 - betas[t]))
    tilde = [0.0] + [betas[t] * (1 - alpha_bar[t - 1]) / (1 - alpha_bar[t]) for t in range(1, T + 1)]
    return alpha_bar, betas, tilde


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_reverse_mean_of_the_true_noise_is_the_posterior_mean(schedule):
    """Ho et al. 2020 eq. 11 with ε the noise that made x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε gives eq. 7's
    μ̃_t(x_0, x_t) = √ᾱ_{t−1} β_t / (1 − ᾱ_t) x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) x_t, at every t (at t = 1: x_0)."""
    T = 1000
    d = Diffusion(beta_schedule(schedule, T))
    alpha_bar, betas, _ = naive_constants(schedule, T)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(1, T + 1)
    x0 = torch.randn(T, 3, generator=g, dtype=torch.float64) * 2
    eps = torch.randn(T, 3, generator=g, dtype=torch.float64)
    xt = d.q_sample(x0, t, eps)
    ab, ab_prev, b = (torch.tensor(v, dtype=torch.float64)[:, None] for v in (alpha_bar[1:], alpha_bar[:-1], betas[1:]))
    want = ab_prev.sqrt() * b / (1 - ab) * x0 + (1 - b).sqrt() * (1 - ab_prev) / (1 - ab) * xt
    torch.testing.assert_close(d.p_mean(xt, t, eps), want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.p_mean(xt, t, eps)[0], x0[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(d.q_posterior(x0, xt, t)[0], want, rtol=1e-9, atol=1e-9)


GAUSS_MEAN, GAUSS_STD = 0.3, 1.0  # the data of the oracle tests, in the diffusion's (normalised) space


def oracle_ddpm(info, data_mean, data_std, **options):
    """A ddpm whose network is the exact E[ε | x_t] for data x_0 ~ N(m, s²) in each value, independent:

        x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε  is Gaussian, Cov(ε, x_t) = √(1 − ᾱ_t), Var x_t = ᾱ_t s² + 1 − ᾱ_t,
        E[ε | x_t] = √(1 − ᾱ_t) (x_t − √ᾱ_t m) / (ᾱ_t s² + 1 − ᾱ_t)

    (s = 0: the data are the point m and E[ε | x_t] is the noise itself)."""
    m = make(info, **options)
    alpha_bar = torch.tensor(naive_constants(m.config.schedule, m.config.timesteps)[0], dtype=torch.float64)

    def oracle(xt, t):
        ab = alpha_bar[t.cpu()].to(xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return (1 - ab).sqrt() * (xt - ab.sqrt() * data_mean) / (ab * data_std ** 2 + 1 - ab)

    m.unet.denoise = oracle
    return m


@pytest.mark.parametrize("variance", ["small", "large"])
def test_sampler_with_the_oracle_network_draws_the_data_distribution(digits, variance):
    """Algorithm 2 of Ho et al. 2020 (x_T ~ N(0, I), x_{t−1} = μ_θ + σ_t z, the image μ_θ at t = 1) with
    the exact E[ε | x_t] for x_0 ~ N(0.3, 1): 20,032 values (313 images of 64) have the data's mean and
    variance within 4 standard errors (0.028 and 0.04). The chain's own error is far smaller: with
    σ_t² = β̃_t it misses the reverse steps' x_0-uncertainty, a 0.9% deficit in variance at T = 1000
    (computed by the linear recursion); with β_t it is exact to 1e-4 for unit-variance data."""
    _, info = digits
    m = oracle_ddpm(info, GAUSS_MEAN, GAUSS_STD, variance=variance)
    m.encoder.mean.fill_(0.5)
    m.encoder.std.fill_(0.05)  # the image is 0.5 + 0.05 x_0: ±9 standard deviations inside [0, 1], no clipping
    images = m.sample(313, generator=torch.Generator().manual_seed(0))
    x0 = ((images.double() - 0.5) / 0.05).flatten()
    n = len(x0)
    assert images.min() > 0 and images.max() < 1
    assert abs(x0.mean().item() - GAUSS_MEAN) < 4 * GAUSS_STD / math.sqrt(n)
    assert abs(x0.var().item() - GAUSS_STD ** 2) < 4 * GAUSS_STD ** 2 * math.sqrt(2 / (n - 1))


@pytest.mark.parametrize("bound_steps", [50, 0])
def test_oracle_diffusion_term_is_its_closed_form(digits, bound_steps):
    """With the exact network, μ_θ = E[μ̃_t | x_t], so μ̃_t − μ_θ = coef_t (x_0 − E[x_0 | x_t]) with
    coef_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t), and per value

        E L_{t−1} = ½ (coef_t² Var(x_0 | x_t) / σ_t² + β̃_t / σ_t² − 1 + log(σ_t² / β̃_t)),
        Var(x_0 | x_t) = s² (1 − ᾱ_t) / (ᾱ_t s² + 1 − ᾱ_t).

    This is not 0 for s > 0: L_{t−1} compares q(x_{t−1} | x_t, x_0), which knows x_0, with a reverse step
    that does not (5.07 nats per value summed over t here; the continuous-time limit of Kingma et al.
    2021 gives ½ log(1 + s² / β_1) = 4.6). For x_0 ~ N(0.3, 1), 100
    images of 64 values (x_0 given to the bound directly): the estimate (45 strata, or every t) within 4
    standard errors of the sum."""
    _, info = digits
    m = oracle_ddpm(info, GAUSS_MEAN, GAUSS_STD, bound_steps=bound_steps)
    m.to_diffusion = lambda x: x  # the images are x_0 already (continuous, not 8-bit)
    g = torch.Generator().manual_seed(1)
    x0 = GAUSS_MEAN + GAUSS_STD * torch.randn(100, 1, 8, 8, generator=g)
    diffusion = m.bound_terms(x0, g)["diffusion"].double()
    alpha_bar, betas, tilde = naive_constants("linear", 1000)
    want = 0.0
    for t in range(2, 1001):
        coef = math.sqrt(alpha_bar[t - 1]) * betas[t] / (1 - alpha_bar[t])
        var_x0 = GAUSS_STD ** 2 * (1 - alpha_bar[t]) / (alpha_bar[t] * GAUSS_STD ** 2 + 1 - alpha_bar[t])
        want += 0.5 * coef ** 2 * var_x0 / tilde[t]  # σ_t² = β̃_t: the variance terms vanish
    want *= 64
    se = diffusion.std().item() / math.sqrt(len(diffusion))
    print(f"bound_steps {bound_steps}: Σ L_t-1 {diffusion.mean().item():.2f} ± {se:.2f}, closed form {want:.2f}")
    assert abs(diffusion.mean().item() - want) < 4 * se


@pytest.mark.parametrize("variance", ["small", "large"])
def test_oracle_diffusion_term_vanishes_on_a_point_mass(digits, variance):
    """Images whose every pixel is one 8-bit level: x_0 is one point c, the exact network predicts the
    true noise, μ_θ = μ̃_t, and Σ_t L_{t−1} is 0 for σ_t² = β̃_t (within 1e-3 nats per image: float32
    rounding of μ̃_t − μ_θ, divided by β̃_t ≥ 5e-5) and Σ_t ½ (β̃_t/β_t − 1 + log(β_t/β̃_t)) per value for
    σ_t² = β_t, through the bound's own data path (bins' centres, normalised)."""
    _, info = digits
    x = torch.full((8, 1, 8, 8), 100 / 255)
    probe = make(info)
    c = probe.to_diffusion(x)[0, 0, 0, 0].item()
    m = oracle_ddpm(info, c, 0.0, bound_steps=0, variance=variance)
    diffusion = m.bound_terms(x, torch.Generator().manual_seed(2))["diffusion"]
    _, betas, tilde = naive_constants("linear", 1000)
    want = 0.0 if variance == "small" else \
        64 * sum(0.5 * (tilde[t] / betas[t] - 1 + math.log(betas[t] / tilde[t])) for t in range(2, 1001))
    torch.testing.assert_close(diffusion.double(), torch.full((8,), want, dtype=torch.float64), rtol=1e-4, atol=1e-3)


def test_decoder_is_the_gaussian_binned_over_the_8bit_levels(digits):
    """L_0 for one pixel varied over its 256 levels (the rest fixed, x_1 fixed): the masses are those of
    N(s μ + m, s² β_1) over the bins [k/256, (k+1)/256) with open edge bins (torch's Normal cdf), so
    they sum to 1 over the levels."""
    images, info = digits
    m = make(info, timesteps=10).double()
    x = images[:1].double() / 255
    x0 = m.to_diffusion(x)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    xs = x.repeat(256, 1, 1, 1)
    xs[:, 0, 3, 4] = torch.arange(256, dtype=torch.float64) / 255
    with torch.no_grad():
        t = m._times(1, 256)
        x1 = m.diffusion.q_sample(x0.expand(256, -1, -1, -1), t, eps.expand(256, -1, -1, -1))
        lp = -m.decoder_term(xs, x0.expand(256, -1, -1, -1), eps.expand(256, -1, -1, -1))
        mean = (m.diffusion.p_mean(x1, t, m.unet.denoise(x1, t)) * m.encoder.std + m.encoder.mean)[0, 0, 3, 4]
    pixel = torch.distributions.Normal(mean, math.sqrt(m.diffusion.beta[0].item()) * m.encoder.std[0, 0, 0, 0])
    cdf = pixel.cdf(torch.arange(1, 256, dtype=torch.float64) / 256)
    masses = torch.cat([cdf[:1], cdf[1:] - cdf[:-1], 1 - cdf[-1:]])
    k = int(masses.argmax())
    rest = lp[k] - masses[k].log()  # log-probability of the other 63 pixels, the same in every row
    assert torch.logsumexp(lp, 0).item() == pytest.approx(rest.item(), abs=1e-6)  # Σ_k P(k) = 1
    big = masses > 1e-6
    assert torch.allclose((lp - rest)[big], masses[big].log(), atol=1e-6)


def test_feature_level_and_refusals(digits):
    _, info = digits
    m = make(info, timesteps=100, feature_t=30)
    assert m.unet.feature_t.item() == 30
    assert m.unet.feature_signal.item() == pytest.approx(math.sqrt(m.diffusion.alpha_bar[29].item()))
    one_line_error(lambda: resolve_config("ddpm", {"timesteps": 10, "feature_t": 20}), "feature-t", "10")
    one_line_error(lambda: make(info, backbone="cnn"), "unet")
    one_line_error(lambda: m.iwae(torch.zeros(1, 1, 8, 8), 5), "nelbo")


def test_one_epoch_run_evaluates_its_bound(tmp_path):
    """Train (1 epoch, T = 50) and evaluate through the harness: eval.json reports bits/dim of the
    variational bound (no iwae), its three parts, and the sample and denoising figures."""
    import json

    import reprlearn
    from fakedata import epoch_losses

    run = reprlearn.train("ddpm", out=tmp_path / "r", epochs=2, timesteps=50, feature_t=5, bound_steps=10, progress=False)
    result = json.loads((run / "eval.json").read_text())
    assert result["iwae_nats"] is None and result["density"]["data"] == "8-bit"
    assert "variational" in result["density"]["bound"]
    parts = result["kl_per_group"]
    assert set(parts) == {"prior", "diffusion", "decoder"}
    assert 0 < result["bits_per_dim"] < 16 and result["nelbo_nats"] == pytest.approx(
        result["bits_per_dim"] * 64 * math.log(2))
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    losses = epoch_losses(run)
    assert losses[-1] < losses[0]
