"""Label-free evaluation (evaluate/labelfree.py): RankMe, alignment and uniformity against the papers'
formulas written out as loops, the neighbour and cluster sheets, and a run on a folder of unlabelled
photos from the plan line before training to eval.json and the sheets after it."""

import json
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

import reprlearn
from reprlearn.data import ImageSet
from reprlearn.errors import ReprlearnError
from reprlearn.evaluate import format_table
from reprlearn.evaluate.harness import LABEL_FREE_METRICS
from fakedata import SHARED
from reprlearn.evaluate.labelfree import (CLUSTERS, MEMBERS, NEIGHBOURS, alignment, cluster_labels, cluster_sheet,
                                          label_free_figures, neighbour_sheet, rankme, uniformity)

# ---------------------------------------------------------------- the figures against their formulas


def naive_rankme(z: np.ndarray, eps: float = 1e-7) -> float:
    """Garrido et al. 2023, eq. 1, one singular value at a time."""
    sigma = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    l1 = 0.0
    for s in sigma:
        l1 += abs(s)
    entropy = 0.0
    for s in sigma:
        p = s / l1 + eps
        entropy -= p * math.log(p)
    return math.exp(entropy)


def naive_alignment(a: np.ndarray, b: np.ndarray, alpha: float = 2) -> float:
    """Wang & Isola 2020: E ||f(x) - f(x+)||_2^alpha over positive pairs, features on the unit sphere."""
    total = 0.0
    for x, y in zip(a, b):
        x, y = x / np.linalg.norm(x), y / np.linalg.norm(y)
        total += math.sqrt(sum((xi - yi) ** 2 for xi, yi in zip(x, y))) ** alpha
    return total / len(a)


def naive_uniformity(z: np.ndarray, t: float = 2) -> float:
    """Wang & Isola 2020: log E exp(-t ||f(x) - f(y)||^2) over pairs of distinct images."""
    z = [v / np.linalg.norm(v) for v in z]
    total, pairs = 0.0, 0
    for i in range(len(z)):
        for j in range(i + 1, len(z)):
            total += math.exp(-t * sum((a - b) ** 2 for a, b in zip(z[i], z[j])))
            pairs += 1
    return math.log(total / pairs)


@pytest.mark.parametrize("shape", [(40, 12), (9, 30), (64, 64)])
def test_rankme_matches_the_formula_loop(shape):
    z = np.random.default_rng(sum(shape)).normal(size=shape) * np.linspace(0.1, 3, shape[1])
    assert rankme(z) == pytest.approx(naive_rankme(z), rel=1e-9)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_rankme_of_k_equal_singular_values_is_k(k):
    rng = np.random.default_rng(k)
    u = np.linalg.qr(rng.normal(size=(200, k)))[0]
    v = np.linalg.qr(rng.normal(size=(48, k)))[0]
    z = u @ np.diag(np.full(k, 2.5)) @ v.T  # rank k, every nonzero singular value 2.5
    assert rankme(z) == pytest.approx(k, abs=1e-3)


def test_rankme_of_a_rank_one_matrix_is_about_one():
    rng = np.random.default_rng(0)
    z = np.outer(rng.normal(size=500), rng.normal(size=64))
    assert rankme(z) == pytest.approx(1.0, abs=1e-3)
    assert rankme(z + 1e-3 * rng.normal(size=z.shape)) < 1.5


def test_alignment_and_uniformity_match_the_formula_loops():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 6))
    b = a + 0.3 * rng.normal(size=a.shape)
    assert alignment(a, b) == pytest.approx(naive_alignment(a, b), rel=1e-9)
    assert alignment(a, b, alpha=1) == pytest.approx(naive_alignment(a, b, alpha=1), rel=1e-9)
    assert uniformity(a) == pytest.approx(naive_uniformity(a), rel=1e-9)
    assert uniformity(a, t=0.5) == pytest.approx(naive_uniformity(a, t=0.5), rel=1e-9)


def test_alignment_of_identical_views_is_zero_and_uniformity_of_one_point_is_zero():
    z = np.random.default_rng(2).normal(size=(20, 5))
    assert alignment(z, z) == 0.0
    assert alignment(z, 3 * z) == pytest.approx(0.0, abs=1e-12)  # a scale is undone by the normalisation
    assert uniformity(np.ones((10, 5))) == pytest.approx(0.0, abs=1e-12)


