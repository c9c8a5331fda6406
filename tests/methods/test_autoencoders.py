"""Deterministic autoencoder variants: their penalties against the formulas, and what each is known to do."""

import math

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles
from torch import nn

import reprlearn
from reprlearn.data.run_data import load_run_data
from fakedata import assert_loss_went_down
from reprlearn import api, losses
from reprlearn.errors import ReprlearnError
from reprlearn.methods.autoencoder import reconstruction_error
from reprlearn.nets.mlp import LinearBackbone

AE_METHODS = ["sparse-ae", "denoising-ae", "contractive-ae", "robust-ae"]


def build(name, **options):
    cfg, method_cfg = api.resolve_config(name, options)
    data = load_run_data(cfg, captions=False)
    train, test = data.train, data.eval
    method = api.build_method(cfg, method_cfg, api.data_info(train))
    return method, train.tensor(), test.tensor()


def small_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


# ---------------------------------------------------------------- pure penalties


def naive_kl_sparsity(h, rho, eps=1e-6):
    total = 0.0
    n, d = h.shape
    for j in range(d):
        r = min(max(sum(float(h[i, j]) for i in range(n)) / n, eps), 1 - eps)
        total += rho * math.log(rho / r) + (1 - rho) * math.log((1 - rho) / (1 - r))
    return total


