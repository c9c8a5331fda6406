"""Domain-invariant representations by a Wasserstein domain critic: WDGRL (Shen et al. 2018) and
its joint form (Andéol et al. 2021, "Learning domain invariant representations by joint
Wasserstein distance minimization").

Feature extractor F (the run's backbone), classifier C on the labelled samples, critic D:

    h = F(x);   z = h                                   (--align marginal, WDGRL)
                z = [h, β y]   y = onehot(label) where the label is known, softmax(C(h)) elsewhere
                                                        (--align joint, Andéol et al.)
                z = [h, β onehot(argmax C(h))] for the target rows with max softmax ≥ τ only, as many
                source rows                             (--align joint --pseudo-threshold τ; not in
                                                        Andéol et al.: FixMatch's confidence mask)
    W1 ≈ (1/N) Σ_i D(z_i^s) − (1/N) Σ_j D(z_j^t)                         (Kantorovich–Rubinstein dual)
    critic, ``critic_steps`` times per feature step, on detached z:
        max_D  W1 − γ · GP,   GP = E (||∇_ẑ D(ẑ)|| − 1)²,  ẑ = α z^s + (1 − α) z^t,  α ~ U[0, 1]
    feature step (F, C; the engine's optimiser):
        min_{F,C}  L_class(C(F(x)), y on the labelled samples) + λ_t · W1,
        λ_t = λ · min(1, step / warm-up)                      (--lambda-schedule linear)
        λ_t = λ · (2 / (1 + exp(−10 p)) − 1), p = step / steps (--lambda-schedule dann, Ganin et al. 2016)

Two settings: unsupervised adaptation (all source labels, no target label; the default) and the
multi-domain setting of Andéol et al. (``--labelled-per-class N``: N labelled images per class in
each domain, the rest unlabelled; the headline is the worst domain's accuracy).

References trained beside it (``--references``, for the evaluation), each a copy of F and C taken
before the first step (same architecture, same initialisation), trained by the same optimiser,
schedule and batches:
- ``source_only``: the literature's baseline, trained on the source images alone;
- ``lambda0``: the method's loss with λ = 0 on the method's own batches (source and target images
  through F together, so BatchNorm's statistics see the target): what the critic adds is the
  difference to this one;
- ``target_oracle``: trained on the target's labels (the ceiling). The adapted F, C never see a target label the
setting does not give them.

Deviations: the critic's inner steps run inside ``loss`` with the critic's own Adam (the
engine's one optimiser takes one step of one loss; the critic ascends its own objective several
times per feature step, on other parameters), so the critic's gradients from the feature loss
are dropped before the engine's step; the critic's Adam state is checkpointed with the method
(``get_extra_state``), so a resumed run continues it exactly; single-process only (the inner
backward passes are not DDP-synchronised; more ranks are refused in one line).
γ = 10 as in WDGRL; the critic here is a 2-hidden-layer ReLU MLP without BatchNorm (the penalty
is per sample, which BatchNorm would break). WDGRL's code uses one hidden layer of 100, Adam at
1e-4 for both players and λ = 1 (Amazon reviews) or 0.01 (MNIST -> USPS); the defaults here (λ = 1,
critic Adam 1e-3 with WGAN-GP's betas, the engine's AdamW at 2e-3 for F and C) were kept: λ ∈
{0.01, 0.1, 1, 3}, the critic at 1e-4, F and C at 1e-4 and the dann schedule gave no better target
accuracy on digits -> digits-m (benchmarks/RESULTS.md), and none of them is chosen by target labels.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import option
from ..data.pixels import unit_float
from ..data.run_data import RunData
from ..distributed import world_and_rank
from ..errors import fail
from ..losses import gradient_penalty, wasserstein_dual
from ..nets.heads import MLPHead
from .base import METHODS, AdaptsDomains, Method

UNLABELLED = -1  # a label the setting does not give the method


@dataclass
class DomainInvariantConfig:
    align: str = option("marginal", "what the critic aligns: marginal (features, WDGRL) or joint "
                        "(feature, label) pairs (Andéol et al. 2021)", choices=("marginal", "joint"))
    lam: float = option(1.0, "λ: weight of the critic's Wasserstein estimate in the feature loss", min=0.0)
    lambda_schedule: str = option("linear", "how λ rises from 0: linear over --lambda-warmup epochs, or dann: "
                                  "λ (2 / (1 + exp(-10 p)) - 1) over the run's progress p (Ganin et al. 2016)",
                                  choices=("linear", "dann"))
    lambda_warmup: float = option(5.0, "linear schedule: epochs over which λ rises from 0", min=0.0)
    critic_steps: int = option(5, "critic steps per feature step", min=1, max=100)
    gp_weight: float = option(10.0, "γ: weight of the critic's gradient penalty (WDGRL: 10)", min=0.0)
    critic_width: int = option(128, "hidden width of the critic's two layers", min=1)
    critic_lr: float = option(1e-3, "learning rate of the critic's own Adam", above=0.0)
    label_weight: float = option(1.0, "joint: β, the scale of the label part of the critic's input", min=0.0)
    pseudo_threshold: float | None = option(None, "joint: only target samples the classifier predicts with at least "
                                            "this probability take part in the critic, with the one-hot of the "
                                            "prediction as their label (none: every sample, with its predicted "
                                            "distribution)", above=0.0, max=1.0)
    labelled_per_class: int | None = option(None, "multi-domain setting: labelled images per class in every "
                                            "domain (none: unsupervised adaptation, all source labels, no "
                                            "target label)", min=1)
    references: bool = option(True, "train the source-only, λ = 0 and target-oracle references beside it (for eval)")


def make_critic(in_dim: int, width: int) -> nn.Module:
    """D: in_dim -> width -> width -> 1, ReLU, no BatchNorm (the gradient penalty is per sample)."""
    return MLPHead(in_dim, width, 1, num_layers=3, batch_norm=False)


def critic_optimizer(critic: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The critic's own Adam, with WGAN-GP's betas (0.5, 0.9)."""
    return torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.9))