def test_identity_views_align_exactly_and_each_encoder_gets_the_same_views():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 8, 8, 3), dtype=torch.uint8).numpy()
    encoders = {"a": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16)),
                "b": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 16))}
    identity = lambda x, g: x.float() / 255  # noqa: E731
    figures, features = label_free_figures(encoders, images, np.arange(40), identity, seed=0)
    for name in encoders:
        assert figures[name]["alignment"] == 0.0
        assert figures[name]["uniformity"] == pytest.approx(naive_uniformity(features[name].numpy()), rel=1e-6)
        assert figures[name]["rankme"] == pytest.approx(naive_rankme(features[name].numpy()), rel=1e-6)
    seen = []

    def recorded(x, g):  # a random view: what it draws is recorded per encoder
        noise = torch.rand(x.shape, generator=g)
        seen.append(noise)
        return x.float() / 255 + noise

    label_free_figures(encoders, images, np.arange(40), recorded, seed=0)
    assert len(seen) == 4 and torch.equal(seen[0], seen[2]) and torch.equal(seen[1], seen[3])
    assert not torch.equal(seen[0], seen[1])  # the two views of an image differ


# ---------------------------------------------------------------- the sheets


def blobs(n: int, size: int = 12, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) uint8 images: a flat colour each, two colour families."""
    rng = np.random.default_rng(seed)
    base = np.where(np.arange(n)[:, None] % 2 == 0, [220, 40, 40], [40, 40, 220])
    colour = np.clip(base + rng.integers(-30, 30, (n, 3)), 0, 255)
    return np.broadcast_to(colour[:, None, None, :], (n, size, size, 3)).astype(np.uint8).copy()


def test_neighbour_sheet_has_the_grid_and_the_cosine_neighbours_file_names(tmp_path):
    rng = np.random.default_rng(3)
    pool, queries = ImageSet(blobs(40)), ImageSet(blobs(20, seed=1))
    pool.keys = [f"/photos/day {i}/img_{i:03d}.jpg" for i in range(40)]  # a set that keeps its sources
    pool_f, query_f = rng.normal(size=(40, 8)), rng.normal(size=(16, 8))
    pool_index, query_index = rng.permutation(40), np.arange(16) + 4
    sheet = neighbour_sheet(query_f, pool_f, queries, pool, query_index, pool_index, tmp_path / "n.png", "t")
    assert sheet.path.stat().st_size > 5000 and sheet.grid == (16, 1 + NEIGHBOURS)
    for r in range(16):
        cosine = [float(query_f[r] @ p / np.linalg.norm(query_f[r]) / np.linalg.norm(p)) for p in pool_f]
        nearest = sorted(range(40), key=lambda j: -cosine[j])[:NEIGHBOURS]
        assert sheet.captions[r] == [f"query #{query_index[r]}"] + [f"img_{pool_index[j]:03d}.jpg" for j in nearest]


def test_cluster_sheet_has_a_row_per_cluster_of_members_nearest_the_centre(tmp_path):
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(CLUSTERS, 16)) * 5
    group = np.repeat(np.arange(CLUSTERS), 12 + np.arange(CLUSTERS))  # clusters of 12 ... 19 points
    features = centres[group] + 0.1 * rng.normal(size=(len(group), 16))
    labels = cluster_labels(features, CLUSTERS, seed=0)
    assert len(set(zip(group.tolist(), labels.tolist()))) == CLUSTERS  # the planted clusters found
    assert np.bincount(labels).tolist() == sorted(np.bincount(group).tolist(), reverse=True)  # largest first
    images = ImageSet(blobs(len(group)))
    sheet = cluster_sheet(features, labels, images, np.arange(len(group)), tmp_path / "c.png", "t")
    assert sheet.path.stat().st_size > 5000 and sheet.grid == (CLUSTERS, MEMBERS)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for c, row in enumerate(sheet.captions):
        members = np.flatnonzero(labels == c)
        distance = np.linalg.norm(unit[members] - unit[members].mean(0), axis=1)
        assert row == [f"#{i}" for i in members[np.argsort(distance)[:MEMBERS]]]


# ---------------------------------------------------------------- a run on unlabelled photos


def write_photos(folder: Path, n: int = 60) -> Path:
    """``n`` photos of coloured blobs, JPEG and PNG, 40x30 to 64x64 px."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        w, h = int(rng.integers(40, 65)), int(rng.integers(30, 65))
        image = Image.new("RGB", (w, h), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(4, 15))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        image.save(folder / f"photo_{i:03d}.{'jpg' if i % 2 else 'png'}")
    return folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_photos(tmp_path_factory.mktemp("unlabelled") / "photos")


