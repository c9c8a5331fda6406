"""Loss functions, pure and stateless.

One convention for every loss: embeddings come first as (N, D) tensors, the
hyper-parameters follow as keywords, and the result is a scalar averaged over
what the docstring says. Nothing here keeps state or knows about our models.

Distributed training: losses that need negatives from the whole global batch take
``gather=True``. Each rank then computes the loss of its own anchors against the
candidates of every rank (gathered with gradients), which keeps the work per rank
at (local x global) and gives, after DDP's gradient averaging, exactly the
gradients of the single-process loss on the global batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .distributed import all_reduce_max, all_reduce_sum, gather_with_grad, world_and_rank

__all__ = [
    "info_nce",
    "nt_xent",
    "margin_contrastive",
    "triplet",
    "pairwise_distance",
    "kl_sparsity",
    "masked_token_loss",
    "l1_sparsity",
    "contractive_penalty_exact",
    "contractive_penalty_estimate",
    "masked_patch_mse",
    "gaussian_kl",
    "gaussian_kl_between",
    "gaussian_log_prob",
    "bernoulli_log_prob",
    "pixel_levels",
    "discretized_logistic_log_prob",
    "discretized_gaussian_log_prob",
    "byol_loss",
    "dino_loss",
    "clip_loss",
    "siglip_loss",
    "ibot_patch_loss",
    "koleo_loss",
    "sinkhorn_knopp",
    "barlow_twins_loss",
    "vicreg_loss",
    "vicreg_terms",
    "simsiam_loss",
    "swapped_prediction_loss",
    "wasserstein_dual",
    "gradient_penalty",
]


def info_nce(query: Tensor, key: Tensor, queue: Tensor | None = None, temperature: float = 0.07,
             batch_negatives: bool = True) -> Tensor:
    """Instance discrimination (InfoNCE), as in MoCo / Wu et al. 2018.

    For query q_i with positive key k_i, s_ij = cos(q_i, k_j) / τ over the batch keys
    (and cos(q_i, n_m) / τ over the queue negatives n_m when given):

        L = -(1/N) Σ_i log( exp(s_ii) / (Σ_j exp(s_ij) + Σ_m exp(s_im)) )

    With ``batch_negatives=False`` the other batch keys are no negatives (MoCo v1/v2:
    the positive against the queue only): the Σ_j runs over j = i alone.

    query, key: (N, D); queue: (K, D) or None. Inputs need not be normalised.
    """
    q = F.normalize(query, dim=1)
    k = F.normalize(key, dim=1)
    if batch_negatives:
        logits = q @ k.T
        targets = torch.arange(q.shape[0], device=q.device)
    else:
        logits = (q * k).sum(dim=1, keepdim=True)  # (N, 1): the positive, class 0
        targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    if queue is not None and queue.numel() > 0:
        logits = torch.cat([logits, q @ F.normalize(queue, dim=1).T], dim=1)
    return F.cross_entropy(logits / temperature, targets)


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float = 0.5, gather: bool = False) -> Tensor:
    """SimCLR's normalised temperature-scaled cross-entropy (Chen et al. 2020).

    The 2N views z = [z_a; z_b] form N positive pairs (i, i+N). With
    s_ij = cos(z_i, z_j) / τ, each anchor i has the loss

        ℓ_i = -log( exp(s_{i,p(i)}) / Σ_{k≠i} exp(s_ik) )

    (the anchor itself excluded from the denominator) and L is the mean of ℓ over
    all 2N anchors. With ``gather=True`` under torch.distributed the candidates
    are the views of the global batch.
    """
    world, rank = world_and_rank() if gather else (1, 0)
    n = z_a.shape[0]
    local = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)  # (2n, D): anchors
    if world > 1:
        a_all = gather_with_grad(F.normalize(z_a, dim=1))  # (world*n, D)
        b_all = gather_with_grad(F.normalize(z_b, dim=1))
        candidates = torch.cat([a_all, b_all], dim=0)  # (2*world*n, D)
        offset = rank * n
    else:
        candidates = local
        offset = 0
    big_n = candidates.shape[0] // 2
    logits = local @ candidates.T / temperature  # (2n, 2*big_n)
    rows = torch.arange(2 * n, device=local.device)
    # column of each anchor itself in the candidate matrix, and of its positive
    own = torch.cat([rows[:n] + offset, rows[:n] + offset + big_n])
    positive = torch.cat([rows[:n] + offset + big_n, rows[:n] + offset])
    logits = logits.masked_fill(F.one_hot(own, 2 * big_n).bool(), float("-inf"))
    return F.cross_entropy(logits, positive)


def margin_contrastive(e_1: Tensor, e_2: Tensor, is_positive: Tensor, margin: float = 1.0) -> Tensor:
    """The margin (contrastive) loss of Hadsell, Chopra and LeCun 2006.

    For pairs (e_1[i], e_2[i]) at Euclidean distance d_i:

        ℓ_i = d_i²                    if the pair is positive
        ℓ_i = max(0, m - d_i)²        otherwise

    and L is the mean over pairs. is_positive: (N,) bool or 0/1.
    """
    d = pairwise_distance(e_1, e_2)
    pos = is_positive.to(dtype=torch.bool)
    per_pair = torch.where(pos, d.pow(2), F.relu(margin - d).pow(2))
    return per_pair.mean()


def pairwise_distance(x: Tensor, y: Tensor, distance: str = "euclidean") -> Tensor:
    """Row-wise distance between x[i] and y[i]: Euclidean, or cosine distance 1 - cos."""
    if distance == "euclidean":
        # sqrt with a tiny floor: the gradient of sqrt at exactly 0 is infinite
        return (x - y).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(x, y, dim=1)
    raise ValueError(f"unknown distance {distance!r}; choose euclidean or cosine")


def triplet(anchor: Tensor, positive: Tensor, negative: Tensor, margin: float = 0.2, distance: str = "euclidean") -> Tensor:
    """Triplet loss (Schroff et al. 2015): mean of max(0, d(A,P) - d(A,N) + α)."""
    d_ap = pairwise_distance(anchor, positive, distance)
    d_an = pairwise_distance(anchor, negative, distance)
    return F.relu(d_ap - d_an + margin).mean()


# ---------------------------------------------------------------- autoencoder penalties


def kl_sparsity(activations: Tensor, rho: float = 0.05, eps: float = 1e-6) -> Tensor:
    """Sparsity penalty of the sparse autoencoder (Ng 2011, "Sparse autoencoder").

    With ρ̂_j = (1/N) Σ_i h_ij the mean activation of hidden unit j over the batch
    (activations h in (0, 1), shaped (N, D)) and the target rate ρ:

        L = Σ_j KL(ρ ‖ ρ̂_j) = Σ_j [ ρ log(ρ / ρ̂_j) + (1 - ρ) log((1 - ρ) / (1 - ρ̂_j)) ]

    summed over units, not averaged. ρ̂ is clamped to [eps, 1 - eps] so a dead or
    saturated unit gives a large finite penalty instead of inf.
    """
    rho_hat = activations.flatten(1).mean(dim=0).clamp(eps, 1.0 - eps)
    return (rho * torch.log(rho / rho_hat) + (1.0 - rho) * torch.log((1.0 - rho) / (1.0 - rho_hat))).sum()


def l1_sparsity(activations: Tensor) -> Tensor:
    """L1 sparsity penalty: L = (1/(N D)) Σ_ij |h_ij|, the mean absolute activation."""
    return activations.abs().mean()


def contractive_penalty_exact(encode_fn, x: Tensor) -> Tensor:
    """Contractive penalty (Rifai et al. 2011), exactly: the mean squared Frobenius norm of the Jacobian.

    With J_i = ∂g(x_i)/∂x_i (code size K by input size D) for the encoder g = ``encode_fn``:

        L = (1/N) Σ_i ‖J_i‖_F² = (1/N) Σ_i Σ_kd (∂g_k(x_i)/∂x_id)²

    Per-sample Jacobians by ``torch.func.vmap(jacrev(...))``: ``encode_fn`` is called
    on one image at a time, so it must treat samples independently (train-mode
    BatchNorm does not; put it in eval mode). L is differentiable in the encoder's
    parameters and in x.
    """
    from torch.func import jacrev, vmap

    jac = vmap(jacrev(lambda xi: encode_fn(xi.unsqueeze(0)).squeeze(0)))(x)  # (N, *code, *input)
    return jac.pow(2).sum() / x.shape[0]


def contractive_penalty_estimate(encode_fn, x: Tensor, num_projections: int = 1,
                                 generator: torch.Generator | None = None) -> Tensor:
    """Unbiased random-projection estimate of :func:`contractive_penalty_exact`.

    For v ~ N(0, I_K) in code space, E_v ‖J_iᵀ v‖² = tr(J_i J_iᵀ) = ‖J_i‖_F², so with
    P projections v_ip drawn from ``generator``:

        L̂ = (1/(N P)) Σ_i Σ_p ‖J_iᵀ v_ip‖²

    Each projection costs one vector-Jacobian product (``create_graph=True``),
    instead of K for the exact value. Samples must not interact (as for the exact
    value): a coupled batch would add Σ_{m≠i} ‖∂g(x_m)/∂x_i‖_F² to sample i.
    """
    # a fresh leaf when x carries no graph; otherwise keep x so L stays differentiable in it
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    code = encode_fn(x).flatten(1)  # (N, K)
    n = code.shape[0]
    v = torch.randn((num_projections, *code.shape), generator=generator, device=code.device, dtype=code.dtype)
    if num_projections == 1:
        (vjp,) = torch.autograd.grad(code, x, grad_outputs=v[0], create_graph=True)
    else:
        (vjp,) = torch.autograd.grad(code, x, grad_outputs=v, is_grads_batched=True, create_graph=True)
    return vjp.pow(2).sum() / (n * num_projections)


def masked_token_loss(logits: Tensor, targets: Tensor, chosen: Tensor) -> Tensor:
    """Masked language modelling (BERT): mean cross-entropy over the chosen positions only.

    ``logits`` (B, L, V), ``targets`` (B, L) the original ids, ``chosen`` (B, L) bool:
    ``-(1/|C|) Σ_{(b,i)∈C} log softmax(logits[b, i])[targets[b, i]]``; positions outside C
    (unchosen, padding) contribute nothing, to the value or the gradient. No chosen position
    gives 0 (connected to the graph, so a step still runs).
    """
    picked = logits[chosen]  # (|C|, V): only these rows enter the loss
    if picked.shape[0] == 0:
        return logits.sum() * 0.0
    if picked.dtype in (torch.float16, torch.bfloat16):  # mixed precision: the softmax in float32
        picked = picked.float()
    return F.cross_entropy(picked, targets[chosen])


def masked_patch_mse(pred: Tensor, target: Tensor, mask: Tensor, per_sample: bool = False) -> Tensor:
    """Mean squared error on the masked (hidden) patches only, as in MAE (He et al. 2022).

    pred, target: (N, L, D) patches; mask: (N, L), 1/True where a patch is hidden. With
    e_il = (1/D) Σ_d (pred_ild - target_ild)² the error of patch l of image i:

        L = Σ_il m_il e_il / Σ_il m_il                       (the mean over every hidden patch)
        L_i = Σ_l m_il e_il / Σ_l m_il                      (per_sample=True: shape (N,))

    Visible patches (m_il = 0) get no weight and no gradient.
    """
    m = mask.to(pred.dtype)
    err = (pred - target).pow(2).mean(dim=-1)
    err = torch.where(m > 0, err, torch.zeros_like(err))  # a nan/inf on a visible patch cannot leak in
    if per_sample:
        return (err * m).sum(dim=1) / m.sum(dim=1)
    return (err * m).sum() / m.sum()


# ---------------------------------------------------------------- densities for the VAEs
# Unlike the losses above these return one value per sample, (N,), summed over every
# other dimension: the ELBO and the importance weights need per-image terms.

_LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per sample, summed over the latent dimensions:

        KL = ½ Σ_d (μ_d² + σ_d² − 1 − log σ_d²)

    mu, logvar: (N, D) -> (N,).
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def gaussian_kl_between(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(μ_q, diag σ_q²) ‖ N(μ_p, diag σ_p²)) per sample, summed over dimensions:

        KL = ½ Σ_d (log σ_p² − log σ_q² + (σ_q² + (μ_q − μ_p)²) / σ_p² − 1)

    All (N, D) (or broadcastable) -> (N,).
    """
    terms = logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * torch.exp(-logvar_p) - 1.0
    return 0.5 * terms.flatten(1).sum(1)


def gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(x; mean, diag σ²) per sample, with log σ = ``log_std`` (broadcast to x):

        log p = Σ_i −½ ((x_i − m_i) / σ_i)² − log σ_i − ½ log 2π

    x: (N, ...) -> (N,).
    """
    z = (x - mean) * torch.exp(-log_std)
    per_dim = -0.5 * z.pow(2) - log_std - 0.5 * _LOG_2PI
    return per_dim.flatten(1).sum(1)


def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """log Bernoulli(x; sigmoid(logits)) per sample, x in [0, 1] (the negative BCE):

        log p = Σ_i x_i log σ(l_i) + (1 − x_i) log(1 − σ(l_i))

    x, logits: (N, ...) -> (N,).
    """
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)


# ---------------------------------------------------------------- discretised likelihoods (8-bit data)

LEVELS = 256  # values an 8-bit pixel can take


def pixel_levels(x: Tensor) -> Tensor:
    """The 8-bit level k ∈ {0..255} of pixels x in [0, 1]: k = min(⌊256 x⌋, 255).

    Level k owns the bin [k/256, (k+1)/256), so both the exact values k/255 and the
    uniformly dequantised training values (k + u)/256, u ∈ [0, 1), map back to k.
    """
    return (x * LEVELS).floor().clamp(0, LEVELS - 1)


def _bin_edges(x: Tensor, mean: Tensor, inv_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Level k of each pixel and its bin edges standardised: a = ((k+1)/256 − μ)/s, b = (k/256 − μ)/s."""
    k = pixel_levels(x)
    return k, ((k + 1) / LEVELS - mean) * inv_scale, (k / LEVELS - mean) * inv_scale


