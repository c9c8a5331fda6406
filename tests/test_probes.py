"""The evaluation probes against independent references: naive loops from the formulas,
scikit-learn, and cases whose answer is known."""

import math

import numpy as np
import pytest
import torch

from reprlearn.errors import ReprlearnError
from reprlearn.evaluate import probes, softmax_fit
from reprlearn.evaluate.fixed_rows import FixedRows
from reprlearn.evaluate.generative import anomaly_auroc, auroc


def _naive_knn_predict(train_f, train_y, q, k, t):
    """Wu et al. 2018 from the formula: the k most cosine-similar training rows vote exp(sim / t)."""
    def unit(v):
        return [x / math.sqrt(sum(y * y for y in v)) for x in v]

    qn = unit(list(map(float, q)))
    sims = [(sum(a * b for a, b in zip(qn, unit(list(map(float, row))))), int(c)) for row, c in zip(train_f, train_y)]
    sims.sort(key=lambda s: -s[0])
    votes: dict[int, float] = {}
    for sim, c in sims[:k]:
        votes[c] = votes.get(c, 0.0) + math.exp(sim / t)
    best = max(votes.values())
    return min(c for c, v in votes.items() if v == best)  # ties: the lowest class


@pytest.mark.parametrize("search", ["torch", "faiss", "bytes"])
@pytest.mark.parametrize("k,t", [(1, 0.1), (5, 0.07), (20, 0.1), (40, 1.0), (500, 0.5)])
def test_knn_matches_naive_loop_per_query(k, t, search, monkeypatch):
    """The three neighbour searches: torch's matmul + top-k, the FAISS index used above
    ``FAISS_ABOVE`` CPU references (forced here on 60), and the integer GEMM for 8-bit vectors."""
    if search == "faiss":
        monkeypatch.setattr(probes, "FAISS_ABOVE", 0)
    rng = np.random.default_rng(k)
    centres = rng.normal(size=(4, 6))
    train_y = rng.integers(0, 4, 60)
    train_f = (centres[train_y] + 1.5 * rng.normal(size=(60, 6))).astype(np.float32)
    test_f = rng.normal(size=(25, 6)).astype(np.float32)
    if search == "bytes":  # 8-bit vectors, clustered the same way
        train_f, test_f = ((40 * a + 128).clip(0, 255).astype(np.uint8) for a in (train_f, test_f))
    preds = [_naive_knn_predict(train_f, train_y, q, k, t) for q in test_f]
    # knn_top1 of one query labelled with the naive prediction is 1 exactly when they agree
    agree = [probes.knn_top1(train_f, train_y, test_f[i:i + 1], np.array([p]), k=k, temperature=t)
             for i, p in enumerate(preds)]
    assert agree == [1.0] * len(preds)
    test_y = rng.integers(0, 4, 25)
    expected = float(np.mean(np.array(preds) == test_y))
    assert probes.knn_top1(train_f, train_y, test_f, test_y, k=k, temperature=t, chunk=7) == pytest.approx(expected)


@pytest.mark.parametrize("width,columns", [(50, probes.BYTE_GEMM_COLUMNS), (50, 7), (1, probes.BYTE_GEMM_COLUMNS)])
def test_byte_dots_are_exact(width, columns, monkeypatch):
    """The int8 GEMM with the -128 shift taken back equals int64 arithmetic, also when the columns
    are summed in blocks (forced here on blocks of 7 of 50: the last has 1) and for 1-d vectors."""
    monkeypatch.setattr(probes, "BYTE_GEMM_COLUMNS", columns)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (33, width), dtype=np.uint8)
    b = rng.integers(0, 256, (21, width), dtype=np.uint8)
    a[0], b[1] = 255, 0  # the extremes
    exact = a.astype(np.int64) @ b.astype(np.int64).T
    assert np.array_equal(probes.byte_dots(torch.from_numpy(a), torch.from_numpy(b)).numpy(), exact)


