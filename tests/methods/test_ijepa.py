"""I-JEPA: block masks (disjoint, rectangles, scale/aspect statistics), the predictor blind to the
targets, the loss by hand, no target-encoder gradients and refusals (its collapse watch: tests/test_monitor.py)."""

import math

import pytest
import torch

from reprlearn.api import build_method, resolve_config
from reprlearn.augment.masks import jepa_masks
from reprlearn.errors import ReprlearnError
from reprlearn.methods import DataInfo

DIGITS = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])
CIFAR = DataInfo(channels=3, image_size=32, num_classes=10, mean=[0.5] * 3, std=[0.25] * 3)


def small_ijepa(info=DIGITS, **options):
    cfg, mcfg = resolve_config("ijepa", {"predictor_dim": 32, "predictor_depth": 1, **options})
    return build_method(cfg, mcfg, info)


def rectangle(cells: set[int], grid: int) -> tuple[int, int]:
    """(rows, columns) of the bounding box of ``cells``; fails unless the cells fill it."""
    rows, cols = {j // grid for j in cells}, {j % grid for j in cells}
    h, w = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
    assert len(cells) == h * w, f"{sorted(cells)} is not a rectangle"
    return h, w


@pytest.mark.parametrize("grid,targets", [(4, 2), (8, 4), (14, 4)])
def test_context_and_target_blocks_do_not_overlap(grid, targets):
    for seed in range(20):
        context, target = jepa_masks(16, grid, targets, min_context=2, generator=torch.Generator().manual_seed(seed))
        assert context.shape[0] == 16 and target.shape[:2] == (targets, 16)
        for i in range(16):
            ctx = context[i].tolist()
            assert len(set(ctx)) == len(ctx) >= 2 and ctx == sorted(ctx) and 0 <= min(ctx) and max(ctx) < grid * grid
            shapes = set()
            for m in range(targets):
                block = set(target[m, i].tolist())
                assert not block & set(ctx), (seed, i, m)
                shapes.add(rectangle(block, grid))
            assert len(shapes) == 1  # one target shape per batch (so the blocks stack)


def test_target_block_scale_and_aspect_statistics():
    # the paper's 14x14 grid: scale U[0.15, 0.2] of 196 patches, aspect (rows / columns) U[0.75, 1.5]
    grid, scales, aspects = 14, [], []
    for seed in range(400):
        _, target = jepa_masks(1, grid, 4, generator=torch.Generator().manual_seed(seed))
        h, w = rectangle(set(target[0, 0].tolist()), grid)
        scales.append(h * w / grid ** 2)
        aspects.append(h / w)
    # rounding rows and columns to whole patches moves the area by up to about one row and one column
    assert 0.11 <= min(scales) and max(scales) <= 0.26
    assert abs(sum(scales) / len(scales) - 0.175) < 0.015
    assert 0.6 <= min(aspects) and max(aspects) <= 1.9
    assert abs(sum(aspects) / len(aspects) - 1.125) < 0.1
    assert sum(a > 1 for a in aspects) > 100 and sum(a < 1 for a in aspects) > 50  # tall and wide blocks


def test_context_block_scale_and_the_context_floor():
    grid = 14
    for seed in range(50):
        context, target = jepa_masks(1, grid, 4, min_context=10, generator=torch.Generator().manual_seed(seed))
        ctx, hidden = set(context[0].tolist()), set(target[:, 0].flatten().tolist())
        # the context block (a square of 0.85-1.0 of the grid) lies within context + targets
        assert len(ctx | hidden) >= round(math.sqrt(0.85 * 196)) ** 2 - 0 and len(ctx) >= 10
        rows, cols = {j // grid for j in ctx}, {j % grid for j in ctx}
        assert max(rows) - min(rows) < 14 and max(cols) - min(cols) < 14
    # targets so large that no context block keeps 3 patches: every non-target patch is the context
    context, target = jepa_masks(1, 4, 3, target_scale=(0.5, 0.5), target_aspect=(1.0, 1.0), min_context=3,
                                 generator=torch.Generator().manual_seed(0))
    assert set(context[0].tolist()) == set(range(16)) - set(target[:, 0].flatten().tolist())


def test_tiny_grids_use_fewer_target_blocks():
    assert small_ijepa().num_targets == 2 and small_ijepa().min_context == 2  # 4x4 patches of 8x8 digits
    cifar = small_ijepa(CIFAR)  # vit-micro: patch 4, an 8x8 grid
    assert cifar.grid == 8 and cifar.num_targets == 4 and cifar.min_context == 8
    with torch.no_grad():
        views = cifar.views(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), torch.Generator().manual_seed(0))
        assert cifar.predict(*views).shape[:2] == (4, 3)


def _patch_pixels(x: torch.Tensor, index: int, grid: int, p: int) -> tuple[slice, slice]:
    r, c = divmod(index, grid)
    return slice(r * p, (r + 1) * p), slice(c * p, (c + 1) * p)


def test_the_predictor_never_sees_the_target_patches():
    torch.manual_seed(0)
    method = small_ijepa().eval()
    images = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    x, context, target = method.views(images, torch.Generator().manual_seed(1))
    with torch.no_grad():
        before, teacher_before = method.predict(x, context, target), method.targets(x, target)
        hidden = sorted(set(range(16)) - set(context[0].tolist()))  # the targets and the other non-context patches
        changed = x.clone()
        for j in hidden:
            rows, cols = _patch_pixels(changed, j, 4, 2)
            changed[0, :, rows, cols] = torch.rand(1, 2, 2)
        assert not torch.allclose(method.targets(changed, target)[:, 0], teacher_before[:, 0])  # the change matters
        torch.testing.assert_close(method.predict(changed, context, target), before, rtol=0, atol=1e-6)
        # a context patch's pixels do reach the prediction
        rows, cols = _patch_pixels(changed, int(context[0, 0]), 4, 2)
        changed[0, :, rows, cols] = 1 - changed[0, :, rows, cols]
        assert not torch.allclose(method.predict(changed, context, target)[:, 0], before[:, 0], atol=1e-4)


def test_loss_is_the_mean_squared_error_to_the_layer_normed_target_tokens_by_hand():
    torch.manual_seed(1)
    method = small_ijepa()
    with torch.no_grad():  # a trained final norm: its affine output is not already layer-normalised
        norm = method.teacher.net.backbone.norm
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
    x, context, target = method.views(torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8),
                                      torch.Generator().manual_seed(2))
    got = method.loss((x, context, target))["loss"]
    with torch.no_grad():
        pred = method.predict(x, context, target)
        vit = method.teacher.net.backbone
        tokens = vit.forward_tokens(method.teacher.net.normalize(x))
    total, count = 0.0, 0
    for m in range(target.shape[0]):
        for i in range(target.shape[1]):
            for k, j in enumerate(target[m, i].tolist()):
                t = tokens[i, 1 + j]  # token 0 is the class token
                s = (t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-5)
                total += float(((pred[m, i, k] - s) ** 2).sum()) / t.numel()
                count += 1
    assert float(got) == pytest.approx(total / count, rel=1e-5)


