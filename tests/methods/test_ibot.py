"""iBOT: the masked patch loss by hand and by gradcheck, masks, mask tokens, no teacher grads, refusal, smoke run."""

import math

import numpy as np
import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.augment.masks import block_patch_mask, masked_counts, random_patch_mask
from reprlearn.errors import ReprlearnError
from reprlearn.losses import ibot_patch_loss
from reprlearn.methods import DataInfo
from reprlearn.nets import create_backbone
from test_dino import assert_frozen_in_epoch_one_only, record_training

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def small_ibot(**options):
    cfg, mcfg = resolve_config("ibot", {"out_dim": 16, "patch_out_dim": 12, "head_hidden": 32, "bottleneck_dim": 8,
                                        "n_local": 1, **options})
    return build_method(cfg, mcfg, INFO)


def _softmax(row, temp):
    e = [math.exp(v / temp) for v in row]
    return [v / sum(e) for v in e]


def _patch_loss_by_hand(s, t, mask, center, ts, tt):
    """Plain loops over images, tokens and prototypes, straight from the docstring's formula."""
    total = 0.0
    for s_img, t_img, m_img in zip(s, t, mask):
        ce_sum, count = 0.0, 0
        for s_tok, t_tok, m in zip(s_img, t_img, m_img):
            if not m:
                continue
            q = _softmax([a - c for a, c in zip(t_tok, center)], tt)
            p = _softmax(s_tok, ts)
            ce_sum += -sum(qk * math.log(pk) for qk, pk in zip(q, p))
            count += 1
        total += ce_sum / max(1, count)
    return total / len(s)


