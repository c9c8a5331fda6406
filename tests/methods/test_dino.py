"""DINO: centring/sharpening arithmetic, pair exclusion, centre EMA, τ_t schedule, no teacher grads, smoke runs."""

import math

import lightning as L
import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import dino_loss
from reprlearn.methods import DataInfo
from reprlearn.methods.distillation import teacher_temperature, update_center

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
    assert teacher_temperature(0, 30, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(15, 30, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(29, 30, 0.04, 0.07) == pytest.approx(0.069)
    assert teacher_temperature(30, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(500, 30, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(0, 0, 0.04, 0.07) == pytest.approx(0.07)


def prototype_layers(method):
    """The student's weight-normalised last layers (dino: the head's; ibot: also the patch head's)."""
    names = [name for name in ("head", "patch_head") if hasattr(method, name)]
    return [getattr(method, name).prototypes.detach().clone() for name in names]


def record_training(monkeypatch, tmp_path, method_class, module, loss_names, **options):
    """Train a real short run; return the teacher temperature each loss call got (per loss name), the
    prototype layers after every optimiser step (index 0: before the first) and the steps per epoch."""
    temps = {name: [] for name in loss_names}
    for name in loss_names:
        real = getattr(module, name)

        def spy(*args, _real=real, _name=name):
            temps[_name].append(args[-1])  # teacher_temp is the last positional argument
            return _real(*args)

        monkeypatch.setattr(module, name, spy)
    weights, spe = [], []
    real_before, real_after = method_class.before_optimizer_step, method_class.after_optimizer_step

    def before(self, step, total_steps):
        if not weights:
            weights.append(prototype_layers(self))
        return real_before(self, step, total_steps)

    def after(self, step, total_steps):
        weights.append(prototype_layers(self))
        spe.append(self.steps_per_epoch)
        return real_after(self, step, total_steps)

    class ForgetTheWarmUp(L.Callback):  # the plan's timed warm-up steps a copy of the method before training
        def on_train_start(self, trainer, pl_module):
            for recorded in (*temps.values(), weights, spe):
                recorded.clear()

    monkeypatch.setattr(method_class, "before_optimizer_step", before)
    monkeypatch.setattr(method_class, "after_optimizer_step", after)
    reprlearn.train(module.__name__.rsplit(".", 1)[1], out=tmp_path / "r", eval=False, progress=False,
                    callbacks=[ForgetTheWarmUp()], **options)
    return temps, weights, spe[0]


def assert_frozen_in_epoch_one_only(weights, spe):
    assert len(weights) == 2 * spe + 1
    for after_step in weights[1:spe + 1]:  # epoch 1: untouched (no update, no weight decay)
        assert all(torch.equal(a, b) for a, b in zip(after_step, weights[0]))
    for before, after in zip(weights[spe:-1], weights[spe + 1:]):  # epoch 2: every step moves every layer
        assert all(not torch.equal(a, b) for a, b in zip(before, after))


def test_training_applies_the_teacher_temperature_warmup(monkeypatch, tmp_path):
    from reprlearn.methods import dino as module

    epochs, warm = 3, 2
    temps, _, spe = record_training(monkeypatch, tmp_path, module.DINO, module, ["dino_loss"], epochs=epochs,
                                    batch_size=256, out_dim=16, head_hidden=32, bottleneck_dim=8, n_local=0,
                                    teacher_temp_start=0.02, teacher_temp=0.07, teacher_temp_warmup_epochs=warm)
    got = temps["dino_loss"]
    assert spe == 1437 // 256 and len(got) == epochs * spe  # digits: 1437 training images, drop_last
    want = [0.02 + 0.05 * s / (warm * spe) if s < warm * spe else 0.07 for s in range(epochs * spe)]
    assert got == pytest.approx(want, rel=1e-6), (got, want)  # the buffer is float32


def test_the_prototype_layer_is_frozen_in_the_first_epoch(monkeypatch, tmp_path):
    from reprlearn.methods import dino as module

    _, weights, spe = record_training(monkeypatch, tmp_path, module.DINO, module, [], epochs=2, batch_size=256,
                                      out_dim=16, head_hidden=32, bottleneck_dim=8, n_local=0, freeze_last_layer=1)
    assert_frozen_in_epoch_one_only(weights, spe)


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
    assert torch.equal(method.center, center_before)  # the centre waits for the engine's micro-batch hook
    method.after_micro_batch()
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
