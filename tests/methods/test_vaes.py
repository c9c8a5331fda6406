"""The VAE family (vae, cvae, hvae): the density helpers against torch.distributions and
Monte Carlo, the IWAE bound against the ELBO and against exact likelihoods (a linear-Gaussian
model, a scalar latent integrated by quadrature; vae and hvae), the log-scale floor's cap on
a bin's mass, the data each likelihood sees (dequantised
8-bit or binarised) and the refusals, the Ladder-VAE posterior (prior when d_i says
nothing; closed-form KL per group against Monte Carlo), conditional sampling,
reproducible reparameterisation, and a 1-epoch run of each method."""

import math

import mpmath
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, data_info, resolve_config
from reprlearn.data.run_data import load_run_data
from reprlearn.errors import ReprlearnError
from reprlearn.evaluate.generative import density
from reprlearn.losses import bernoulli_log_prob, gaussian_kl, gaussian_kl_between, gaussian_log_prob, pixel_levels
from reprlearn.methods.hvae import precision_weighted

VAES = ("vae", "cvae", "hvae")


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


@pytest.fixture(scope="module")
def digits():
    cfg, _ = resolve_config("vae", {})
    train = load_run_data(cfg, captions=False).train
    return train.tensor(), torch.from_numpy(train.labels).long(), data_info(train)


def make(name, info, **options):
    torch.manual_seed(0)
    cfg, method_cfg = resolve_config(name, options)
    return build_method(cfg, method_cfg, info)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- density helpers


def random_gaussians(n=3, d=4, seed=0):
    g = gen(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64) * 0.7


def test_gaussian_kl_matches_torch_and_monte_carlo():
    mu, logvar = random_gaussians()
    q, p = Normal(mu, (0.5 * logvar).exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))
    ours = gaussian_kl(mu, logvar)
    assert ours.shape == (3,)
    torch.testing.assert_close(ours, kl_divergence(q, p).sum(-1))
    z = q.sample((200_000,))  # E_q[log q - log p]
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(mc, ours, rtol=0.03, atol=0.01)