def test_patch_loss_matches_the_formula_by_hand():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    center = torch.randn(4, generator=g)
    mask = torch.tensor([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    got = ibot_patch_loss(s, t, mask, center, 0.1, 0.04)
    want = _patch_loss_by_hand(s.tolist(), t.tolist(), mask.tolist(), center.tolist(), 0.1, 0.04)
    assert abs(float(got) - want) < 1e-4
    # unmasked tokens do not count: changing them leaves the loss alone; changing a masked one does not
    s2 = s.clone()
    s2[0, 1, 0] += 5.0
    torch.testing.assert_close(ibot_patch_loss(s2, t, mask, center, 0.1, 0.04), got)
    s2[0, 0, 0] += 5.0
    assert abs(float(ibot_patch_loss(s2, t, mask, center, 0.1, 0.04)) - float(got)) > 1e-3
    # nothing masked: zero
    assert float(ibot_patch_loss(s, t, torch.zeros_like(mask), center, 0.1, 0.04)) == 0.0


def test_patch_loss_gradcheck_and_no_teacher_gradients():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    center = torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert torch.autograd.gradcheck(lambda x: ibot_patch_loss(x, t, mask, center, 0.2, 0.07), (s,))
    ibot_patch_loss(s, t, mask, center, 0.2, 0.07).backward()
    assert s.grad is not None and t.grad is None and center.grad is None
    # the gradient reaches only the masked tokens
    assert s.grad[0, 1].abs().sum() == 0 and s.grad[0, 0].abs().sum() > 0


def test_masked_counts_ratio_and_fraction():
    g = torch.Generator().manual_seed(0)
    counts = masked_counts(2000, 16, 0.1, 0.5, 0.5, g)
    masked = [k for k in counts if k]
    assert 0.45 < len(masked) / len(counts) < 0.55
    assert min(masked) >= 1 and max(masked) <= 8  # round(0.5 * 16)
    assert masked_counts(10, 16, 0.1, 0.5, 0.0, g) == [0] * 10
    assert all(k >= 2 for k in masked_counts(50, 16, 0.1, 0.5, 1.0, g))  # round(0.1*16) = 2


@pytest.mark.parametrize("make", [block_patch_mask, random_patch_mask])
def test_masks_have_the_asked_counts_and_are_reproducible(make):
    counts = [0, 1, 3, 8, 15, 5]
    a = make(counts, 4, torch.Generator().manual_seed(3))
    b = make(counts, 4, torch.Generator().manual_seed(3))
    assert a.shape == (6, 16) and a.dtype == torch.bool
    assert a.sum(dim=1).tolist() == counts
    assert torch.equal(a, b)


def test_block_masks_are_blocks():
    # a single rectangle of 4 patches on an 8x8 grid, accepted at the first try, is contiguous:
    # the masked cells of a view span few rows and columns compared with random masks
    g = torch.Generator().manual_seed(0)
    block = block_patch_mask([6] * 200, 8, g).view(200, 8, 8)
    rand = random_patch_mask([6] * 200, 8, g).view(200, 8, 8)

    def spread(m):
        return (m.any(dim=2).sum(dim=1) + m.any(dim=1).sum(dim=1)).float().mean()

    assert spread(block) < spread(rand) - 2


def test_mask_token_replaces_patch_embeddings_only_where_masked():
    torch.manual_seed(0)
    vit = create_backbone("vit-micro", in_channels=1, image_size=8)
    x = torch.randn(2, 1, 8, 8)
    token = torch.randn(vit.dim)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 3] = mask[0, 9] = mask[1, 0] = True
    seen = {}
    handle = vit.blocks[0].register_forward_pre_hook(lambda m, args: seen.setdefault("x", args[0].detach()))
    out = vit.forward_masked(x, mask, token)
    handle.remove()
    plain = vit.patch_embed(x).flatten(2).transpose(1, 2)
    pos = vit.pos_embed[0, 1:]
    tokens = seen["x"][:, 1:]  # what the first block got, cls excluded
    torch.testing.assert_close(tokens[mask], (token + pos.expand(2, -1, -1)[mask]))
    torch.testing.assert_close(tokens[~mask], (plain + pos)[~mask])
    # no mask: the plain forward's tokens
    torch.testing.assert_close(vit.forward_masked(x)[:, 0], vit(x))
    assert out.shape == (2, 17, vit.dim)
    with pytest.raises(ValueError):
        vit.forward_masked(x, mask)


def test_teacher_gets_no_gradients_and_centres_move():
    method = small_ibot(mask_prob=1.0)
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    views = method.views(images, torch.Generator().manual_seed(0))
    crops, mask = views
    assert len(crops) == 3 and mask.shape == (12, 16) and bool(mask.any(dim=1).all())
    center, patch_center = method.center.clone(), method.patch_center.clone()
    terms = method.loss(views)
    terms["loss"].backward()
    assert all(q.grad is None and not q.requires_grad for q in method.teacher.parameters())
    assert method.mask_token.grad is not None and method.mask_token.grad.abs().sum() > 0
    assert all(q.grad is not None for q in method.patch_head.parameters())
    assert float(terms["patch"]) > 0
    assert torch.equal(method.center, center)  # the centres wait for the engine's micro-batch hook
    method.after_micro_batch()
    assert not torch.equal(method.center, center) and not torch.equal(method.patch_center, patch_center)
    teacher_before = [q.clone() for q in method.teacher.parameters()]
    with torch.no_grad():
        for q in method.encoder.parameters():
            q.add_(0.1)
    method.after_optimizer_step(50, 100)
    assert any(not torch.equal(a, b) for a, b in zip(teacher_before, method.teacher.parameters()))
    assert float(method.patch_teacher_temp_now) == pytest.approx(method.config.patch_teacher_temp)


def test_training_applies_both_temperature_warmups_and_freezes_both_prototype_layers(monkeypatch, tmp_path):
    from reprlearn.methods import ibot as module

    from reprlearn.data import load_source

    few = tmp_path / "few.npz"  # 320 digits, all trained on (--no-eval holds none out): a ViT epoch in about a second
    digits = load_source("digits")
    np.savez(few, images=digits.images[:320], labels=digits.labels[:320])
    epochs, warm = 2, 1  # warm-up and freeze in epoch 1, constant and moving in epoch 2
    temps, weights, spe = record_training(
        monkeypatch, tmp_path, module.IBOT, module, ["dino_loss", "ibot_patch_loss"], data=str(few),
        epochs=epochs, batch_size=64,
        out_dim=16, patch_out_dim=12, head_hidden=32, bottleneck_dim=8, teacher_temp_start=0.02,
        teacher_temp=0.07, patch_teacher_temp_start=0.03, patch_teacher_temp=0.05, teacher_temp_warmup_epochs=warm,
        freeze_last_layer=1)
    assert spe == 320 // 64
    steps = range(epochs * spe)
    for name, start, end in [("dino_loss", 0.02, 0.07), ("ibot_patch_loss", 0.03, 0.05)]:
        want = [start + (end - start) * s / (warm * spe) if s < warm * spe else end for s in steps]
        assert temps[name] == pytest.approx(want, rel=1e-6), name  # the buffers are float32
    assert_frozen_in_epoch_one_only(weights, spe)


@pytest.mark.parametrize("backbone", ["cnn", "auto", "mlp"])
def test_refuses_a_non_vit_backbone_in_one_line(backbone):
    with pytest.raises(ReprlearnError) as err:
        small_ibot(backbone=backbone)
    message = str(err.value)
    assert "\n" not in message and "ViT" in message and "--backbone vit-micro" in message


def test_refuses_mask_ratio_min_above_max():
    with pytest.raises(ReprlearnError, match="mask-ratio-min"):
        small_ibot(mask_ratio_min=0.6, mask_ratio_max=0.2)


def test_ibot_smoke(tmp_path):
    run = reprlearn.train("ibot", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "config.yaml").is_file()
    assert "vit-micro" in (run / "config.yaml").read_text()
    encoder = reprlearn.load(run)
    assert encoder(torch.rand(3, 1, 8, 8)).shape == (3, 128)
