"""Image-text: the text tower, retrieval and zero-shot arithmetic, FAISS search, and CLIP /
SigLIP end to end (train -> eval -> zeroshot -> search) on generated scenes."""

import json
import math

import numpy as np
import pytest
import torch

import reprlearn
from reprlearn.api import load_method, search, zeroshot
from reprlearn.cli import main
from reprlearn.errors import ReprlearnError
from reprlearn.evaluate.image_text import (clip_score_auroc, recall_at_k, recall_chance, zero_shot_accuracy,
                                           zero_shot_classifier)
from reprlearn.nets.text import TextTransformer
from reprlearn.methods import METHODS
from reprlearn.search import build_index, query_index

IMAGE_TEXT = [m for m in METHODS.names() if METHODS.get(m).trains_on_captions]  # every image-text method in the registry

# ------------------------------------------------------------------ text tower


def test_text_tower_is_causal_and_pooled_at_eot():
    torch.manual_seed(0)
    eot = 2
    net = TextTransformer(vocab_size=50, context_length=8, eot_id=eot, width=16, layers=2, heads=2).eval()
    tokens = torch.tensor([[1, 7, 9, eot, 0, 0, 0, 0]])
    base = net(tokens)
    after = tokens.clone()
    after[0, 4:] = torch.tensor([11, 12, 13, 14])  # tokens after EOT cannot reach it (causal mask)
    torch.testing.assert_close(net(after), base)
    before = tokens.clone()
    before[0, 1] = 8  # a caption token before EOT changes the feature
    assert not torch.allclose(net(before), base)
    # the feature is the EOT position's final state: moving EOT moves the read-out
    longer = torch.tensor([[1, 7, 9, 5, eot, 0, 0, 0]])
    assert not torch.allclose(net(longer), base)


# ------------------------------------------------------------------ retrieval / zero-shot arithmetic


def test_recall_at_k_hand_computed():
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    text_image = torch.tensor([0, 0, 1, 2])
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.2],   # image 0: best caption is its own (1): rank 0
                        [0.8, 0.1, 0.3, 0.2],   # image 1: own caption 2 scores 0.3, beaten by 0 -> rank 1
                        [0.9, 0.8, 0.7, 0.1]])  # image 2: own caption 3 is last of 4 -> rank 3
    r = recall_at_k(sim, text_image, ks=(1, 2, 4))
    assert r["i2t_recall@1"] == pytest.approx(1 / 3)
    assert r["i2t_recall@2"] == pytest.approx(2 / 3)
    assert r["i2t_recall@4"] == pytest.approx(1.0)
    # text -> image: caption 0 (own image 0 scores 0.1; images 1, 2 score 0.8, 0.9) -> rank 2
    # caption 1 (0.9 vs 0.1, 0.8) -> rank 0; caption 2 (0.3 vs 0.5, 0.7) -> rank 2; caption 3 (0.1 vs 0.2, 0.2) -> rank 2
    assert r["t2i_recall@1"] == pytest.approx(1 / 4)
    assert r["t2i_recall@2"] == pytest.approx(1 / 4)
    assert r["t2i_recall@4"] == pytest.approx(1.0)


def test_recall_ties_count_against_the_query():
    sim = torch.zeros(5, 5)
    r = recall_at_k(sim, torch.arange(5), ks=(1,))
    assert r["i2t_recall@1"] == 0 and r["t2i_recall@1"] == 0


def test_recall_chance_matches_formula_and_simulation():
    text_image = np.array([0, 0, 1, 1, 2, 2])  # 3 images x 2 captions
    assert recall_chance(text_image, 3, 1)["i2t"] == pytest.approx(2 / 6)
    assert recall_chance(text_image, 3, 2)["i2t"] == pytest.approx(1 - math.comb(4, 2) / math.comb(6, 2))
    assert recall_chance(text_image, 3, 2)["t2i"] == pytest.approx(2 / 3)
    # random similarities reach the chance level on average
    g = torch.Generator().manual_seed(0)
    ti = torch.tensor(text_image)
    sims = [recall_at_k(torch.rand(3, 6, generator=g), ti, ks=(2,))["i2t_recall@2"] for _ in range(3000)]
    assert np.mean(sims) == pytest.approx(0.6, abs=0.02)


def test_clip_score_auroc_perfect_reversed_and_random():
    text_image = torch.tensor([0, 0, 1, 2])
    own = torch.zeros(3, 4)
    own[text_image, torch.arange(4)] = 1
    assert clip_score_auroc(own, text_image) == {"pooled": 1.0, "per_image": 1.0}
    assert clip_score_auroc(-own, text_image) == {"pooled": 0.0, "per_image": 0.0}


def test_zero_shot_classifier_averages_prompts_and_scores_top_k():
    table = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0], "d": [-1.0, 0.0]}

    def embed(texts):
        return torch.nn.functional.normalize(torch.tensor([table[t] for t in texts]), dim=-1)

    cls = zero_shot_classifier(embed, [["a", "c"], ["b"], ["d"]])
    expected0 = torch.nn.functional.normalize(torch.tensor([1.0, 0.0]) + torch.tensor([0.5 ** 0.5] * 2), dim=0)
    torch.testing.assert_close(cls[0], expected0)
    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]]), dim=-1)
    acc = zero_shot_accuracy(images, cls, torch.tensor([0, 1, 1]))
    assert acc["top1"] == pytest.approx(2 / 3) and acc["top5"] == 1.0


# ------------------------------------------------------------------ search