def test_knn_on_pixels_equals_their_float_scaling():
    """The raw-pixel baseline's kNN (uint8, integer GEMM) scores what the float path scores on
    pixels / 255 (cosine ignores the scale), on digits at several k, with an all-black image."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    pixels = (x * 255 / 16).round().astype(np.uint8)
    pixels[0] = 0
    for k in (1, 10, 200):
        as_bytes = probes.knn_top1(pixels[:1000], y[:1000], pixels[1000:], y[1000:], k=k, chunk=300)
        as_float = probes.knn_top1(pixels[:1000].astype(np.float32) / 255, y[:1000],
                                   pixels[1000:].astype(np.float32) / 255, y[1000:], k=k, chunk=300)
        assert as_bytes == pytest.approx(as_float, abs=2 / 797)  # a near-tie that float32 rounds may differ


def test_knn_weights_and_ties():
    # two neighbours at exactly the same similarity, of classes 1 and 0: a tie, the lower class wins
    train = np.array([[1.0, 1.0], [1.0, -1.0]], dtype=np.float32)
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert probes.knn_top1(train, np.array([1, 0]), query, np.array([0]), k=2) == 1.0
    # one close class-0 neighbour against two far class-1 ones: the temperature decides
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.3]], dtype=np.float32)  # sim 0.958 to class 0, 0.287 to class 1
    assert probes.knn_top1(train, labels, query, np.array([0]), k=3, temperature=0.1) == 1.0  # e^9.6 > 2 e^2.9
    assert probes.knn_top1(train, labels, query, np.array([1]), k=3, temperature=10.0) == 1.0  # ~uniform votes
    assert _naive_knn_predict(train, labels, query[0], 3, 10.0) == 1
    # a small temperature: e^(0.9 / 0.005) and e^(0.95 / 0.005) overflow float32, their ratio e^10 does not
    near = np.array([[0.9, math.sqrt(1 - 0.81)], [0.95, math.sqrt(1 - 0.95 ** 2)]], dtype=np.float32)
    assert probes.knn_top1(near, np.array([0, 1]), np.array([[1.0, 0.0]], dtype=np.float32), np.array([1]), k=2,
                           temperature=0.005) == 1.0


def test_knn_rejects_bad_options():
    x = np.eye(3, dtype=np.float32)
    with pytest.raises(ReprlearnError, match="temperature"):
        probes.knn_top1(x, np.arange(3), x, np.arange(3), temperature=0.0)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order].astype(np.float32) / 16, y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


def _sklearn_top1(train_f, train_y, test_f, test_y, C):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    # converged (sklearn's default tol=1e-4 stops L-BFGS early: 3 of 597 digits differ at C = 1)
    clf = LogisticRegression(C=C, max_iter=5000, tol=1e-5).fit(scaler.transform(train_f), train_y)
    return float((clf.predict(scaler.transform(test_f)) == test_y).mean())


@pytest.mark.parametrize("c", [1.0, 0.01])
def test_linear_probe_solves_sklearns_objective_on_digits(c):
    # at a fixed C, l2 = 1 / (C n) is sklearn's objective, so the same accuracy (within 0.5 points)
    tr, ytr, te, yte = _digits()
    out = probes.linear_probe(tr, ytr, te, yte, c=c)
    assert out["l2"] == pytest.approx(1 / (c * len(ytr))) and out["val_top1"] is None
    assert abs(out["top1"] - _sklearn_top1(tr, ytr, te, yte, C=c)) <= 0.005


def _sklearn_val(train_f, train_y, val_f, val_y, C):
    """(held-out log-loss, held-out accuracy) of a converged sklearn fit."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f)
    clf = LogisticRegression(C=C, max_iter=5000, tol=1e-5).fit(scaler.transform(train_f), train_y)
    v = scaler.transform(val_f)
    return log_loss(val_y, clf.predict_proba(v), labels=clf.classes_), float((clf.predict(v) == val_y).mean())


