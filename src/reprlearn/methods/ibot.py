"""iBOT (Zhou et al. 2022): image BERT pre-training with an online tokenizer.

DINO plus masked image modelling on the patch tokens of a ViT. A student (ViT + a class-token
DINO head + a patch head) and an EMA teacher of the same three parts (no gradients) see two
global views (and ``n_local`` local crops, student only, class token only):

* class token: DINO's cross-view self-distillation, :func:`~reprlearn.losses.dino_loss`, with
  its centre (EMA of the teacher's outputs) and teacher temperature;
* patch tokens: in a ``mask_prob`` fraction of the global views, a ratio drawn uniformly from
  [``mask_ratio_min``, ``mask_ratio_max``] of the patches is masked (``--mask-mode block``:
  rectangles of random area and aspect ratio, as BEiT; ``random``: single patches): the
  student's patch embeddings there are replaced by a learned mask token, the teacher sees the
  view unmasked, and the student's patch head predicts the teacher's patch distributions at the
  masked positions, :func:`~reprlearn.losses.ibot_patch_loss`, with a centre and a teacher
  temperature of their own. The teacher's patch head is the "online tokenizer": it is trained
  as part of the EMA teacher, not fixed beforehand.

Both teacher temperatures follow DINO's schedule (linear warm-up over
``teacher_temp_warmup_epochs`` epochs, then constant), and both heads' prototype layers are
frozen for the first ``freeze_last_layer`` epochs, as in DINO.

The loss is ``dino + patch_weight * patch``. The student's class token is the one of its masked
global views (as in the paper). Evaluation uses the encoder alone (the ViT's ``pool``, the cls
token by default); the heads and the mask token are dropped. iBOT needs a ViT backbone:
``vit-micro`` by default (patch 2 on 8x8 digits, 4 on CIFAR), ``--backbone vit-tiny`` or
``vit-small`` for larger images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..augment import local_crop, multi_crop
from ..augment.masks import block_patch_mask, masked_counts, random_patch_mask
from ..config import option
from ..errors import fail
from ..losses import dino_loss, ibot_patch_loss
from ..nets.heads import DINOHead
from ..nets.vit import VisionTransformer
from .base import METHODS, Method
from .distillation import drop_frozen_gradients, teacher_temperature, update_center
from .momentum import EMATeacher


@dataclass
class IBOTConfig:
    out_dim: int = option(1024, "class-token prototypes K (the class head's output dimension)", min=2, max=1 << 20)
    patch_out_dim: int = option(1024, "patch-token prototypes (the patch head's output dimension)", min=2,
                                max=1 << 20)
    head_hidden: int = option(512, "hidden width of both heads' MLPs", min=1, max=65536)
    bottleneck_dim: int = option(64, "both heads' bottleneck (L2-normalised) dimension", min=1, max=65536)
    head_bn: bool = option(True, "BatchNorm in the heads' MLPs (keeps small data from collapsing)")
    n_local: int = option(0, "local crops per image (student only, class token only; each costs as much as a "
                          "global view, as the ViT's positional grid keeps them at the global size)", min=0, max=64)
    student_temp: float = option(0.1, "student temperature τ_s (both losses)", above=0.0, max=10.0)
    teacher_temp: float = option(0.04, "class-token teacher temperature τ_t after warm-up", above=0.0, max=10.0)
    teacher_temp_start: float = option(0.04, "class-token teacher temperature at the start", above=0.0, max=10.0)
    patch_teacher_temp: float = option(0.04, "patch-token teacher temperature after warm-up (0.07 in the paper)",
                                       above=0.0, max=10.0)
    patch_teacher_temp_start: float = option(0.04, "patch-token teacher temperature at the start", above=0.0,
                                             max=10.0)
    teacher_temp_warmup_epochs: int = option(0, "epochs over which both teacher temperatures warm up linearly "
                                             "from their start values (30 in the paper)", min=0, max=100000)
    freeze_last_layer: int = option(1, "epochs during which both heads' prototype layers are frozen (1 in the "
                                    "paper)", min=0, max=100000)
    center_momentum: float = option(0.9, "EMA momentum of both teacher centres", min=0.0, max=1.0)
    ema_momentum: float = option(0.99, "base EMA momentum of the teacher (rises to 1, cosine)", min=0.0, max=1.0)
    mask_mode: str = option("block", "masking: block (random rectangles, as BEiT) or random (single patches)",
                            choices=("block", "random"))
    mask_ratio_min: float = option(0.1, "smallest fraction of patches masked in a masked view", min=0.0, max=0.95)
    mask_ratio_max: float = option(0.5, "largest fraction of patches masked in a masked view", min=0.0, max=0.95)
    mask_prob: float = option(0.5, "fraction of global views that get masked (the others: none)", min=0.0,
                              max=1.0)
    patch_weight: float = option(1.0, "weight λ of the masked patch loss (loss = dino + λ·patch)", min=0.0,
                                 max=1000.0)

    def check(self) -> None:
        if self.mask_ratio_min > self.mask_ratio_max:
            raise fail(f"mask-ratio-min {self.mask_ratio_min} is above mask-ratio-max {self.mask_ratio_max}; "
                       "give min <= max")


# ---------------------------------------------------------------- the method


@METHODS.register("ibot")
class IBOT(Method):
    Config = IBOTConfig
    # tuned for 8x8 digits on a CPU (see docs/methods/self-distillation.md); --backbone vit-tiny for larger images
    run_defaults = {"backbone": "vit-micro", "epochs": 12, "batch_size": 256, "lr": 5e-4, "warmup_epochs": 5}

    def __init__(self, config: IBOTConfig, encoder, info, view_spec):
        vit = encoder.backbone
        if not isinstance(vit, VisionTransformer):
            raise fail(f"ibot needs a ViT backbone (it masks patch tokens), got {type(vit).__name__}; "
                       "use --backbone vit-micro (or vit-tiny / vit-small)")
        super().__init__(config, encoder, info, view_spec)
        self.grid, self.num_patches = vit.grid, vit.num_patches
        self.head = DINOHead(vit.dim, config.out_dim, config.head_hidden, config.bottleneck_dim,
                             batch_norm=config.head_bn)
        self.patch_head = self.build_patch_head(vit.dim)
        self.mask_token = nn.Parameter(torch.zeros(vit.dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.teacher = EMATeacher(self._online(), config.ema_momentum)
        self.register_buffer("center", torch.zeros(config.out_dim))
        self.register_buffer("patch_center", torch.zeros(self.patch_head.prototypes.shape[0]))
        # current teacher temperatures, τ(0) now and set after each step (buffers: they resume with the checkpoint)
        warm = config.teacher_temp_warmup_epochs > 0
        self.register_buffer("teacher_temp_now", torch.tensor(float(
            config.teacher_temp_start if warm else config.teacher_temp)))
        self.register_buffer("patch_teacher_temp_now", torch.tensor(float(
            config.patch_teacher_temp_start if warm else config.patch_teacher_temp)))
        # the ViT's positional grid is fixed: local crops keep the global size
        self.local_spec = replace(local_crop(view_spec, info.image_size), size=view_spec.size or info.image_size)
        self._teacher_out: tuple[list[Tensor], Tensor] | None = None  # this micro-batch's, for the centres

    def build_patch_head(self, dim: int) -> nn.Module:
        """The patch tokens' head: a DINO head of its own (a subclass may share the class head)."""
        c = self.config
        return DINOHead(dim, c.patch_out_dim, c.head_hidden, c.bottleneck_dim, batch_norm=c.head_bn)

    def _online(self) -> nn.ModuleDict:
        """The student's parts the teacher mirrors (same order, so EMA pairs them up)."""
        return nn.ModuleDict({"encoder": self.encoder, "head": self.head, "patch_head": self.patch_head})

    # ---------------------------------------------------------------- views and masks
    def masks(self, n: int, generator: torch.Generator | None) -> Tensor:
        """(n, num_patches) bool masks for n global views, True = masked."""
        c = self.config
        counts = masked_counts(n, self.num_patches, c.mask_ratio_min, c.mask_ratio_max, c.mask_prob, generator)
        make = block_patch_mask if c.mask_mode == "block" else random_patch_mask
        return make(counts, self.grid, generator)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[list[Tensor], Tensor]:
        """(2 global + n_local local views, masks (2N, num_patches) for the two global views)."""
        views = multi_crop(images, self.view_spec, self.local_spec, 2, self.config.n_local, generator)
        return views, self.masks(2 * len(images), generator)

    # ---------------------------------------------------------------- the networks
    @staticmethod
    def _tokens(parts: nn.ModuleDict, x: Tensor, mask: Tensor | None = None,
                mask_token: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(image token (N, dim) by the ViT's pool, patch tokens (N, L, dim))."""
        encoder = parts["encoder"]
        vit = encoder.backbone
        tokens = vit.forward_masked(encoder.normalize(x), mask, mask_token)
        patches = tokens[:, 1:]
        return (tokens[:, 0] if vit.pool == "cls" else patches.mean(dim=1)), patches

    @staticmethod
    def _heads(parts: nn.ModuleDict, image: Tensor, patches: Tensor) -> tuple[Tensor, Tensor]:
        n, length, dim = patches.shape
        return parts["head"](image), parts["patch_head"](patches.reshape(n * length, dim)).reshape(n, length, -1)

    def student(self, x: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Class logits (N, K) and patch logits (N, L, K_patch) of the student, patches under ``mask`` masked."""
        parts = self._online()
        return self._heads(parts, *self._tokens(parts, x, mask, self.mask_token))

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._heads(self.teacher.net, *self._tokens(self.teacher.net, x))

    # ---------------------------------------------------------------- the objective
    def teacher_targets(self, teacher_cls: list[Tensor], teacher_patches: Tensor,
                        mask: Tensor) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
        """What the two losses take from the teacher: (class logits per global view, their centre,
        patch logits (2N, L, K), their centre); iBOT: the teacher's logits and the running centres."""
        return teacher_cls, self.center, teacher_patches, self.patch_center

    def distill(self, views: tuple[list[Tensor], Tensor]) -> tuple[dict[str, Tensor], Tensor]:
        """The loss terms and the student's image tokens of the (masked) global views, (2N, dim)."""
        c = self.config
        crops, mask = views
        globals_ = torch.cat(crops[:2])
        t_cls, t_patch = self.teacher_logits(globals_)
        parts = self._online()
        s_image, s_patches = self._tokens(parts, globals_, mask, self.mask_token)
        s_cls, s_patch = self._heads(parts, s_image, s_patches)
        student_cls = list(s_cls.chunk(2))
        if len(crops) > 2:  # local crops: class token only, no masks
            local = crops[2:]
            student_cls += list(self.head(self.encoder(torch.cat(local))).chunk(len(local)))
        teacher_cls = list(t_cls.chunk(2))
        cls_target, cls_center, patch_target, patch_center = self.teacher_targets(teacher_cls, t_patch, mask)
        dino = dino_loss(student_cls, cls_target, cls_center, c.student_temp, float(self.teacher_temp_now))
        patch = ibot_patch_loss(s_patch, patch_target, mask, patch_center, c.student_temp,
                                float(self.patch_teacher_temp_now))
        self._teacher_out = (teacher_cls, t_patch.flatten(0, 1)) if self.training else None
        terms = {"loss": dino + c.patch_weight * patch, "dino": dino.detach(), "patch": patch.detach(),
                 "masked": mask.float().mean().detach(), "teacher_temp": self.teacher_temp_now.detach().clone()}
        return terms, s_image

    def loss(self, views: tuple[list[Tensor], Tensor]) -> dict[str, Tensor]:
        return self.distill(views)[0]

    def after_micro_batch(self) -> None:
        # both centres move after every micro-batch, with that micro-batch's teacher outputs
        if self._teacher_out is not None:
            teacher_cls, teacher_patches = self._teacher_out
            update_center(self.center, teacher_cls, self.config.center_momentum)
            update_center(self.patch_center, [teacher_patches], self.config.center_momentum)
            self._teacher_out = None

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        for head in (self.head, self.patch_head):
            drop_frozen_gradients(head.prototypes, step, self.steps_per_epoch, self.config.freeze_last_layer)

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        c = self.config
        self.teacher.update(step, total_steps)
        # ``step`` is the index of the step just taken: set the temperatures step + 1 uses
        warmup = c.teacher_temp_warmup_epochs * self.steps_per_epoch
        self.teacher_temp_now.fill_(teacher_temperature(step + 1, warmup, c.teacher_temp_start, c.teacher_temp))
        self.patch_teacher_temp_now.fill_(teacher_temperature(step + 1, warmup, c.patch_teacher_temp_start,
                                                              c.patch_teacher_temp))
