"""Evaluation of a text method (``ModelsText``, e.g. mlm) on held-out text.

- Masked-token accuracy and pseudo-perplexity: the held-out texts corrupted once as in training
  (the method's own ``corrupt``, seeded by the run's seed), the original token predicted at
  each chosen position; ``pseudo_perplexity`` = exp(mean cross-entropy over all the chosen
  positions), the 10% left as they were included: there the input shows the answer, so this is no
  language model's perplexity (nor Salazar et al. 2020's pseudo-perplexity, which masks every
  token in turn). On scenes the two agree (2.006 and 2.005): the model gains nothing from the
  unchanged tokens.
  ``replaced_perplexity`` is the same over the positions whose token was changed only
  (``<|mask|>`` or a different random token), where the model must guess from context.
  ``perplexity``, the key of earlier eval.json files, still holds the pseudo-perplexity.
- Their baselines on the same positions: the majority token (the training texts' most frequent
  token, predicted everywhere) and the unigram model (training token frequencies, add-one
  smoothed over the vocabulary; ``unigram_perplexity`` on all chosen positions,
  ``replaced_unigram_perplexity`` on the replaced ones); both use no context at all.
- Sibling retrieval (texts of the same item: scenes' 3 captions of an image, Flickr8k's 5): how
  often a held-out text's nearest other text by pooled embedding describes the same item (R@1),
  for the trained and the random-init encoder, beside chance. It needs no labels.
- The text probe: a linear probe of the pooled embeddings (``method.encoder``) for each label
  task the texts carry (scenes: count, shape, colour), beside the same probe on the random-init
  encoder and the majority class; a kNN probe (k=20) beside it; and the linear probe with ``labels_per_class`` labelled texts per class
  (``*_few``, linear, mean of 5 draws), where features that already group the texts tell more.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .probes import few_label, knn_top1, linear_top1

BATCH = 512
KNN_K = 20  # neighbours of the text probe's kNN (cosine, temperature-weighted votes)


@torch.no_grad()
def _chosen_predictions(method, tokens: torch.Tensor, generator: torch.Generator, device):
    """(targets, log-probabilities of the targets, argmax predictions, replaced) at every chosen position;
    ``replaced`` marks the positions whose token the corruption changed."""
    targets, logp, pred, replaced = [], [], [], []
    for start in range(0, len(tokens), BATCH):
        batch = tokens[start:start + BATCH].to(device)
        corrupted, chosen = method.corrupt(batch, generator)
        logits = method.token_logits(corrupted)[chosen].float()
        t = batch[chosen]
        targets.append(t.cpu())
        replaced.append((corrupted[chosen] != t).cpu())
        logp.append(F.log_softmax(logits, -1).gather(1, t[:, None])[:, 0].cpu())
        pred.append(logits.argmax(-1).cpu())
    return torch.cat(targets), torch.cat(logp), torch.cat(pred), torch.cat(replaced)


def _perplexity(log_probs: torch.Tensor) -> float | None:
    """exp(−mean log p) over the given positions; None when there are none."""
    return math.exp(float(-log_probs.double().mean())) if len(log_probs) else None


def token_counts(tokens: torch.Tensor, vocab_size: int, specials: list[int]) -> torch.Tensor:
    """How often each id occurs among the texts' own tokens (padding, SOT and EOT not counted)."""
    keep = torch.ones_like(tokens, dtype=torch.bool)
    for s in specials:
        keep &= tokens != s
    return torch.bincount(tokens[keep], minlength=vocab_size).double()


@torch.no_grad()
def text_features(encoder, tokens: torch.Tensor, device) -> np.ndarray:
    """(N, D) float32 features of token ids (N, L), in batches, padding columns trimmed."""
    out = []
    for start in range(0, len(tokens), BATCH):
        batch = tokens[start:start + BATCH]
        length = int((batch != 0).sum(1).max().clamp(min=1))
        out.append(encoder(batch[:, :length].to(device)).float().cpu())
    return torch.cat(out).numpy()


def sibling_recall(features: np.ndarray, groups: np.ndarray) -> float:
    """Share of texts whose nearest other text (cosine) describes the same item, over the texts whose
    item has another text."""
    f = torch.nn.functional.normalize(torch.from_numpy(features).double(), dim=1)
    g = torch.from_numpy(np.asarray(groups))
    has_sibling = (g[:, None] == g[None, :]).sum(1) > 1
    hits = []
    for start in range(0, len(f), BATCH):
        sim = f[start:start + BATCH] @ f.T
        rows = torch.arange(start, min(start + BATCH, len(f)))
        sim[torch.arange(len(rows)), rows] = -math.inf  # not itself
        hits.append(g[sim.argmax(1)] == g[rows])
    return float(torch.cat(hits)[has_sibling].double().mean())