def test_linear_probe_sweep_matches_the_same_sweep_in_sklearn():
    """The sweep against sklearn doing the same: each l2 fitted on the same stratified split,
    the lowest held-out log-loss chosen, refitted on all training features."""
    tr, ytr, te, yte = _digits()
    out = probes.linear_probe(tr, ytr, te, yte, seed=3)
    fit, val = probes._val_split(ytr, 0.2, 3)
    assert len(np.intersect1d(fit, val)) == 0 and len(fit) + len(val) == len(ytr)
    assert sorted(np.bincount(ytr[val])) == sorted(np.round(np.bincount(ytr) * 0.2).astype(int))
    scores = [_sklearn_val(tr[fit], ytr[fit], tr[val], ytr[val], C=1.0 / (l2 * len(fit))) for l2 in probes.L2_GRID]
    i = int(np.argmin([loss for loss, _ in scores]))
    best = probes.L2_GRID[i]
    assert out["l2"] == best
    assert abs(out["val_log_loss"] - scores[i][0]) <= 0.02 and abs(out["val_top1"] - scores[i][1]) <= 0.005
    assert abs(out["top1"] - _sklearn_top1(tr, ytr, te, yte, C=1.0 / (best * len(ytr)))) <= 0.005


def test_linear_probe_separable_case():
    # three well-separated blobs in 20-D with a constant feature: every probe is perfect
    rng = np.random.default_rng(1)
    centres = 6 * rng.normal(size=(3, 20))
    y = np.repeat(np.arange(3), 50)
    x = (centres[y] + rng.normal(size=(150, 20))).astype(np.float32)
    x[:, 0] = 1.0
    tr, te = np.arange(0, 150, 2), np.arange(1, 150, 2)
    swept = probes.linear_probe(x[tr], y[tr], x[te], y[te])
    assert swept["top1"] == 1.0 == _sklearn_top1(x[tr], y[tr], x[te], y[te], C=1.0)
    # separable: every L2 is perfect on the held-out split, and the weakest is the most confident there
    assert swept["val_top1"] == 1.0 and swept["l2"] == probes.L2_GRID[-1]
    # with one example of a class there is nothing to validate on: sklearn's C = 1
    one = probes.linear_probe(x[[0, 50, 51, 100, 101]], y[[0, 50, 51, 100, 101]], x[te], y[te])
    assert one["l2"] == pytest.approx(1 / 5) and one["val_top1"] is None


def test_pca_projection_equals_sklearns_up_to_sign():
    from sklearn.decomposition import PCA

    from reprlearn.evaluate.harness import pca_project

    tr, _, te, _ = _digits()
    ours = pca_project(torch.from_numpy(tr), torch.from_numpy(te), 10)
    pca = PCA(n_components=10, svd_solver="full").fit(tr)
    for got, want in zip(ours, (pca.transform(tr), pca.transform(te))):
        signs = np.sign((got.numpy() * want).sum(0))  # each axis is defined up to its sign
        assert np.allclose(got.numpy() * signs, want, atol=1e-3)


def test_low_label_draws_exact_stratified_reproducible():
    rng = np.random.default_rng(0)
    y = np.concatenate([np.full(40, 0), np.full(25, 1), np.full(3, 2), np.full(60, 3)])
    y = y[rng.permutation(len(y))]
    draws = probes.low_label_draws(y, per_class=5, draws=5, seed=7)
    assert len(draws) == 5
    for pick in draws:
        assert len(np.unique(pick)) == len(pick)  # without replacement
        assert np.bincount(y[pick]).tolist() == [5, 5, 3, 5]  # exactly 5 a class, all of a smaller one
    assert len({tuple(np.sort(p)) for p in draws}) == 5  # five different draws
    again = probes.low_label_draws(y, per_class=5, draws=5, seed=7)
    assert all(np.array_equal(p, q) for p, q in zip(draws, again))
    other = probes.low_label_draws(y, per_class=5, draws=5, seed=8)
    assert not all(np.array_equal(p, q) for p, q in zip(draws, other))


def test_partition_scores_equal_sklearns():
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    rng = np.random.default_rng(0)
    cases = [([0, 0, 1, 1], [0, 1, 0, 1]),  # ARI -0.5 (sklearn's documented example), NMI 0
             ([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 2, 2]),
             ([0, 0, 1, 1], [5, 5, 7, 7]),  # the same partition under other names
             ([0, 0, 0, 0], [0, 0, 0, 0]), ([0, 1, 2, 3], [0, 1, 2, 3]), ([0, 0, 0, 0], [0, 1, 2, 3])]
    cases += [(rng.integers(0, 5, 200), rng.integers(0, 7, 200)) for _ in range(5)]
    y = rng.integers(0, 4, 300)
    cases.append((y, np.where(rng.random(300) < 0.3, rng.integers(0, 4, 300), y)))
    for labels, pred in cases:
        got = probes.partition_scores(np.array(labels), np.array(pred))
        assert got["nmi"] == pytest.approx(normalized_mutual_info_score(labels, pred), abs=1e-12)
        assert got["ari"] == pytest.approx(adjusted_rand_score(labels, pred), abs=1e-12)
    assert probes.partition_scores(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]))["ari"] == pytest.approx(-0.5)


