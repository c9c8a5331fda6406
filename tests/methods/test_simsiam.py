"""SimSiam: the negative cosine against its formula, the stop-gradient, no momentum encoder, a smoke run."""

import math

import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import simsiam_loss
from reprlearn.methods import DataInfo

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def test_simsiam_loss_matches_formula_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    naive = -sum(sum(a * b for a, b in zip(pi, zi)) / (math.hypot(*pi) * math.hypot(*zi))
                 for pi, zi in zip(p.tolist(), z.tolist())) / 6
    assert float(simsiam_loss(p, z)) == pytest.approx(naive, rel=1e-12)
    assert float(simsiam_loss(p, 2 * p)) == pytest.approx(-1.0) and float(simsiam_loss(p, -p)) == pytest.approx(1.0)
    assert torch.autograd.gradcheck(lambda x: simsiam_loss(x, z), (p.clone().requires_grad_(True),))


def test_stop_gradient_and_its_ablation():
    g = torch.Generator().manual_seed(1)
    p, z = torch.randn(4, 3, generator=g, requires_grad=True), torch.randn(4, 3, generator=g, requires_grad=True)
    simsiam_loss(p, z).backward()
    assert p.grad is not None and z.grad is None
    simsiam_loss(p, z, stop_gradient=False).backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_no_momentum_encoder_and_symmetrised_loss():
    cfg, mcfg = resolve_config("simsiam", {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 4})
    method = build_method(cfg, mcfg, INFO)
    names = {n.split(".")[0] for n, _ in method.named_parameters()}
    assert names == {"encoder", "projector", "predictor"}  # one network, no EMA copy
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    x_a, x_b = method.views(images, torch.Generator().manual_seed(0))
    terms = method.loss((x_a, x_b))
    z_a, z_b = method.projector(method.encoder(x_a)), method.projector(method.encoder(x_b))
    p_a, p_b = method.predictor(z_a), method.predictor(z_b)
    want = -0.5 * (torch.cosine_similarity(p_a, z_b).mean() + torch.cosine_similarity(p_b, z_a).mean())
    torch.testing.assert_close(terms["loss"], want)


def test_simsiam_smoke(tmp_path):
    run = reprlearn.train("simsiam", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