def train_critic(critic: nn.Module, opt: torch.optim.Optimizer, zs: Tensor, zt: Tensor, alpha: Tensor,
                 gp_weight: float) -> Tensor:
    """``len(alpha)`` ascent steps of the critic on max_D W1 − γ GP over detached z (``alpha``:
    (steps, N, 1) interpolation weights); returns W1 before the last step."""
    zs, zt = zs.detach().float(), zt.detach().float()
    w1 = torch.zeros(())
    with torch.enable_grad():
        for a in alpha:
            w1 = wasserstein_dual(critic(zs), critic(zt))
            objective = -w1 + gp_weight * gradient_penalty(critic, zs, zt, a)
            opt.zero_grad(set_to_none=True)
            objective.backward()
            opt.step()
    opt.zero_grad(set_to_none=True)
    return w1.detach()


def lambda_factor(schedule: str, step: int, warmup_steps: float, total_steps: int) -> float:
    """λ_t / λ at optimiser step ``step``: linear, min(1, step / warm-up) (1 without warm-up); dann,
    2 / (1 + exp(-10 p)) - 1 with p = step / total_steps (DANN's schedule, Ganin et al. 2016)."""
    if schedule == "dann":
        p = min(1.0, step / max(1, total_steps))
        return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def joint_inputs(h: Tensor, logits: Tensor, labels: Tensor, label_weight: float) -> Tensor:
    """The joint critic's input [h, β y]: y the one-hot label where it is known (>= 0), the
    classifier's predicted distribution softmax(logits) elsewhere."""
    y = F.softmax(logits.float(), dim=1)
    known = labels >= 0
    onehot = F.one_hot(labels.clamp(min=0), logits.shape[1]).to(y.dtype)
    y = torch.where(known[:, None], onehot, y)
    return torch.cat([h, label_weight * y.to(h.dtype)], dim=1)


def pseudo_labels(logits: Tensor, labels: Tensor, threshold: float) -> Tensor:
    """``labels`` with the unknown ones (< 0) replaced by the classifier's argmax where its probability
    is at least ``threshold`` (confident pseudo-labels, as in FixMatch, Sohn et al. 2020); the rest
    stay UNLABELLED."""
    p, guess = F.softmax(logits.detach().float(), dim=1).max(1)
    return torch.where((labels < 0) & (p >= threshold), guess, labels)


def known_labels(labels: np.ndarray | None, per_class: int | None, seed: int) -> np.ndarray:
    """The labels the setting gives the method: all (``per_class`` None), or ``per_class`` per class
    drawn with ``seed``, UNLABELLED elsewhere; all UNLABELLED when there are none."""
    if labels is None:
        raise fail("domain-invariant needs labelled source images (its classifier trains on them); "
                   "give --data with labels")
    if per_class is None:
        return labels.astype(np.int64)
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), UNLABELLED, np.int64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep = rng.choice(idx, min(per_class, len(idx)), replace=False)
        out[keep] = c
    return out


