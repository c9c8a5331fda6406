"""Using a joint image-text space: retrieval Recall@K, zero-shot classification, CLIP-score AUROC.

Everything here takes unit embeddings (so a dot product is the cosine similarity,
the "CLIP score") and plain index arrays; the models are not needed (the harness that
runs a method over held-out pairs is image_text_harness.py).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import Tensor


def recall_at_k(similarity: Tensor, text_image: Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image→text and text→image Recall@K on a held-out set.

    similarity: (N_images, N_texts); text_image: (N_texts,) the image each caption
    belongs to. An image query counts as found when any of its captions is among its
    top K texts; a text query when its own image is among its top K images (the
    Flickr8k/30k convention). Ties are broken against the query (a tied wrong item
    ranks first), so a constant similarity scores no better than chance.
    """
    sim = similarity.float()
    n_img, n_txt = sim.shape
    own = torch.zeros(n_img, n_txt, dtype=torch.bool, device=sim.device)
    own[text_image, torch.arange(n_txt, device=sim.device)] = True
    # image -> text: rank of the best own caption = number of other captions scoring at least as high
    best_own = sim.masked_fill(~own, -math.inf).max(1, keepdim=True).values
    i2t_rank = ((sim >= best_own) & ~own).sum(1)
    # text -> image: number of other images scoring at least as high as the own image
    own_score = sim[text_image, torch.arange(n_txt, device=sim.device)]
    t2i_rank = ((sim >= own_score[None]) & ~own).sum(0)
    out = {}
    for k in ks:
        out[f"i2t_recall@{k}"] = float((i2t_rank < k).float().mean())
        out[f"t2i_recall@{k}"] = float((t2i_rank < k).float().mean())
    return out


def recall_chance(text_image: np.ndarray, n_images: int, k: int) -> dict[str, float]:
    """Expected Recall@K of a random ranking.

    text→image: K / N_images. image→text: for an image with m of the T captions,
    1 − C(T−m, K) / C(T, K) (no own caption among K drawn without replacement),
    averaged over images.
    """
    counts = np.bincount(np.asarray(text_image), minlength=n_images)
    total = int(counts.sum())
    k_txt = min(k, total)

    def miss(m: int) -> float:  # C(T-m, K) / C(T, K) as a product, exact and overflow-free
        return float(np.prod([(total - m - i) / (total - i) for i in range(k_txt)])) if total - m >= k_txt else 0.0

    i2t = float(np.mean([1.0 - miss(int(m)) for m in counts]))
    return {"i2t": i2t, "t2i": min(k, n_images) / n_images}


def clip_score_auroc(similarity: Tensor, text_image: Tensor) -> dict[str, float]:
    """How well the CLIP score tells an image's own captions from other images' captions.

    ``pooled``: one AUROC over every (image, caption) pair, positives the own pairs (a single
    score threshold, as a curation filter uses it); ``per_image``: the AUROC of each image's
    ranking of all captions, averaged.
    """
    sim = similarity.float().cpu().numpy()
    own = np.zeros(sim.shape, dtype=bool)
    own[text_image.cpu().numpy(), np.arange(sim.shape[1])] = True
    pooled = roc_auc_score(own.ravel(), sim.ravel())
    per_image = [roc_auc_score(own[i], sim[i]) for i in range(len(sim)) if 0 < own[i].sum() < own.shape[1]]
    return {"pooled": float(pooled), "per_image": float(np.mean(per_image))}


def zero_shot_classifier(embed_texts: Callable[[list[str]], Tensor], prompts: Sequence[Sequence[str]]) -> Tensor:
    """(C, D) unit class embeddings: each class's prompts (``prompts[c]``, e.g. every template
    filled with its name) embedded by the text tower, averaged and re-normalised (CLIP's
    prompt ensemble)."""
    flat = [p for class_prompts in prompts for p in class_prompts]
    emb = embed_texts(flat).float()
    sizes = [len(class_prompts) for class_prompts in prompts]
    means = torch.stack([chunk.mean(0) for chunk in emb.split(sizes)])
    return torch.nn.functional.normalize(means, dim=-1)


def zero_shot_accuracy(image_emb: Tensor, classifier: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of assigning each image the class with the highest cosine score."""
    scores = image_emb.float() @ classifier.float().T
    labels = labels.to(scores.device)
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return {"top1": float((top[:, 0] == labels).float().mean()),
            "top5": float((top == labels[:, None]).any(1).float().mean())}
