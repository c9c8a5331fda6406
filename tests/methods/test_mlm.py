"""mlm: BERT's 80/10/10 masking statistics, the masked-token loss against a naive loop, the
bidirectional tower, a short learning run on scenes captions (beats the majority token and the
random-init encoder's text probe), eval.json's keys, search over texts, and clip --text-init."""

import json
import math

import numpy as np
import pytest
import torch

import reprlearn
from reprlearn.augment.masks import mask_tokens
from reprlearn.data.texts import load_texts
from reprlearn.losses import masked_token_loss
from reprlearn.methods import METHODS
from reprlearn.nets.text import TextTransformer
from reprlearn.runs import load_method, untrained_encoder

from fakedata import one_line_error

# ------------------------------------------------------------------ masking


def _within(count: int, n: int, p: float, sds: float = 5.0) -> bool:
    """``count`` of ``n`` Bernoulli(p) draws lies within ``sds`` binomial standard deviations of n·p."""
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def test_mask_tokens_80_10_10_statistics():
    vocab, mask_id, low = 1000, 3, 1
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, vocab, (400, 500), generator=g)  # 200,000 positions
    maskable = torch.rand(tokens.shape, generator=g) < 0.9  # 10% are padding/SOT/EOT: never touched
    out, chosen = mask_tokens(tokens, g, mask_id=mask_id, vocab_size=vocab, maskable=maskable, random_low=low)
    n = int(maskable.sum())
    assert not (chosen & ~maskable).any()
    assert torch.equal(out[~chosen], tokens[~chosen])  # unchosen positions are never changed
    assert _within(int(chosen.sum()), n, 0.15)
    c = int(chosen.sum())
    o, t = out[chosen], tokens[chosen]
    # a random replacement is uniform over [low, vocab): it hits the mask id or the original id with
    # probability 1/(vocab-low) each, so the observed shares are shifted by that much
    hit = 1 / (vocab - low)
    became_mask = int((o == mask_id).sum())
    kept = int((o == t).sum())
    random_other = c - became_mask - kept
    assert _within(became_mask, c, 0.8 + 0.1 * hit)
    assert _within(kept, c, 0.1 + 0.1 * hit)
    assert _within(random_other, c, 0.1 * (1 - 2 * hit))
    drawn = o[(o != mask_id) & (o != t)]
    assert drawn.min() >= low and drawn.max() < vocab  # never padding (id 0)
    # uniform: each tenth of the id range gets a tenth of the random draws
    tenths = torch.bincount((drawn - low) * 10 // (vocab - low), minlength=10)
    assert all(_within(int(k), len(drawn), 0.1) for k in tenths)


def test_mask_tokens_is_reproducible_and_rejects_bad_rates():
    tokens = torch.randint(4, 50, (8, 16))
    a = mask_tokens(tokens, torch.Generator().manual_seed(1), mask_id=3, vocab_size=50,
                    maskable=torch.ones_like(tokens, dtype=torch.bool))
    b = mask_tokens(tokens, torch.Generator().manual_seed(1), mask_id=3, vocab_size=50,
                    maskable=torch.ones_like(tokens, dtype=torch.bool))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    one_line_error(lambda: mask_tokens(tokens, None, mask_id=3, vocab_size=50, maskable=tokens > 0, p_mask=0.95,
                                       p_random=0.1), "mask + random")


# ------------------------------------------------------------------ the loss


def _naive_masked_ce(logits, targets, chosen) -> float:
    """-(1/|C|) Σ_{(b,i)∈C} log softmax(logits[b,i])[targets[b,i]], one position at a time in float64."""
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            if chosen[b, i]:
                row = [float(v) for v in logits[b, i]]
                m = max(row)
                log_z = m + math.log(sum(math.exp(v - m) for v in row))
                total += log_z - row[int(targets[b, i])]
                count += 1
    return total / count


def test_masked_token_loss_matches_naive_loop_and_ignores_unchosen_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 9, 13, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 13, (4, 9), generator=g)
    chosen = torch.rand(4, 9, generator=g) < 0.3
    value = masked_token_loss(logits, targets, chosen)
    assert value.item() == pytest.approx(_naive_masked_ce(logits.detach(), targets, chosen), rel=1e-10)
    # logits (and targets) at unchosen positions do not change the loss ...
    changed = logits.detach().clone()
    changed[~chosen] = torch.randn(int((~chosen).sum()), 13, generator=g, dtype=torch.float64) * 10
    other_targets = torch.where(chosen, targets, (targets + 1) % 13)
    assert masked_token_loss(changed, other_targets, chosen).item() == pytest.approx(value.item(), rel=1e-12)
    # ... nor get any gradient
    value.backward()
    assert logits.grad[~chosen].abs().max() == 0 and logits.grad[chosen].abs().max() > 0
    # nothing chosen: zero, still differentiable
    assert masked_token_loss(logits, targets, torch.zeros_like(chosen)).item() == 0.0