@pytest.mark.parametrize("n,d,rho", [(1, 3, 0.05), (7, 4, 0.1), (16, 9, 0.5)])
def test_kl_sparsity_matches_formula(n, d, rho):
    h = torch.sigmoid(torch.randn(n, d, generator=torch.Generator().manual_seed(n * d)) * 2)
    assert losses.kl_sparsity(h, rho=rho).item() == pytest.approx(naive_kl_sparsity(h, rho), rel=1e-5)
    assert losses.kl_sparsity(torch.full((4, 3), 0.2), rho=0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isfinite(losses.kl_sparsity(torch.zeros(4, 3), rho=0.05).item())  # dead units: finite


def test_penalties_gradcheck():
    g = torch.Generator().manual_seed(0)
    h = torch.sigmoid(torch.randn(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: losses.kl_sparsity(a, rho=0.1), (h,))
    assert torch.autograd.gradcheck(losses.l1_sparsity, (h,))
    x = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(5, 6, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(3, 5, generator=g, dtype=torch.float64)

    def encode(inp, w):
        return torch.tanh(inp @ w.T) @ w2.T

    # differentiable in the input and in the encoder's parameters
    assert torch.autograd.gradcheck(lambda a, w: losses.contractive_penalty_exact(lambda z: encode(z, w), a), (x, w1))
    assert torch.autograd.gradcheck(  # the same projections on every call: a fresh seeded generator
        lambda a, w: losses.contractive_penalty_estimate(lambda z: encode(z, w), a, 3, torch.Generator().manual_seed(1)),
        (x, w1))


def test_contractive_exact_matches_hand_built_jacobian():
    mlp = small_mlp()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = 0.0
    for i in range(len(x)):
        xi = x[i:i + 1].clone().requires_grad_()
        out = mlp(xi)[0]
        rows = [torch.autograd.grad(out[k], xi, retain_graph=True)[0] for k in range(out.numel())]
        want += torch.cat(rows).pow(2).sum().item()  # ‖J_i‖_F²
    assert losses.contractive_penalty_exact(mlp, x).item() == pytest.approx(want / len(x), rel=1e-10)


def test_contractive_estimate_is_unbiased():
    mlp = small_mlp(1)
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = losses.contractive_penalty_exact(mlp, x).item()
    est = losses.contractive_penalty_estimate(mlp, x, num_projections=2000, generator=torch.Generator().manual_seed(4))
    assert est.item() == pytest.approx(exact, rel=0.04)
    one = losses.contractive_penalty_estimate(mlp, x, generator=torch.Generator().manual_seed(5))
    assert one.item() != pytest.approx(exact, rel=1e-6)  # a single projection is noisy, yet works


# ---------------------------------------------------------------- known facts


def train_linear_ae(k, steps, seed=0):
    """reprlearn's own ``ae --linear`` (backbone linear, MSE), full-batch Adam on the digits training set."""
    torch.manual_seed(seed)
    method, train, _ = build("ae", backbone="linear", linear=True, recon="mse", latent_dim=k)
    x = method.views(train, None)
    opt = torch.optim.Adam(method.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 1438 x 64 matmuls: threads only add overhead on a shared machine
    try:
        for _ in range(steps):
            loss = method.loss(x)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    return method, x.flatten(1)


def principal_angles_to_pca(decoder_weight, x, k):
    """Principal angles (degrees) between the decoder's column span and the top-k principal directions."""
    centred = (x - x.mean(0)).double().numpy()
    top = np.linalg.svd(centred, full_matrices=False)[2][:k].T  # (64, k) principal directions
    return np.degrees(subspace_angles(decoder_weight.detach().double().numpy(), top))


def test_linear_autoencoder_learns_the_pca_subspace():
    """A linear AE with MSE spans the top-k principal subspace (Baldi & Hornik 1989)."""
    k = 5
    method, x = train_linear_ae(k, 1200)
    w = method.decoder.linear.weight  # (64, k): x̂ = W z + b
    assert w.shape == (64, k) and isinstance(method.encoder.backbone, LinearBackbone)
    assert principal_angles_to_pca(w, x, k).max() < 2  # 0.14 degrees after 1200 steps
    # untrained, the same decoder is far from it
    untrained, _ = train_linear_ae(k, 0)
    assert principal_angles_to_pca(untrained.decoder.linear.weight, x, k).max() > 45


@pytest.mark.parametrize("options,message", [({"recon": "bce"}, "--recon mse"),
                                             ({"backbone": "cnn"}, "--backbone linear")])
def test_linear_autoencoder_refuses_a_nonlinear_setup(options, message):
    with pytest.raises(ReprlearnError) as err:
        build("ae", **{"backbone": "linear", "linear": True, "recon": "mse", **options})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_sparse_ae_reaches_its_target_rate():
    rho = 0.05
    method, train, test = build("sparse-ae", sparsity_target=rho)
    opt = torch.optim.AdamW(method.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        batch = train[torch.randint(len(train), (128,), generator=g)]
        loss = method.loss(method.views(batch, g))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    method.eval()
    with torch.no_grad():
        h = method.encode(test.float() / 255)
    assert h.mean().item() == pytest.approx(rho, abs=0.03)
    assert (h.mean(0) < 0.2).float().mean() > 0.9  # the rate is each unit's, not only the average


# ---------------------------------------------------------------- corruptions and attacks


@pytest.mark.parametrize("noise", ["gaussian", "masking"])
def test_denoising_views(noise):
    method, train, _ = build("denoising-ae", noise=noise, mask_prob=0.3)
    images = torch.full((64, 1, 8, 8), 200, dtype=torch.uint8)
    clean, noisy = method.views(images, torch.Generator().manual_seed(7))
    _, again = method.views(images, torch.Generator().manual_seed(7))
    _, other = method.views(images, torch.Generator().manual_seed(8))
    assert torch.equal(noisy, again) and not torch.equal(noisy, other)
    assert torch.equal(clean, images.float() / 255) and not torch.equal(noisy, clean)
    assert noisy.min() >= 0 and noisy.max() <= 1
    if noise == "masking":
        assert (noisy == 0).float().mean().item() == pytest.approx(0.3, abs=0.03)
    terms = method.loss((clean, noisy))
    assert set(terms) == {"loss", "recon"}


def test_robust_attack_stays_in_the_ball_and_hurts():
    eps = 0.1
    method, train, _ = build("robust-ae", epsilon=eps, pgd_steps=3)
    x, delta0 = method.views(train[:128], torch.Generator().manual_seed(0))
    assert delta0.abs().max() <= eps + 1e-6 and delta0.abs().max() > eps / 2
    method.eval()
    delta = method.attack(x, delta0)
    assert delta.abs().max() <= eps + 1e-6 and delta.abs().max() > 0
    assert (x + delta).min() >= 0 and (x + delta).max() <= 1
    assert all(p.grad is None for p in method.parameters())  # the attack leaves no parameter gradients
    with torch.no_grad():
        clean = reconstruction_error(method.decode(method.encode(x)), x, "bce").mean()
        attacked = reconstruction_error(method.decode(method.encode(x + delta)), x, "bce").mean()
        start = reconstruction_error(method.decode(method.encode(x + delta0)), x, "bce").mean()
    assert attacked > clean and attacked > start
    method.train()
    assert set(method.loss((x, delta0))) == {"loss", "recon", "recon_clean"}


def test_contractive_modes_agree_and_keep_train_mode():
    method, train, _ = build("contractive-ae", jacobian="exact")
    x = train[:8].float() / 255
    exact = method.jacobian_penalty(x)
    assert method.encoder.training  # the penalty uses eval mode and puts the encoder back
    method.config.jacobian = "estimate"
    method.config.projections = 128
    est = method.jacobian_penalty(x, torch.Generator().manual_seed(0))
    assert est.item() == pytest.approx(exact.item(), rel=0.15)
    method.config.jacobian = "auto"
    assert not method.use_exact()  # 32 x 64 entries on digits
    method.config.latent_dim = 16
    assert method.use_exact()


# ---------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", AE_METHODS)
def test_smoke(name, tmp_path):
    run = reprlearn.train(name, out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    features = api.embed(run, "digits:test")
    assert features.shape[0] > 0 and np.isfinite(features).all()
