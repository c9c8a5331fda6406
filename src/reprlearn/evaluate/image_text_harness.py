"""The image-text harness: a method's joint space scored on held-out pairs (zero-shot, retrieval, CLIP score)."""

from __future__ import annotations

import torch

from . import image_text as it
from .harness import extract
from .zero_shot import zero_shot_scores, zero_shot_tasks


def image_text_metrics(method, pairs, device: str, max_images: int = 5000) -> dict:
    """Zero-shot accuracy (held-out tasks of the pairs), retrieval Recall@1/5/10 with chance,
    and the CLIP-score AUROC on held-out pairs, for an image-text ``method`` (EmbedsText).

    Retrieval is skipped for pairs made from class prompts (every image of a class shares
    its captions, so 'its own caption' means nothing there).
    """
    out: dict = {}
    method = method.to(device).eval()
    image_emb = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor(), 512))
    zs = zero_shot_scores(method.embed_texts, image_emb, zero_shot_tasks(pairs))
    if zs["zeroshot_tasks"]:
        out.update(zs)
    if pairs.images.labels is not None and pairs.attributes is None:  # captions made from class prompts
        return out
    keep = min(len(pairs), max_images)
    text_image = torch.repeat_interleave(torch.arange(keep), torch.tensor([len(c) for c in pairs.captions[:keep]]))
    text_emb = method.embed_texts([c for caps in pairs.captions[:keep] for c in caps]).cpu()
    sim = image_emb[:keep] @ text_emb.T
    out.update(it.recall_at_k(sim, text_image))
    for k in (1, 5, 10):
        chance = it.recall_chance(text_image.numpy(), keep, k)
        out[f"i2t_recall@{k}_chance"], out[f"t2i_recall@{k}_chance"] = chance["i2t"], chance["t2i"]
    out["recall@5_chance"] = out["t2i_recall@5_chance"]  # one caption's own image among N: K / N
    auroc = it.clip_score_auroc(sim, text_image)
    out["clip_score_auroc"], out["clip_score_auroc_per_image"] = auroc["pooled"], auroc["per_image"]
    out["retrieval_images"], out["retrieval_texts"] = keep, len(text_image)
    return out
