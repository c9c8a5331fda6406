"""SwAV: the swapped prediction against its formula, codes with SwAV's marginals, prototypes kept
on the sphere and frozen at first, multi-crop views, the queue, and a smoke run."""

import math

import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.losses import swapped_prediction_loss
from reprlearn.methods import DataInfo

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def small_swav(**options):
    cfg, mcfg = resolve_config("swav", {"proj_hidden": 32, "proj_dim": 8, "num_prototypes": 6, "n_local": 2,
                                        **options})
    method = build_method(cfg, mcfg, INFO)
    method.steps_per_epoch = 5
    return method


def naive_swapped(scores, codes, t):
    total, pairs = 0.0, 0
    for g, q in enumerate(codes):
        for v, s in enumerate(scores):
            if v == g:
                continue
            ce = 0.0
            for q_row, s_row in zip(q.tolist(), s.tolist()):
                z = sum(math.exp(x / t) for x in s_row)
                ce += -sum(qk * (sk / t - math.log(z)) for qk, sk in zip(q_row, s_row))
            total += ce / len(q)
            pairs += 1
    return total / pairs


def test_swapped_prediction_matches_formula_and_gradcheck():
    g = torch.Generator().manual_seed(0)
    scores = [torch.tanh(torch.randn(5, 4, generator=g, dtype=torch.float64)) for _ in range(4)]
    codes = [torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1) for _ in range(2)]
    got = swapped_prediction_loss(scores, codes, temperature=0.1)
    assert float(got) == pytest.approx(naive_swapped(scores, codes, 0.1), rel=1e-10)
    leaves = [s.clone().requires_grad_(True) for s in scores]
    assert torch.autograd.gradcheck(lambda *s: swapped_prediction_loss(list(s), codes, 0.3), tuple(leaves))
    with pytest.raises(ValueError):
        swapped_prediction_loss(scores[:1], codes[:1])


def test_views_codes_and_loss_terms():
    method = small_swav()
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    views = method.views(images, torch.Generator().manual_seed(0))
    assert len(views) == 4 and views[0].shape[-1] == 8 and views[2].shape[-1] == 4  # 2 global + 2 local (3/7 of 8)
    z = method.embed(views[0])
    codes = method.codes(method.prototypes(z).detach(), 0)
    torch.testing.assert_close(codes.sum(1), torch.ones(16))  # each code a distribution
    assert not codes.requires_grad
    terms = method.loss(views)
    terms["loss"].backward()
    assert method.prototypes.weight.grad is not None and method.prototypes.weight.grad.abs().sum() > 0
    assert any(p.grad is not None for p in method.encoder.parameters())


def test_prototypes_frozen_first_epoch_then_normalised_after_each_step():
    method = small_swav(freeze_prototypes_epochs=1)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    for step, frozen in ((0, True), (4, True), (5, False)):
        method.zero_grad()
        method.loss(method.views(images, torch.Generator().manual_seed(step)))["loss"].backward()
        method.before_optimizer_step(step, 100)
        assert (method.prototypes.weight.grad is None) == frozen
    with torch.no_grad():
        method.prototypes.weight.mul_(3.0).add_(0.1)
    method.after_optimizer_step(5, 100)
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(6))


def test_queue_fills_from_its_epoch_and_joins_sinkhorn_once_full():
    method = small_swav(queue_length=24, queue_start_epoch=1)
    images = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    views = method.views(images, torch.Generator().manual_seed(0))
    method.loss(views)
    method.after_micro_batch()
    assert int(method.queue_filled) == 0  # epoch 0: not yet
    method.after_optimizer_step(4, 100)  # 5 steps taken = epoch 1
    scores = method.prototypes(method.embed(views[0])).detach()
    alone = method.codes(scores, 0)
    for expect in (16, 24):
        method.loss(views)
        method.after_micro_batch()
        assert int(method.queue_filled) == expect
    z_newest = method.embed(torch.cat(views[:2])).detach()[:16]  # as the loss embeds them: globals together
    torch.testing.assert_close(method.queue[0, :16], z_newest, rtol=1e-5, atol=1e-6)
    with_queue = method.codes(scores, 0)  # 24 queued + 16 rows in Sinkhorn, the batch's 16 returned
    assert with_queue.shape == alone.shape and not torch.allclose(with_queue, alone)


def test_swav_smoke(tmp_path):
    run = reprlearn.train("swav", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
