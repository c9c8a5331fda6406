"""DINO (Caron et al. 2021): self-distillation with no labels.

A student (backbone + DINO head) matches the output distribution of an EMA teacher
(same architecture, no gradients) across views: the teacher sees the global views
only, the student sees every view (``n_global`` = 2 global plus ``n_local`` small
local crops, see :func:`~reprlearn.augment.multi_crop`). Collapse is avoided by
centring the teacher's outputs (an EMA of their batch mean, ``center_momentum``)
and sharpening them with a low teacher temperature, which warms up linearly from
``teacher_temp_start`` to ``teacher_temp`` over the first ``teacher_temp_warmup_epochs``
epochs, then stays at ``teacher_temp`` (:func:`teacher_temperature`). As in the paper,
the prototype layer (the head's weight-normalised last layer) is frozen for the first
``freeze_last_layer`` epochs: its gradients are dropped before each optimiser step, as
DINO's reference code cancels them, so the optimiser leaves it untouched (no update, no
weight decay). The loss is :func:`~reprlearn.losses.dino_loss`.

Only ``encoder(x)`` features are used, so any backbone works. Backbones with a
fixed token grid (ViTs with positional embeddings for one image size) get their
local crops at the global size (small crops, upsampled) instead of the smaller
local size.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from ..augment import local_crop, multi_crop
from ..config import option
from ..losses import dino_loss
from ..nets.heads import DINOHead
from .base import METHODS, Method
from .distillation import drop_frozen_gradients, teacher_temperature, update_center
from .momentum import EMATeacher


@dataclass
class DINOConfig:
    out_dim: int = option(1024, "number of prototypes K (the head's output dimension)", min=2, max=1 << 20)
    head_hidden: int = option(512, "DINO head MLP hidden width", min=1, max=65536)
    bottleneck_dim: int = option(64, "DINO head bottleneck (L2-normalised) dimension", min=1, max=65536)
    head_bn: bool = option(True, "BatchNorm in the head's MLP (DINO's recipe for convnets; keeps small data from collapsing)")
    n_local: int = option(4, "local crops per image (student only)", min=0, max=64)
    student_temp: float = option(0.1, "student temperature τ_s", above=0.0, max=10.0)
    # on digits the paper's 0.04 -> 0.07 (30 warm-up epochs) ends near uniform outputs (loss 6.8 of
    # ln 1024 = 6.93) and probes no better (kNN 0.923 against 0.928, two seeds): 0.04 throughout
    teacher_temp: float = option(0.04, "teacher temperature τ_t after warm-up (0.07 in the paper; on digits 0.07 "
                                 "leaves the outputs near uniform)", above=0.0, max=10.0)
    teacher_temp_start: float = option(0.04, "teacher temperature at the start of the warm-up", above=0.0, max=10.0)
    teacher_temp_warmup_epochs: int = option(0, "epochs over which τ_t rises linearly from teacher-temp-start to "
                                             "teacher-temp, then stays (30 in the paper; 0: teacher-temp "
                                             "throughout)", min=0, max=100000)
    freeze_last_layer: int = option(1, "epochs during which the prototype layer is frozen (1 in the paper)", min=0,
                                    max=100000)
    center_momentum: float = option(0.9, "EMA momentum of the teacher centre", min=0.0, max=1.0)
    ema_momentum: float = option(0.99, "base EMA momentum of the teacher (rises to 1, cosine)", min=0.0, max=1.0)


@METHODS.register("dino")
class DINO(Method):
    Config = DINOConfig
    run_defaults = {"epochs": 40, "batch_size": 256, "lr": 2e-3, "warmup_epochs": 5}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.head = DINOHead(encoder.feature_dim, config.out_dim, config.head_hidden, config.bottleneck_dim,
                             batch_norm=config.head_bn)
        self.teacher = EMATeacher(nn.Sequential(encoder, self.head), config.ema_momentum)
        self.register_buffer("center", torch.zeros(config.out_dim))
        # current teacher temperature, τ_t(0) now and set after each step (a buffer: resumes with the checkpoint)
        start = config.teacher_temp_start if config.teacher_temp_warmup_epochs > 0 else config.teacher_temp
        self.register_buffer("teacher_temp_now", torch.tensor(float(start)))
        local = local_crop(view_spec, info.image_size)
        if hasattr(encoder.backbone, "num_patches"):  # fixed positional grid: keep the global size
            local = replace(local, size=view_spec.size or info.image_size)
        self.local_spec = local
        self._teacher_out: list[Tensor] | None = None  # this micro-batch's teacher outputs, for the centre

    def views(self, images, generator):
        return multi_crop(images, self.view_spec, self.local_spec, 2, self.config.n_local, generator)

    def student(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))

    def loss(self, views):
        c = self.config
        global_views = views[:2]
        with torch.no_grad():
            teacher = self.teacher(torch.cat(global_views)).chunk(2)
        # views of one size go through the student together (one pass for the globals, one for the locals)
        student = list(self.student(torch.cat(global_views)).chunk(2))
        if len(views) > 2:
            local = views[2:]
            student += list(self.student(torch.cat(local)).chunk(len(local)))
        temp = float(self.teacher_temp_now)
        value = dino_loss(student, list(teacher), self.center, c.student_temp, temp)
        self._teacher_out = list(teacher) if self.training else None
        return {"loss": value, "dino": value.detach(), "teacher_temp": self.teacher_temp_now.detach().clone()}

    def after_micro_batch(self):
        # the centre moves after every micro-batch, with that micro-batch's teacher outputs
        if self._teacher_out is not None:
            update_center(self.center, self._teacher_out, self.config.center_momentum)
            self._teacher_out = None

    def before_optimizer_step(self, step, total_steps):
        drop_frozen_gradients(self.head.prototypes, step, self.steps_per_epoch, self.config.freeze_last_layer)

    @torch.no_grad()
    def after_optimizer_step(self, step, total_steps):
        c = self.config
        self.teacher.update(step, total_steps)
        # ``step`` is the index of the step just taken: set the temperature step + 1 uses
        self.teacher_temp_now.fill_(teacher_temperature(step + 1, c.teacher_temp_warmup_epochs * self.steps_per_epoch,
                                                        c.teacher_temp_start, c.teacher_temp))
