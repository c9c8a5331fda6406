"""DDPM: the closed form q(x_t | x_0) against iterating the forward process; the posterior
q(x_{t-1} | x_t, x_0) against Bayes' rule by Monte Carlo; the per-step KL against a Monte Carlo
estimate of E_q[log q - log p]; the schedules against their formulas; the bound's estimator
(stratified) against the full sum; the decoder term normalised over the 8-bit levels; and a
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
