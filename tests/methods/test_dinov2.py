"""DINOv2's recipe: Sinkhorn–Knopp teacher targets against a loop from the formula, KoLeo by hand, shared
or separate heads, each ingredient switchable and changing the loss (its collapse watch: tests/test_monitor.py)."""

import math

import pytest
import torch

from reprlearn.api import build_method, resolve_config
from reprlearn.methods import DataInfo

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])
SMALL = {"out_dim": 16, "patch_out_dim": 12, "head_hidden": 32, "bottleneck_dim": 8, "mask_prob": 1.0}


def small_dinov2(**options):
    torch.manual_seed(0)
    cfg, mcfg = resolve_config("dinov2", {**SMALL, **options})
    return build_method(cfg, mcfg, INFO)


def batch(method, seed=0, n=8):
    images = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))
    return method.views(images, torch.Generator().manual_seed(seed))


def sinkhorn_by_hand(scores, eps, iterations):
    """Sinkhorn–Knopp from the paper's algorithm, plain loops: Q = exp(S/ε)ᵀ (K x B), total mass 1, then
    per iteration every prototype row to 1/K and every sample column to 1/B; the codes are B·Q, per sample."""
    b, k = len(scores), len(scores[0])
    q = [[math.exp(scores[i][p] / eps) for i in range(b)] for p in range(k)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for p in range(k):
            s = sum(q[p])
            q[p] = [v / s / k for v in q[p]]
        for i in range(b):
            s = sum(q[p][i] for p in range(k))
            for p in range(k):
                q[p][i] = q[p][i] / s / b
    return [[q[p][i] * b for p in range(k)] for i in range(b)]


def koleo_by_hand(x):
    """−(1/N) Σ_i log min_{j≠i} ‖x̂_i − x̂_j‖ on L2-normalised rows."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x]
    total = 0.0
    for i, a in enumerate(rows):
        nearest = min(math.dist(a, b) for j, b in enumerate(rows) if j != i)
        total += -math.log(nearest + 1e-8)
    return total / len(rows)


def test_sinkhorn_teacher_targets_match_the_algorithm_by_hand():
    method = small_dinov2()
    crops, mask = batch(method)
    t_cls, t_patch = method.teacher_logits(torch.cat(crops[:2]))
    cls, cls_center, patches, patch_center = method.teacher_targets(list(t_cls.chunk(2)), t_patch, mask)
    tau, ptau = float(method.teacher_temp_now), float(method.patch_teacher_temp_now)
    assert float(cls_center.abs().sum()) == 0 and float(patch_center.abs().sum()) == 0
    # the loss takes softmax((target − 0) / τ): that must be Sinkhorn's codes of both global views together
    got = torch.softmax(torch.cat(cls) / tau, dim=-1)
    want = torch.tensor(sinkhorn_by_hand(t_cls.double().tolist(), tau, 3), dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)
    # marginals: each row a distribution; prototypes nearer equal shares than the plain softmax's
    assert torch.allclose(got.sum(dim=1), torch.ones(len(got)), atol=1e-5)
    share = len(got) / got.shape[1]
    plain = torch.softmax(t_cls / tau, dim=-1)
    assert (got.sum(dim=0) - share).abs().max() < 0.5 * (plain.sum(dim=0) - share).abs().max()
    # patch tokens: Sinkhorn over the masked tokens only
    got_p = torch.softmax(patches[mask] / ptau, dim=-1)
    want_p = torch.tensor(sinkhorn_by_hand(t_patch[mask].double().tolist(), ptau, 3), dtype=torch.float64)
    torch.testing.assert_close(got_p.double(), want_p, rtol=1e-4, atol=1e-6)


def test_koleo_term_is_the_weighted_koleo_of_each_global_views_class_tokens():
    method = small_dinov2(koleo_weight=0.3)
    views = batch(method, n=6)
    with_koleo = method.loss(views)
    method.config.koleo_weight = 0.0
    without = method.loss(views)
    crops, mask = views
    with torch.no_grad():
        tokens, _ = method._tokens(method._online(), torch.cat(crops[:2]), mask, method.mask_token)
    want = sum(koleo_by_hand(v.double().tolist()) for v in tokens.chunk(2))
    assert float(with_koleo["koleo"]) == pytest.approx(want, rel=1e-4)
    assert float(with_koleo["loss"] - without["loss"]) == pytest.approx(0.3 * want, rel=1e-4)
    assert "koleo" not in without


def test_shared_head_is_one_module_for_student_and_teacher():
    shared, separate = small_dinov2(heads="shared"), small_dinov2()
    assert shared.patch_head is shared.head and separate.patch_head is not separate.head
    assert shared.teacher.net["patch_head"] is shared.teacher.net["head"]
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(separate) - count(shared) == 2 * count(separate.patch_head)  # student and teacher copies
    assert shared.patch_center.shape == shared.center.shape
    shared.loss(batch(shared))["loss"].backward()
    shared.after_optimizer_step(0, 10)  # the EMA pairs the shared parameters once


@pytest.mark.parametrize("option", [{"centering": "running"}, {"koleo_weight": 0.0}, {"heads": "shared"},
                                    {"n_local": 0}, {"patch_weight": 0.0}])
def test_each_ingredient_switches_off_and_changes_the_loss(option):
    default = small_dinov2()
    views = batch(default)
    base = default.loss(views)
    other = small_dinov2(**option)
    if "n_local" in option:
        views = (views[0][:2], views[1])  # the same global views, no local crops
    terms = other.loss(views)
    assert abs(float(terms["loss"]) - float(base["loss"])) > 1e-3
    if "centering" in option:  # the running centres move, Sinkhorn's stay zero
        other.after_micro_batch()
        default.after_micro_batch()
        assert other.center.abs().sum() > 0 and default.center.abs().sum() == 0


def test_local_crops_are_small_and_use_interpolated_positions():
    method = small_dinov2(n_local=2)
    crops, _ = batch(method)
    assert [tuple(c.shape[-2:]) for c in crops] == [(8, 8)] * 2 + [(4, 4)] * 2  # 3/7 of 8 px: 2x2 patches
    vit = method.encoder.backbone
    seen = []
    handle = vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[:2])))
    method.loss((crops, _))
    handle.remove()
    assert seen == [(16, 17), (16, 5)]  # the student on the global views, then the local crops: 1 + 2x2 tokens
    assert method.encoder(crops[2]).shape == (8, vit.dim)


def test_cifar_sized_images_get_16_px_local_crops():
    torch.manual_seed(0)
    cfg, mcfg = resolve_config("dinov2", SMALL)
    method = build_method(cfg, mcfg, DataInfo(channels=3, image_size=32, num_classes=10, mean=[0.5] * 3,
                                              std=[0.25] * 3))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    crops, mask = method.views(images, torch.Generator().manual_seed(0))
    assert [c.shape[-1] for c in crops] == [32, 32, 16, 16] and mask.shape == (8, 64)  # 14 px rounds to 4x4 patches
    terms = method.loss((crops, mask))
    assert torch.isfinite(terms["loss"]) and float(terms["koleo"]) > 0


def test_with_its_ingredients_off_dinov2_is_ibot():
    off = {"centering": "running", "koleo_weight": 0.0, "n_local": 0, "heads": "separate"}
    dinov2 = small_dinov2(**off)
    torch.manual_seed(0)
    cfg, mcfg = resolve_config("ibot", {**SMALL, "n_local": 0})
    ibot = build_method(cfg, mcfg, INFO)
    views = batch(ibot)
    a, b = dinov2.loss(views), ibot.loss(views)
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key])
