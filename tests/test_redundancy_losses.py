"""Barlow Twins, VICReg, KoLeo and Sinkhorn–Knopp against naive loops written from their papers'
formulas, known facts about each, and gradchecks in float64."""

import math

import pytest
import torch

from reprlearn import losses


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---------------------------------------------------------------- KoLeo


def naive_koleo(x, eps=1e-8):
    rows = [[float(v) for v in r] for r in x]
    unit = [[v / math.sqrt(sum(w * w for w in r)) for v in r] for r in rows]
    total = 0.0
    for i, u in enumerate(unit):
        nearest = min(math.sqrt(sum((a - b) ** 2 for a, b in zip(u, w))) for j, w in enumerate(unit) if j != i)
        total += -math.log(nearest + eps)
    return total / len(unit)


@pytest.mark.parametrize("n,d", [(2, 3), (7, 4), (16, 8)])
def test_koleo_matches_formula(n, d):
    x = _randn(n, d, seed=n)
    assert float(losses.koleo_loss(x)) == pytest.approx(naive_koleo(x), rel=1e-10)


def test_koleo_known_facts():
    # the rows' norms do not matter (L2-normalised first)
    x = _randn(9, 5, seed=1)
    scale = torch.rand(9, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(losses.koleo_loss(x * scale), losses.koleo_loss(x))
    # the 2d unit vectors of a regular k-gon: every nearest neighbour at 2 sin(pi / k)
    for k in (3, 6, 10):
        a = torch.arange(k, dtype=torch.float64) * 2 * math.pi / k
        polygon = torch.stack([a.cos(), a.sin()], dim=1)
        assert float(losses.koleo_loss(polygon)) == pytest.approx(-math.log(2 * math.sin(math.pi / k)), abs=1e-7)
    # a duplicated row is its own copy's neighbour at distance 0, floored at 1e-6: a large finite penalty
    dup = torch.cat([x[:1], x[:1]])
    assert float(losses.koleo_loss(dup)) == pytest.approx(-math.log(1e-6 + 1e-8), rel=1e-9)
    with pytest.raises(ValueError, match="two rows"):
        losses.koleo_loss(x[:1])


def test_koleo_gradcheck():
    x = _randn(8, 5, seed=2).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.koleo_loss, (x,))


# ---------------------------------------------------------------- Sinkhorn–Knopp


def naive_sinkhorn(scores, iterations, epsilon):
    """Cuturi's alternate scaling of P = exp(S / eps) written out with python floats."""
    s = [[float(v) for v in r] for r in scores]
    b, k = len(s), len(s[0])
    p = [[math.exp(v / epsilon) for v in r] for r in s]
    total = sum(map(sum, p))
    p = [[v / total for v in r] for r in p]
    for _ in range(iterations):
        col = [sum(p[i][j] for i in range(b)) for j in range(k)]
        p = [[p[i][j] / col[j] / k for j in range(k)] for i in range(b)]
        row = [sum(r) for r in p]
        p = [[v / row[i] / b for v in p[i]] for i in range(b)]
    return torch.tensor([[v * b for v in r] for r in p], dtype=torch.float64)


@pytest.mark.parametrize("b,k,iterations,eps", [(6, 3, 3, 0.05), (10, 4, 1, 0.5), (8, 8, 5, 0.1)])
def test_sinkhorn_matches_the_alternate_scaling(b, k, iterations, eps):
    scores = torch.tanh(_randn(b, k, seed=b + k))  # cosines
    got = losses.sinkhorn_knopp(scores, iterations=iterations, epsilon=eps)
    torch.testing.assert_close(got, naive_sinkhorn(scores, iterations, eps), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("b,k", [(32, 4), (64, 16), (12, 12)])
def test_sinkhorn_marginals(b, k):
    scores = torch.tanh(_randn(b, k, seed=b * k))
    q = losses.sinkhorn_knopp(scores, iterations=300, epsilon=0.1)
    # every sample's code is a distribution, exactly (the last step normalises the rows)
    torch.testing.assert_close(q.sum(dim=1), torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)
    # every prototype gets B/K of the batch once converged
    torch.testing.assert_close(q.sum(dim=0), torch.full((k,), b / k, dtype=torch.float64), rtol=1e-6, atol=0)
    # 3 iterations (SwAV's default): rows exact, columns already near B/K
    q3 = losses.sinkhorn_knopp(scores, iterations=3, epsilon=0.1)
    torch.testing.assert_close(q3.sum(dim=1), torch.ones(b, dtype=torch.float64), rtol=0, atol=1e-12)
    assert (q3.sum(dim=0) - b / k).abs().max() < 0.35 * b / k


def test_sinkhorn_is_the_entropic_transport_plan():
    # the optimum of max <Q, S> + eps H(Q) on the polytope is Q = diag(u) exp(S / eps) diag(v):
    # log Q − S / eps is a row term plus a column term, so its double-centred part vanishes
    scores = torch.tanh(_randn(20, 5, seed=3))
    eps = 0.2
    r = torch.log(losses.sinkhorn_knopp(scores, iterations=200, epsilon=eps)) - scores / eps
    interaction = r - r.mean(dim=1, keepdim=True) - r.mean(dim=0, keepdim=True) + r.mean()
    assert interaction.abs().max() < 1e-9
    # a spread of 200 in S / eps stays finite (float32 exp overflows at 89): exp after subtracting the maximum
    q = losses.sinkhorn_knopp((scores * 5).float(), iterations=3, epsilon=0.05)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(dim=1), torch.ones(20))
    assert q.dtype == torch.float32 and not q.requires_grad


