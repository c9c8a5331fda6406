"""CLIP and SigLIP losses: against naive loops written from their formulas, gradchecks in
float64, SigLIP's sign, and DDP on 2 and 3 CPU processes (gloo) equal to one process on
the global batch, for the loss and for every gradient (towers, scale, bias)."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from gloo_ranks import run_on_ranks
from reprlearn.losses import clip_loss, siglip_loss  # the public names (defined in reprlearn.image_text_losses)


def _pairs(b, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    text = F.normalize(torch.randn(b, d, generator=g, dtype=dtype), dim=1)
    return image, text


def naive_clip(image, text, t):
    b = len(image)
    logit = [[t * float(torch.dot(image[i], text[j])) for j in range(b)] for i in range(b)]
    i2t = sum(-logit[i][i] + math.log(sum(math.exp(logit[i][j]) for j in range(b))) for i in range(b)) / b
    t2i = sum(-logit[j][j] + math.log(sum(math.exp(logit[i][j]) for i in range(b))) for j in range(b)) / b
    return 0.5 * (i2t + t2i)


def naive_siglip(image, text, t, bias):
    b = len(image)
    total = 0.0
    for i in range(b):
        for j in range(b):
            z = 1.0 if i == j else -1.0
            x = z * (t * float(torch.dot(image[i], text[j])) + bias)
            total += math.log(1.0 / (1.0 + math.exp(-x)))  # log σ(x)
    return -total / b


CASES = [(1, 3, 1.0, 0.0), (2, 4, 10.0, -2.0), (5, 8, 0.5, 1.5), (7, 16, 30.0, -10.0), (12, 6, 3.0, 0.3)]


@pytest.mark.parametrize("b,d,t,bias", CASES)
def test_clip_loss_matches_formula(b, d, t, bias):
    image, text = _pairs(b, d, seed=b * d)
    want = naive_clip(image, text, t)
    assert clip_loss(image, text, torch.tensor(t, dtype=torch.float64)).item() == pytest.approx(want, rel=1e-10)
    assert clip_loss(image.float(), text.float(), t).item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("b,d,t,bias", CASES)
def test_siglip_loss_matches_formula(b, d, t, bias):
    image, text = _pairs(b, d, seed=b * d + 1)
    want = naive_siglip(image, text, t, bias)
    got = siglip_loss(image, text, torch.tensor(t, dtype=torch.float64), torch.tensor(bias, dtype=torch.float64))
    assert got.item() == pytest.approx(want, rel=1e-10)
    assert siglip_loss(image.float(), text.float(), t, bias).item() == pytest.approx(want, rel=1e-5)


def test_clip_loss_of_one_pair_is_zero():
    image, text = _pairs(1, 4, seed=3)
    assert clip_loss(image, text, 5.0).item() == 0.0


def test_siglip_sign_rewards_matches():
    """Perfectly matched pairs (text = image, the images orthonormal) at a large scale cost far
    less than shuffled ones; the reversed sign, log(1 + exp(+z(tx + b))), would rank them the other way."""
    g = torch.Generator().manual_seed(0)
    image = torch.linalg.qr(torch.randn(32, 8, generator=g, dtype=torch.float64))[0].T  # (8, 32), orthonormal rows
    t, bias = 20.0, -5.0
    matched = siglip_loss(image, image.clone(), t, bias)
    shuffled = siglip_loss(image, image[torch.roll(torch.arange(8), 1)], t, bias)
    assert matched.item() < 0.1 < 5.0 < shuffled.item()
    # the bias pushes mismatches' logits down: raising it costs, with matched pairs
    assert siglip_loss(image, image.clone(), t, bias + 10.0) > matched


def _gradcheck_inputs(b, d, seed):
    image, text = _pairs(b, d, seed)
    return (image.requires_grad_(), text.requires_grad_(), torch.tensor(2.5, dtype=torch.float64, requires_grad=True),
            torch.tensor(-1.2, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("b", [1, 4])
def test_clip_loss_gradcheck(b):
    image, text, t, _ = _gradcheck_inputs(b, 3, seed=b)
    assert torch.autograd.gradcheck(clip_loss, (image, text, t))


@pytest.mark.parametrize("b", [1, 4])
def test_siglip_loss_gradcheck(b):
    assert torch.autograd.gradcheck(siglip_loss, _gradcheck_inputs(b, 3, seed=b + 10))


# ---------------------------------------------------------------- DDP on CPU processes (gloo)

B_LOCAL, DIM_IMAGE, DIM_TEXT, DIM_OUT = 3, 5, 7, 4


class _TwoTowers(torch.nn.Module):
    def __init__(self, sigmoid: bool):
        super().__init__()
        torch.manual_seed(1)
        self.image_tower = torch.nn.Linear(DIM_IMAGE, DIM_OUT)
        self.text_tower = torch.nn.Linear(DIM_TEXT, DIM_OUT)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.sigmoid = sigmoid
        if sigmoid:  # CLIP has no bias: an unused parameter would stall DDP's reducer
            self.bias = torch.nn.Parameter(torch.tensor(-3.0))
        self.double()

    def forward(self, x_image, x_text, distributed=False):
        image = F.normalize(self.image_tower(x_image), dim=1)
        text = F.normalize(self.text_tower(x_text), dim=1)
        if self.sigmoid:
            return siglip_loss(image, text, self.log_scale.exp(), self.bias, distributed=distributed)
        return clip_loss(image, text, self.log_scale.exp(), gather=distributed)


def _data(world):
    g = torch.Generator().manual_seed(world)
    return (torch.randn(world * B_LOCAL, DIM_IMAGE, generator=g, dtype=torch.float64),
            torch.randn(world * B_LOCAL, DIM_TEXT, generator=g, dtype=torch.float64))


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank: int, world: int, out_dir: str) -> None:
    x_image, x_text = _data(world)
    local = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    out = {}
    for name, sigmoid in (("clip", False), ("siglip", True)):
        model = torch.nn.parallel.DistributedDataParallel(_TwoTowers(sigmoid))
        loss = model(x_image[local], x_text[local], distributed=True)
        loss.backward()  # DDP averages the parameter gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        out[name] = {"loss": mean_loss / world, "grads": _grads(model.module)}
    torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("world", [2, 3])
def test_ddp_equals_single_process(world, tmp_path):
    run_on_ranks(_worker, world, tmp_path)
    x_image, x_text = _data(world)
    for name, sigmoid in (("clip", False), ("siglip", True)):
        model = _TwoTowers(sigmoid)
        loss = model(x_image, x_text)
        loss.backward()
        want = _grads(model)
        assert set(want) == ({"image_tower.weight", "image_tower.bias", "text_tower.weight", "text_tower.bias",
                              "log_scale"} | ({"bias"} if sigmoid else set()))
        for rank in range(world):
            got = torch.load(tmp_path / f"rank{rank}.pt")[name]
            torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-10, atol=1e-12)
            for param, grad in want.items():
                assert grad.abs().max() > 1e-6, (name, param)  # a real gradient, not a vacuous match
                torch.testing.assert_close(got["grads"][param], grad, rtol=1e-9, atol=1e-12, msg=f"{name} {param}")
