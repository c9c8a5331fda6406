"""Pretext-task methods: rotation, jigsaw, colorization, inpainting (helpers, refusals, smoke runs)."""

import itertools

import numpy as np
import pytest
import torch

import reprlearn
from fakedata import assert_loss_went_down
from reprlearn.api import build_method, resolve_config
from reprlearn.errors import ReprlearnError
from reprlearn.methods import DataInfo
from reprlearn.methods.colorization import grayscale3, rgb_to_yuv
from reprlearn.methods.inpainting import crop_squares, masked_l2, random_square
from reprlearn.methods.jigsaw import from_tiles, permutation_set, shuffle_tiles, to_tiles, unshuffle_tiles
from reprlearn.methods.rotation import rotate_batch

GRAY = DataInfo(channels=1, image_size=8, num_classes=10, mean=[0.3], std=[0.4])
RGB = DataInfo(channels=3, image_size=8, num_classes=10, mean=[0.4, 0.5, 0.6], std=[0.2, 0.2, 0.2])


def make(name, info, **options):
    cfg, mcfg = resolve_config(name, options)
    return build_method(cfg, mcfg, info)


def images(n, info, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), generator=g,
                         dtype=torch.uint8)


# ---------------------------------------------------------------- rotation


def test_rotate_batch_round_trip_and_matches_rot90():
    x = torch.rand(12, 3, 6, 6)
    k = torch.arange(12) % 4
    r = rotate_batch(x, k)
    for i in range(12):
        torch.testing.assert_close(r[i], torch.rot90(x[i], int(k[i]), dims=(1, 2)))
    torch.testing.assert_close(rotate_batch(r, 4 - k), x)
    assert not torch.equal(r[1], x[1])


def test_rotation_labels():
    m = make("rotation", GRAY)
    x = images(64, GRAY)
    v, k = m.views(x, torch.Generator().manual_seed(0))  # all four rotations: exactly balanced
    assert v.shape == (256, 1, 8, 8) and torch.equal(torch.bincount(k, minlength=4), torch.full((4,), 64))
    torch.testing.assert_close(rotate_batch(v, 4 - k), (x.float() / 255).repeat(4, 1, 1, 1))
    m = make("rotation", GRAY, all_rotations=False)
    v, k = m.views(images(2000, GRAY), torch.Generator().manual_seed(1))
    counts = torch.bincount(k, minlength=4)
    assert len(v) == 2000 and counts.min() > 400 and counts.max() < 600
    assert m.loss((v[:32], k[:32]))["loss"].isfinite()


# ---------------------------------------------------------------- jigsaw


def _greedy_by_hand(first, n_tiles, count):
    """Noroozi & Favaro's Algorithm 1 in plain loops: all permutations in itertools order, start from
    ``first``, then repeatedly add the unchosen one with the largest summed Hamming distance (first wins ties)."""
    every = list(itertools.permutations(range(n_tiles)))
    chosen = [tuple(first)]
    while len(chosen) < count:
        best, best_sum = None, -1
        for q in every:
            if q in chosen:
                continue
            total = sum(sum(a != b for a, b in zip(p, q)) for p in chosen)
            if total > best_sum:
                best, best_sum = q, total
        chosen.append(best)
    return [list(q) for q in chosen]


@pytest.mark.parametrize("count", [2, 5, 11, 24])
@pytest.mark.parametrize("seed", [0, 3])
def test_permutation_set_is_algorithm_1(seed, count):
    p = permutation_set(2, count, seed=seed)
    assert p.shape == (count, 4) and p.dtype == torch.long
    assert p.tolist() == _greedy_by_hand(p[0].tolist(), 4, count)
    assert torch.equal(permutation_set(2, count, seed=seed), p)  # reproducible


def test_permutation_set_first_draw_follows_the_seed():
    firsts = {tuple(permutation_set(3, 1, seed=s)[0].tolist()) for s in range(5)}
    assert len(firsts) > 1


def test_permutation_set_is_distinct_and_far_apart():
    count = 30
    p = permutation_set(3, count)
    assert len({tuple(r) for r in p.tolist()}) == count
    assert (p.sort(1).values == torch.arange(9)).all()
    off = ~torch.eye(count, dtype=torch.bool)

    def mean_distance(perms):
        return (perms[:, None] != perms[None]).sum(-1).float()[off].mean()

    # two random permutations of 9 differ in 9 · (1 − 1/9) = 8 places on average; Algorithm 1 maximises
    # the summed distance (not the minimum), so its mean beats every one of 20 random sets of the same size
    g = torch.Generator().manual_seed(0)
    random = [mean_distance(torch.stack([torch.randperm(9, generator=g) for _ in range(count)])) for _ in range(20)]
    assert 7.9 < sum(random) / len(random) < 8.1
    assert mean_distance(p) > max(random) + 0.1, (mean_distance(p), max(random))


def test_tiles_shuffle_round_trip():
    x = torch.rand(5, 3, 9, 9)
    t = to_tiles(x, 3)
    assert t.shape == (5, 9, 3, 3, 3)
    torch.testing.assert_close(t[:, 5], x[:, :, 3:6, 6:9])  # row-major tile order
    torch.testing.assert_close(from_tiles(t, 3), x)
    perms = permutation_set(3, 100)[torch.tensor([0, 7, 13, 42, 99])]
    s = shuffle_tiles(t, perms)
    torch.testing.assert_close(s[1, 0], t[1, perms[1, 0]])
    torch.testing.assert_close(from_tiles(unshuffle_tiles(s, perms), 3), x)


