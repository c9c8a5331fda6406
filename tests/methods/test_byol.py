"""BYOL: the loss against its formula, stop-gradient, the EMA target and a smoke run."""

import math

import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import byol_loss
from reprlearn.methods import DataInfo
from reprlearn.methods.momentum import cosine_momentum, ema_update, momentum_copy

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def small_byol(**options):
    cfg, mcfg = resolve_config("byol", {"proj_hidden": 32, "proj_dim": 16, **options})
    return build_method(cfg, mcfg, INFO)


def test_byol_loss_matches_naive_formula():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    naive = 0.0
    for i in range(6):
        dot = sum(float(p[i, d]) * float(z[i, d]) for d in range(5))
        norm_p = math.sqrt(sum(float(p[i, d]) ** 2 for d in range(5)))
        norm_z = math.sqrt(sum(float(z[i, d]) ** 2 for d in range(5)))
        naive += 2 - 2 * dot / (norm_p * norm_z)
    assert abs(float(byol_loss(p, z)) - naive / 6) < 1e-5
    # equal directions give 0, opposite give 4
    assert float(byol_loss(p, 3 * p)) < 1e-6
    assert abs(float(byol_loss(p, -p)) - 4.0) < 1e-5


def test_byol_loss_stops_gradient_at_z():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 3, generator=g, requires_grad=True)
    z = torch.randn(4, 3, generator=g, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0
    assert z.grad is None


def test_byol_loss_gradcheck_wrt_p():
    g = torch.Generator().manual_seed(2)
    p = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: byol_loss(x, z), (p,))


def test_ema_update_by_hand():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    teacher = momentum_copy(student)
    with torch.no_grad():
        for q in teacher.parameters():
            q.add_(torch.randn_like(q))
    student(torch.randn(5, 3))  # moves the student's BN statistics
    before = [q.clone() for q in teacher.parameters()]
    m = 0.7
    ema_update(teacher, student, m)
    for t0, t1, s in zip(before, teacher.parameters(), student.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)
        assert not t1.requires_grad
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(tb, sb)


def test_cosine_momentum_schedule():
    base, total = 0.99, 100
    values = [cosine_momentum(s, total, base) for s in range(total + 1)]
    assert abs(values[0] - base) < 1e-12
    assert abs(values[-1] - 1.0) < 1e-12
    assert abs(values[50] - (base + 1) / 2) < 1e-12
    assert all(b >= a for a, b in zip(values, values[1:]))


def test_target_gets_no_gradients_and_moves_by_ema():
    method = small_byol(ema_momentum=0.5)
    images = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
    views = method.views(images, torch.Generator().manual_seed(0))
    terms = method.loss(views)
    terms["loss"].backward()
    assert all(q.grad is None and not q.requires_grad for q in method.target.parameters())
    assert any(q.grad is not None for q in method.encoder.parameters())
    assert any(q.grad is not None for q in method.predictor.parameters())
    before = [q.clone() for q in method.target.parameters()]
    online = list(method.encoder.parameters()) + list(method.projector.parameters())
    with torch.no_grad():
        for q in online:
            q.add_(1.0)
    method.after_optimizer_step(0, 10)  # step 0: momentum = ema_momentum
    for t0, t1, s in zip(before, method.target.parameters(), online):
        torch.testing.assert_close(t1, 0.5 * t0 + 0.5 * s)


def test_byol_smoke(tmp_path):
    run = reprlearn.train("byol", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "config.yaml").is_file()