def test_masked_token_loss_gradcheck():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 7, (2, 5), generator=g)
    chosen = torch.rand(2, 5, generator=g) < 0.5
    assert torch.autograd.gradcheck(lambda x: masked_token_loss(x, targets, chosen), (logits,))


# ------------------------------------------------------------------ the bidirectional tower


def test_mlm_loss_is_the_masked_token_loss_of_the_full_logits():
    """The method runs its head on the chosen rows only; that must equal the loss on all logits."""
    from reprlearn.methods import DataInfo

    info = DataInfo(0, 0, 0, [], [], text={"vocab_size": 40, "sot_id": 1, "eot_id": 2, "pad_id": 0, "mask_id": 3})
    cfg = METHODS.get("mlm").Config(text_width=16, text_heads=2, context_length=12)
    torch.manual_seed(0)
    model = METHODS.get("mlm")(cfg, None, info, None)
    tokens = torch.cat([torch.ones(6, 1, dtype=torch.long), torch.randint(4, 40, (6, 9)),
                        torch.full((6, 1), 2), torch.zeros(6, 1, dtype=torch.long)], 1)
    views = model.views(tokens, torch.Generator().manual_seed(0))
    corrupted, targets, chosen = views
    assert chosen.any()
    full = masked_token_loss(model.token_logits(corrupted), targets, chosen)
    torch.testing.assert_close(model.loss(views)["loss"], full)


def test_bidirectional_tower_sees_both_sides_and_ignores_padding():
    torch.manual_seed(0)
    net = TextTransformer(50, 8, eot_id=2, width=16, layers=2, heads=2, causal=False, pool="mean").eval()
    tokens = torch.tensor([[1, 7, 9, 11, 2, 0, 0, 0]])
    states = net.states(tokens)
    later = tokens.clone()
    later[0, 3] = 12  # a later token changes an earlier position's state (no causal mask)
    assert not torch.allclose(net.states(later)[0, 1], states[0, 1])
    # padding is hidden: what stands in the padded positions changes no real position, nor the pooled mean
    trimmed = net.states(tokens[:, :5])
    torch.testing.assert_close(trimmed[0], states[0, :5])
    torch.testing.assert_close(net(tokens), states[0, :5].mean(0, keepdim=True))


# ------------------------------------------------------------------ end to end on scenes

FAST = dict(epochs=4, batch_size=256, lr=5e-3, warmup_epochs=1, progress=False, checkpoint_every=100,
            eval_max_train=500)


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory):
    """One short run on scenes captions, evaluated (its eval.json is read by several tests)."""
    run = tmp_path_factory.mktemp("mlm") / "run"
    reprlearn.train("mlm", out=run, eval=False, **FAST)
    return run


