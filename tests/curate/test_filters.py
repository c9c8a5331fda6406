"""The filter rules against hand-built pools and independent formulations of each rule."""

import numpy as np
import pytest

from reprlearn.curate.filters import PoolView, apply_rule, clip_score_top, dedup, keep_mask
from reprlearn.errors import ReprlearnError


def view(score, words=None, chars=None, embeddings=None, target=None):
    n = len(score)
    return PoolView(np.asarray(score, np.float32), np.asarray(words if words is not None else [5] * n),
                    np.asarray(chars if chars is not None else [30] * n),
                    np.zeros((n, 4), np.float32) if embeddings is None else embeddings, target)


def test_top_keeps_the_scores_at_least_the_one_at_rank_floor_fn_ties_included():
    s = [0.9, 0.5, 0.5, 0.5, 0.1, 0.2]  # ranked: 0.9 0.5 0.5 0.5 0.2 0.1
    # N=6, top=0.3: rank floor(1.8) = 1 -> threshold 0.5, and all three 0.5s are kept
    assert apply_rule("clip-score:top=0.3", view(s)).tolist() == [True, True, True, True, False, False]
    # top=0.1: rank 0 -> only the best
    assert apply_rule("clip-score:top=0.1", view(s)).tolist() == [True, False, False, False, False, False]
    # top=0.7: rank floor(4.2) = 4 -> threshold 0.2
    assert apply_rule("clip-score:top=0.7", view(s)).tolist() == [True, True, True, True, False, True]
    assert apply_rule("clip-score:top=1", view(s)).all()


def test_top_matches_the_rank_definition_on_random_pools_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 40))
        s = rng.integers(0, 6, n).astype(np.float32) / 5  # many ties
        f = float(rng.uniform(0.01, 1))
        r = int(np.floor(f * n))
        # a pair is kept when fewer than r + 1 pairs score strictly higher (its rank among distinct
        # scores, counted from 0, is at most r): written from the definition, pair by pair
        expected = [sum(x > s[i] for x in s) <= r for i in range(n)]
        assert clip_score_top(s, f).tolist() == expected


def test_min_is_an_absolute_threshold_with_equality_kept():
    s = [0.28, 0.27999, 0.3, -1.0]
    assert apply_rule("clip-score:min=0.28", view(s)).tolist() == [True, False, True, False]


@pytest.mark.parametrize("rule", ["clip-score:top=0.3,min=0.2", "clip-score", "clip-score:top=0", "clip-score:top=2",
                                  "clip-score:best=3", "dedup", "nonsense", "min-words=x"])
def test_bad_rules_are_refused_in_one_line(rule):
    with pytest.raises(ReprlearnError) as e:
        apply_rule(rule, view([0.1, 0.2]))
    assert "\n" not in str(e.value)


def test_caption_rules_and_their_composition():
    words, chars = [1, 2, 3, 2], [10, 5, 20, 6]
    v = view([0.9, 0.1, 0.5, 0.7], words, chars)
    assert apply_rule("min-words=2", v).tolist() == [False, True, True, True]
    assert apply_rule("min-chars=6", v).tolist() == [True, False, True, True]
    assert apply_rule("min-words=2&min-chars=6", v).tolist() == [False, False, True, True]
    assert apply_rule("min-words=3|clip-score:min=0.9", v).tolist() == [True, False, True, False]
    # & binds tighter than |: (min-words=3 & min=0.9) | min-chars=20
    assert apply_rule("min-words=3&clip-score:min=0.9|min-chars=20", v).tolist() == [False, False, True, False]
    assert keep_mask(["min-words=2", "clip-score:top=0.5"], v).tolist() == [False, False, True, True]


def clusters(rng, centres, per, noise=0.05):
    x = np.concatenate([c + noise * rng.standard_normal((per, len(c))) for c in centres])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_image_based_keeps_the_clusters_the_target_falls_in_after_the_caption_prefilter():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:4]  # four well separated directions
    pool = clusters(rng, centres, 30)  # pool rows 0-29 cluster 0, 30-59 cluster 1, ...
    target = clusters(rng, centres[[0, 2]], 5)
    n = len(pool)
    words, chars = np.full(n, 4), np.full(n, 25)
    words[[3, 65]] = 1  # one word: dropped by the pre-filter although in a target cluster
    chars[[4, 70]] = 5  # five characters: dropped too
    keep = apply_rule("image-based:clusters=4", view(np.zeros(n), words, chars, pool, lambda: target))
    in_target_cluster = np.zeros(n, bool)
    in_target_cluster[0:30] = in_target_cluster[60:90] = True
    expected = in_target_cluster.copy()
    expected[[3, 4, 65, 70]] = False
    assert keep.tolist() == expected.tolist()
    # a target in one cluster only keeps that cluster
    keep = apply_rule("image-based:clusters=4", view(np.zeros(n), words, chars, pool, lambda: target[5:]))
    assert np.flatnonzero(keep).tolist() == [i for i in range(60, 90) if i not in (65, 70)]


def test_image_based_needs_a_target_and_enough_pairs():
    v = view(np.zeros(3), embeddings=np.eye(3, 4, dtype=np.float32))
    with pytest.raises(ReprlearnError, match="target"):
        apply_rule("image-based:clusters=2", v)
    v.target = lambda: np.eye(1, 4, dtype=np.float32)
    with pytest.raises(ReprlearnError, match="fewer than clusters"):
        apply_rule("image-based:clusters=5", v)


def naive_dedup(x, cos):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    kept = []
    for i in range(len(x)):
        if all(float(x[i] @ x[j]) < cos for j in kept):
            kept.append(i)
    return [i in kept for i in range(len(x))]


def unit_at(angle_deg):
    a = np.deg2rad(angle_deg)
    return np.array([np.cos(a), np.sin(a), 0, 0], np.float32)


def test_dedup_drops_near_duplicates_of_kept_pairs_in_pool_order():
    # cos(15 deg) = 0.966 >= 0.95 > cos(20 deg) = 0.940
    x = np.stack([unit_at(0), unit_at(0), unit_at(15), unit_at(90), unit_at(110), unit_at(125)])
    # 1: a copy of 0; 2: 15 deg from 0; 3 kept; 4: 20 deg from 3 -> kept; 5: 15 deg from 4 -> dropped
    assert dedup(x, 0.95).tolist() == [True, False, False, True, True, False]
    # a chain: b is near a (dropped), c is near b but not a -> c stays, since b is not kept
    chain = np.stack([unit_at(0), unit_at(12), unit_at(24)])
    assert dedup(chain, 0.95).tolist() == [True, False, True]
    assert apply_rule("dedup:cos=0.95", view(np.zeros(3), embeddings=chain)).tolist() == [True, False, True]


def test_dedup_matches_the_naive_greedy_loop():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((120, 3)).astype(np.float32)  # low dimension: many near pairs
    for cos in (0.9, 0.99):
        assert dedup(x, cos).tolist() == naive_dedup(x, cos)


def test_clusters_default_comes_from_the_view_unless_the_rule_names_it():
    rng = np.random.default_rng(0)
    pool = clusters(rng, np.eye(8)[:4], 30)
    target = clusters(rng, np.eye(8)[[0]], 3)
    v = view(np.zeros(len(pool)), embeddings=pool, target=lambda: target)
    v.clusters = 1  # one cluster: the target's, so everything
    assert apply_rule("image-based", v).all()
    assert apply_rule("image-based:clusters=4", v).sum() == 30
