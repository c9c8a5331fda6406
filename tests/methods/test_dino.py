"""DINO: centring/sharpening arithmetic, pair exclusion, centre EMA, τ_t schedule, no teacher grads, smoke runs."""

import math

import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import dino_loss
from reprlearn.methods import DataInfo
from reprlearn.methods.dino import teacher_temperature, update_center

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def small_dino(**options):
    cfg, mcfg = resolve_config("dino", {"out_dim": 16, "head_hidden": 32, "bottleneck_dim": 8, "n_local": 2, **options})
    return build_method(cfg, mcfg, INFO)


def _softmax(row, temp):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _cross_entropy_by_hand(student, teacher, center, ts, tt):
    """student: V lists of N rows of K; teacher: G lists; plain python loops from the formula."""
    total, pairs = 0.0, 0
    for g, t_view in enumerate(teacher):
        for v, s_view in enumerate(student):
            if v == g:
                continue
            ce = 0.0
            for t_row, s_row in zip(t_view, s_view):
                q = _softmax([t - c for t, c in zip(t_row, center)], tt)
                p = _softmax(s_row, ts)
                ce += -sum(qk * math.log(pk) for qk, pk in zip(q, p))
            total += ce / len(t_view)
            pairs += 1
    return total / pairs


def test_dino_loss_tiny_example_by_hand():
    # 2 global views + 1 local view, batch of 2, 3 prototypes
    s = [[[0.2, -0.1, 0.4], [1.0, 0.0, -0.5]],
         [[-0.3, 0.6, 0.1], [0.2, 0.2, 0.9]],
         [[0.5, 0.5, -0.2], [-0.7, 0.1, 0.3]]]
    t = [[[0.9, -0.2, 0.1], [0.0, 0.3, 0.2]],
         [[-0.1, 0.4, 0.5], [0.6, -0.6, 0.0]]]
    c = [0.1, -0.05, 0.2]
    got = dino_loss([torch.tensor(v) for v in s], [torch.tensor(v) for v in t], torch.tensor(c), 0.1, 0.04)
    want = _cross_entropy_by_hand(s, t, c, 0.1, 0.04)
    assert abs(float(got) - want) < 1e-4
    # with 2 globals and 1 local there are 2*3 - 2 = 4 pairs; including the same-view pairs changes the value
    with_same = _cross_entropy_by_hand(s, t, c, 0.1, 0.04) * 4
    for g in range(2):
        q_rows = [_softmax([a - b for a, b in zip(r, c)], 0.04) for r in t[g]]
        p_rows = [_softmax(r, 0.1) for r in s[g]]
        with_same += sum(-sum(q * math.log(p) for q, p in zip(qr, pr)) for qr, pr in zip(q_rows, p_rows)) / 2
    assert abs(with_same / 6 - float(got)) > 1e-3


def test_dino_loss_excludes_the_same_view():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(4, 5, generator=g) for _ in range(3)]
    t = [torch.randn(4, 5, generator=g) for _ in range(2)]
    c = torch.randn(5, generator=g)

    def ce(tv, sv):
        q = torch.softmax((tv - c) / 0.05, -1)
        return -(q * torch.log_softmax(sv / 0.1, -1)).sum(-1).mean()

    want = (ce(t[0], s[1]) + ce(t[0], s[2]) + ce(t[1], s[0]) + ce(t[1], s[2])) / 4
    torch.testing.assert_close(dino_loss(s, t, c, 0.1, 0.05), want)
    # a student view matching its own teacher view perfectly does not lower the loss by itself:
    # only cross-view pairs count, so swapping s[0] for a copy of t[0] changes just the (t1, s0) term
    s_same = [t[0].clone(), s[1], s[2]]
    want_same = (ce(t[0], s[1]) + ce(t[0], s[2]) + ce(t[1], t[0]) + ce(t[1], s[2])) / 4
    torch.testing.assert_close(dino_loss(s_same, t, c, 0.1, 0.05), want_same)
    # one global view and one local view: the single pair (t0, s1)
    torch.testing.assert_close(dino_loss(s[:2], t[:1], c, 0.1, 0.05), ce(t[0], s[1]))


def test_dino_loss_gradients_reach_student_only():
    g = torch.Generator().manual_seed(1)
    s = [torch.randn(3, 4, generator=g, requires_grad=True) for _ in range(3)]
    t = [torch.randn(3, 4, generator=g, requires_grad=True) for _ in range(2)]
    c = torch.zeros(4, requires_grad=True)
    dino_loss(s, t, c, 0.1, 0.04).backward()
    assert all(x.grad is not None for x in s)
    assert all(x.grad is None for x in t) and c.grad is None


def test_center_ema_update_by_hand():
    center = torch.tensor([0.5, -1.0, 2.0])
    t = [torch.tensor([[1.0, 2.0, 3.0], [3.0, 0.0, 1.0]]), torch.tensor([[0.0, 0.0, 0.0], [4.0, 2.0, 0.0]])]
    update_center(center, t, 0.9)
    batch_mean = [(1 + 3 + 0 + 4) / 4, (2 + 0 + 0 + 2) / 4, (3 + 1 + 0 + 0) / 4]
    want = [0.9 * c + 0.1 * b for c, b in zip([0.5, -1.0, 2.0], batch_mean)]
    torch.testing.assert_close(center, torch.tensor(want))


def test_teacher_temperature_schedule():
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.3) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.04, 0.07, 0.3) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(50, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(100, 100, 0.04, 0.07, 0.3) == pytest.approx(0.07)
    assert teacher_temperature(0, 100, 0.04, 0.07, 0.0) == pytest.approx(0.07)


@pytest.mark.parametrize("backbone", ["cnn", "vit-micro"])
def test_teacher_gets_no_gradients(backbone):
    method = small_dino(backbone=backbone)
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    views = method.views(images, torch.Generator().manual_seed(0))
    assert len(views) == 4
    center_before = method.center.clone()
    terms = method.loss(views)
    terms["loss"].backward()
    assert all(q.grad is None and not q.requires_grad for q in method.teacher.parameters())
    assert any(q.grad is not None for q in method.encoder.parameters())
    assert not torch.equal(method.center, center_before)  # the centre moved towards the teacher's batch mean
    method.after_optimizer_step(50, 100)
    assert float(method.teacher_temp_now) == pytest.approx(method.config.teacher_temp)


def test_dino_smoke(tmp_path):
    run = reprlearn.train("dino", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "config.yaml").is_file()


def test_dino_smoke_vit(tmp_path):
    run = reprlearn.train("dino", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128,
                          backbone="vit-micro")
    assert_loss_went_down(run)
    assert (run / "config.yaml").is_file()