def test_short_mlm_run_beats_majority_token_and_random_init_probe(mlm_run):
    """Learning: masked-token accuracy well above the majority token's, pseudo-perplexity (and the
    perplexity at the replaced positions) below the unigram
    model's, and the pooled features' kNN probe for the object count a caption names above the
    random-init encoder's (the linear probe with all labels reaches ~1.0 on both)."""
    from reprlearn.evaluate.text import text_metrics

    method, cfg, info = load_method(mlm_run)
    train, test = load_texts("scenes")
    train.tasks = {"count": train.tasks["count"]}
    r = text_metrics(method, untrained_encoder(method, cfg, info), train, test, "cpu", max_train=2000)
    probe = r["text_probe"]["count"]
    print(f"mlm: masked-token accuracy {r['masked_token_accuracy']:.3f} vs majority {r['majority_token_accuracy']:.3f}; "
          f"pseudo-perplexity {r['pseudo_perplexity']:.2f} vs unigram {r['unigram_perplexity']:.2f}, at the replaced "
          f"positions {r['replaced_perplexity']:.2f} vs {r['replaced_unigram_perplexity']:.2f}; count probe kNN "
          f"{probe['mlm_knn']:.3f} vs random init {probe['random_init_knn']:.3f}, linear {probe['mlm']:.3f} vs "
          f"{probe['random_init']:.3f}, 5 labels per class {probe['mlm_few']:.3f} vs {probe['random_init_few']:.3f}")
    assert r["masked_token_accuracy"] > r["majority_token_accuracy"] + 0.3
    assert r["pseudo_perplexity"] < 0.5 * r["unigram_perplexity"]
    assert r["replaced_perplexity"] < 0.5 * r["replaced_unigram_perplexity"]
    assert probe["mlm_knn"] > probe["random_init_knn"] + 0.02 and probe["mlm"] >= probe["random_init"]


def test_eval_json_keys(mlm_run):
    result = reprlearn.evaluate_run(mlm_run, labels_per_class=2)
    on_disk = json.loads((mlm_run / "eval.json").read_text())
    for key in ("masked_token_accuracy", "majority_token_accuracy", "pseudo_perplexity", "perplexity",
                "unigram_perplexity", "replaced_perplexity", "replaced_unigram_perplexity", "replaced_positions",
                "text_probe", "sibling_retrieval"):
        assert key in on_disk and key in result
    assert set(on_disk["text_probe"]) == {"count", "shape", "colour", "first_colour"}
    assert {"mlm", "random_init", "majority", "mlm_few", "random_init_few", "mlm_knn",
            "random_init_knn"} <= set(on_disk["text_probe"]["count"])
    assert 0 < on_disk["majority_token_accuracy"] < on_disk["masked_token_accuracy"] <= 1
    assert on_disk["perplexity"] == on_disk["pseudo_perplexity"]  # the earlier key still reads the same
    assert 0 < on_disk["replaced_positions"] < on_disk["masked_positions"]


def test_sibling_recall_hand_computed():
    from reprlearn.evaluate.text import sibling_recall

    f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.6, 0.8]])
    # 0 and 1 (group 0) find each other: hits; 2 (group 1) finds 3 (group 2): a miss; 4 (group 1) finds 3
    # (cosine 0.86): a miss; 3 has no sibling and is not counted
    assert sibling_recall(f, np.array([0, 0, 1, 2, 1])) == pytest.approx(2 / 4)
    assert sibling_recall(f, np.array([0, 0, 1, 1, 3])) == pytest.approx(1.0)


def test_embed_texts_of_a_text_run(mlm_run, tmp_path):
    lines = tmp_path / "t.txt"
    lines.write_text("a red circle.\na blue square.\n")
    features = reprlearn.embed(mlm_run, str(lines))
    assert features.shape == (2, 64) and np.isfinite(features).all()


def test_search_over_texts(mlm_run):
    hits, images = reprlearn.api.search(mlm_run, "scenes", ["a green ring."], k=3)
    assert images is None and len(hits) == 1 and len(hits[0]) == 3
    assert all(isinstance(h.caption, str) and h.caption for h in hits[0])
    assert hits[0][0].score >= hits[0][1].score >= hits[0][2].score
    one_line_error(lambda: reprlearn.api.search(mlm_run, "scenes", [], ["x.png"]), "text only")


def test_text_sources(tmp_path):
    lines = tmp_path / "t.txt"
    lines.write_text("a dog runs.\n\n  a cat   sleeps.\n")
    assert load_texts(str(lines))[0].texts == ["a dog runs.", "a cat sleeps."]
    table = tmp_path / "t.csv"
    table.write_text("id,sentence,label\n1,a dog runs.,animal\n2,a car drives.,vehicle\n")
    got = load_texts(str(table))[0]
    assert got.texts == ["a dog runs.", "a car drives."] and got.tasks["label"][1] == ["animal", "vehicle"]
    one_line_error(lambda: load_texts(f"{table}?column=words"), "no a column", "?column=NAME")
    one_line_error(lambda: load_texts("digits"), "holds images, not text")
    one_line_error(lambda: reprlearn.train("mlm", data="digits", out=tmp_path / "r"), "holds images, not text")


