"""flow (RealNVP): the inverse and log-determinant against autograd's Jacobian in float64; squeeze
against a hand-written loop; the discrete likelihood over a tiny space (2x2 images, 3 levels):
the K-draw estimate of P(k) sums to 1 over all 81 images, and exp(−nelbo) (one draw, Jensen) to
at most 1; and the refusals."""

import itertools
import math

import pytest
import torch

from fakedata import one_line_error
from reprlearn.api import build_method, data_info, resolve_config
from reprlearn.data.run_data import load_run_data
from reprlearn.nets.realnvp import RealNVP, squeeze, unsqueeze


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one intra-op thread


def randomised(net: RealNVP, std: float = 0.3) -> RealNVP:
    """Non-trivial weights everywhere (the couplings start as the identity, actnorm at zero)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


def test_squeeze_matches_a_loop_and_inverts():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).view(2, 3, 4, 4)
    s = squeeze(x)
    for n, c, i, j, di, dj in itertools.product(range(2), range(3), range(2), range(2), range(2), range(2)):
        assert s[n, c * 4 + di * 2 + dj, i, j] == x[n, c, 2 * i + di, 2 * j + dj]
    assert torch.equal(unsqueeze(s), x)


@pytest.mark.parametrize("channels,size,squeezes", [(1, 4, 1), (2, 4, 1), (1, 8, 2)])
def test_inverse_and_logdet_against_autograd_jacobian(channels, size, squeezes):
    net = randomised(RealNVP(channels, size, hidden=8, squeezes=squeezes)).double().eval()
    y = torch.rand(1, channels, size, size, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 0.9 + 0.05
    z, logdet = net.transform(y)
    assert torch.allclose(net.inverse(z), y, atol=1e-10)
    jac = torch.autograd.functional.jacobian(lambda v: net.transform(v.view_as(y))[0][0], y.flatten())
    sign, ref = torch.linalg.slogdet(jac)
    assert sign.item() == 1.0
    assert logdet.item() == pytest.approx(ref.item(), abs=1e-8)


def test_actnorm_initialises_to_standardised_channels():
    net = RealNVP(1, 8, hidden=8).train()
    y = torch.rand(64, 1, 8, 8)
    h, _ = net.preprocess(y)
    out, _ = net.scales[0][0][0](h)  # the first actnorm, on its first batch
    assert out.mean().abs().item() < 1e-5 and out.std().item() == pytest.approx(1.0, abs=1e-3)


def tiny_flow(levels: int):
    cfg, method_cfg = resolve_config("flow", {"data": "digits"})
    from reprlearn.methods import DataInfo

    info = DataInfo(channels=1, image_size=2, num_classes=2, mean=[0.5], std=[0.3])
    torch.manual_seed(0)
    method = build_method(cfg, method_cfg, info)
    # weights of std 0.1: at 0.3 the density is so peaked that 1000 uniform draws per bin miss its mass
    method.encoder.backbone = randomised(RealNVP(1, 2, hidden=8, squeezes=1), std=0.1).double()
    method.levels = levels
    return method.double().eval()


def test_discrete_likelihood_sums_to_one_over_a_tiny_space():
    """2x2 images, 3 levels: P(k) = ∫_bin p = 3^−4 E_u p((k + u)/3). Its K-draw estimate (iwae, which the
    method reports) summed over all 81 images is a Monte Carlo integral of p over (0, 1)^4: ≈ 1. One draw
    per image gives −log of a lower bound (Jensen): Σ exp(−nelbo) ≤ Σ P ≈ 1, strictly less here."""
    levels = 3
    method = tiny_flow(levels)
    images = torch.tensor(list(itertools.product(range(levels), repeat=4)), dtype=torch.float64).view(-1, 1, 2, 2)
    g = torch.Generator().manual_seed(0)
    k = 1000
    nll = method.discrete_nll(images, k, g)
    total = torch.exp(-nll).sum().item()
    # the standard error of the sum: each image's estimate is a mean of k draws of 3^-4 p(y)
    tiled = images.repeat(200, 1, 1, 1)
    draws = (method.log_density((tiled + torch.rand(tiled.shape, generator=g, dtype=torch.float64)) / levels).exp()
             / levels ** 4).view(200, -1)
    se = math.sqrt((draws.var(0) / k).sum().item())
    print(f"sum of P over the 81 images {total:.4f} ± {se:.4f}")
    assert total == pytest.approx(1.0, abs=max(5 * se, 1e-3)), (total, se)
    one_draw = method.discrete_nll(images.repeat(100, 1, 1, 1), 1, g).view(100, -1)  # 100 one-draw bounds each
    assert torch.exp(-one_draw.mean(0)).sum().item() < total - 10 * se  # exp(−E[−log p]) ≤ E[p] (Jensen)


def test_flow_evaluation_hooks_on_digits():
    cfg, method_cfg = resolve_config("flow", {})
    train = load_run_data(cfg, captions=False).train
    info = data_info(train)
    torch.manual_seed(0)
    method = build_method(cfg, method_cfg, info).eval()
    x = train.tensor()[:16].float() / 255
    assert method.encoder.mean.abs().max() == 0 and (method.encoder.std == 1).all()
    assert torch.allclose(method.reconstruct(x), (train.tensor()[:16].float() + 0.5) / 256, atol=1e-4)
    nelbo, iwae = method.nelbo(x, generator=torch.Generator().manual_seed(0)), method.iwae(x, 20)
    assert (iwae <= nelbo + 1.0).all()  # K draws tighten (up to one draw's noise)
    s = method.sample(4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 8, 8) and s.min() >= 0 and s.max() <= 1
    assert method.encoder(x).shape == (16, 64)


def test_flow_refuses_other_backbones():
    cfg, method_cfg = resolve_config("flow", {"backbone": "cnn"})
    cfg2, _ = resolve_config("flow", {})
    info = data_info(load_run_data(cfg2, captions=False).train)
    one_line_error(lambda: build_method(cfg, method_cfg, info), "realnvp")


def test_one_epoch_run_evaluates_its_likelihood(tmp_path):
    """Train and evaluate through the harness: bits/dim of the K-draw bound, below the one-draw one."""
    import json

    import reprlearn

    run = reprlearn.train("flow", out=tmp_path / "r", epochs=2, progress=False)
    result = json.loads((run / "eval.json").read_text())
    assert result["density"]["data"] == "8-bit" and result["iwae_k"] == 50
    assert result["iwae_nats"] < result["nelbo_nats"]
    assert result["bits_per_dim"] == pytest.approx(result["iwae_nats"] / (64 * math.log(2)))
    assert result["kl_per_group"] == {} and (run / "samples.png").is_file()
