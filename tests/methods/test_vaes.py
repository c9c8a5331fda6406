"""The VAE family (vae, cvae, hvae): the density helpers against torch.distributions and
Monte Carlo, the IWAE bound against the ELBO, the per-group KLs, conditional sampling,
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
from reprlearn.losses import bernoulli_log_prob, gaussian_kl, gaussian_kl_between, gaussian_log_prob

VAES = ("vae", "cvae", "hvae")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two OpenMP threads spin against
    other processes and a training step gets ~30x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    cfg, _ = resolve_config("vae", {})
    train = load_run_data(cfg, paired=False).train
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


@pytest.fixture(scope="module")
def trained_vae(digits):
    """A vae after 150 quick Adam steps, so q(z|x) is far from the prior and the bounds differ."""
    images, _, info = digits
    m = make("vae", info, kl_warmup=0.0)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = gen(0)
    for _ in range(150):
        index = torch.randint(len(images), (128,), generator=g)
        loss = m.loss(m.views(images[index], g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


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


def test_kl_warmup_is_linear_to_beta(digits):
    m = make("vae", digits[2], beta=2.0, kl_warmup=0.5)
    assert float(m.kl_weight) == 0.0
    m.after_optimizer_step(25, 100)
    assert float(m.kl_weight) == pytest.approx(1.0)
    m.after_optimizer_step(80, 100)
    assert float(m.kl_weight) == pytest.approx(2.0)


def test_gaussian_likelihood_learns_sigma(digits):
    images, _, info = digits
    m = make("vae", info, likelihood="gaussian", sigma="learned")
    assert m.likelihood_kind == "gaussian" and m.log_sigma.shape == (info.channels,)
    out = m.loss(m.views(images[:32], gen(0)))
    out["loss"].backward()
    assert m.log_sigma.grad is not None and torch.isfinite(out["loss"])
    fixed = make("vae", info, likelihood="gaussian", sigma="fixed", sigma_value=0.1)
    assert not hasattr(fixed, "log_sigma") and torch.isfinite(fixed.nelbo(images[:32].float() / 255)).all()


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
