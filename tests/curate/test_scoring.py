"""Scoring a pool: stored scores are the model's cosines, an interrupted run resumes to the same
scores, unreadable items are counted and listed; the filter command's outputs and shards."""

import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import reprlearn
from reprlearn.api import curate_filter, curate_score
from reprlearn.curate import scoring
from reprlearn.data.pairs import load_pairs
from reprlearn.errors import ReprlearnError
from reprlearn.runs import load_method

TINY = dict(data="scenes:n=256", epochs=1, batch_size=64, warmup_epochs=0, progress=False, eval=False,
            text_layers=1, text_width=32, embed_dim=32, vocab_size=400, context_length=24)
POOL = "scenes:n=300,seed=3,corrupt=0.5"


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return reprlearn.train("clip", out=tmp_path_factory.mktemp("clip") / "run", **TINY)


@pytest.fixture(scope="module")
def scored(clip_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("scores")
    curate_score(POOL, clip_run, out, batch_size=64, progress=False)
    return out


def test_the_stored_score_is_the_cosine_of_the_models_embeddings(clip_run, scored):
    method, _, _ = load_method(clip_run)
    pairs = load_pairs(POOL)
    with torch.no_grad():  # the towers' raw outputs, normalised here
        image = method.image_proj(method.encoder(pairs.images.tensor().float() / 255)).numpy()
        text = method.text_proj(method.text(method.tokenize(pairs.first_captions()))).numpy()
    image /= np.linalg.norm(image, axis=1, keepdims=True)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    table, emb, manifest = scoring.read_scores(scored)
    assert manifest["pairs"] == len(pairs) == table.num_rows and manifest["skipped"] == 0
    np.testing.assert_allclose(table["score"].to_numpy(), (image * text).sum(1), atol=1e-5)
    np.testing.assert_allclose(emb, image, atol=2e-3)  # stored as float16
    assert table["caption"].to_pylist() == pairs.first_captions()
    assert table["words"].to_pylist() == [len(c.split()) for c in pairs.first_captions()]
    assert table["chars"].to_pylist() == [len(c) for c in pairs.first_captions()]
    assert table["corrupted"].to_numpy().tolist() == pairs.corrupted.tolist()


def test_an_interrupted_scoring_run_resumes_to_identical_scores(clip_run, scored, tmp_path, monkeypatch):
    real = scoring.score_part
    calls = []

    def fail_in_part_two(method, pool, i, out, batch_size, bar=None):
        calls.append(i)
        if i == 1:
            raise KeyboardInterrupt  # as if the run were stopped in its second part
        return real(method, pool, i, out, batch_size, bar)

    monkeypatch.setattr(scoring, "score_part", fail_in_part_two)
    with pytest.raises(KeyboardInterrupt):
        scoring.score_pool(POOL, clip_run, tmp_path, batch_size=64, progress=False, chunk=100)  # three parts
    done = sorted(p.name for p in (tmp_path / "parts").iterdir())
    assert done == ["chunk-000000.json", "chunk-000000.npy", "chunk-000000.parquet"]  # no partial part 2
    with pytest.raises(ReprlearnError, match="not scored yet"):
        scoring.read_scores(tmp_path)
    monkeypatch.setattr(scoring, "score_part", real)
    calls.clear()
    monkeypatch.setattr(scoring, "score_part", lambda *a, **k: (calls.append(a[2]), real(*a, **k))[1])
    summary = scoring.score_pool(POOL, clip_run, tmp_path, batch_size=64, progress=False, chunk=100)
    assert calls == [1, 2] and summary["scored_now"] == 2  # the finished part was not scored again
    resumed, emb, _ = scoring.read_scores(tmp_path)
    whole, emb_whole, _ = scoring.read_scores(scored)  # one uninterrupted run (other chunking)
    assert resumed["key"].to_pylist() == whole["key"].to_pylist()
    np.testing.assert_allclose(resumed["score"].to_numpy(), whole["score"].to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(emb, emb_whole)


def test_scores_of_another_pool_are_not_mixed_in(clip_run, scored):
    with pytest.raises(ReprlearnError, match="new --out"):
        curate_score("scenes:n=50", clip_run, scored, progress=False)


def png(rng):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_unreadable_items_of_a_shard_pool_are_counted_and_listed(clip_run, tmp_path):
    rng = np.random.default_rng(0)
    for s in range(2):
        with tarfile.open(tmp_path / f"train-{s:06d}.tar", "w") as tar:
            for i in range(5):
                key = f"s{s}i{i}"
                add(tar, f"{key}.png", b"not an image" if (s, i) == (1, 2) else png(rng))
                add(tar, f"{key}.txt", f"a small red circle number {i}".encode())
    out = tmp_path / "scores"
    summary = curate_score(str(tmp_path), clip_run, out, batch_size=4, progress=False)
    assert summary["pairs"] == 9 and summary["skipped"] == 1
    listed = (out / "skipped.txt").read_text().splitlines()
    assert len(listed) == 1 and "s1i2" in listed[0]
    table, emb, _ = scoring.read_scores(out)
    assert "train-000001.tar/s1i2" not in table["key"].to_pylist() and emb.shape[0] == 9
    # the kept pairs written as new shards, read back from the shard pool
    result = curate_filter(out, ["clip-score:top=0.5"], tmp_path / "kept.txt", write_shards=tmp_path / "kept")
    kept = (tmp_path / "kept.txt").read_text().split()
    assert result["kept"] == len(kept) >= 4
    assert len(load_pairs(str(tmp_path / "kept"))) == len(kept)


def test_filter_writes_the_kept_rows_and_counts_corrupted_pairs(scored, tmp_path):
    result = curate_filter(scored, ["clip-score:top=0.3"], tmp_path / "kept.parquet",
                           write_shards=tmp_path / "shards")
    table = pq.read_table(tmp_path / "kept.parquet")
    whole, _, _ = scoring.read_scores(scored)
    s = whole["score"].to_numpy()
    assert table.num_rows == result["kept"] == int((s >= np.sort(s)[::-1][90]).sum())
    assert result["corrupted_kept"] == int(table["corrupted"].to_numpy().sum())
    pairs = load_pairs(str(tmp_path / "shards"))
    source = load_pairs(POOL)
    index = table["index"].to_numpy()
    np.testing.assert_array_equal(pairs.images.images, source.images.images[index])  # png: lossless
    assert pairs.captions == [source.captions[i] for i in index]
    json.dumps(result)


@pytest.mark.slow
def test_scoring_in_two_processes_gives_the_same_scores(clip_run, scored, tmp_path, monkeypatch):
    summary = scoring.score_pool(POOL, clip_run, tmp_path, batch_size=64, devices=2, progress=False, chunk=100)
    assert summary["pairs"] == 300
    two, emb2, _ = scoring.read_scores(tmp_path)
    one, emb1, _ = scoring.read_scores(scored)
    assert two["key"].to_pylist() == one["key"].to_pylist()
    np.testing.assert_allclose(two["score"].to_numpy(), one["score"].to_numpy(), atol=1e-6)


def test_the_cli_scores_and_filters(clip_run, tmp_path, capsys):
    from reprlearn.cli import main

    assert main(["curate", "score", "scenes:n=120,corrupt=0.5", "--model", str(clip_run),
                 "--out", str(tmp_path / "s")]) == 0
    assert "scored 120 pairs" in capsys.readouterr().out
    assert main(["curate", "filter", str(tmp_path / "s"), "--keep", "clip-score:top=0.5", "--keep", "min-words=2",
                 "--out", str(tmp_path / "kept.txt")]) == 0
    out = capsys.readouterr().out
    kept = (tmp_path / "kept.txt").read_text().split()
    assert f"kept {len(kept)} of 120 pairs" in out and "corrupted pairs kept" in out
    assert main(["curate", "filter", str(tmp_path / "s"), "--keep", "clip-score:top=0.5,min=1",
                 "--out", str(tmp_path / "k.txt")]) == 2
    assert "not both" in capsys.readouterr().err