@METHODS.register("domain-invariant")
class DomainInvariant(Method, AdaptsDomains):
    Config = DomainInvariantConfig
    run_defaults = {"target_data": "auto", "epochs": 40, "batch_size": 128, "warmup_epochs": 2}
    needs_labels = True
    progress_terms = ("class_loss", "w1")

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.classifier = nn.Linear(encoder.feature_dim, info.num_classes)
        joint = config.align == "joint"
        self.critic = make_critic(encoder.feature_dim + (info.num_classes if joint else 0), config.critic_width)
        # copies taken now, before any step: same architecture, same initial weights as F and C
        self.refs = nn.ModuleDict()
        if config.references:
            for name in ("source_only", "lambda0", "target_oracle"):
                self.refs[name] = nn.ModuleDict({"encoder": copy.deepcopy(encoder),
                                                 "classifier": copy.deepcopy(self.classifier)})
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # for λ's warm-up; checkpointed
        self._critic_opt: torch.optim.Optimizer | None = None
        self._critic_opt_state: dict | None = None  # from a checkpoint, until the optimiser exists

    # ------------------------------------------------------------------ data
    def training_fields(self, data: RunData) -> dict[str, Tensor]:
        labels = known_labels(data.fit.labels, self.config.labelled_per_class, seed=0)
        return {"labels": torch.from_numpy(labels)}

    def training_pools(self, data: RunData) -> dict[str, Tensor]:
        if data.target is None:
            raise fail("domain-invariant adapts to a second domain; give --target-data SOURCE "
                       "(or auto: digits -> digits-m, cifar10 -> cifar10-shifted)")
        target = data.target
        truth = target.labels if target.labels is not None else np.full(len(target), UNLABELLED, np.int64)
        if target.labels is not None and truth.max() >= self.info.num_classes:
            raise fail(f"target {target.name} has label {truth.max()} but the source has {self.info.num_classes} "
                       "classes; give domains with the same classes")
        if self.config.labelled_per_class is None:
            known = np.full(len(target), UNLABELLED, np.int64)  # unsupervised adaptation: no target label
        else:
            known = known_labels(truth, self.config.labelled_per_class, seed=1)
        # target_truth feeds only the target-oracle reference
        return {"target": target.tensor(), "target_known": torch.from_numpy(known),
                "target_truth": torch.from_numpy(truth.astype(np.int64))}

    def views(self, images: Tensor, generator: torch.Generator, labels: Tensor, target: Tensor,
              target_known: Tensor, target_truth: Tensor) -> dict[str, Tensor]:
        n, device = len(images), images.device
        j = torch.randint(len(target), (n,), generator=generator, device=device)  # a target batch of the same size
        alpha = torch.rand((self.config.critic_steps + 1, n, 1), generator=generator, device=device)
        return {"source": unit_float(images), "labels": labels, "target": unit_float(target[j]),
                "target_known": target_known[j], "target_truth": target_truth[j], "alpha": alpha}

    # ------------------------------------------------------------------ the critic
    def critic_inputs(self, h: Tensor, logits: Tensor, labels: Tensor) -> Tensor:
        """z for the critic: h (marginal) or [h, β y] (joint, see :func:`joint_inputs`)."""
        if self.config.align == "marginal":
            return h
        return joint_inputs(h, logits, labels, self.config.label_weight)

    def critic_batch(self, hs: Tensor, ht: Tensor, logits_s: Tensor, logits_t: Tensor, labels_s: Tensor,
                     labels_t: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The critic's source and target inputs for one step, and the interpolation weights for them.
        With --pseudo-threshold (joint) only the confident target rows, and as many source rows
        (the first ones: the source batch is a random draw)."""
        if self.config.align != "joint" or self.config.pseudo_threshold is None:
            return self.critic_inputs(hs, logits_s, labels_s), self.critic_inputs(ht, logits_t, labels_t), alpha
        labels_t = pseudo_labels(logits_t, labels_t, self.config.pseudo_threshold)
        keep = labels_t >= 0
        k = int(keep.sum())
        return (self.critic_inputs(hs[:k], logits_s[:k], labels_s[:k]),
                self.critic_inputs(ht[keep], logits_t[keep], labels_t[keep]), alpha[:, :k])

    def critic_optimizer(self) -> torch.optim.Optimizer:
        if self._critic_opt is None:
            if world_and_rank()[0] > 1:  # the inner critic steps would not be synchronised across ranks
                raise fail("domain-invariant trains its critic in one process; run it with --devices 1 "
                           "--num-nodes 1 (no ddp or fsdp)")
            self._critic_opt = critic_optimizer(self.critic, self.config.critic_lr)
            if self._critic_opt_state:  # a resumed run: the moments and step counts it stopped with
                self._critic_opt.load_state_dict(self._critic_opt_state)
                self._critic_opt_state = None
        return self._critic_opt

    # the critic's Adam lives outside the engine's optimiser; its state travels in the method's
    # state_dict (under "_extra_state"), so a checkpoint carries it and a resumed run continues it
    def get_extra_state(self) -> dict:
        if self._critic_opt is not None:
            return {"critic_opt": self._critic_opt.state_dict()}
        return {"critic_opt": self._critic_opt_state or {}}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint written before the critic's state was saved: load it, the critic's Adam starts afresh
        state_dict.setdefault(prefix + "_extra_state", {"critic_opt": {}})
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_extra_state(self, state: dict) -> None:
        saved = (state or {}).get("critic_opt") or None
        if self._critic_opt is not None and saved:
            self._critic_opt.load_state_dict(saved)
        else:
            self._critic_opt_state = saved

    def lam_now(self) -> float:
        return self.config.lam * lambda_factor(self.config.lambda_schedule, int(self.step),
                                               self.config.lambda_warmup * self.steps_per_epoch, self.total_steps)

    # ------------------------------------------------------------------ the loss
    def loss(self, v: dict[str, Tensor]) -> dict[str, Tensor]:
        n = len(v["source"])
        h = self.encoder(torch.cat([v["source"], v["target"]]))  # one pass: BatchNorm sees both domains
        logits = self.classifier(h)
        labels = torch.cat([v["labels"], v["target_known"]])
        class_loss = _cross_entropy(logits, labels)
        zs, zt, alpha = self.critic_batch(h[:n], h[n:], logits[:n], logits[n:], labels[:n], labels[n:], v["alpha"])
        if len(zt) >= 2:
            train_critic(self.critic, self.critic_optimizer(), zs, zt, alpha[:-1], self.config.gp_weight)
            w1 = wasserstein_dual(self.critic(zs), self.critic(zt))  # F and C fool the critic just trained
            gp = gradient_penalty(self.critic, zs.detach(), zt.detach(), alpha[-1]).detach()
        else:  # no confident target sample in this batch (--pseudo-threshold): nothing to align
            w1 = gp = h.sum() * 0.0
        total = class_loss + self.lam_now() * w1
        terms = {"class_loss": class_loss.detach(), "w1": w1.detach(), "gp": gp.detach(),
                 "critic_fraction": torch.tensor(len(zt) / max(1, len(h) - n), device=h.device)}
        if "source_only" in self.refs:  # the source images alone
            ref = self.refs["source_only"]
            terms["source_only_loss"] = _cross_entropy(ref["classifier"](ref["encoder"](v["source"])), v["labels"])
            total = total + terms["source_only_loss"]
        if "lambda0" in self.refs:  # λ = 0: the same loss without the critic, on the same batch
            ref = self.refs["lambda0"]
            both = torch.cat([v["source"], v["target"]])
            terms["lambda0_loss"] = _cross_entropy(ref["classifier"](ref["encoder"](both)), labels)
            total = total + terms["lambda0_loss"]
        if "target_oracle" in self.refs and bool((v["target_truth"] >= 0).any()):  # the ceiling: target labels
            ref = self.refs["target_oracle"]
            terms["oracle_loss"] = _cross_entropy(ref["classifier"](ref["encoder"](v["target"])), v["target_truth"])
            total = total + terms["oracle_loss"]
        terms["loss"] = total
        return terms

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        for p in self.critic.parameters():  # the critic trains in train_critic, never on the feature loss
            p.grad = None

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.step += 1

    # ------------------------------------------------------------------ for evaluation (AdaptsDomains)
    def classify(self, x: Tensor) -> Tensor:
        """Float images in [0, 1] -> class logits of the adapted F and C."""
        return self.classifier(self.encoder(x))

    def references(self) -> dict[str, tuple[nn.Module, nn.Module]]:
        return {name: (ref["encoder"], ref["classifier"]) for name, ref in self.refs.items()}

    @torch.no_grad()
    def domain_distance(self, h_source: Tensor, h_target: Tensor, source_labels: Tensor | None = None) -> float:
        """The critic's W1 estimate between two feature sets of F (joint: the source's labels where given,
        the classifier's predictions elsewhere, as in training)."""
        ls = source_labels if source_labels is not None else torch.full((len(h_source),), UNLABELLED)
        lt = torch.full((len(h_target),), UNLABELLED, device=h_target.device)
        logits_t = self.classifier(h_target)
        if self.config.align == "joint" and self.config.pseudo_threshold is not None:  # as in training
            lt = pseudo_labels(logits_t, lt, self.config.pseudo_threshold)
            h_target, logits_t, lt = h_target[lt >= 0], logits_t[lt >= 0], lt[lt >= 0]
            if len(h_target) == 0:
                return float("nan")
        zs = self.critic_inputs(h_source, self.classifier(h_source), ls.to(h_source.device))
        zt = self.critic_inputs(h_target, logits_t, lt)
        return float(wasserstein_dual(self.critic(zs), self.critic(zt)))


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the samples whose label is known (0 when none is)."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known].float(), labels[known])