def test_jigsaw_refuses_indivisible_grid():
    with pytest.raises(ReprlearnError):
        make("jigsaw", GRAY, grid=3)
    m = make("jigsaw", GRAY)
    assert m.grid == 2 and len(m.perms) == 24


# ---------------------------------------------------------------- colorization


def test_colorization_refuses_grayscale(tmp_path):
    with pytest.raises(ReprlearnError) as e:
        reprlearn.train("colorization", data="digits", out=tmp_path / "r", epochs=1, eval=False, progress=False)
    assert "colour" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("target", ["l2", "classes"])
def test_colorization_input_is_gray(target):
    m = make("colorization", RGB, target=target)
    x = images(16, RGB)
    gray, t = m.views(x, torch.Generator().manual_seed(0))
    assert gray.shape == (16, 3, 8, 8)
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 0], gray[:, 2])
    xf = x.float() / 255
    g0, g1 = grayscale3(xf), grayscale3(xf.flip(3))
    assert all(torch.allclose(gray[i], g0[i]) or torch.allclose(gray[i], g1[i]) for i in range(16))
    assert t.shape == ((16, 2, 8, 8) if target == "l2" else (16, 8, 8))
    assert m.loss((gray, t))["loss"].isfinite()
    # a grey pixel has no chroma
    assert rgb_to_yuv(torch.full((1, 3, 2, 2), 0.3))[:, 1:].abs().max() < 1e-6


# ---------------------------------------------------------------- inpainting


def test_inpainting_mask_and_crop():
    mask, top, left = random_square(10, 8, 4, torch.Generator().manual_seed(0))
    assert mask.shape == (10, 1, 8, 8) and (mask.flatten(1).sum(1) == 16).all()
    x = torch.rand(10, 2, 8, 8)
    c = crop_squares(x, top, left, 4)
    for i in range(10):
        t, l = int(top[i]), int(left[i])
        torch.testing.assert_close(c[i], x[i, :, t:t + 4, l:l + 4])
        assert mask[i, 0, t:t + 4, l:l + 4].all()


@pytest.mark.parametrize("adv", [0.0, 0.1])
def test_inpainting_loss_ignores_pixels_outside_mask(adv):
    torch.manual_seed(0)
    m = make("inpainting", GRAY, adversarial_weight=adv).eval()
    masked, x, mask, top, left = m.views(images(16, GRAY), torch.Generator().manual_seed(0))
    assert (masked[mask] == GRAY.mean[0]).all() and torch.equal(masked[~mask], x[~mask])
    base = m.loss((masked, x, mask, top, left))
    x2 = x.clone()
    x2[~mask.expand_as(x)] = torch.rand(int((~mask).sum()))
    other = m.loss((masked, x2, mask, top, left))
    torch.testing.assert_close(other["l2"], base["l2"])
    x3 = x.clone()
    x3[mask.expand_as(x)] += 0.5
    assert m.loss((masked, x3, mask, top, left))["l2"] != base["l2"]
    pred, target = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    mk = random_square(4, 8, 3, torch.Generator().manual_seed(2))[0]
    p2 = torch.where(mk, pred, pred + 1)
    torch.testing.assert_close(masked_l2(p2, target, mk), masked_l2(pred, target, mk))


def test_inpainting_adversarial_one_backward_trains_both():
    torch.manual_seed(0)
    m = make("inpainting", GRAY, adversarial_weight=1.0).eval()
    views = m.views(images(16, GRAY), torch.Generator().manual_seed(0))
    out = m.loss(views)
    # the discriminator's parameters get only the discriminator loss's gradient
    d_params = list(m.discriminator.parameters())
    g_disc = torch.autograd.grad(out["loss"], d_params, retain_graph=True)
    disc_only = torch.autograd.grad(_disc_loss(m, views), d_params)
    for a, b in zip(g_disc, disc_only):
        torch.testing.assert_close(a, b)
    assert any(p.grad is None for p in m.decoder.parameters())  # nothing accumulated yet
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d_params)


def _disc_loss(m, views):
    import torch.nn.functional as F

    masked, x, mask, top, left = views
    pred = torch.sigmoid(m.decoder(m.encoder(masked)))
    real, fake = crop_squares(x, top, left, m.side), crop_squares(pred, top, left, m.side).detach()
    dr, df = m.discriminator(real), m.discriminator(fake)
    return 0.5 * (F.binary_cross_entropy_with_logits(dr, torch.ones_like(dr))
                  + F.binary_cross_entropy_with_logits(df, torch.zeros_like(df)))


# ---------------------------------------------------------------- smoke runs


@pytest.mark.parametrize("name", ["rotation", "jigsaw", "inpainting"])
def test_smoke(tmp_path, name):
    run = reprlearn.train(name, out=tmp_path / "r", epochs=2, eval=False, progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "checkpoints").is_dir()


def test_smoke_colorization(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "colour.npz"
    np.savez(path, images=rng.integers(0, 256, (200, 8, 8, 3), dtype=np.uint8),
             labels=rng.integers(0, 4, 200))
    run = reprlearn.train("colorization", data=str(path), out=tmp_path / "r", epochs=2, eval=False,
                          progress=False, batch_size=128)
    assert_loss_went_down(run)
    assert (run / "checkpoints").is_dir()
