"""Each loss against a naive loop written from its formula, and gradchecks in float64."""

import math

import pytest
import torch

from reprlearn import losses
from reprlearn.methods.two_view_losses import mine_negatives, two_view_loss


def cos(u, v):
    return float(torch.dot(u, v) / (u.norm() * v.norm()))


def naive_nt_xent(z_a, z_b, t):
    z = torch.cat([z_a, z_b])
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        p = (i + n) % n2
        num = math.exp(cos(z[i], z[p]) / t)
        den = sum(math.exp(cos(z[i], z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def naive_info_nce(q, k, queue, t):
    total = 0.0
    negatives = list(k) + (list(queue) if queue is not None else [])
    for i in range(len(q)):
        num = math.exp(cos(q[i], k[i]) / t)
        den = sum(math.exp(cos(q[i], c) / t) for c in negatives)
        total += -math.log(num / den)
    return total / len(q)


@pytest.mark.parametrize("n,d,t", [(2, 3, 0.5), (5, 8, 0.1), (7, 4, 1.0), (16, 32, 0.2)])
def test_nt_xent_matches_formula(n, d, t):
    g = torch.Generator().manual_seed(n * d)
    z_a, z_b = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    assert losses.nt_xent(z_a, z_b, temperature=t).item() == pytest.approx(naive_nt_xent(z_a, z_b, t), rel=1e-5)


@pytest.mark.parametrize("n,d,k,t", [(3, 4, 0, 0.07), (6, 5, 10, 0.2), (8, 16, 3, 1.0)])
def test_info_nce_matches_formula(n, d, k, t):
    g = torch.Generator().manual_seed(n + k)
    q, key = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    queue = torch.randn(k, d, generator=g) if k else None
    want = naive_info_nce(q, key, queue, t)
    assert losses.info_nce(q, key, queue, temperature=t).item() == pytest.approx(want, rel=1e-5)


def test_margin_contrastive_matches_formula():
    g = torch.Generator().manual_seed(1)
    e1, e2 = torch.randn(9, 4, generator=g), torch.randn(9, 4, generator=g) * 0.3
    pos = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 0])
    m = 1.5
    want = 0.0
    for i in range(9):
        dist = math.sqrt(float(((e1[i] - e2[i]) ** 2).sum()))
        want += dist**2 if pos[i] else max(0.0, m - dist) ** 2
    assert losses.margin_contrastive(e1, e2, pos, margin=m).item() == pytest.approx(want / 9, rel=1e-5)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_matches_formula(distance):
    g = torch.Generator().manual_seed(2)
    a, p, n = (torch.randn(10, 6, generator=g) for _ in range(3))
    alpha = 0.3

    def d(u, v):
        return math.sqrt(float(((u - v) ** 2).sum())) if distance == "euclidean" else 1 - cos(u, v)

    want = sum(max(0.0, d(a[i], p[i]) - d(a[i], n[i]) + alpha) for i in range(10)) / 10
    assert losses.triplet(a, p, n, margin=alpha, distance=distance).item() == pytest.approx(want, rel=1e-5)


def test_gradcheck_all_losses():
    g = torch.Generator().manual_seed(3)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(lambda a, b: losses.nt_xent(a, b, 0.3), (r(4, 5), r(4, 5)))
    assert torch.autograd.gradcheck(lambda q, k, u: losses.info_nce(q, k, u, 0.2), (r(4, 5), r(4, 5), r(6, 5)))
    pos = torch.tensor([1, 0, 1, 0])
    assert torch.autograd.gradcheck(lambda a, b: losses.margin_contrastive(a, b, pos, 2.0), (r(4, 3), r(4, 3)))
    for dist in ("euclidean", "cosine"):
        assert torch.autograd.gradcheck(lambda a, p, n: losses.triplet(a, p, n, 5.0, dist), (r(4, 3), r(4, 3), r(4, 3)))


def test_perfect_pairs_give_low_nt_xent():
    z = torch.eye(8)
    assert losses.nt_xent(z, z, 0.05) < 1e-3 < losses.nt_xent(z, torch.roll(z, 1, 0), 0.05)


def naive_mining(a, b, mining):
    """For each anchor i: among j != i, the closest b[j] farther than the positive b[i] (semi-hard),
    else, or with hard mining, the closest b[j] (plain loops over the distances)."""
    picks = []
    for i in range(len(a)):
        d_pos = float((a[i] - b[i]).norm())
        others = [(float((a[i] - b[j]).norm()), j) for j in range(len(b)) if j != i]
        semi = [(d, j) for d, j in others if d > d_pos]
        picks.append(min(semi)[1] if semi and mining == "semi-hard" else min(others)[1])
    return picks


def test_semi_hard_mining_picks_the_semi_hard_negative():
    # 1-D embeddings; anchor 0 at 0 with its positive at 0.3: b[1] (0.1 away) is harder than the positive,
    # b[2] (0.5) and b[3] (0.7) are semi-hard (0.3 < d < 0.3 + margin 0.5), b[4] (1.2) is easy
    a = torch.tensor([[0.0], [0.15], [-0.6], [0.9], [1.4]])
    b = torch.tensor([[0.3], [0.1], [-0.5], [0.7], [1.2]])
    semi, hard = mine_negatives(a, b, "semi-hard"), mine_negatives(a, b, "hard")
    assert int(semi[0]) == 2 and int(hard[0]) == 1
    assert semi.tolist() == naive_mining(a, b, "semi-hard") and hard.tolist() == naive_mining(a, b, "hard")
    g = torch.Generator().manual_seed(4)  # a random batch, against the same loops
    a = torch.nn.functional.normalize(torch.randn(32, 8, generator=g), dim=1)
    b = torch.nn.functional.normalize(a + 0.3 * torch.randn(32, 8, generator=g), dim=1)
    assert mine_negatives(a, b, "semi-hard").tolist() == naive_mining(a, b, "semi-hard")
    for kind in ("margin", "triplet"):
        assert torch.isfinite(two_view_loss(kind, a, b, 0.5, "semi-hard"))


def test_semi_hard_mining_falls_back_to_the_hardest_when_none_is_farther():
    # positives on the unit circle, each anchor at -0.5 x its positive: the positive is 1.5 away, the
    # negatives sqrt(1.25) and 0.5, so none is semi-hard and the hardest is the opposite positive
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    a = -0.5 * b
    semi = mine_negatives(a, b, "semi-hard")
    assert semi.tolist() == naive_mining(a, b, "hard") == [2, 3, 0, 1]


# ------------------------------------------------------------------ Wasserstein critic (WDGRL)


def test_gradient_penalty_of_a_linear_critic_is_its_slope_off_one():
    """f(z) = w·z + b has gradient w everywhere: GP = (||w|| - 1)² whatever the interpolates."""
    torch.manual_seed(0)
    critic = torch.nn.Linear(3, 1).double()
    s, t, alpha = torch.randn(6, 3).double(), torch.randn(6, 3).double(), torch.rand(6, 1).double()
    w = critic.weight.detach()[0]
    expected = (math.sqrt(sum(float(v) ** 2 for v in w)) - 1) ** 2
    assert abs(float(losses.gradient_penalty(critic, s, t, alpha)) - expected) < 1e-12


def test_gradient_penalty_of_a_quadratic_critic_by_hand():
    """f(z) = ½ Σ_k z_k² has gradient z: GP = mean_i (||α_i s_i + (1 - α_i) t_i|| - 1)², by a loop."""
    torch.manual_seed(1)
    s, t, alpha = torch.randn(5, 4).double(), torch.randn(5, 4).double(), torch.rand(5, 1).double()
    critic = lambda z: 0.5 * (z ** 2).sum(1)  # noqa: E731
    total = 0.0
    for i in range(5):
        a = float(alpha[i, 0])
        point = [a * float(s[i, k]) + (1 - a) * float(t[i, k]) for k in range(4)]
        total += (math.sqrt(sum(p * p for p in point)) - 1) ** 2
    assert abs(float(losses.gradient_penalty(critic, s, t, alpha)) - total / 5) < 1e-12


def test_gradient_penalty_trains_the_critic_gradcheck():
    """The penalty's gradient with respect to the critic's weights (a double backward) is right."""
    torch.manual_seed(2)
    s, t, alpha = torch.randn(4, 3).double(), torch.randn(4, 3).double(), torch.rand(4, 1).double()
    w1 = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    penalty = lambda a, b: losses.gradient_penalty(lambda z: torch.tanh(z @ a) @ b, s, t, alpha)  # noqa: E731
    assert torch.autograd.gradcheck(penalty, (w1, w2))


def test_wasserstein_dual_is_the_difference_of_mean_scores():
    assert float(losses.wasserstein_dual(torch.tensor([1.0, 3.0]), torch.tensor([[0.5], [0.5], [2.0]]))) == 1.0