class FirstStep(L.Callback):
    """Prints a marker at the first training step, so the output's order shows what came before it."""

    said = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.said:
            self.said = True
            print("FIRST TRAINING STEP", flush=True)


TINY = dict(image_size=16, epochs=1, batch_size=16, progress=False)


def test_unlabelled_folder_trains_and_is_evaluated_label_free(photos, tmp_path, capsys, one_thread):
    run = reprlearn.train("simclr", data=str(photos), out=tmp_path / "run", callbacks=[FirstStep()], **TINY)
    out = capsys.readouterr().out
    plan = re.search(r"evaluation +label-free", out).start()
    assert plan < out.index("FIRST TRAINING STEP")
    result = json.loads((run / "eval.json").read_text())
    assert result["evaluation"] == "label-free" and result["train_images"] == 54 and result["test_images"] == 6
    free = result["label_free"]
    for name in ("encoder", "random_init"):
        figures = free[name]
        assert 1 <= figures["rankme"] <= min(free["images"], free["feature_dim"])
        assert 0 <= figures["alignment"] <= 4 and -4 <= figures["uniformity"] <= 0
        assert set(figures) == set(LABEL_FREE_METRICS)  # the table's rows, the collapse watch's two among them
    for sheet in ("neighbours.png", "clusters.png", "umap.png"):
        assert (run / sheet).stat().st_size > 5000
    table = format_table(result)
    assert table.splitlines()[0].split() == ["metric", "simclr", "random_init"]
    assert "rankme" in table and "neighbours.png" in table


def test_no_eval_trains_on_every_image(photos, tmp_path, capsys, one_thread):
    run = reprlearn.train("simclr", data=str(photos), out=tmp_path / "run", eval=False, **TINY)
    out = capsys.readouterr().out
    assert re.search(r"evaluation +none \(--no-eval\): training on all 60 images", out)
    assert re.search(r"data +60 training images 16x16x3", out)  # the plan: nothing held out
    assert not (run / "eval.json").exists()


def test_what_the_label_free_evaluation_cannot_do_fails_before_training(photos, tmp_path, capsys):
    with pytest.raises(ReprlearnError, match="--finetune needs labelled evaluation data"):
        reprlearn.train("simclr", data=str(photos), out=tmp_path / "run", finetune=True, callbacks=[FirstStep()],
                        **TINY)
    assert "FIRST TRAINING STEP" not in capsys.readouterr().out


def test_labelled_evaluation_adds_the_label_free_figures(tmp_path, capsys, one_thread):
    run = reprlearn.train("simclr", data="digits", out=tmp_path / "run", epochs=1, batch_size=128,
                          progress=False, callbacks=[FirstStep()])
    out = capsys.readouterr().out
    assert re.search(r"evaluation +probes \(labelled", out).start() < out.index("FIRST TRAINING STEP")
    result = json.loads((run / "eval.json").read_text())
    assert "knn_top1" in result and result["label_free"]["images"] == result["train_images"]  # every one
    rows = {line.split()[0]: line.split()[1:] for line in format_table(result).splitlines()}
    assert len(rows["rankme"]) == 4 and rows["rankme"][1:3] == ["-", "-"]  # simclr, pixels, pca, random init
    assert float(rows["rankme"][0]) == pytest.approx(result["label_free"]["encoder"]["rankme"], abs=1e-4)


# ---------------------------------------------------------------- CIFAR-10 (slow)

CIFAR = SHARED / "cifar10"


@pytest.mark.slow
@pytest.mark.skipif(not (CIFAR / "train-000000.tar.gz").exists(), reason="needs the CIFAR-10 shards")
def test_simclr_on_cifar10_raises_rankme_above_its_random_init(tmp_path):
    run = reprlearn.train("simclr", data=str(CIFAR / "train-000000.tar.gz"),
                          eval_data=str(CIFAR / "test-000000.tar.gz"), out=tmp_path / "run", epochs=3,
                          progress=False)
    free = json.loads((run / "eval.json").read_text())["label_free"]
    assert free["encoder"]["rankme"] > free["random_init"]["rankme"]
