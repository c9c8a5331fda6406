"""DINOv2 (Oquab et al. 2023): iBOT's objective with DINOv2's recipe, each ingredient an option.

On top of :mod:`~reprlearn.methods.ibot` (student ViT + heads, EMA teacher, two masked global
views and ``n_local`` local crops, class-token DINO loss + masked patch-token iBOT loss):

* ``--heads separate`` (default) gives the class token and the patch tokens heads of their own,
  as DINOv2 (and reprlearn's ``ibot``; the iBOT paper shares one by default); ``--heads shared``
  uses the class head for both (``--patch-out-dim`` is then unused);
* ``--centering sinkhorn`` (default) replaces the running centre of the teacher by
  Sinkhorn–Knopp (``sinkhorn_iterations`` = 3, ε = the teacher temperature): the teacher's
  targets over a batch of B rows and K prototypes are

      Q = B · SK(exp(t / τ_t)),   Q 1_K = 1_B,   Qᵀ 1_B ≈ (B / K) 1_K

  (:func:`~reprlearn.losses.sinkhorn_knopp`), over the global batch under DDP; for the class
  token the rows are both global views of every image, for the patch tokens the masked patches
  (the ones the loss uses). ``--centering running`` keeps iBOT's EMA centres;
* ``--koleo-weight`` w (0.1 by default, 0 = off) adds w · Σ_v KoLeo(student class tokens of
  global view v), :func:`~reprlearn.losses.koleo_loss`, on the backbone's class tokens (before
  the head) of the masked global views, each view's batch separately, as DINOv2;
* ``--n-local`` local crops (student only, class token only; 2 by default here, 8 in the paper)
  at 3/7 of the image side rounded to whole patches (4 px on 8x8 digits; 16 px on 32 px CIFAR
  with patch 4), the ViT's positional table resized to their grid
  (:meth:`~reprlearn.nets.vit.VisionTransformer.patch_pos_embed`).

    L = DINO + patch_weight · iBOT + w · KoLeo

With ``--centering running --koleo-weight 0 --n-local 0`` it is ``ibot`` exactly (tested).

Deviations: the DINO term averages over every (teacher view, student view) pair as iBOT does,
rather than DINOv2's separate weighting of the local and global terms; the teacher temperature follows iBOT's options
(0.04 throughout by default; DINOv2 warms it from 0.04 to 0.07). Sinkhorn's codes enter the
shared DINO and iBOT losses as logits τ_t · log Q with a zero centre (softmax of them at τ_t is Q).
No DINOv2 data curation, no resolution adaptation, no layer-wise learning-rate decay.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..augment import local_crop, local_size
from ..config import option
from ..losses import koleo_loss, sinkhorn_knopp
from .base import METHODS
from .ibot import IBOT, IBOTConfig


@dataclass
class DINOv2Config(IBOTConfig):
    n_local: int = option(2, "local crops per image (student only, class token only, 3/7 of the side with "
                          "interpolated positions; 8 in the paper)", min=0, max=64)
    centering: str = option("sinkhorn", "teacher centring: sinkhorn (Sinkhorn–Knopp, DINOv2) or running (the EMA "
                            "centre of DINO/iBOT)", choices=("sinkhorn", "running"))
    sinkhorn_iterations: int = option(3, "Sinkhorn–Knopp iterations (3 in the paper)", min=1, max=1000)
    koleo_weight: float = option(0.1, "weight of the KoLeo regulariser on the student's class tokens (0 = off)",
                                 min=0.0, max=1000.0)
    heads: str = option("separate", "separate class and patch heads (DINOv2, and reprlearn's ibot) or one "
                        "shared head (the iBOT paper's default)", choices=("separate", "shared"))


def sinkhorn_logits(logits: Tensor, temp: float, iterations: int) -> Tensor:
    """Sinkhorn–Knopp codes Q of the rows of ``logits`` (B, K) at ε = temp, as logits τ · log Q: a
    loss that takes softmax((x − 0) / τ) of them gets Q back."""
    q = sinkhorn_knopp(logits, iterations=iterations, epsilon=temp)
    return temp * q.clamp_min(torch.finfo(q.dtype).tiny).log()


@METHODS.register("dinov2")
class DINOv2(IBOT):
    Config = DINOv2Config

    def __init__(self, config: DINOv2Config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        # local crops at their own small size (3/7 of the side, a whole number of patches), their
        # positions interpolated by the ViT, as DINOv2; iBOT keeps them at the global size
        p = encoder.backbone.patch_size
        side = max(p, round(local_size(view_spec.size or info.image_size) / p) * p)
        self.local_spec = replace(local_crop(view_spec, info.image_size), size=side)

    def build_patch_head(self, dim: int) -> nn.Module:
        return self.head if self.config.heads == "shared" else super().build_patch_head(dim)

    def teacher_targets(self, teacher_cls: list[Tensor], teacher_patches: Tensor,
                        mask: Tensor) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        c = self.config
        if c.centering == "running":
            return super().teacher_targets(teacher_cls, teacher_patches, mask)
        cls = sinkhorn_logits(torch.cat(teacher_cls), float(self.teacher_temp_now), c.sinkhorn_iterations)
        patches = torch.zeros_like(teacher_patches)  # unmasked tokens do not enter the patch loss
        # every rank calls it, with or without masked tokens: its sums are all-reduced under DDP
        patches[mask] = sinkhorn_logits(teacher_patches[mask], float(self.patch_teacher_temp_now),
                                        c.sinkhorn_iterations)
        return list(cls.chunk(len(teacher_cls))), torch.zeros_like(self.center), patches, \
            torch.zeros_like(self.patch_center)

    def loss(self, views: tuple[list[Tensor], Tensor]) -> dict[str, Tensor]:
        terms, image_tokens = self.distill(views)
        w = self.config.koleo_weight
        if w > 0:
            koleo = sum(koleo_loss(v) for v in image_tokens.chunk(2))
            terms["loss"] = terms["loss"] + w * koleo
            terms["koleo"] = koleo.detach()
        return terms

    def after_micro_batch(self) -> None:
        if self.config.centering == "running":
            super().after_micro_batch()  # the EMA centres move; Sinkhorn needs none
        self._teacher_out = None