def _open_edges(k: Tensor, log_first: Tensor, log_last: Tensor, log_inner: Tensor) -> Tensor:
    """The first bin reaches down to −∞ and the last up to +∞, so the 256 masses sum to 1."""
    return torch.where(k == 0, log_first, torch.where(k == LEVELS - 1, log_last, log_inner))


def discretized_logistic_log_prob(x: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) per image under a logistic(μ, s) discretised over the 256 levels of 8-bit pixels
    (Salimans et al. 2017, PixelCNN++, one component), x in [0, 1] (see ``pixel_levels``):

        P(k) = σ(a) − σ(b),  a = ((k+1)/256 − μ)/s,  b = (k/256 − μ)/s,   k = 1..254
        P(0) = σ(a),   P(255) = 1 − σ(b) = σ(−b)        (edge bins open to ±∞)

    so Σ_k P(k) = 1: a normalised distribution over the values the data take, and
    −log P(x) / (D ln 2) is bits/dim. Bins are [k/256, (k+1)/256) on the [0, 1] scale,
    the bins of uniform dequantisation. The inner bins use the exact identity
    σ(a) − σ(b) = σ(a) σ(−b) (1 − e^{−(a−b)}), with a − b = 1/(256 s) formed directly,
    so nothing cancels in either tail. mean, log_scale broadcast to x; x: (N, ...) -> (N,).
    """
    inv_s = torch.exp(-log_scale)
    k, a, b = _bin_edges(x, mean, inv_s)
    width = (inv_s / LEVELS).expand_as(a)
    inner = F.logsigmoid(a) + F.logsigmoid(-b) + torch.log(-torch.expm1(-width))
    return _open_edges(k, F.logsigmoid(a), F.logsigmoid(-b), inner).flatten(1).sum(1)


def discretized_gaussian_log_prob(x: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log P(x) per image under N(μ, σ²) discretised over the 256 levels of 8-bit pixels
    (Ho et al. 2020, DDPM's decoder), x in [0, 1] (see ``pixel_levels``):

        P(k) = Φ(a) − Φ(b),  a = ((k+1)/256 − μ)/σ,  b = (k/256 − μ)/σ,   k = 1..254
        P(0) = Φ(a),   P(255) = 1 − Φ(b) = Φ(−b)        (edge bins open to ±∞)

    The difference is taken in the lower tail (mirrored, Φ(a) − Φ(b) = Φ(−b) − Φ(−a),
    when the bin lies right of μ) as log Φ(hi) + log(1 − e^{log Φ(lo) − log Φ(hi)}), with
    log Φ from ``torch.special.log_ndtr``: accurate far into the tails, where a plain
    Φ(a) − Φ(b) is 0. mean, log_std broadcast to x; x: (N, ...) -> (N,).
    """
    k, a, b = _bin_edges(x, mean, torch.exp(-log_std))
    right = (a + b) > 0
    log_hi = torch.special.log_ndtr(torch.where(right, -b, a))
    log_lo = torch.special.log_ndtr(torch.where(right, -a, b))
    d = (log_lo - log_hi).clamp(max=-1e-30)  # < 0: lo < hi
    # log(1 − e^d) in its two stable branches (Mächler 2012)
    log1mexp = torch.where(d > -math.log(2), torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))
    first, last = torch.special.log_ndtr(a), torch.special.log_ndtr(-b)
    return _open_edges(k, first, last, log_hi + log1mexp).flatten(1).sum(1)


