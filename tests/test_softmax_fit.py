"""The linear probe's own L-BFGS (evaluate/softmax_fit.py) and its products (evaluate/fixed_rows.py),
against independent references: float64 products, Nocedal & Wright's two-loop recursion, the
strong Wolfe conditions on the whole objective, and scipy's L-BFGS-B on an objective written
from the formula in numpy."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special
import torch

from reprlearn.evaluate import softmax_fit
from reprlearn.evaluate.fixed_rows import FixedRows


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("m", [1, 10, 17])
def test_fixed_rows_products_equal_float64_ones(onednn, m):
    rng = np.random.default_rng(m)
    x, rows, left = rng.normal(size=(300, 70)), rng.normal(size=(m, 70)), rng.normal(size=(m, 300))
    fixed = FixedRows(torch.tensor(x, dtype=torch.float32), onednn=onednn)
    assert fixed.onednn == (onednn and torch.backends.mkldnn.is_available())
    got_times = fixed.times(torch.tensor(rows, dtype=torch.float32)).numpy()
    got_left = fixed.left(torch.tensor(left, dtype=torch.float32)).numpy()
    assert got_times.shape == (300, m) and got_left.shape == (m, 70)
    np.testing.assert_allclose(got_times, x @ rows.T, atol=1e-4)
    np.testing.assert_allclose(got_left, left @ x, atol=1e-4)


def _two_loop(g, pairs, gamma):
    """H g by the two-loop recursion, Nocedal & Wright (2006), Algorithm 7.4, pairs oldest first."""
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alpha = (s @ q) / (y @ s)
        q -= alpha * y
        alphas.append(alpha)
    r = gamma * q
    for (s, y), alpha in zip(pairs, reversed(alphas)):
        beta = (y @ r) / (y @ s)
        r += s * (alpha - beta)
    return r


def test_compact_inverse_hessian_equals_the_two_loop_recursion():
    rng = np.random.default_rng(0)
    p = 12
    pairs = []
    for s in rng.normal(size=(9, p)):  # each pair from another convex Hessian, as along a real path:
        a = rng.normal(size=(p, p))    # s.y > 0, and S^T Y is not symmetric
        pairs.append((s, (a @ a.T + 0.5 * np.eye(p)) @ s))
    history = softmax_fit.History(size=4, length=p, device="cpu")  # wraps round: 9 pairs in 4 slots
    g = rng.normal(size=p)
    for i, (s, y) in enumerate(pairs):
        history.add(torch.tensor(s), torch.tensor(y))
        kept = pairs[max(0, i - 3):i + 1]
        gamma = (s @ y) / (y @ y)
        want = _two_loop(g, kept, gamma)
        assert history.gamma == pytest.approx(gamma, rel=1e-12)
        np.testing.assert_allclose(history.times(torch.tensor(g)).numpy(), want, rtol=1e-9, atol=1e-12)
        s_all, y_all = (torch.tensor(np.array(t)) for t in zip(*kept))
        np.testing.assert_allclose(softmax_fit.inverse_hessian_times(torch.tensor(g), s_all, y_all, gamma).numpy(),
                                   want, rtol=1e-9, atol=1e-12)
        # the secant equation of the newest pair: H y = s
        np.testing.assert_allclose(history.times(torch.tensor(y)).numpy(), s, rtol=1e-8, atol=1e-10)


def _objective(flat, x, y, classes, l2):
    """mean_i CE(x_i W + b, y_i) + l2/2 ||W||^2 and its gradient, in numpy from the formula."""
    w = flat.reshape(x.shape[1] + 1, classes)
    logits = x @ w[:-1] + w[-1]
    logp = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    n = len(y)
    loss = -logp[np.arange(n), y].mean() + 0.5 * l2 * (w[:-1] ** 2).sum()
    g = np.exp(logp)
    g[np.arange(n), y] -= 1
    grad = np.vstack([x.T @ g / n + l2 * w[:-1], g.sum(0) / n])
    return loss, grad.ravel()


@pytest.mark.parametrize("l2", [1e-1, 1e-3])
def test_fit_reaches_scipys_optimum(l2):
    rng = np.random.default_rng(1)
    classes, n, d = 4, 200, 6
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) + rng.normal(size=(classes, d))[y]
    want = scipy.optimize.minimize(_objective, np.zeros((d + 1) * classes), args=(x, y, classes, l2), jac=True,
                                   method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    fixed = FixedRows(torch.tensor(x))  # float64: the products are torch's GEMMs
    w = softmax_fit.fit_softmax(fixed, torch.tensor(y), classes, l2, max_iter=500, tolerance_grad=1e-10,
                                tolerance_change=1e-14)
    got_loss, got_grad = _objective(w.numpy().ravel(), x, y, classes, l2)
    assert got_loss == pytest.approx(want.fun, abs=1e-10)
    assert np.abs(got_grad).max() < 1e-7
    np.testing.assert_allclose(w.numpy().ravel(), want.x, atol=1e-4)
    # a warm start at the optimum stays there
    again = softmax_fit.fit_softmax(fixed, torch.tensor(y), classes, l2, w, max_iter=500)
    np.testing.assert_allclose(again.numpy(), w.numpy(), atol=1e-8)


def test_line_search_meets_the_strong_wolfe_conditions():
    rng = np.random.default_rng(2)
    classes, n, d, l2 = 3, 150, 5, 0.01
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)) * 3
    fixed = FixedRows(torch.tensor(x))
    onehot = torch.nn.functional.one_hot(torch.tensor(y), classes).double()
    w = torch.tensor(rng.normal(size=(d + 1, classes)))
    loss0, grad0 = _objective(w.numpy().ravel(), x, y, classes, l2)
    for scale in (1e-3, 1.0, 50.0):  # first trials far too short, about right, far too long
        d_w = torch.tensor(-grad0.reshape(d + 1, classes))
        slope0 = float(-(grad0 @ grad0))
        found = softmax_fit._line_search(softmax_fit.logits_of(fixed, w), softmax_fit.logits_of(fixed, d_w),
                                         onehot, w, d_w, l2, loss0, slope0, scale)
        step, logits, probs, loss = found
        at = w.numpy().ravel() + step * d_w.numpy().ravel()
        want_loss, want_grad = _objective(at, x, y, classes, l2)
        assert loss == pytest.approx(want_loss, rel=1e-10)
        np.testing.assert_allclose(logits.numpy(), x @ at.reshape(d + 1, classes)[:-1] + at[-classes:], atol=1e-10)
        assert want_loss <= loss0 + softmax_fit.WOLFE_C1 * step * slope0
        assert abs(want_grad @ d_w.numpy().ravel()) <= softmax_fit.WOLFE_C2 * abs(slope0)