def test_target_encoder_gets_no_gradients_and_follows_the_encoder():
    method = small_ijepa()
    views = method.views(torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))
    method.loss(views)["loss"].backward()
    assert all(q.grad is None and not q.requires_grad for q in method.teacher.parameters())
    assert all(q.grad is not None for q in method.predictor.parameters())
    assert method.encoder.backbone.patch_embed.weight.grad.abs().sum() > 0
    before = [q.clone() for q in method.teacher.parameters()]
    with torch.no_grad():
        for q in method.encoder.parameters():
            q.add_(0.1)
    method.after_optimizer_step(0, 100)
    assert all(not torch.equal(a, b) for a, b in zip(before, method.teacher.parameters()))


@pytest.mark.parametrize("backbone", ["cnn", "mlp"])
def test_refuses_a_non_vit_backbone_in_one_line(backbone):
    with pytest.raises(ReprlearnError) as err:
        small_ijepa(backbone=backbone)
    assert "\n" not in str(err.value) and "--backbone vit-micro" in str(err.value)


def test_refuses_bad_block_options_in_one_line():
    with pytest.raises(ReprlearnError, match="target-scale-min"):
        small_ijepa(target_scale_min=0.3, target_scale_max=0.2)
    with pytest.raises(ReprlearnError, match="whole 4x4 grid"):
        small_ijepa(target_scale_min=1.0, target_scale_max=1.0)
