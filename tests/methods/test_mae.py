"""MAE: masking, the masked-only loss, patchify, visible-only encoding, hooks and a smoke run."""

import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.augment.masks import random_mask
from reprlearn.errors import ReprlearnError
from reprlearn.losses import masked_patch_mse
from reprlearn.methods import METHODS, DataInfo, Interpolates, abilities
from reprlearn.methods.mae import patch_targets, patchify, unpatchify

INFO = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])


def small_mae(**options):
    cfg, mcfg = resolve_config("mae", {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2, **options})
    return build_method(cfg, mcfg, INFO)


@pytest.mark.parametrize("ratio,length", [(0.75, 16), (0.5, 16), (0.25, 64), (0.9, 64), (0.6, 10)])
def test_mask_hides_round_ratio_patches_per_sample(ratio, length):
    keep, mask = random_mask(32, length, ratio, torch.Generator().manual_seed(0))
    hidden = round(ratio * length)
    assert mask.dtype == torch.bool and mask.shape == (32, length)
    assert (mask.sum(1) == hidden).all()
    assert keep.shape == (32, length - hidden)
    assert not mask.gather(1, keep).any()  # kept = exactly the visible patches
    assert len({tuple(row.tolist()) for row in mask}) > 1  # samples get different masks


def test_mask_reproducible_from_generator_seed():
    a = random_mask(8, 16, 0.75, torch.Generator().manual_seed(3))
    b = random_mask(8, 16, 0.75, torch.Generator().manual_seed(3))
    c = random_mask(8, 16, 0.75, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_mask_ratio_that_hides_nothing_or_everything_fails():
    with pytest.raises(ReprlearnError):
        random_mask(2, 4, 0.1)
    with pytest.raises(ReprlearnError):
        random_mask(2, 4, 0.95)


def test_masked_patch_mse_ignores_visible_patches():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 16, 12, generator=g), torch.randn(4, 16, 12, generator=g)
    _, mask = random_mask(4, 16, 0.75, g)
    base = masked_patch_mse(pred, target, mask)
    naive = sum(((pred[i, l] - target[i, l]) ** 2).mean() for i in range(4) for l in range(16) if mask[i, l])
    torch.testing.assert_close(base, naive / mask.sum())
    vis = ~mask
    pred2, target2 = pred.clone(), target.clone()
    pred2[vis] += 5.0
    target2[vis] = float("nan")
    torch.testing.assert_close(masked_patch_mse(pred2, target2, mask), base)
    pred3 = pred.clone()
    i, l = mask.nonzero()[0].tolist()
    pred3[i, l] += 1.0
    assert masked_patch_mse(pred3, target, mask) != base
    # per-sample: each image's mean over its own hidden patches; the mean of those is the total here
    per = masked_patch_mse(pred, target, mask, per_sample=True)
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), base)  # every image hides the same number of patches
    # no gradient reaches a visible patch
    p = pred.clone().requires_grad_()
    masked_patch_mse(p, target, mask).backward()
    assert (p.grad[vis] == 0).all() and (p.grad[mask].abs().sum(-1) > 0).all()


def test_patchify_round_trip_and_token_order():
    x = torch.rand(2, 3, 8, 8)
    p = patchify(x, 2)
    assert p.shape == (2, 16, 12)
    torch.testing.assert_close(unpatchify(p, 2, 3), x)
    # patch l is grid cell (l // 4, l % 4), the ViT's row-major token order
    torch.testing.assert_close(p[:, 6].reshape(2, 2, 2, 3).permute(0, 3, 1, 2), x[:, :, 2:4, 4:6])
    t = patch_targets(p, normalize=True)
    torch.testing.assert_close(t.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)


def test_encoder_sees_only_visible_patches():
    ratio = 0.75
    mae = small_mae(mask_ratio=ratio)
    vit = mae.encoder.backbone
    seen = []
    vit.blocks[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    views = mae.views(torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8), torch.Generator().manual_seed(0))
    out = mae.loss(views)
    assert set(out) == {"loss", "mse_masked"} and torch.isfinite(out["loss"])
    assert seen == [1 + round((1 - ratio) * vit.num_patches)] == [5]
    out["loss"].backward()
    assert mae.decoder.mask_token.grad is not None and vit.patch_embed.weight.grad is not None


def test_hooks_shapes_range_and_determinism():
    mae = small_mae().eval()
    x = torch.rand(6, 1, 8, 8)
    rows = mae.figure_rows(x, labels=None)
    assert list(rows) == ["input", "masked", "reconstruction"]
    for v in rows.values():
        assert v.shape == x.shape and v.min() >= 0 and v.max() <= 1
    recon = mae.reconstruct(x)
    torch.testing.assert_close(recon, rows["reconstruction"])
    visible = rows["masked"] == x  # greyed patches differ (x is never exactly 0.5 here)
    torch.testing.assert_close(recon[visible], x[visible])
    assert visible.float().mean().item() == pytest.approx(0.25)
    score = mae.anomaly_score(x)
    assert score.shape == (6,) and torch.isfinite(score).all()
    torch.testing.assert_close(score, mae.anomaly_score(x))
    assert Interpolates not in abilities(METHODS.get("mae"))  # no latent to walk in


def test_non_vit_backbone_fails():
    with pytest.raises(ReprlearnError, match="ViT backbone"):
        small_mae(backbone="cnn")


def test_smoke(tmp_path):
    run = reprlearn.train("mae", out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128,
                          decoder_dim=32, decoder_depth=1, decoder_heads=2)
    assert_loss_went_down(run)
    assert (run / "checkpoints" / "last.ckpt").is_file()
    encoder = reprlearn.load(run)
    assert encoder(torch.rand(2, 1, 8, 8)).shape == (2, encoder.feature_dim)
