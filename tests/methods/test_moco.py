"""MoCo v2: split-BN against BatchNorm on each group, the loss against its formula, the queue
as a FIFO, enqueueing after the optimiser step (every micro-batch under --accumulate), no
gradients into the key encoder, the EMA by hand and shuffle-BN over two gloo ranks."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reprlearn
from gloo_ranks import run_on_ranks
from reprlearn.api import build_method, resolve_config
from reprlearn.errors import ReprlearnError
from reprlearn.methods import DataInfo
from reprlearn.nets import split_batch_norm
from reprlearn.nets.split_bn import SplitBatchNorm1d, SplitBatchNorm2d

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])
SMALL = {"proj_hidden": 32, "proj_dim": 16}


def small_moco(**options):
    cfg, mcfg = resolve_config("moco", {**SMALL, **options})
    return build_method(cfg, mcfg, INFO)


def images(n, seed=0):
    return torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- split BatchNorm


# 10 samples in up to 4 groups: 4 and 3 do not divide 10, so 2 groups of 5
@pytest.mark.parametrize("kind,shape,splits,groups", [
    (nn.BatchNorm2d, (12, 3, 4, 4), 3, 3), (nn.BatchNorm1d, (12, 5), 4, 4), (nn.BatchNorm2d, (10, 3, 2, 2), 4, 2)])
def test_split_bn_equals_batch_norm_on_each_group(kind, shape, splits, groups):
    torch.manual_seed(0)
    plain = kind(shape[1])
    with torch.no_grad():
        plain.weight.uniform_(0.5, 1.5), plain.bias.normal_()
        plain.running_mean.normal_(), plain.running_var.uniform_(0.5, 2.0)
    refs = [copy.deepcopy(plain) for _ in range(groups)]  # one plain BN per group, same start
    split = split_batch_norm(copy.deepcopy(plain), splits)
    assert isinstance(split, (SplitBatchNorm1d, SplitBatchNorm2d))
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    chunks = torch.chunk(x, groups)  # contiguous, equal
    want = torch.cat([ref(c) for ref, c in zip(refs, chunks)])
    got = split(x)
    torch.testing.assert_close(got, want)
    # gradients reach input and affine parameters as through the per-group BNs
    g_out = torch.randn(shape)
    want_grads = torch.autograd.grad(want, [x] + [r.weight for r in refs], g_out)
    got_x, got_w = torch.autograd.grad(got, [x, split.weight], g_out)
    torch.testing.assert_close(got_x, want_grads[0])
    torch.testing.assert_close(got_w, sum(want_grads[1:]))
    # running statistics: the mean over groups of what each group's own BN would keep
    torch.testing.assert_close(split.running_mean, torch.stack([r.running_mean for r in refs]).mean(0))
    torch.testing.assert_close(split.running_var, torch.stack([r.running_var for r in refs]).mean(0))
    assert int(split.num_batches_tracked) == 1
    # and not the whole batch's statistics: that would be plain BN
    assert not torch.allclose(got, plain(x.detach()), atol=1e-3)
    # eval mode is plain BatchNorm with those running statistics
    split.eval(), plain.eval()
    plain.load_state_dict(split.state_dict())
    torch.testing.assert_close(split(x), plain(x))


def test_split_batch_norm_converts_a_network_in_place_keeping_its_tensors():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 6), nn.BatchNorm1d(6))
    weight, keys = net[1].weight, list(net.state_dict())
    assert split_batch_norm(net, 8) is net
    assert type(net[1]) is SplitBatchNorm2d and type(net[4]) is SplitBatchNorm1d
    assert net[1].weight is weight and list(net.state_dict()) == keys  # checkpoints interchangeable
    plain = nn.Sequential(nn.BatchNorm1d(3))
    assert type(split_batch_norm(plain, 1)[0]) is nn.BatchNorm1d


# ---------------------------------------------------------------- the loss


def naive_moco_loss(q, k, queue, t):
    """-log(exp(q·k+/τ) / (exp(q·k+/τ) + Σ_m exp(q·n_m/τ))), cosines, averaged: the queue only."""
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        pos = math.exp(float(qi @ (k[i] / k[i].norm())) / t)
        neg = sum(math.exp(float(qi @ (n / n.norm())) / t) for n in queue)
        total += -math.log(pos / (pos + neg))
    return total / len(q)


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_is_one_direction_against_the_queue_only(symmetric):
    # bn_splits 1: plain BN, so the keys are the key network on the batch, whatever its order
    method = small_moco(queue_size=20, bn_splits=1, symmetric=symmetric)
    views = method.views(images(16), torch.Generator().manual_seed(0))
    x_1, x_2, _ = views
    got = float(method.loss(views)["loss"].detach())
    with torch.no_grad():
        query = lambda x: method.projector(method.encoder(x))  # noqa: E731
        want = naive_moco_loss(query(x_1), method.key_net(x_2), method.queue, 0.2)
        if symmetric:  # MoCo v3: ctr(q1, k2) + ctr(q2, k1)
            want += naive_moco_loss(query(x_2), method.key_net(x_1), method.queue, 0.2)
    assert got == pytest.approx(want, rel=1e-4)


def test_queue_only_info_nce_against_batch_negatives():
    from reprlearn.losses import info_nce

    g = torch.Generator().manual_seed(3)
    q, k, queue = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    assert float(info_nce(q, k, queue, 0.3, batch_negatives=False)) == pytest.approx(
        naive_moco_loss(q, k, queue, 0.3), rel=1e-5)
    # one query and one key: no other batch keys, so both kinds agree
    assert float(info_nce(q[:1], k[:1], queue, 0.3, batch_negatives=False)) == pytest.approx(
        float(info_nce(q[:1], k[:1], queue, 0.3)), rel=1e-6)


def test_queue_only_loss_refuses_an_empty_queue():
    with pytest.raises(ReprlearnError, match="--batch-negatives"):
        small_moco(queue_size=0)
    small_moco(queue_size=0, batch_negatives=True)  # v3-style: the batch is the negatives


def test_split_bn_keys_see_shuffled_groups_and_queries_contiguous_ones():
    """bn_splits 4: the query is BN per contiguous quarter of the batch, the key per quarter of
    the shuffled batch; checked against a plain-BN copy run on each group alone."""
    split, plain = small_moco(bn_splits=4), small_moco(bn_splits=1)
    plain.load_state_dict(split.state_dict())
    x_1, x_2, perm = split.views(images(32), torch.Generator().manual_seed(1))
    assert not torch.equal(perm, torch.arange(32))
    with torch.no_grad():
        keys, all_keys = split._encode_keys(x_2, perm)
        want = torch.empty_like(keys)
        for group in torch.tensor_split(perm, 4):
            want[group] = plain.key_net(x_2[group])
        torch.testing.assert_close(keys, want)
        torch.testing.assert_close(all_keys, want)  # one device: the global batch is the batch
        q = split.projector(split.encoder(x_1))
        q_want = torch.cat([plain.projector(plain.encoder(c)) for c in torch.tensor_split(x_1, 4)])
        torch.testing.assert_close(q, q_want)


# ---------------------------------------------------------------- queue, EMA, gradients


def test_queue_is_a_fifo_that_wraps_around():
    method = small_moco(queue_size=8)
    ring, ptr = method.queue.clone(), 0  # a naive ring buffer, written one key at a time
    g = torch.Generator().manual_seed(0)
    for n in (3, 4, 5, 8, 19, 1):  # wraps at the 3rd, a full turn, more keys than the queue
        keys = F.normalize(torch.randn(n, 16, generator=g), dim=1)
        for key in keys:
            ring[ptr] = key
            ptr = (ptr + 1) % 8
        method._enqueue(keys)
        torch.testing.assert_close(method.queue, ring, rtol=0, atol=0)
        assert int(method.queue_ptr) == ptr


def test_no_gradient_reaches_the_key_encoder():
    method = small_moco(symmetric=True, batch_negatives=True)
    method.loss(method.views(images(16), torch.Generator().manual_seed(0)))["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in method.key_net.parameters())
    assert all(p.grad is not None for p in method.encoder.parameters())


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_key_encoder_moves_by_the_ema_formula(schedule):
    method = small_moco(ema_momentum=0.9, momentum_schedule=schedule)
    online = nn.Sequential(method.encoder, method.projector)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))  # the online network moves away from its copy
    before = [p.clone() for p in method.key_net.parameters()]
    method.after_optimizer_step(25, 100)
    # constant: MoCo v2's m; cosine: 1 - (1 - m)(cos(π·25/100) + 1)/2
    m = 0.9 if schedule == "constant" else 1 - 0.1 * (math.cos(math.pi / 4) + 1) / 2
    for t0, t1, s in zip(before, method.key_net.parameters(), online.parameters()):
        torch.testing.assert_close(t1, m * t0 + (1 - m) * s)


# ---------------------------------------------------------------- the queue in a real run


def recorder():
    """A callback that wraps the method's views() to keep every micro-batch's key view and the key
    network it met, and records the queue when each step starts, before its optimiser step and
    after it. (Lightning is imported here: the gloo ranks import this module and need none of it.)"""
    import lightning as L

    class Recorder(L.Callback):
        def __init__(self):
            self.micro, self.at_start, self.before_step, self.after_step = [], [], [], []

        def on_train_start(self, trainer, pl_module):
            method = pl_module.method
            views = method.views

            def recording(batch, generator):
                x_1, x_2, perm = views(batch, generator)
                self.micro.append((trainer.global_step, x_2.clone(), copy.deepcopy(method.key_net),
                                   method.queue.clone()))
                return x_1, x_2, perm

            method.views = recording

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.at_start.append(pl_module.method.queue.clone())

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            self.before_step.append(pl_module.method.queue.clone())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.after_step.append((trainer.global_step, pl_module.method.queue.clone(),
                                    int(pl_module.method.queue_ptr)))

    return Recorder()


def expected_keys(key_net, x):
    with torch.no_grad():
        return F.normalize(key_net.train()(x), dim=1)  # plain BN (bn_splits 1): order-free


@pytest.mark.parametrize("accumulate", [1, 2])
def test_queue_takes_each_micro_batch_keys_once_after_the_optimizer_step(tmp_path, accumulate):
    """Digits, batch 64: 22 micro-batches in one epoch. Every step's micro-batches contrast against
    the same queue; after the step the queue holds, from the old pointer on, exactly the keys of
    that step's micro-batches in order (the key network they met, before the EMA moved it), and
    nothing changed before the optimiser step. Over the run, every micro-batch's keys entered once."""
    rec = recorder()
    reprlearn.train("moco", out=tmp_path / "run", callbacks=[rec], data="digits", epochs=1, batch_size=64,
                    accumulate=accumulate, eval=False, progress=False, bn_splits=1, queue_size=4096, **SMALL)
    steps = 1438 // 64 // accumulate
    assert len(rec.micro) == 22 and len(rec.before_step) == steps
    start, ptr = rec.micro[0][3], 0
    for s in range(steps):
        micro = [m for m in rec.micro if m[0] == s]
        assert len(micro) == accumulate
        for _, _, _, seen in micro:  # every micro-batch of the step saw the queue of the step's start
            torch.testing.assert_close(seen, rec.at_start[s * accumulate], rtol=0, atol=0)
        torch.testing.assert_close(rec.before_step[s], rec.at_start[s * accumulate], rtol=0, atol=0)
        keys = torch.cat([expected_keys(net, x) for _, x, net, _ in micro])
        step, queue, new_ptr = [a for a in rec.after_step if a[0] == s + 1][-1]
        torch.testing.assert_close(queue[ptr:ptr + len(keys)], keys, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(queue[ptr + len(keys):], rec.before_step[s][ptr + len(keys):], rtol=0, atol=0)
        ptr += len(keys)
        assert new_ptr == ptr
    assert ptr == 22 * 64  # each micro-batch's 64 keys, once
    torch.testing.assert_close(rec.after_step[-1][1][ptr:], start[ptr:], rtol=0, atol=0)


# ---------------------------------------------------------------- shuffle-BN under DDP

N_PER_RANK = 8


def _ddp_worker(rank, world, out_dir):
    method = small_moco(bn_splits=1)  # per-rank BN only: the shuffle across ranks is under test
    # each rank its own images and its own generator, as the engine seeds them by rank
    views = method.views(images(N_PER_RANK, seed=5 + rank), torch.Generator().manual_seed(10 + rank))
    method.loss(views)  # shares rank 0's permutation, encodes this rank's slice, gathers, unshuffles
    _, x_2, perm = views
    torch.save({"x_2": x_2, "perm": perm, "keys": method._keys}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_shuffle_bn_over_two_gloo_ranks(tmp_path):
    """Each rank's key encoder sees a slice of the shuffled global batch (its own BN batch): the
    keys equal a plain-BN key network run on each slice alone, put back in the original order,
    and every rank holds the whole global batch's keys for the queue."""
    run_on_ranks(_ddp_worker, 2, tmp_path)
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    perm = got[0]["perm"]
    assert torch.equal(got[1]["perm"], perm)  # rank 0's, not rank 1's own draw
    x_2 = torch.cat([g["x_2"] for g in got])
    method = small_moco(bn_splits=1)
    want = torch.empty(2 * N_PER_RANK, SMALL["proj_dim"])
    with torch.no_grad():
        for r in range(2):
            mine = perm[r * N_PER_RANK:(r + 1) * N_PER_RANK]
            want[mine] = method.key_net(x_2[mine])
    for r in range(2):
        torch.testing.assert_close(got[r]["keys"], F.normalize(want, dim=1))