def test_gaussian_kl_between_matches_torch_and_monte_carlo():
    mu_q, logvar_q = random_gaussians(seed=1)
    mu_p, logvar_p = random_gaussians(seed=2)
    q, p = Normal(mu_q, (0.5 * logvar_q).exp()), Normal(mu_p, (0.5 * logvar_p).exp())
    ours = gaussian_kl_between(mu_q, logvar_q, mu_p, logvar_p)
    torch.testing.assert_close(ours, kl_divergence(q, p).sum(-1))
    z = q.sample((200_000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(mc, ours, rtol=0.03, atol=0.02)
    # against the standard normal it is gaussian_kl
    zeros = torch.zeros_like(mu_q)
    torch.testing.assert_close(gaussian_kl_between(mu_q, logvar_q, zeros, zeros), gaussian_kl(mu_q, logvar_q))


def test_log_prob_helpers_match_torch():
    g = gen(3)
    x, mean = torch.rand(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    log_std = torch.randn(5, 1, 4, 4, generator=g) * 0.5
    want = Normal(mean, log_std.exp()).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_log_prob(x, mean, log_std), want)
    # a per-channel (broadcast) log σ, as the learned-σ likelihood uses
    torch.testing.assert_close(gaussian_log_prob(x, mean, torch.tensor(-1.0).view(1, 1, 1, 1)),
                               Normal(mean, math.exp(-1.0)).log_prob(x).flatten(1).sum(1))
    logits = torch.randn(5, 1, 4, 4, generator=g) * 3
    binary = (x > 0.5).float()
    torch.testing.assert_close(bernoulli_log_prob(binary, logits), Bernoulli(logits=logits).log_prob(binary).flatten(1).sum(1))
    # pixels in [0, 1]: the same formula (cross-entropy), not a normalised density
    torch.testing.assert_close(bernoulli_log_prob(x, logits),
                               Bernoulli(logits=logits, validate_args=False).log_prob(x).flatten(1).sum(1))


# ---------------------------------------------------------------- bounds


def briefly_trained(name, digits, steps=150, **options):
    """``name`` after a few quick Adam steps, so q(z|x) is far from the prior and the bounds differ."""
    images, _, info = digits
    m = make(name, info, kl_warmup=0.0, **options)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(steps):
        index = torch.randint(len(images), (128,), generator=g)
        loss = m.loss(m.views(images[index], g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


@pytest.fixture(scope="module")
def trained_vae(digits):
    return briefly_trained("vae", digits)


def test_iwae_bound_tightens_with_k(trained_vae, digits):
    images, _, _ = digits
    x = images[:256].float() / 255
    nelbo = trained_vae.nelbo(x, generator=gen(1)).mean().item()
    iw = {k: trained_vae.iwae(x, k, generator=gen(2)).mean().item() for k in (1, 5, 50)}
    print(f"nelbo {nelbo:.2f}, iwae {iw}")
    assert all(math.isfinite(v) for v in [nelbo, *iw.values()])
    # K = 1 is the ELBO again (same expectation; one uses the MC KL, the other the closed form)
    assert abs(iw[1] - nelbo) < 0.02 * abs(nelbo) + 0.5
    # more samples, a tighter (smaller) bound on -log p(x), beyond MC noise
    assert iw[5] < iw[1] + 0.2 and iw[50] < iw[5] + 0.2
    assert iw[50] < nelbo - 0.1
    # chunking does not change the result
    small = trained_vae.iwae(x[:8], 50, generator=gen(4), max_rows=24)
    torch.testing.assert_close(small, trained_vae.iwae(x[:8], 50, generator=gen(4)))


@pytest.mark.parametrize("groups", [2, 3])
def test_hvae_iwae_at_least_elbo_and_tightens_with_k(digits, groups):
    m = briefly_trained("hvae", digits, steps=100, groups=groups)
    x = digits[0][:256].float() / 255
    nelbo = m.nelbo(x, generator=gen(1)).mean().item()
    iw = {k: m.iwae(x, k, generator=gen(2)).mean().item() for k in (1, 5, 50)}
    print(f"groups {groups}: nelbo {nelbo:.2f}, iwae {iw}")
    assert abs(iw[1] - nelbo) < 0.02 * abs(nelbo) + 0.5
    assert iw[5] < iw[1] + 0.2 and iw[50] < iw[5] + 0.2 and iw[50] < nelbo - 0.1


# ---------------------------------------------------------------- bounds against exact likelihoods
# Small models whose log p(x) is known exactly, built from the project's vae and hvae with their
# networks swapped for linear maps: the project's nelbo / iwae code (sampling, tiling, log-weights,
# log K, chunks) is what runs. Burda et al. 2016: E[−ELBO] ≥ E[−IWAE_K] ≥ E[−IWAE_K'] ≥ −log p(x) for
# K ≤ K', and −IWAE_K → −log p(x) as K grows.

D_X = 4  # a 1 x 2 x 2 image


class Flat(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)


class ToImage(torch.nn.Module):
    """A linear map z -> (N, channels, 2, 2): the location (and log-scale) of each of the 4 pixels."""

    def __init__(self, channels, weight, bias):
        super().__init__()
        self.channels, self.linear = channels, head(weight, bias)

    def forward(self, z):
        return self.linear(z).view(len(z), self.channels, 2, 2)


def head(weight, bias):
    """A float64 Linear with these weights: x -> (μ, log σ²) of a Gaussian."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def gaussian_head(mean_w, mean_b, logvar, g, shift=0.3):
    """x -> (μ = mean_w x + mean_b, log σ² = logvar) with random errors of about ``shift`` σ in μ (for unit
    inputs) and ``shift`` in log σ²: a valid Gaussian encoder near the posterior but not at it, so the
    bounds differ and IWAE still converges within a few thousand samples."""
    noise = lambda t: shift * torch.randn(t.shape, generator=g, dtype=torch.float64)  # noqa: E731
    sd = (0.5 * logvar).exp()
    weight = torch.cat([mean_w + sd[:, None] * noise(mean_w) / mean_w.shape[1] ** 0.5,
                        torch.zeros(len(logvar), mean_w.shape[1], dtype=torch.float64)])
    return head(weight, torch.cat([mean_b + sd * noise(mean_b), logvar + noise(logvar)]))


def exact_model(name, likelihood, info, seed=0):
    """(method, images x (3, 1, 2, 2), exact −log p(x) (3,)) for

    vae:  z ~ N(0, I) (two units with the Gaussian likelihood, one with the discretised)
    hvae: z_2 ~ N(0, 1), z_1 | z_2 ~ N(a z_2 + c, v), so z_1 ~ N(c, a² + v) (two scalar groups)
    likelihood "gaussian": p(x|z_1) = N(W z_1 + b, σ² I) in R⁴, p(x) = N(W E z_1 + b, W Cov(z_1) Wᵀ + σ² I);
    likelihood "discretized": the project's discretised logistic over 8-bit pixels (its log-scale floor
    included), location W z_1 + b, log-scale −2.5; p(x) = ∫ p(z_1) P(x|z_1) dz_1 by quadrature.
    The encoders are Gaussian and linear in x, set near the posterior of a linear-Gaussian model
    (the exact one for likelihood "gaussian", up to vae's diagonal) and then moved off it at random."""
    g = gen(seed)
    latent = 2 if (name, likelihood) == ("vae", "gaussian") else 1
    options = {"latent_dim": latent} if name == "vae" else {"latent_dim": 1, "top_dim": 1, "groups": 2}
    m = make(name, info, likelihood="discretized-logistic", **options).double().eval()
    gaussian = likelihood == "gaussian"
    w = torch.randn(D_X, latent, generator=g, dtype=torch.float64) * (0.8 if gaussian else 0.1)
    b = torch.randn(D_X, generator=g, dtype=torch.float64) * (0.5 if gaussian else 0.05) + (0 if gaussian else 0.5)
    sigma = 0.4 if gaussian else math.exp(-2.5) * math.pi / math.sqrt(3)  # the logistic's standard deviation
    # the likelihood as a factor of z: precision P = WᵀW/σ², P⁻¹Wᵀ(x − b)/σ² its mean
    precision = w.T @ w / sigma ** 2
    m.encoder = Flat()
    mean_z1, var_z1 = torch.zeros(latent, dtype=torch.float64), torch.eye(latent, dtype=torch.float64)
    if name == "vae":  # q ≈ N(0, I) × the factor
        cov = torch.linalg.inv(torch.eye(latent, dtype=torch.float64) + precision)
        m.to_code = gaussian_head(cov @ w.T / sigma ** 2, -cov @ w.T @ b / sigma ** 2, torch.diag(cov).log(), g)
    else:  # d_1 = the factor; d_2 = ∫ p(z_1 | z_2) d_1(z_1) dz_1 as a function of z_2
        v = 0.3
        a, c = 1.3, 0.4
        m.down = torch.nn.ModuleList([head(torch.tensor([[a], [0.0]], dtype=torch.float64),
                                           torch.tensor([c, math.log(v)], dtype=torch.float64))])
        mean_z1, var_z1 = torch.tensor([c], dtype=torch.float64), torch.tensor([[a * a + v]], dtype=torch.float64)
        factor_w, factor_b = torch.linalg.solve(precision, w.T) / sigma ** 2, -torch.linalg.solve(precision, w.T @ b) / sigma ** 2
        factor_var = 1 / precision[0]
        m.to_code = gaussian_head(factor_w, factor_b, factor_var.log(), g)
        m.up = torch.nn.ModuleList([torch.nn.Identity()])
        m.up_head = torch.nn.ModuleList([gaussian_head(factor_w / a, (factor_b - c) / a, ((v + factor_var) / a ** 2).log(), g)])
    if gaussian:
        m.decoder = ToImage(1, w, b)
        m.log_likelihood = lambda x, loc: gaussian_log_prob(x, loc, torch.tensor(math.log(sigma)))
        x = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
        marginal = torch.distributions.MultivariateNormal(w @ mean_z1 + b, w @ var_z1 @ w.T + sigma ** 2 * torch.eye(D_X))
        return m, x, -marginal.log_prob(x.flatten(1))
    log_scale = torch.full((D_X,), -2.5, dtype=torch.float64)
    m.decoder = ToImage(2, torch.cat([w, torch.zeros_like(w)]), torch.cat([b, log_scale]))
    x = torch.tensor([[100, 140, 120, 125], [90, 160, 128, 100], [110, 125, 131, 140]], dtype=torch.float64)
    x = x.view(3, 1, 2, 2) / 255
    # quadrature: p(x) = ∫ N(z; E z_1, Var z_1) P(x | z) dz on a fine grid ±12 standard deviations wide
    sd = var_z1.item() ** 0.5
    z = mean_z1.item() + sd * torch.linspace(-12, 12, 24001, dtype=torch.float64)
    log_prior = Normal(mean_z1.item(), sd).log_prob(z)
    params = m.decoder(z[:, None])
    log_joint = torch.stack([log_prior + m.log_likelihood(xi.expand(len(z), 1, 2, 2), params) for xi in x])
    dz = (z[1] - z[0]).item()
    return m, x, -(torch.logsumexp(log_joint, dim=1) + math.log(dz))


EXACT_MODELS = [("vae", "gaussian"), ("vae", "discretized"), ("hvae", "gaussian"), ("hvae", "discretized")]


def replicated(bound, x, reps):
    """``bound`` on ``reps`` copies of each image: (mean (P,), standard error (P,))."""
    values = bound(x.repeat(reps, 1, 1, 1)).view(reps, len(x))
    return values.mean(0), values.std(0) / math.sqrt(reps)


def test_linear_gaussian_vae_nelbo_is_the_closed_form_elbo(digits):
    """E_q[−log N(x; Wz + b, σ²I)] = −log N(x; Wμ + b, σ²I) + tr(W diag(s²) Wᵀ) / 2σ², plus KL(q ‖ p)."""
    m, x, _ = exact_model("vae", "gaussian", digits[2])
    mu, logvar = m.to_code(x.flatten(1)).chunk(2, dim=1)
    w, b, sigma = m.decoder.linear.weight, m.decoder.linear.bias, 0.4
    fit = Normal(mu @ w.T + b, sigma).log_prob(x.flatten(1)).sum(1)
    trace = (logvar.exp() * w.pow(2).sum(0)).sum(1) / (2 * sigma ** 2)
    kl = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(1)
    want = -fit + trace + kl
    mean, se = replicated(lambda xs: m.nelbo(xs, generator=gen(5)), x, 20_000)
    assert ((mean - want).abs() < 4 * se).all(), (mean, want, se)


@pytest.mark.parametrize("name,likelihood", EXACT_MODELS)
def test_bounds_bracket_the_exact_likelihood_and_iwae_converges_to_it(digits, name, likelihood):
    m, x, exact = exact_model(name, likelihood, digits[2])
    nelbo, nelbo_se = replicated(lambda xs: m.nelbo(xs, generator=gen(1)), x, 4000)
    assert (nelbo - exact > 0.05).all(), "the encoder should be off the posterior enough for the bounds to differ"
    previous, previous_se = nelbo, nelbo_se
    for k, reps in ((1, 4000), (10, 1000), (100, 300), (5000, 40)):
        iw, se = replicated(lambda xs: m.iwae(xs, k, generator=gen(k)), x, reps)
        print(f"{name}/{likelihood} K={k}: −IWAE {iw.tolist()} ± {se.tolist()}, exact {exact.tolist()}")
        margin = 4 * (se ** 2 + previous_se ** 2).sqrt()
        assert (iw <= previous + margin).all()  # −ELBO ≥ −IWAE_1 ≥ −IWAE_10 ≥ ... (in expectation)
        assert (iw >= exact - 4 * se).all()  # every one an upper bound on −log p(x)
        previous, previous_se = iw, se
    # K = 5,000: within Monte Carlo error of the exact value (its bias, Var(w)/2K p², is far smaller here)
    assert ((previous - exact).abs() < 4 * previous_se + 1e-3).all(), (previous, exact, previous_se)
    # and through the evaluation's density(), which reports the mean over the images
    d = density(m, x.repeat(10, 1, 1, 1), None, 5000)
    se = (previous_se.pow(2) * 40 / 10).sum().sqrt() / len(x)  # of the mean over 10 draws of each image
    assert d["iwae_nats"] == pytest.approx(exact.mean().item(), abs=4 * se.item() + 1e-3)


def test_free_bits_floor_each_group_kl_in_the_training_loss(digits):
    images, _, info = digits
    views = None
    for free_bits in (0.0, 1.5, 100.0):
        m = make("hvae", info, kl_warmup=0.0, free_bits=free_bits)
        views = views or m.views(images[:64], gen(0))
        out = m.loss(views)
        kls = [out["kl_z1"].item(), out["kl_z2"].item()]
        assert min(kls) < 1.5 < max(kls)  # one group either side of the middle floor
        want = out["recon"].item() + sum(max(free_bits, k) for k in kls)  # L = recon + Σ_i max(λ, E[KL_i])
        assert out["loss"].item() == pytest.approx(want, rel=1e-6)


def test_kl_warmup_is_linear_to_beta(digits):
    m = make("vae", digits[2], beta=2.0, kl_warmup=0.5)
    assert float(m.kl_weight) == 0.0
    m.after_optimizer_step(25, 100)
    assert float(m.kl_weight) == pytest.approx(1.0)
    m.after_optimizer_step(80, 100)
    assert float(m.kl_weight) == pytest.approx(2.0)


# ---------------------------------------------------------------- the data each likelihood sees


def test_default_views_dequantise_and_the_likelihood_is_of_the_uint8_level(digits):
    images, _, info = digits
    m = make("vae", info)
    assert m.likelihood_kind == "discretized-logistic" and m.density_spec == {"data": "8-bit",
                                                                             "likelihood": "discretized-logistic"}
    x, _, _ = m.views(images[:64], gen(0))
    k = images[:64].float()
    assert ((x >= k / 256) & (x < (k + 1) / 256)).all()  # x = (k + u) / 256, u ~ U[0, 1)
    assert x.sub(k / 256).mul(256).mean().item() == pytest.approx(0.5, abs=0.02)
    assert torch.equal(pixel_levels(x), k)
    # the decoder gives location and log-scale per pixel; its picture is the clipped location
    params = m.logits(torch.zeros(2, m.config.latent_dim), None)
    assert params.shape == (2, 2 * info.channels, 8, 8)
    torch.testing.assert_close(m.mean_image(params), params[:, :1].clamp(0, 1))
    # evaluation: the exact uint8 values x_uint8/255 fall in the same bins: same likelihood
    e = torch.zeros(64, m.config.latent_dim)
    h = m.encoder(k / 255)
    torch.testing.assert_close(m.elbo_terms(h, x, None, e)["log_px"], m.elbo_terms(h, k / 255, None, e)["log_px"])


def test_binarisation_static_and_dynamic(digits):
    images, _, info = digits
    grey = images[:256]
    static = make("vae", info, binarize="static")
    assert static.likelihood_kind == "bernoulli" and static.density_spec["data"] == "binarized"
    xs, _, _ = static.views(grey, gen(0))
    assert torch.equal(xs, (grey.float() / 255 > 0.5).float())  # the threshold, the same every time
    assert torch.equal(static.density_data(grey.float() / 255), xs)
    dynamic = make("vae", info, binarize="dynamic")
    a, b, c = (dynamic.views(grey, gen(s))[0] for s in (1, 1, 2))
    assert set(a.unique().tolist()) <= {0.0, 1.0} and torch.equal(a, b) and not torch.equal(a, c)
    draws = torch.stack([dynamic.views(grey, gen(s))[0] for s in range(200)])  # E[x] = pixel / 255
    torch.testing.assert_close(draws.mean(0), grey.float() / 255, atol=0.12, rtol=0)
    # the test set is binarised once, the same every time it is evaluated
    fixed = dynamic.density_data(grey.float() / 255)
    assert torch.equal(fixed, dynamic.density_data(grey.float() / 255)) and set(fixed.unique().tolist()) <= {0.0, 1.0}
    assert torch.isfinite(dynamic.nelbo(fixed)).all()


def test_bernoulli_on_grey_levels_is_refused_naming_binarize(digits):
    images, _, info = digits
    m = make("vae", info, likelihood="bernoulli")
    with pytest.raises(ReprlearnError, match="--binarize") as err:
        m.loss(m.views(images[:32], gen(0)))
    assert "\n" not in str(err.value)
    with pytest.raises(ReprlearnError, match="--binarize"):
        m.nelbo(images[:32].float() / 255)
    # binary data are fine without --binarize
    assert torch.isfinite(m.nelbo((images[:32].float() / 255 > 0.5).float())).all()
    with pytest.raises(ReprlearnError, match="--likelihood bernoulli"):
        make("vae", info, binarize="dynamic", likelihood="discretized-gaussian")


@pytest.mark.parametrize("name", VAES)
def test_log_scale_floor_lets_an_interior_bin_hold_almost_all_the_mass(digits, name):
    """The floor is PixelCNN++'s −7 on [−1, 1] carried to pixels in [0, 1] (−7 − ln 2): a pixel whose
    decoder asks for any smaller scale gets at most P(k) = σ(½w/s) − σ(−½w/s) at s = e^(−7 − ln 2),
    w = 1/256, centred in its bin: 0.973 (−7 on this scale would cap it at 0.790)."""
    m = make(name, digits[2])
    k = torch.tensor([17.0, 100.0, 254.0])  # interior levels; the edge bins 0 and 255 are open
    x = (k / 255).view(3, 1, 1, 1)
    centre = ((k + 0.5) / 256).view(3, 1, 1, 1)
    params = torch.cat([centre, torch.full_like(centre, -20.0)], dim=1)  # far below any floor
    p = m.log_likelihood(x, params).double().exp()
    with mpmath.workdps(30):
        half = 1 / (2 * 256 * mpmath.exp(-7 - mpmath.log(2)))
        cap = float(1 / (1 + mpmath.exp(-half)) - 1 / (1 + mpmath.exp(half)))
    assert cap == pytest.approx(0.9728, abs=1e-4)
    torch.testing.assert_close(p, torch.full_like(p, cap), rtol=1e-5, atol=0)


def test_discretised_likelihood_is_computed_in_float32_from_half_precision_params(digits):
    images, _, info = digits
    m = make("vae", info)
    x = images[:16].float() / 255
    params = m.logits(torch.randn(16, m.config.latent_dim, generator=gen(0)), None).detach().bfloat16()
    # the decoder's output under bf16 autocast; bf16 holds 8 significant bits, so a bin edge
    # near 0.5 computed in it would be off by half a bin (x stays float32: autocast casts no inputs)
    got = m.log_likelihood(x, params)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, m.log_likelihood(x, params.float()))


@pytest.mark.parametrize("likelihood", ["discretized-logistic", "discretized-gaussian"])
def test_discretised_likelihoods_train(digits, likelihood):
    images, _, info = digits
    m = make("vae", info, likelihood=likelihood)
    out = m.loss(m.views(images[:32], gen(0)))
    out["loss"].backward()
    grads = [p.grad for p in m.decoder.parameters()]
    assert torch.isfinite(out["loss"]) and all(g is not None and torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------- hvae, cvae, reparameterisation


def test_hvae_kl_per_group_nonnegative_and_finite(digits):
    images, _, info = digits
    m = make("hvae", info).eval()
    x = images[:64].float() / 255
    groups = m.kl_per_group(x)
    assert set(groups) == {"z1", "z2"}
    assert all(math.isfinite(v) and v >= 0 for v in groups.values())
    terms = m.loss(m.views(images[:64], gen(0)))
    assert {"kl_z1", "kl_z2"} <= set(terms) and terms["kl_z1"] >= 0 and terms["kl_z2"] >= 0
    assert m.sample(6, generator=gen(0)).shape == (6, 1, 8, 8)
    assert m.encode(x).shape == (64, m.config.latent_dim)
    iw, nelbo = m.iwae(x, 5, generator=gen(1)), m.nelbo(x, generator=gen(2))
    assert iw.shape == nelbo.shape == (64,) and torch.isfinite(iw).all()
    assert iw.mean() <= nelbo.mean() * 1.01 + 1  # the joint (z1, z2) bound is no looser than the ELBO


def test_precision_weighted_is_the_normalised_product_of_the_two_gaussians():
    mu_p, logvar_p = random_gaussians(seed=5)
    mu_d, logvar_d = random_gaussians(seed=6)
    mu, logvar = precision_weighted(mu_p, logvar_p, mu_d, logvar_d)
    var = 1 / (1 / logvar_p.exp() + 1 / logvar_d.exp())  # the formula, naively
    torch.testing.assert_close(logvar, var.log())
    torch.testing.assert_close(mu, var * (mu_p / logvar_p.exp() + mu_d / logvar_d.exp()))
    # N(μ_p, σ_p²) N(μ_d, σ_d²) / N(μ, σ²) does not depend on z: the product is that Gaussian, up to its constant
    std = lambda lv: (0.5 * lv).exp()  # noqa: E731
    z = torch.randn(7, *mu.shape, dtype=torch.float64, generator=gen(7)) * 3
    ratio = Normal(mu_p, std(logvar_p)).log_prob(z) + Normal(mu_d, std(logvar_d)).log_prob(z) \
        - Normal(mu, std(logvar)).log_prob(z)
    torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))


def uninformative(m, log_var=80.0):
    """Make every bottom-up factor d_i flat: μ̂ = 0, log σ̂² = ``log_var``, whatever x."""
    with torch.no_grad():
        for head in [m.to_code, *m.up_head]:
            head.weight.zero_()
            head.bias.zero_()
            head.bias[head.out_features // 2:] = log_var
    return m


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_hvae_posterior_is_the_prior_when_the_bottom_up_says_nothing(digits, groups):
    images, _, info = digits
    m = uninformative(make("hvae", info, groups=groups))
    x = images[:16].float() / 255
    eps = torch.randn(16, m.noise_dim, generator=gen(0))
    layers = m.top_down(m.encoder(x), eps)
    assert len(layers) == groups
    for g in layers:
        torch.testing.assert_close(g["mu_q"], g["mu_p"], atol=1e-6, rtol=0)
        torch.testing.assert_close(g["logvar_q"], g["logvar_p"], atol=1e-6, rtol=0)
    assert layers[0]["mu_p"].abs().max() == 0  # the top group's prior is N(0, I)
    kl = m.elbo_terms(m.encoder(x), x, None, eps)
    assert all(kl[f"kl_z{i}"].abs().max() < 1e-4 for i in range(1, groups + 1))


def test_hvae_closed_form_kl_per_group_matches_monte_carlo(digits):
    images, _, info = digits
    m = make("hvae", info, groups=3)
    x = images[:2].float() / 255
    h, eps = m.encoder(x), torch.randn(2, m.noise_dim, generator=gen(0))
    with torch.no_grad():
        layers, terms = m.top_down(h, eps), m.elbo_terms(h, x, None, eps)
    assert set(m.kl_per_group(x)) == {"z1", "z2", "z3"}
    for i, g in zip((3, 2, 1), layers):  # top_down runs z_3, z_2, z_1; p(z_i|z_{i+1}) at the sampled z_{i+1}
        q = Normal(g["mu_q"].double(), (0.5 * g["logvar_q"]).exp().double())
        p = Normal(g["mu_p"].double(), (0.5 * g["logvar_p"]).exp().double())
        z = q.sample((100_000,))
        mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)  # E_q[log q − log p]
        assert terms[f"kl_z{i}"].min() > 0.05  # q is not the prior here: a real comparison
        torch.testing.assert_close(terms[f"kl_z{i}"].double(), mc, rtol=0.03, atol=0.02)
    torch.testing.assert_close(terms["kl"], terms["kl_z1"] + terms["kl_z2"] + terms["kl_z3"])


def test_cvae_samples_per_class(digits):
    images, labels, info = digits
    m = make("cvae", info).eval()
    per_class = [m.sample(4, torch.full((4,), c), generator=gen(0)) for c in range(info.num_classes)]
    assert all(s.shape == (4, 1, 8, 8) and 0 <= s.min() and s.max() <= 1 for s in per_class)
    # the same z, another class: another image
    assert all((per_class[0] - s).abs().mean() > 1e-3 for s in per_class[1:])
    x = images[:16].float() / 255
    assert m.nelbo(x, labels[:16]).shape == (16,)
    for hook in (lambda: m.sample(4), lambda: m.nelbo(x), lambda: m.reconstruct(x)):
        with pytest.raises(ReprlearnError, match="cvae needs labels"):
            hook()


@pytest.mark.parametrize("name", VAES)
def test_reparameterisation_reproducible_with_generator(digits, name):
    images, labels, info = digits
    m = make(name, info)
    batch = (images[:32], labels[:32]) if m.needs_labels else (images[:32],)
    views = lambda seed: m.views(batch[0], gen(seed), *batch[1:])  # noqa: E731
    a, b, c = views(5), views(5), views(6)
    torch.testing.assert_close(a[2], b[2])
    assert not torch.equal(a[2], c[2])
    torch.testing.assert_close(m.loss(a)["loss"], m.loss(b)["loss"])


@pytest.mark.parametrize("name", VAES)
def test_smoke(tmp_path, name):
    run = reprlearn.train(name, out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_cvae_default_samples_follow_their_class(tmp_path):
    """The default cvae (8-bit data, discretised logistic) after its full default schedule: a
    logistic regression trained on real digits calls its samples the class asked for."""
    from sklearn.linear_model import LogisticRegression

    from reprlearn.api import load_method
    from reprlearn.data import load_source

    run = reprlearn.train("cvae", out=tmp_path / "r", eval=False, progress=False)
    m = load_method(run)[0].eval()
    train = load_source("digits")
    clf = LogisticRegression(max_iter=2000).fit(train.tensor().float().flatten(1).numpy() / 255, train.labels)
    y = torch.arange(10).repeat_interleave(50)
    samples = m.sample(len(y), labels=y, generator=gen(0)).flatten(1).numpy()
    assert (clf.predict(samples) == y.numpy()).mean() > 0.9  # 0.978 measured (README)