def test_partition_scores_by_hand():
    # labels 0 0 0 1 1 1, clusters 0 0 1 1 1 1: table [[2, 1], [0, 3]], a = (3, 3), b = (2, 4)
    got = probes.partition_scores(np.array([0, 0, 0, 1, 1, 1]), np.array([0, 0, 1, 1, 1, 1]))
    index, rows, cols, total = 1 + 0 + 0 + 3, 3 + 3, 1 + 6, 15
    expected = rows * cols / total
    assert got["ari"] == pytest.approx((index - expected) / ((rows + cols) / 2 - expected))
    h_u, h_v = math.log(2), -(1 / 3 * math.log(1 / 3) + 2 / 3 * math.log(2 / 3))
    mi = 2 / 6 * math.log(2 * 6 / (3 * 2)) + 1 / 6 * math.log(6 / (3 * 4)) + 3 / 6 * math.log(3 * 6 / (3 * 4))
    assert got["nmi"] == pytest.approx(mi / ((h_u + h_v) / 2))


def test_cluster_scores_separated_blobs_and_no_clipping():
    rng = np.random.default_rng(2)
    directions = np.eye(8)[:4] * 10
    y = np.repeat(np.arange(4), 40)
    x = directions[y] + rng.normal(size=(160, 8)) * 0.3
    assert probes.cluster_scores(x, y) == {"nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    # k-means on features unrelated to the labels scores below chance in some draws: reported as it is
    aris = [probes.cluster_scores(rng.normal(size=(12, 3)), rng.integers(0, 2, 12), seed=s)["ari"] for s in range(10)]
    assert min(aris) < 0


class _SubspaceScorer:
    """Reconstruction error of the projection on the span of the normal class: 0 for normal images."""

    def __init__(self, basis: torch.Tensor):
        self.q = torch.linalg.qr(basis.T).Q  # (D, r) orthonormal

    def anomaly_score(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        return (flat - flat @ self.q @ self.q.T).pow(2).sum(1)


def test_anomaly_auroc_known_case():
    # normal images lie in a 3-D subspace, anomalies (class 1) anywhere: the scorer separates them
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 16, generator=g)
    normal = torch.randn(300, 3, generator=g) @ basis
    anomalies = torch.randn(40, 16, generator=g)
    x = torch.cat([normal, anomalies]).reshape(-1, 1, 4, 4)
    labels = np.array([0] * 300 + [1] * 40)
    assert anomaly_auroc(_SubspaceScorer(basis), x, labels, anomaly_class=1, batch=64) > 0.99
    # and the AUROC itself equals sklearn's, ties included
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores, positive = rng.integers(0, 6, 200).astype(float), rng.random(200) < 0.3
    assert auroc(scores, positive) == pytest.approx(roc_auc_score(positive, scores), abs=1e-12)


def test_evaluate_uses_and_records_the_probe_options():
    from reprlearn.api import build_encoder, data_info
    from reprlearn.config import RunConfig
    from reprlearn.data.run_data import load_run_data
    from reprlearn.evaluate import evaluate, extract
    from reprlearn.evaluate.harness import probe_split

    cfg = RunConfig()
    data = load_run_data(cfg, captions=False)
    train, test = data.train, data.eval
    torch.manual_seed(0)
    encoder, random_init = build_encoder(cfg, data_info(train)), build_encoder(cfg, data_info(train))
    result = evaluate(encoder, random_init, train, test, max_train=300, labels_per_class=3,
                      knn_k=7, knn_temperature=0.07)
    assert result["probes"]["knn_k"] == 7 and result["probes"]["knn_temperature"] == 0.07
    assert set(result["probes"]["linear"]["chosen_l2"]) == {"encoder", "raw_pixels", "pca", "random_init"}
    fit, score = probe_split(train, test, 300, 0)
    tr, te = extract(encoder, fit.tensor()), extract(encoder, score.tensor())
    assert result["knn_top1"] == probes.knn_top1(tr, fit.labels, te, score.labels, k=7, temperature=0.07)
    assert result["knn_top1"] != probes.knn_top1(tr, fit.labels, te, score.labels)  # the defaults differ here
    pix = [s.images.reshape(len(s), -1).astype(np.float32) / 255 for s in (fit, score)]
    assert result["baselines"]["raw_pixels"]["linear_top1"] == probes.linear_top1(pix[0], fit.labels, pix[1],
                                                                                  score.labels)


def test_online_knn_monitor_logs_the_knn_probe():
    from types import SimpleNamespace

    from reprlearn.api import build_encoder, data_info
    from reprlearn.config import RunConfig
    from reprlearn.data.run_data import load_run_data
    from reprlearn.engine import KNNMonitor
    from reprlearn.evaluate import extract

    data = load_run_data(RunConfig(), captions=False)
    train, test = data.train, data.eval
    torch.manual_seed(0)
    encoder = build_encoder(RunConfig(), data_info(train))
    logged = {}
    module = SimpleNamespace(method=SimpleNamespace(encoder=encoder), log=lambda k, v, **kw: logged.update({k: v}))
    KNNMonitor(train.tensor(), train.labels, test.tensor(), test.labels, limit=500).on_train_epoch_end(
        SimpleNamespace(is_global_zero=True), module)
    tr, te = extract(encoder, train.tensor()[:500]), extract(encoder, test.tensor()[:500])
    assert logged["monitor/knn_top1"] == probes.knn_top1(tr, train.labels[:500], te, test.labels[:500])
    assert logged["monitor/knn_top1"] > 0.5  # an untrained CNN on digits is far above chance (0.1)


def test_eval_cli_flags_reach_evaluate_run(monkeypatch, capsys):
    import reprlearn.api
    import reprlearn.evaluate
    from reprlearn.cli import main

    seen = {}
    monkeypatch.setattr(reprlearn.api, "evaluate_run", lambda run, **kw: seen.update(kw, run=run) or {})
    monkeypatch.setattr(reprlearn.evaluate, "format_table", lambda result: "table")
    assert main(["eval", "r", "--knn-k", "20", "--knn-temperature", "0.07", "--probe-backend", "sklearn",
                 "--linear-c", "0.5"]) == 0
    assert (seen["run"], seen["knn_k"], seen["knn_temperature"]) == ("r", 20, 0.07)
    assert (seen["probe_backend"], seen["linear_c"]) == ("sklearn", 0.5)
    for flag, value in (("--knn-k", "0"), ("--knn-temperature", "-1"), ("--linear-c", "0")):
        with pytest.raises(SystemExit):
            main(["eval", "r", flag, value])
        assert f"{flag} must be" in capsys.readouterr().err


def test_umap_neighbour_graph_equals_sklearns_exact_cosine_neighbours():
    from sklearn.neighbors import NearestNeighbors

    from reprlearn.evaluate.figures import cosine_knn

    x = np.random.default_rng(0).normal(size=(300, 12)).astype(np.float32)
    idx, dist = cosine_knn(x, 15, chunk=64)
    want_dist, want_idx = NearestNeighbors(n_neighbors=15, metric="cosine", algorithm="brute").fit(x).kneighbors(x)
    assert (idx[:, 0] == np.arange(300)).all()  # each point its own first neighbour, as UMAP expects
    assert np.allclose(dist, want_dist, atol=1e-5)
    assert (idx == want_idx).mean() > 0.99  # the rest are float32 near-ties (swapped neighbours at equal distance)


def test_knn_distance_matches_naive_loop():
    from reprlearn.evaluate.probes import knn_distance

    rng = np.random.default_rng(0)
    bank, queries = rng.normal(size=(40, 6)), rng.normal(size=(7, 6))
    for k in (1, 3, 40):
        expected = []
        for q in queries:
            d = sorted(1 - float(q @ b) / (np.linalg.norm(q) * np.linalg.norm(b)) for b in bank)
            expected.append(np.mean(d[:k]))
        np.testing.assert_allclose(knn_distance(bank, queries, k=k, chunk=3), expected, atol=1e-5)


@pytest.mark.parametrize("classes", [3, 10, 20])  # below, at and above the 16-column padding
def test_linear_probe_gradient_by_hand_equals_autograds(classes):
    rng = np.random.default_rng(classes)
    x = torch.tensor(rng.normal(size=(50, 7)), dtype=torch.float64)
    y = torch.tensor(rng.integers(0, classes, 50))
    w = torch.tensor(rng.normal(size=(8, classes)), dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x @ w[:-1] + w[-1], y) + 0.5 * 0.3 * w[:-1].pow(2).sum()
    loss.backward()
    got_loss, got_grad = softmax_fit.loss_and_grad(FixedRows(x), torch.nn.functional.one_hot(y, classes).double(),
                                                   w.detach(), 0.3)
    assert float(got_loss) == pytest.approx(float(loss), rel=1e-12)
    assert torch.allclose(got_grad, w.grad, rtol=1e-10, atol=1e-12)


def test_umap_fuzzy_graph_equals_umap_learns():
    import umap.umap_

    from reprlearn.evaluate.figures import cosine_knn, fuzzy_graph

    x = np.random.default_rng(0).normal(size=(400, 6)).astype(np.float32)
    x[1] = x[0]  # a duplicate: distance 0 to a neighbour that is not the point itself
    x[100:120] = x[99]  # 21 copies: all 15 neighbours at distance 0, so sigma takes its floor
    idx, dist = cosine_knn(x, 15)
    got = fuzzy_graph(idx, dist)
    want = umap.umap_.fuzzy_simplicial_set(x, 15, np.random.RandomState(0), "precomputed", {}, idx, dist)[:3]
    assert abs(got[0] - want[0]).max() < 1e-6 and got[0].nnz == want[0].nnz
    assert np.allclose(got[1], want[1], rtol=1e-5) and np.allclose(got[2], want[2])


def test_extraction_folds_batchnorm_without_changing_features():
    from reprlearn.evaluate.harness import extract, folded_for_inference
    from reprlearn.nets.cnn import SmallCNN

    torch.manual_seed(0)
    net = SmallCNN(3, 16)
    net.train()
    for _ in range(3):  # BatchNorm running statistics away from their initial 0 / 1
        net(torch.rand(32, 3, 16, 16) * 3 + 1)
    net.eval()
    images = torch.randint(0, 256, (40, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        want = net(images.float() / 255)
    folded = folded_for_inference(net)
    assert folded is not net and not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the encoder itself is untouched
    assert np.allclose(extract(net, images, batch_size=7), want.numpy(), atol=1e-5)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
    assert folded_for_inference(linear) is linear  # nothing to fold: no copy
    batch_stats = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, track_running_stats=False))
    assert folded_for_inference(batch_stats.eval()) is batch_stats  # normalises by the batch even in eval


def test_the_sweep_stops_only_past_its_best(monkeypatch):
    """Few samples in many noisy dimensions, so weak L2 overfits: the sweep stops after two rises of
    the held-out loss, fits fewer L2s, and picks what the whole grid picks."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90)
    x = rng.normal(size=(90, 300)).astype(np.float32)
    x[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[y]
    xt = rng.normal(size=(300, 300)).astype(np.float32)
    yt = rng.integers(0, 3, 300)
    xt[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[yt]
    grid = (10.0, 1.0, 0.3, 1e-1, 3e-2, 1e-2, 1e-3, 1e-4, 1e-5)
    fits = []
    inner = probes.fit_softmax
    monkeypatch.setattr(probes, "fit_softmax", lambda *a: fits.append(a[3]) or inner(*a))
    stopped = probes.linear_probe(x, y, xt, yt, l2_grid=grid)
    n_stopped, fits[:] = len(fits), []
    monkeypatch.setattr(probes, "SWEEP_PATIENCE", None)
    whole = probes.linear_probe(x, y, xt, yt, l2_grid=grid)
    assert len(fits) == len(grid) + 1 and n_stopped < len(fits)
    assert stopped == whole
