"""The VAE family (vae, cvae, hvae): the density helpers against torch.distributions and
Monte Carlo, the IWAE bound against the ELBO, the data each likelihood sees (dequantised
8-bit or binarised) and the refusals, the Ladder-VAE posterior (prior when d_i says
nothing; closed-form KL per group against Monte Carlo), conditional sampling,
reproducible reparameterisation, and a 1-epoch run of each method."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, data_info, resolve_config
from reprlearn.data.run_data import load_run_data
from reprlearn.errors import ReprlearnError
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