def sibling_retrieval(encoders: dict, tokens: torch.Tensor, groups: np.ndarray, device) -> dict:
    """sibling R@1 of each encoder's pooled features on the held-out texts, and its chance level
    (a random other text: (m - 1) / (N - 1) for a text of an item with m texts)."""
    g = np.asarray(groups)
    size = np.bincount(g)[g]
    keep = size > 1
    out = {name: sibling_recall(text_features(e, tokens, device), g) for name, e in encoders.items()}
    out["chance"] = float(np.mean((size[keep] - 1) / (len(g) - 1)))
    return out


def text_metrics(method, random_encoder, train, test, device, seed: int = 0, max_train: int | None = None,
                 labels_per_class: int = 5) -> dict:
    """eval.json's entries for a text method: ``train``/``test`` are TextSets."""
    text = method.info.text
    vocab = text["vocab_size"]
    train_tokens, test_tokens = method.tokenize(train.texts), method.tokenize(test.texts)
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    targets, logp, pred, replaced = _chosen_predictions(method, test_tokens, g, device)
    counts = token_counts(train_tokens, vocab, [text["pad_id"], text["sot_id"], text["eot_id"]])
    majority = int(counts.argmax())
    unigram = (counts + 1) / (counts.sum() + vocab)
    result = {
        "method": "mlm", "test_texts": len(test), "train_texts": len(train), "masked_positions": len(targets),
        "masked_token_accuracy": float((pred == targets).double().mean()),
        "majority_token_accuracy": float((targets == majority).double().mean()),
        "pseudo_perplexity": _perplexity(logp),
        "perplexity": _perplexity(logp),  # the pseudo-perplexity under its earlier name
        "unigram_perplexity": _perplexity(unigram[targets].log()),
        "replaced_positions": int(replaced.sum()),
        "replaced_perplexity": _perplexity(logp[replaced]),
        "replaced_unigram_perplexity": _perplexity(unigram[targets[replaced]].log()),
        "majority_token": method.tokenizer.decode([majority]),
    }
    probes = {}
    rng = np.random.default_rng(seed)
    for task, (y_train, names) in train.tasks.items():
        if task not in test.tasks:
            continue
        y_test = test.tasks[task][0]
        tr, te = np.flatnonzero(y_train >= 0), np.flatnonzero(y_test >= 0)
        if max_train and len(tr) > max_train:
            tr = np.sort(rng.choice(tr, max_train, replace=False))
        if len(np.unique(y_train[tr])) < 2 or not len(te):
            continue
        row = {"classes": len(names), "train_texts": len(tr), "test_texts": len(te),
               "majority": float(np.mean(y_test[te] == np.bincount(y_train[tr]).argmax()))}
        for name, encoder in (("mlm", method.encoder), ("random_init", random_encoder)):
            f_tr, f_te = text_features(encoder, train_tokens[tr], device), text_features(encoder, test_tokens[te], device)
            row[name] = linear_top1(f_tr, y_train[tr], f_te, y_test[te], seed=seed)
            row[f"{name}_knn"] = knn_top1(f_tr, y_train[tr], f_te, y_test[te], k=KNN_K)
            few = few_label(f_tr, y_train[tr], f_te, y_test[te], per_class=labels_per_class, draws=5, seed=seed)
            row[f"{name}_few"] = few["linear_top1_few"]
        probes[task] = row
    if test.groups is not None:
        result["sibling_retrieval"] = sibling_retrieval(
            {"mlm": method.encoder, "random_init": random_encoder}, test_tokens, test.groups, device)
    result["text_probe"] = probes or "skipped: the texts carry no labels (scenes or a table with a label column do)"
    return result


def format_text_table(result: dict) -> str:
    lines = [f"masked-token accuracy {result['masked_token_accuracy']:.4f}  (majority token "
             f"{result['majority_token_accuracy']:.4f}, {result['masked_positions']} positions)",
             f"pseudo-perplexity     {result.get('pseudo_perplexity', result['perplexity']):.2f}  "
             f"(unigram {result['unigram_perplexity']:.2f}; all chosen positions, 10% of them unchanged)"]
    if result.get("replaced_perplexity") is not None:  # eval.json files before it have none
        lines.append(f"perplexity, replaced  {result['replaced_perplexity']:.2f}  (unigram "
                     f"{result['replaced_unigram_perplexity']:.2f}; {result['replaced_positions']} positions)")
    sib = result.get("sibling_retrieval")
    if sib:
        lines.append(f"sibling R@1           {sib['mlm']:.4f}  (random init {sib['random_init']:.4f}, chance {sib['chance']:.4f})")
    probes = result.get("text_probe")
    if isinstance(probes, dict):
        for task, row in probes.items():
            lines.append(f"text probe {task:<12s} linear {row['mlm']:.4f}  (random init {row['random_init']:.4f}); "
                         f"kNN {row['mlm_knn']:.4f} (random init {row['random_init_knn']:.4f}); "
                         f"few labels {row['mlm_few']:.4f} (random init {row['random_init_few']:.4f}); "
                         f"majority {row['majority']:.4f}, {row['test_texts']} texts")
    elif probes:
        lines.append(f"text probe: {probes}")
    return "\n".join(lines)