# ---------------------------------------------------------------- Barlow Twins


def naive_barlow(z_a, z_b, lam, eps=1e-5):
    n, d = z_a.shape
    a, b = z_a.tolist(), z_b.tolist()

    def standardised(rows, j):
        col = [r[j] for r in rows]
        mean = sum(col) / n
        var = sum((v - mean) ** 2 for v in col) / n
        return [(v - mean) / math.sqrt(var + eps) for v in col]

    za = [standardised(a, j) for j in range(d)]
    zb = [standardised(b, j) for j in range(d)]
    total = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(za[i][k] * zb[j][k] for k in range(n)) / n
            total += (1 - c_ij) ** 2 if i == j else lam * c_ij ** 2
    return total


@pytest.mark.parametrize("n,d,lam", [(16, 5, 5e-3), (9, 3, 0.5), (32, 8, 0.0)])
def test_barlow_twins_matches_formula(n, d, lam):
    z_a, z_b = _randn(n, d, seed=n), _randn(n, d, seed=n + 1)
    got = losses.barlow_twins_loss(z_a, z_b, lambda_=lam)
    assert float(got) == pytest.approx(naive_barlow(z_a, z_b, lam), rel=1e-10)


def test_barlow_twins_known_facts():
    z = _randn(64, 4, seed=5)
    # one view twice: the diagonal is 1 up to eps, so with lambda = 0 the loss is ~0
    assert float(losses.barlow_twins_loss(z, z, lambda_=0.0)) < 1e-6
    # decorrelated, perfectly aligned views (orthogonal columns, centred): L ~ 0 for any lambda
    q, _ = torch.linalg.qr(_randn(64, 4, seed=6) - _randn(64, 4, seed=6).mean(0))
    q = q - q.mean(0)
    assert float(losses.barlow_twins_loss(q, 3 * q + 1, lambda_=1.0)) < 1e-3
    # one view negated: C = -I, each diagonal term (1 - (-1))^2 = 4
    assert float(losses.barlow_twins_loss(q, -q, lambda_=1.0)) == pytest.approx(16.0, rel=1e-3)


def test_barlow_twins_gradcheck():
    z_a, z_b = _randn(10, 4, seed=7).requires_grad_(True), _randn(10, 4, seed=8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: losses.barlow_twins_loss(a, b, lambda_=0.3), (z_a, z_b))


# ---------------------------------------------------------------- VICReg


def naive_vicreg(z_a, z_b, lam, mu, nu, eps=1e-4, gamma=1.0):
    n, d = z_a.shape
    a, b = z_a.tolist(), z_b.tolist()
    inv = sum((a[k][j] - b[k][j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def var_cov(rows):
        means = [sum(r[j] for r in rows) / n for j in range(d)]
        cov = [[sum((r[i] - means[i]) * (r[j] - means[j]) for r in rows) / (n - 1) for j in range(d)]
               for i in range(d)]
        v = sum(max(0.0, gamma - math.sqrt(cov[j][j] + eps)) for j in range(d)) / d
        c = sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
        return v, c

    (v_a, c_a), (v_b, c_b) = var_cov(a), var_cov(b)
    return lam * inv + mu * (v_a + v_b) / 2 + nu * (c_a + c_b), (inv, (v_a + v_b) / 2, c_a + c_b)


@pytest.mark.parametrize("n,d,scale", [(8, 3, 0.3), (16, 6, 1.0), (5, 4, 2.0)])
def test_vicreg_matches_formula(n, d, scale):
    # scale 0.3: every std below gamma (hinge active); 2.0: most above (hinge silent)
    z_a, z_b = scale * _randn(n, d, seed=n), scale * _randn(n, d, seed=n + 2)
    want, (s, v, c) = naive_vicreg(z_a, z_b, 25.0, 25.0, 1.0)
    assert float(losses.vicreg_loss(z_a, z_b)) == pytest.approx(want, rel=1e-10)
    got_terms = losses.vicreg_terms(z_a, z_b)
    for got, expected in zip(got_terms, (s, v, c)):
        assert float(got) == pytest.approx(expected, rel=1e-10, abs=1e-14)
    want2, _ = naive_vicreg(z_a, z_b, 1.0, 3.0, 0.5)
    assert float(losses.vicreg_loss(z_a, z_b, sim_weight=1.0, var_weight=3.0, cov_weight=0.5)) == pytest.approx(
        want2, rel=1e-10)


def test_vicreg_known_facts():
    # a collapsed batch (every row the same): invariance 0, variance hinge ~gamma, covariance 0
    z = _randn(1, 5, seed=9).expand(12, 5)
    s, v, c = losses.vicreg_terms(z, z)
    assert float(s) == 0 and float(v) == pytest.approx(1 - math.sqrt(1e-4), rel=1e-9) and float(c) < 1e-30
    # whitened views (identity covariance): no variance or covariance penalty
    x = _randn(50, 4, seed=10)
    x = x - x.mean(0)
    w = torch.linalg.cholesky(x.T @ x / 49)
    white = x @ torch.linalg.inv(w).T
    _, v, c = losses.vicreg_terms(white, white)
    assert float(v) == 0.0 and float(c) < 1e-20


def test_vicreg_gradcheck():
    z_a, z_b = _randn(10, 4, seed=11).requires_grad_(True), (0.5 * _randn(10, 4, seed=12)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: losses.vicreg_loss(a, b, 2.0, 3.0, 0.7), (z_a, z_b))