def test_faiss_index_returns_exact_nearest_neighbours():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:5] + 0.05 * rng.standard_normal((5, 16)).astype(np.float32)
    expected = np.argsort(-(q @ x.T), axis=1)[:, :7]
    scores, ids = query_index(build_index(x), q, 7)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(q @ x.T, expected, 1), rtol=1e-5)
    # the inverted-file index (large sets) finds the same neighbours when it probes every list
    ivf = build_index(x, exact_limit=0, nprobe=10_000)
    np.testing.assert_array_equal(query_index(ivf, q, 7)[1], expected)


# ------------------------------------------------------------------ end to end on scenes

TINY = dict(data="scenes:n=384", epochs=2, batch_size=64, warmup_epochs=0, progress=False, checkpoint_every=100,
            eval_max_train=200, text_layers=1, text_width=32, embed_dim=32, vocab_size=400, context_length=24)


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    return reprlearn.train("clip", out=tmp_path_factory.mktemp("clip") / "run", **TINY)


def test_clip_run_writes_image_text_metrics_and_tokenizer(clip_run):
    result = json.loads((clip_run / "eval.json").read_text())
    for key in ("zeroshot_top1", "zeroshot_chance", "i2t_recall@5", "t2i_recall@5", "recall@5_chance",
                "knn_top1", "linear_top1", "baselines", "clip_score_auroc"):
        assert key in result, key
    assert set(result["zeroshot_tasks"]) == {"shape", "colour"}
    assert 0 < result["zeroshot_chance"] < 1 and 0 < result["recall@5_chance"] < 1
    assert (clip_run / "tokenizer.json").is_file()
    method, cfg, _ = load_method(clip_run)  # the tokenizer travels inside the checkpoint
    assert method.tokenizer is not None and method.tokenize(["a red circle"]).shape == (1, 24)


def test_zero_shot_scores_come_from_the_text_tower(clip_run, tmp_path):
    # a labelled npz of single-shape scenes; the classifier is built from the prompts by the text
    # tower, so another wording gives other class embeddings and other image scores
    from reprlearn.data.scenes import SHAPES, make_scenes
    from reprlearn.evaluate import extract

    pairs = make_scenes(200, seed=5, size=32)
    single = pairs.attributes["n_objects"] == 1
    np.savez(tmp_path / "shapes.npz", images=pairs.images.images[single], labels=pairs.attributes["shape"][single])
    result = zeroshot(clip_run, data=str(tmp_path / "shapes.npz"), classes=",".join(SHAPES),
                      templates=["a picture of a {}."])
    assert result["tasks"]["class"]["images"] == int(single.sum())
    assert result["zeroshot_chance"] == pytest.approx(1 / len(SHAPES))
    method, _, _ = load_method(clip_run)
    images = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor()[torch.from_numpy(single)]))
    scores = {}
    for wording in ("a picture of a {}.", "a {} shape."):
        classifier = zero_shot_classifier(method.embed_texts, [[wording.format(c)] for c in SHAPES])
        scores[wording] = images @ classifier.T
    assert not torch.allclose(scores["a picture of a {}."], scores["a {} shape."])


def test_zeroshot_and_search_cli(clip_run, tmp_path, capsys):
    assert main(["zeroshot", str(clip_run)]) == 0
    out = capsys.readouterr().out
    assert "shape" in out and "colour" in out and "chance" in out
    sheet = tmp_path / "sheet.png"
    assert main(["search", str(clip_run), "--index", "scenes:n=64,seed=3", "--query", "a red circle",
                 "--query", "a blue square", "--k", "4", "--out", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert out.count("score") == 8 and sheet.stat().st_size > 1000
    assert len(list((clip_run / "search").glob("*.faiss"))) == 1
    # the saved index is reused: a second query does not write another one
    assert main(["search", str(clip_run), "--index", "scenes:n=64,seed=3", "--query", "a green ring"]) == 0
    assert len(list((clip_run / "search").glob("*.faiss"))) == 1


@pytest.mark.parametrize("args,message", [
    (["search", "RUN", "--index", "scenes:n=64"], "nothing to search for"),
    (["search", "RUN", "--index", "scenes:n=64", "--query-image", "/no/such.png"], "does not exist"),
    (["zeroshot", "RUN", "--data", "digits"], "trained on"),
])
def test_image_text_commands_give_one_line_errors(clip_run, capsys, args, message):
    args = [str(clip_run) if a == "RUN" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_image_only_run_is_refused_by_zeroshot_and_search(tmp_path):
    run = reprlearn.train("simclr", out=tmp_path / "r", epochs=1, eval=False, progress=False)
    with pytest.raises(ReprlearnError, match="needs an image-text run"):
        zeroshot(run)
    with pytest.raises(ReprlearnError, match="needs an image-text run"):
        search(run, "digits", ["a digit"])


@pytest.mark.parametrize("method", IMAGE_TEXT)
def test_short_training_on_scenes_beats_chance_in_zero_shot_and_retrieval(tmp_path, method):
    from reprlearn.data.run_data import load_run_data
    from reprlearn.evaluate.image_text_harness import image_text_metrics

    run = reprlearn.train(method, out=tmp_path / "run", data="scenes:n=1200,test_n=500", epochs=10, batch_size=128,
                          text_width=64, text_layers=1, embed_dim=64, eval=False, progress=False)
    trained, cfg, _ = load_method(run)
    held_out = load_run_data(cfg, captions=True).eval_pairs
    got = image_text_metrics(trained, held_out, "cpu")
    print(method, {k: round(v, 3) for k, v in got.items() if isinstance(v, float)})
    assert got["zeroshot_top1"] > got["zeroshot_chance"] + 0.2
    for direction in ("i2t", "t2i"):
        assert got[f"{direction}_recall@5"] > 10 * got[f"{direction}_recall@5_chance"]
    assert got["clip_score_auroc"] > 0.9
