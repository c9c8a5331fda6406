"""Which patches a masked method hides or predicts, drawn on the batch's device.

Masks are over a ViT's ``grid`` x ``grid`` patch tokens in row-major order (the ViT's token
order). Every random number comes from the ``generator`` passed in (drawn up front), so the
same seed gives the same masks.

- :func:`random_mask`: MAE's per-image random subset, as indices of the kept patches and a mask;
- :func:`masked_counts`, :func:`random_patch_mask`, :func:`block_patch_mask`: iBOT's masks of a
  given size per view, single patches or BEiT-style rectangles;
- :func:`jepa_masks`: I-JEPA's target blocks and the context block with the targets removed.

- :func:`mask_tokens`: BERT's masked-language-model corruption of token ids (15% chosen;
  of those 80% -> the mask token, 10% -> a random token, 10% kept).

The rectangles of iBOT and I-JEPA share :func:`block_shape` (area and aspect ratio to rows and
columns) and :func:`block_cells` (a placed rectangle's patch indices).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import fail

BLOCK_ATTEMPTS = 16  # iBOT: rectangles tried per image before the rest is masked patch by patch
BLOCK_ASPECT = 0.3  # iBOT: block aspect ratios lie in [0.3, 1/0.3] (log-uniform), as BEiT
CONTEXT_ATTEMPTS = 20  # I-JEPA: context block placements tried before the whole non-target area is taken


def _device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


# ---------------------------------------------------------------- rectangles


def block_shape(area: float, aspect: float, grid: int) -> tuple[int, int]:
    """(rows, columns) of a rectangle of about ``area`` patches with rows / columns ≈ ``aspect``:
    h = round(√(area · aspect)), w = round(√(area / aspect)), each clamped to [1, grid]."""
    h = min(grid, max(1, round(math.sqrt(area * aspect))))
    w = min(grid, max(1, round(math.sqrt(area / aspect))))
    return h, w


def block_cells(h: int, w: int, u_top: float, u_left: float, grid: int) -> list[int]:
    """Patch indices of an h x w rectangle whose top-left corner is placed by u_top, u_left in [0, 1)
    (uniform over the positions that keep it inside the grid)."""
    top, left = int(u_top * (grid - h + 1)), int(u_left * (grid - w + 1))
    return [(top + r) * grid + left + c for r in range(h) for c in range(w)]


# ---------------------------------------------------------------- MAE


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """round(ratio * L) hidden patches; at least one hidden and one visible."""
    hidden = int(round(mask_ratio * num_patches))
    if hidden < 1 or hidden > num_patches - 1:
        raise fail(f"mask-ratio {mask_ratio} hides {hidden} of {num_patches} patches; choose a ratio that "
                   "hides at least one patch and keeps at least one visible")
    return hidden


def random_mask(n: int, num_patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Random per-sample masks: (keep_idx (N, K) long, sorted; mask (N, L) bool, True = hidden).

    argsort of uniform noise from ``generator`` (on its device), so the same seed gives the same masks.
    """
    if device is None:
        device = _device(generator)
    hidden = num_masked(num_patches, mask_ratio)
    noise = torch.rand(n, num_patches, generator=generator, device=device)
    keep_idx = noise.argsort(dim=1)[:, :num_patches - hidden].sort(dim=1).values
    mask = torch.ones(n, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, keep_idx, False)
    return keep_idx, mask


# ---------------------------------------------------------------- iBOT


def masked_counts(n: int, num_patches: int, ratio_min: float, ratio_max: float, prob: float,
                  generator: torch.Generator | None = None) -> list[int]:
    """How many patches to mask in each of n views: 0 for a view left unmasked (probability
    1 − prob), else round(r · L) with r ~ U[ratio_min, ratio_max], at least 1 and at most L − 1."""
    u = torch.rand(n, 2, generator=generator, device=_device(generator)).cpu().tolist()
    counts = []
    for pick, r in u:
        if pick >= prob or ratio_max <= 0:
            counts.append(0)
            continue
        k = round((ratio_min + (ratio_max - ratio_min) * r) * num_patches)
        counts.append(min(max(k, 1), num_patches - 1))
    return counts