# ---------------------------------------------------------------- self-distillation (BYOL, DINO)


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss (Grill et al. 2020) between online predictions and target projections.

    With p̄_i = p_i / ‖p_i‖ and z̄_i = z_i / ‖z_i‖:

        L = (1/N) Σ_i ‖p̄_i − z̄_i‖² = (1/N) Σ_i (2 − 2 cos(p_i, z_i))

    z is detached here (the stop-gradient): gradients reach p only. p, z: (N, D).
    """
    return (2.0 - 2.0 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def dino_loss(student_logits: list[Tensor], teacher_logits: list[Tensor], center: Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.07) -> Tensor:
    """DINO's self-distillation cross-entropy (Caron et al. 2021).

    teacher_logits: the G global views t_g (N, K), in the same order as the first G
    entries of student_logits (all V views s_v, (N, K)). The teacher is centred by
    ``center`` c (K,) and sharpened by τ_t; the student is softened by τ_s:

        q_g = softmax((t_g − c) / τ_t),   log p_v = log_softmax(s_v / τ_s)
        L = (1/|P|) Σ_{(g, v) ∈ P} (1/N) Σ_i −Σ_k q_g[i, k] log p_v[i, k],
        P = {(g, v) : g < G, v < V, v ≠ g}

    (the same view is never its own target). The teacher side is detached here:
    gradients reach the student logits only.
    """
    if not teacher_logits or len(student_logits) < 2:
        raise ValueError("dino_loss needs at least one teacher view and two student views")
    log_p = [F.log_softmax(s / student_temp, dim=-1) for s in student_logits]
    total, pairs = 0.0, 0
    for g, t in enumerate(teacher_logits):
        q = F.softmax((t.detach() - center.detach()) / teacher_temp, dim=-1)
        for v, lp in enumerate(log_p):
            if v == g:
                continue
            total = total + (-(q * lp).sum(dim=-1)).mean()
            pairs += 1
    return total / pairs


def ibot_patch_loss(student_patch_logits: Tensor, teacher_patch_logits: Tensor, mask: Tensor, center: Tensor,
                    student_temp: float = 0.1, teacher_temp: float = 0.07) -> Tensor:
    """iBOT's masked patch self-distillation (Zhou et al. 2022), one view.

    student_patch_logits s and teacher_patch_logits t: (N, L, K), the patch tokens of the same
    view, the student's with the tokens where ``mask`` m (N, L, bool) is True replaced by a mask
    token, the teacher's unmasked. The teacher is centred by ``center`` c (K,) and sharpened by
    τ_t; the student is softened by τ_s; only masked positions count, averaged per image and then
    over the batch:

        q[i, l] = softmax((t[i, l] − c) / τ_t),   log p[i, l] = log_softmax(s[i, l] / τ_s)
        L = (1/N) Σ_i  Σ_l m[i, l] (−Σ_k q[i, l, k] log p[i, l, k])  /  max(1, Σ_l m[i, l])

    (an image without masked patches adds 0). The teacher side is detached here: gradients
    reach the student logits only.
    """
    if student_patch_logits.shape != teacher_patch_logits.shape or student_patch_logits.dim() != 3:
        raise ValueError(f"ibot_patch_loss needs student and teacher logits of one shape (N, L, K); got "
                         f"{tuple(student_patch_logits.shape)} and {tuple(teacher_patch_logits.shape)}")
    if mask.shape != student_patch_logits.shape[:2]:
        raise ValueError(f"ibot_patch_loss: mask {tuple(mask.shape)} does not match the tokens "
                         f"{tuple(student_patch_logits.shape[:2])}")
    q = F.softmax((teacher_patch_logits.detach() - center.detach()) / teacher_temp, dim=-1)
    ce = -(q * F.log_softmax(student_patch_logits / student_temp, dim=-1)).sum(dim=-1)  # (N, L)
    m = mask.to(ce.dtype)
    per_image = (ce * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    return per_image.mean()


# ---------------------------------------------------------------- spreading and balancing (DINOv2, SwAV)


def koleo_loss(x: Tensor, eps: float = 1e-8, gather: bool = True) -> Tensor:
    """The KoLeo regulariser (Sablayrolles et al. 2019, "Spreading vectors for similarity search";
    DINOv2, Oquab et al. 2023): the Kozachenko–Leonenko differential-entropy estimator, up to constants.

    With x̄_i = x_i / ‖x_i‖ the L2-normalised rows and ρ_i = min_{j≠i} ‖x̄_i − x̄_j‖ the distance of
    row i to its nearest neighbour (itself excluded):

        L = −(1/N) Σ_i log(ρ_i + ε)

    Minimising it spreads the rows over the sphere (a near-duplicate pair costs a lot; ρ is floored
    at 1e-6, the floor of :func:`pairwise_distance`, so a duplicate costs −log(10⁻⁶ + ε)). The
    neighbour is chosen without gradients (largest cosine); the distance to it is differentiable
    in both rows. With ``gather=True`` under torch.distributed each rank's rows find their neighbours
    among the rows of the global batch (gathered with gradients), so after DDP's gradient averaging
    loss and gradients are those of one process on the global batch. x: (N, D), N ≥ 2 globally.
    """
    world, rank = world_and_rank() if gather else (1, 0)
    x = F.normalize(x, dim=1, eps=eps)
    n = x.shape[0]
    candidates = gather_with_grad(x) if world > 1 else x
    if candidates.shape[0] < 2:
        raise ValueError("koleo_loss needs at least two rows (a nearest neighbour other than itself)")
    with torch.no_grad():
        cos = x @ candidates.T  # (n, N)
        own = torch.arange(n, device=x.device) + rank * n
        cos[torch.arange(n, device=x.device), own] = -float("inf")
        neighbour = cos.argmax(dim=1)
    rho = pairwise_distance(x, candidates[neighbour])
    return -torch.log(rho + eps).mean()


@torch.no_grad()
def sinkhorn_knopp(scores: Tensor, iterations: int = 3, epsilon: float = 0.05, gather: bool = True) -> Tensor:
    """Equal-partition soft assignments by Sinkhorn–Knopp (Cuturi 2013; SwAV, Caron et al. 2020).

    scores: (B, K), e.g. the cosines of B embeddings with K prototypes. The codes Q (B, K)
    maximise Tr(Qᵀ S) + ε H(Q) over the transportation polytope

        Q 1_K = 1_B            (each sample's code is a distribution over prototypes)
        Qᵀ 1_B = (B/K) 1_K     (each prototype gets an equal share of the batch)

    found by alternately rescaling P = exp(S / ε) (normalised to total mass 1): its
    prototype sums to 1/K, then its sample sums to 1/B; ``iterations`` rounds (3 in SwAV and
    DINOv2), ending on the sample sums, so every row of Q = B · P sums to 1 exactly and the
    prototype marginals reach B/K as the iterations grow. With ``gather=True`` under
    torch.distributed B is the global batch: the sums over samples are all-reduced, each rank
    returns the codes of its own rows, and the ranks' codes together are those of one process on
    the global batch. No gradients (the codes are targets). DINOv2 uses it to centre its teacher
    with ε = the teacher temperature. Computed in float64 after subtracting the maximum of S / ε,
    so it stays finite while the spread of S / ε is below about 700 (cosines with ε ≥ 0.003).
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn_knopp needs scores (B, K); got shape {tuple(scores.shape)}")
    world = world_and_rank()[0] if gather else 1
    reduce = all_reduce_sum if world > 1 else (lambda t: t)
    logits = scores.double() / epsilon
    # a rank may hold no rows (e.g. no masked patch this step): it still joins every all-reduce
    top = logits.max() if logits.numel() else logits.new_tensor(float("-inf"))
    if world > 1:
        top = all_reduce_max(top.clone())
    p = torch.exp(logits - top)  # the shift cancels in the first normalisation; keeps exp finite
    b = reduce(torch.tensor(float(p.shape[0]), dtype=p.dtype, device=p.device))
    k = p.shape[1]
    p /= reduce(p.sum())
    for _ in range(iterations):
        p /= reduce(p.sum(dim=0, keepdim=True))  # each prototype's mass: 1, over all ranks' rows
        p /= k
        p /= p.sum(dim=1, keepdim=True)  # each sample's mass: 1/B
        p /= b
    return (p * b).to(scores.dtype)


# ---------------------------------------------------------------- redundancy reduction (Barlow Twins, VICReg)


def _standardise(z: Tensor, eps: float) -> Tensor:
    """(z − mean) / sqrt(var + eps) per column over the batch, biased variance (BatchNorm without affine)."""
    centred = z - z.mean(dim=0)
    return centred / torch.sqrt(centred.pow(2).mean(dim=0) + eps)


def barlow_twins_loss(z_a: Tensor, z_b: Tensor, lambda_: float = 5e-3, eps: float = 1e-5,
                      gather: bool = True) -> Tensor:
    """Barlow Twins' redundancy-reduction loss (Zbontar et al. 2021).

    ẑ = the projections standardised per dimension over the batch ((z − μ) / sqrt(σ² + ε), σ²
    the biased variance: the paper's affine-free BatchNorm). The D × D cross-correlation of the
    two views C_ij = (1/N) Σ_b ẑ_a[b, i] ẑ_b[b, j] is driven to the identity:

        L = Σ_i (1 − C_ii)² + λ Σ_i Σ_{j≠i} C_ij²

    (invariance on the diagonal, redundancy reduction off it; λ = 5·10⁻³ for the paper's
    D = 8192). With ``gather=True`` under torch.distributed μ, σ and C are those of the global
    batch (projections gathered with gradients; every rank computes the same L), so loss and
    DDP-averaged gradients equal one process on the global batch. z_a, z_b: (N, D).
    """
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"barlow_twins_loss needs two (N, D) tensors of one shape; got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if gather:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    n = z_a.shape[0]
    c = _standardise(z_a, eps).T @ _standardise(z_b, eps) / n
    diagonal = torch.diagonal(c)
    on_diag = (1.0 - diagonal).pow(2).sum()
    off_diag = c.pow(2).sum() - diagonal.pow(2).sum()
    return on_diag + lambda_ * off_diag


def vicreg_terms(z_a: Tensor, z_b: Tensor, eps: float = 1e-4, gamma: float = 1.0,
                 gather: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """VICReg's three unweighted terms (s, v, c) of :func:`vicreg_loss`, for logging each."""
    if z_a.shape != z_b.shape or z_a.dim() != 2:
        raise ValueError(f"vicreg_loss needs two (N, D) tensors of one shape; got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if gather:
        z_a, z_b = gather_with_grad(z_a), gather_with_grad(z_b)
    n, d = z_a.shape
    if n < 2:
        raise ValueError("vicreg_loss needs a batch of at least 2 (the variance and covariance are over the batch)")
    invariance = F.mse_loss(z_a, z_b)
    variance, covariance = 0.0, 0.0
    for z in (z_a, z_b):
        centred = z - z.mean(dim=0)
        std = torch.sqrt(centred.pow(2).sum(dim=0) / (n - 1) + eps)
        variance = variance + F.relu(gamma - std).mean() / 2
        cov = centred.T @ centred / (n - 1)
        covariance = covariance + (cov.pow(2).sum() - torch.diagonal(cov).pow(2).sum()) / d
    return invariance, variance, covariance


def vicreg_loss(z_a: Tensor, z_b: Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                cov_weight: float = 1.0, eps: float = 1e-4, gamma: float = 1.0, gather: bool = True) -> Tensor:
    """VICReg: variance-invariance-covariance regularisation (Bardes, Ponce and LeCun 2022).

    For Z (N, D) with columns z^j, S(z^j) = sqrt(Var(z^j) + ε) (unbiased variance) and
    C(Z) = (1/(N−1)) Σ_b (z_b − z̄)(z_b − z̄)ᵀ:

        s(Z_a, Z_b) = (1/(N D)) Σ_b ‖z_a,b − z_b,b‖²               (invariance: the MSE)
        v(Z) = (1/D) Σ_j max(0, γ − S(z^j))                        (variance hinge, γ = 1)
        c(Z) = (1/D) Σ_{i≠j} C(Z)_ij²                               (covariance)

        L = λ s(Z_a, Z_b) + μ [v(Z_a) + v(Z_b)] / 2 + ν [c(Z_a) + c(Z_b)]

    with λ = ``sim_weight``, μ = ``var_weight``, ν = ``cov_weight`` (25, 25, 1 in the paper; the
    variance term averaged and the covariance term summed over the two branches, as in the
    authors' code). With ``gather=True`` under torch.distributed all three terms are taken over
    the global batch (gathered with gradients, as the authors' code does; every rank computes the
    same L), so loss and DDP-averaged gradients equal one process on the global batch.
    :func:`vicreg_terms` gives s, v, c unweighted.
    """
    s, v, c = vicreg_terms(z_a, z_b, eps, gamma, gather)
    return sim_weight * s + var_weight * v + cov_weight * c

def simsiam_loss(p: Tensor, z: Tensor, stop_gradient: bool = True) -> Tensor:
    """SimSiam's negative cosine (Chen and He 2021): D(p, z) = −(1/N) Σ_i cos(p_i, sg(z_i)).

    sg is the stop-gradient (z detached, gradients reach p only); ``stop_gradient=False`` keeps
    z's gradient: the ablation of the paper's Fig. 2, which collapses. p, z: (N, D). In [−1, 1].
    """
    return -F.cosine_similarity(p, z.detach() if stop_gradient else z, dim=1).mean()


def swapped_prediction_loss(scores: list[Tensor], codes: list[Tensor], temperature: float = 0.1) -> Tensor:
    """SwAV's swapped prediction (Caron et al. 2020): each view predicts the codes of the others.

    scores: V views' prototype scores s_v (N, K) (cosines z̄ᵀ c_k); codes: the Sinkhorn–Knopp codes
    q_g (N, K) of the first G views, in the same order. With p_v = softmax(s_v / τ):

        L = (1/|P|) Σ_{(g, v) ∈ P} (1/N) Σ_i −Σ_k q_g[i, k] log p_v[i, k],
        P = {(g, v) : g < G, v < V, v ≠ g}

    (a view never predicts its own code). The codes are targets: detached here.
    """
    if not codes or len(scores) < 2 or len(codes) > len(scores):
        raise ValueError("swapped_prediction_loss needs codes of at least one view and scores of at least two")
    log_p = [F.log_softmax(s / temperature, dim=-1) for s in scores]
    total, pairs = 0.0, 0
    for g, q in enumerate(codes):
        for v, lp in enumerate(log_p):
            if v != g:
                total = total + (-(q.detach() * lp).sum(dim=-1)).mean()
                pairs += 1
    return total / pairs

from .image_text_losses import clip_loss, siglip_loss  # noqa: E402,F401


def wasserstein_dual(critic_source: Tensor, critic_target: Tensor) -> Tensor:
    """The Kantorovich-Rubinstein dual estimate of W1 between two samples, given the critic's
    scores f(x) on each (N,) or (N, 1), f assumed 1-Lipschitz (WGAN, Arjovsky et al. 2017):

        W1(P_s, P_t) = sup_{||f||_L <= 1}  E_{x~P_s} f(x) - E_{x~P_t} f(x)
                     ≈ (1/N_s) Σ_i f(x_i^s) - (1/N_t) Σ_j f(x_j^t)
    """
    return critic_source.float().mean() - critic_target.float().mean()


def gradient_penalty(critic, source: Tensor, target: Tensor, alpha: Tensor) -> Tensor:
    """WGAN-GP's soft Lipschitz constraint (Gulrajani et al. 2017), as WDGRL uses it:

        x̂_i = α_i x_i^s + (1 - α_i) x_i^t,   α_i ~ U[0, 1]
        GP = (1/N) Σ_i (||∇_x f(x̂_i)||_2 - 1)²

    ``source`` and ``target`` (N, D) are paired row by row, ``alpha`` is (N, 1) (or (N,)); the
    gradient is taken with ``create_graph=True``, so the penalty trains the critic ``f``.
    """
    alpha = alpha.reshape(-1, *([1] * (source.dim() - 1))).to(source.dtype)
    mixed = (alpha * source + (1 - alpha) * target).detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