def test_an_eval_table_uses_the_training_tables_label_names(tmp_path):
    """Two tables number their labels each in sorted order; the held-out one is renumbered to the
    training names (a name the training table lacks, and an empty cell, are -1: not scored)."""
    from reprlearn.config import RunConfig
    from reprlearn.data.texts import load_text_data

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("text,label\na dog runs.,animal\na car drives.,vehicle\na cat sleeps.,animal\nno label here.,\n")
    test.write_text("text,label\na red bus.,vehicle\na green apple.,fruit\na bird sings.,animal\n")
    data = load_text_data(RunConfig(method="mlm", data=str(train), eval_data=str(test)))
    y, names = data.train.tasks["label"]
    assert names == ["animal", "vehicle"] and y.tolist() == [0, 1, 0, -1]
    y, names = data.eval.tasks["label"]
    assert names == ["animal", "vehicle"] and y.tolist() == [1, -1, 0]


def test_held_out_captions_have_no_sibling_in_training(monkeypatch):
    """Without a test split, every 10th item's captions are held out together (an image's five
    captions never straddle the split)."""
    import reprlearn.data.texts as texts
    from reprlearn.config import RunConfig

    groups = np.repeat(np.arange(40), 5)
    source = texts.TextSet([f"caption {i} of item {g}" for i, g in enumerate(groups)], "shards", groups=groups)
    monkeypatch.setattr(texts, "load_texts", lambda spec, split="train": (source, None))
    data = texts.load_text_data(RunConfig(method="mlm", data="shards"))
    assert set(data.train.groups).isdisjoint(data.eval.groups)
    assert len(data.eval) == 4 * 5 and sorted(set(data.eval.groups)) == [9, 19, 29, 39]


def test_exporting_a_text_run_is_one_line(mlm_run, tmp_path, capsys):
    from reprlearn.cli import main

    assert main(["export", str(mlm_run), "--format", "safetensors", "--out", str(tmp_path / "t.safetensors")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "text-only run" in err[0]


class _FixedMLM(torch.nn.Module):
    """Two texts of four tokens over a vocabulary of 4; a corruption fixed by hand and logits that give
    the true token probability 1/2 at replaced positions and 0.9 where the token was left."""

    def corrupt(self, tokens, generator):
        chosen = torch.tensor([[True, True, False, False], [False, True, True, False]])
        corrupted = tokens.clone()
        corrupted[0, 0], corrupted[1, 2] = 3, 3  # <|mask|> = 3; [0, 1] chosen and left; [1, 1] random but equal
        return corrupted, chosen

    def token_logits(self, corrupted):
        p = torch.full((2, 4, 4), 0.1 / 3)
        p[..., 0], p[..., 1:] = 0.9, 0.1 / 3  # token 0 everywhere is the original of the unchanged ones
        p[0, 0] = torch.tensor([0.5, 0.5, 0.0, 0.0]) + 1e-12
        p[1, 2] = torch.tensor([0.5, 0.5, 0.0, 0.0]) + 1e-12
        return p.log()


def test_pseudo_and_replaced_perplexity_hand_computed():
    from reprlearn.evaluate.text import _chosen_predictions, _perplexity

    tokens = torch.tensor([[1, 0, 2, 2], [2, 0, 1, 2]])
    targets, logp, pred, replaced = _chosen_predictions(_FixedMLM(), tokens, torch.Generator(), "cpu")
    assert targets.tolist() == [1, 0, 0, 1] and replaced.tolist() == [True, False, False, True]
    # all chosen: exp(−(2 ln ½ + 2 ln 0.9)/4) = 1/√(0.45); replaced only: exp(−ln ½) = 2
    assert _perplexity(logp) == pytest.approx(1 / math.sqrt(0.45), rel=1e-6)
    assert _perplexity(logp[replaced]) == pytest.approx(2.0, rel=1e-6)
    assert _perplexity(logp[:0]) is None