def random_patch_mask(counts: list[int], grid: int, generator: torch.Generator | None = None) -> Tensor:
    """(N, grid*grid) bool, True = masked: ``counts[i]`` patches of view i chosen uniformly."""
    device = _device(generator)
    noise = torch.rand(len(counts), grid * grid, generator=generator, device=device)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return rank < torch.tensor(counts, device=device).unsqueeze(1)


def block_patch_mask(counts: list[int], grid: int, generator: torch.Generator | None = None) -> Tensor:
    """(N, grid*grid) bool, True = masked, with exactly ``counts[i]`` patches masked in view i.

    Rectangles of area a ~ U[1, still to mask] and aspect ratio log-uniform in [0.3, 1/0.3] are
    placed at random; one is kept if it masks at least one new patch and does not overshoot.
    After ``BLOCK_ATTEMPTS`` tries the rest is masked patch by patch at random.
    """
    device = _device(generator)
    n, length = len(counts), grid * grid
    draws = torch.rand(n, BLOCK_ATTEMPTS, 4, generator=generator, device=device).cpu().tolist()
    fill = torch.rand(n, length, generator=generator, device=device).cpu().tolist()
    log_lo, log_hi = math.log(BLOCK_ASPECT), math.log(1 / BLOCK_ASPECT)
    rows = []
    for i, target in enumerate(counts):
        cells = [False] * length
        done = 0
        for u_area, u_aspect, u_top, u_left in draws[i]:
            todo = target - done
            if todo <= 0:
                break
            h, w = block_shape(1 + u_area * (todo - 1), math.exp(log_lo + (log_hi - log_lo) * u_aspect), grid)
            new = [j for j in block_cells(h, w, u_top, u_left, grid) if not cells[j]]
            if 0 < len(new) <= todo:
                for j in new:
                    cells[j] = True
                done += len(new)
        if done < target:  # the rest one patch at a time, in the order of the fill noise
            free = sorted((v, j) for j, v in enumerate(fill[i]) if not cells[j])
            for _, j in free[:target - done]:
                cells[j] = True
        rows.append(cells)
    return torch.tensor(rows, dtype=torch.bool, device=device).reshape(n, length)


# ---------------------------------------------------------------- I-JEPA


def jepa_masks(n: int, grid: int, num_targets: int = 4, target_scale: tuple[float, float] = (0.15, 0.2),
               target_aspect: tuple[float, float] = (0.75, 1.5), context_scale: tuple[float, float] = (0.85, 1.0),
               min_context: int = 1, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """I-JEPA's multi-block masks for n images: (context_idx (N, K_c), target_idx (M, N, K_t)), long.

    Per batch (as the paper's collator, so the blocks stack into tensors) one target shape is
    drawn: scale s ~ U[target_scale], aspect ratio r = rows / columns ~ U[target_aspect],
    (h, w) = :func:`block_shape` (s · L, r); and one context shape: scale ~ U[context_scale],
    aspect 1. Per image, the M = ``num_targets`` target blocks are placed uniformly at random
    (they may overlap each other), then the context block; the context is the context block
    minus every target patch. When that leaves fewer than ``min_context`` patches the context
    block is placed again (up to ``CONTEXT_ATTEMPTS`` times), then every non-target patch is
    the context. Contexts are cut to the batch's smallest by a random subset (the paper keeps
    the first indices), and every row of indices is sorted.
    """
    length = grid * grid
    device = _device(generator)
    for aspect in (target_aspect[0], 1.0, target_aspect[1]):  # the largest blocks the options allow
        h, w = block_shape(target_scale[1] * length, aspect, grid)
        if h * w >= length:
            raise fail(f"a target block of {h}x{w} patches covers the whole {grid}x{grid} grid; give a smaller "
                       "target scale")
    shape = torch.rand(3, generator=generator, device=device).cpu().tolist()
    place = torch.rand(n, num_targets + CONTEXT_ATTEMPTS, 2, generator=generator, device=device).cpu().tolist()
    th, tw = block_shape((target_scale[0] + (target_scale[1] - target_scale[0]) * shape[0]) * length,
                         target_aspect[0] + (target_aspect[1] - target_aspect[0]) * shape[1], grid)
    ch, cw = block_shape((context_scale[0] + (context_scale[1] - context_scale[0]) * shape[2]) * length, 1.0, grid)
    targets, contexts = [], []
    for i in range(n):
        blocks = [block_cells(th, tw, u, v, grid) for u, v in place[i][:num_targets]]
        hidden = {j for b in blocks for j in b}
        context: list[int] = []
        for u, v in place[i][num_targets:]:
            context = [j for j in block_cells(ch, cw, u, v, grid) if j not in hidden]
            if len(context) >= min_context:
                break
        else:
            context = [j for j in range(length) if j not in hidden]
        targets.append(blocks)
        contexts.append(context)
    keep = min(len(c) for c in contexts)
    if keep < 1:
        raise fail(f"{num_targets} target blocks of {th}x{tw} patches leave no context on a {grid}x{grid} grid; "
                   "give fewer or smaller target blocks")
    # a random subset of `keep` context patches per image: rank every patch by noise, keep the lowest ranks
    noise = torch.rand(n, length, generator=generator, device=device).cpu().tolist()
    cut = [sorted(sorted(c, key=lambda j: noise[i][j])[:keep]) for i, c in enumerate(contexts)]
    context_idx = torch.tensor(cut, dtype=torch.long, device=device).reshape(n, keep)
    target_idx = torch.tensor(targets, dtype=torch.long, device=device).reshape(n, num_targets, th * tw)
    return context_idx, target_idx.transpose(0, 1).contiguous()


# ---------------------------------------------------------------- tokens (masked language models)


def mask_tokens(tokens: Tensor, generator: torch.Generator | None, *, mask_id: int, vocab_size: int,
                maskable: Tensor, p: float = 0.15, p_mask: float = 0.8, p_random: float = 0.1,
                random_low: int = 0) -> tuple[Tensor, Tensor]:
    """BERT's corruption (Devlin et al. 2019): (corrupted ids, chosen) for ids ``tokens`` (B, L).

    Each position where ``maskable`` (B, L) is true (the text's own tokens, not padding or
    SOT/EOT) is chosen independently with probability ``p``; a chosen position becomes
    ``mask_id`` with probability ``p_mask``, a token drawn uniformly from
    [``random_low``, ``vocab_size``) with probability ``p_random``, and stays as it is otherwise.
    The loss is taken at the chosen positions only. Deviation from BERT's code: positions are
    chosen independently (a binomial count per text) rather than exactly round(p·L) per text,
    and a text may have none chosen.
    """
    if not 0.0 < p <= 1.0 or p_mask < 0 or p_random < 0 or p_mask + p_random > 1.0:
        raise fail(f"masking rates p={p}, mask={p_mask}, random={p_random} must be in (0, 1] with mask + random <= 1")
    device = tokens.device
    u = torch.rand(tokens.shape, generator=generator, device=device)
    kind = torch.rand(tokens.shape, generator=generator, device=device)
    random_ids = torch.randint(random_low, vocab_size, tokens.shape, generator=generator, device=device)
    chosen = (u < p) & maskable
    out = torch.where(chosen & (kind < p_mask), torch.full_like(tokens, mask_id), tokens)
    out = torch.where(chosen & (kind >= p_mask) & (kind < p_mask + p_random), random_ids, out)
    return out, chosen
