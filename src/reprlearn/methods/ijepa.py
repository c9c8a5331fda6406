"""I-JEPA (Assran et al. 2023): predict the representations of hidden blocks from a visible one.

One view per image (the run's ``--augment`` preset, ``none`` by default: no hand-made views).
Its patch grid is split by :func:`~reprlearn.augment.masks.jepa_masks` into M target blocks B_m
(scale ``target_scale``, aspect ratio ``target_aspect``) and a context block (scale
``context_scale``, square) with every target patch removed. Three networks:

* the context encoder f_θ (the run's ViT, the one evaluation scores) sees the context patches
  only: x_C = f_θ(context patches + their positions);
* the target encoder f_θ̄, an EMA of f_θ (no gradients), sees the whole image; its patch
  tokens are layer-normalised (no affine parameters): s_j = LN(f_θ̄(x))_j;
* the predictor g_φ, a narrow ViT, gets x_C (projected to its width) plus one mask token per
  patch of B_m, each with the positional embedding of the patch it stands for, and predicts
  ŝ_j for j ∈ B_m. It is run once per target block (the blocks do not see each other).

    L = (1/N) Σ_i (1/M) Σ_m (1/|B_m|) Σ_{j ∈ B_m} ||ŝ_ij − s_ij||² / D

over the N images of the batch (the paper's squared L2 distance, averaged over coordinates, D
the encoder width; every block of a batch has the same size |B_m|). No pixels
are reconstructed. The EMA momentum rises from ``ema_momentum`` to 1 (cosine; the paper's
schedule is linear from 0.996; 0.99 here, as a digits run has only 75 steps).

Tiny grids: the paper's 4 target blocks of 15–20 % each are for 14x14 grids. With fewer than
8x8 patches the run uses g // 2 target blocks on a g x g grid (2 on the 4x4 grid of 8x8 digits
with patch 2), so that the context keeps about half the image; the context block keeps at least
``max(2, L // 8)`` patches. A target block is at least one patch (on 4x4: 1x1 to 2x2).

Deviations: the ViT keeps its class token: the context encoder's class token attends to the
context patches and is passed to the predictor as one more context token (at the class slot's
position), so the encoder's ``pool`` (the class token, what evaluation uses) is trained; the
paper's ViT has none and evaluates average-pooled patch tokens (on digits mean pooling did no
better). Evaluation uses the context encoder; the paper probes the target encoder. The
predictor uses the fixed sin-cos positions of the paper. Contexts are cut to the batch's
smallest by a random subset. No random resized crops by default (the paper's only
augmentation, scale 0.3–1): pass ``--augment`` for views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import augment
from ..augment.masks import jepa_masks
from ..config import option
from ..errors import fail
from ..nets.vit import Block, VisionTransformer, init_linears, sincos_pos_embed
from .base import METHODS, Method
from .momentum import EMATeacher


@dataclass
class IJEPAConfig:
    num_targets: int = option(4, "target blocks per image (grids under 8x8 patches use grid // 2 of them)",
                              min=1, max=64)
    target_scale_min: float = option(0.15, "smallest target block, as a fraction of the patches", above=0.0,
                                     max=1.0)
    target_scale_max: float = option(0.2, "largest target block, as a fraction of the patches", above=0.0, max=1.0)
    target_aspect_min: float = option(0.75, "smallest target aspect ratio (rows / columns)", above=0.0, max=10.0)
    target_aspect_max: float = option(1.5, "largest target aspect ratio (rows / columns)", above=0.0, max=10.0)
    context_scale_min: float = option(0.85, "smallest context block, as a fraction of the patches", above=0.0,
                                      max=1.0)
    context_scale_max: float = option(1.0, "largest context block, as a fraction of the patches", above=0.0,
                                      max=1.0)
    predictor_dim: int = option(64, "predictor width (narrower than the encoder; divisible by 4 and by the heads)",
                                min=4, max=4096)
    predictor_depth: int = option(2, "predictor transformer blocks", min=1, max=64)
    predictor_heads: int = option(4, "predictor attention heads", min=1, max=64)
    ema_momentum: float = option(0.99, "base EMA momentum of the target encoder (rises to 1, cosine; 0.996 in the "
                                 "paper, too slow for the 75 steps of a digits run)", min=0.0, max=1.0)

    def check(self) -> None:
        for name in ("target_scale", "target_aspect", "context_scale"):
            lo, hi = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if lo > hi:
                flag = name.replace("_", "-")
                raise fail(f"{flag}-min {lo} is above {flag}-max {hi}; give min <= max")
        if self.predictor_dim % 4 or self.predictor_dim % self.predictor_heads:
            raise fail(f"predictor-dim {self.predictor_dim} must be divisible by 4 and by predictor-heads "
                       f"{self.predictor_heads}")


class JEPAPredictor(nn.Module):
    """Context tokens + mask tokens at the target positions -> predicted target tokens.

    Context tokens (N, 1 + K_c, E) (class token first) are projected to the predictor's width and
    get the fixed sin-cos embedding of their patches (the class token: zeros); each target patch
    is the learned mask token plus its patch's embedding. After the blocks and a final norm the
    mask tokens' outputs are projected back to E.
    """

    def __init__(self, grid: int, encoder_dim: int, dim: int, depth: int, num_heads: int):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        table = torch.cat([torch.zeros(1, dim), sincos_pos_embed(dim, grid)])  # class slot: zeros
        self.register_buffer("pos_embed", table, persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, encoder_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_linears(self)

    def forward(self, context: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        """context (N, 1+K_c, E), context_idx (N, K_c), target_idx (N, K_t) -> (N, K_t, E)."""
        positions = torch.cat([torch.zeros_like(context_idx[:, :1]), context_idx + 1], dim=1)
        x = self.embed(context) + self.pos_embed[positions].to(context.dtype)
        masks = self.mask_token.to(x.dtype) + self.pos_embed[target_idx + 1].to(x.dtype)
        x = torch.cat([x, masks], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.norm(x[:, -target_idx.shape[1]:]))


@METHODS.register("ijepa")
class IJEPA(Method):
    Config = IJEPAConfig
    # tuned for 8x8 digits on a CPU; --backbone vit-tiny for CIFAR-sized images
    run_defaults = {"backbone": "vit-micro", "augment": "none", "epochs": 15, "batch_size": 256, "lr": 2e-3,
                    "weight_decay": 0.05, "warmup_epochs": 2}

    def __init__(self, config: IJEPAConfig, encoder, info, view_spec):
        vit = encoder.backbone
        if not isinstance(vit, VisionTransformer):
            raise fail(f"ijepa needs a ViT backbone (it encodes a subset of patch tokens), got "
                       f"{type(vit).__name__}; use --backbone vit-micro (or vit-tiny / vit-small)")
        super().__init__(config, encoder, info, view_spec)
        self.grid, self.num_patches = vit.grid, vit.num_patches
        # tiny grids: fewer target blocks and a smaller context floor (see the module docstring)
        self.num_targets = config.num_targets if self.grid >= 8 else min(config.num_targets, max(1, self.grid // 2))
        self.min_context = max(2, self.num_patches // 8)
        self.predictor = JEPAPredictor(self.grid, vit.dim, config.predictor_dim, config.predictor_depth,
                                       config.predictor_heads)
        self.teacher = EMATeacher(encoder, config.ema_momentum)
        self.masks(2, torch.Generator())  # a target block that fills the grid fails now, not at the first step

    # ---------------------------------------------------------------- views and masks
    def masks(self, n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(context_idx (n, K_c), target_idx (M, n, K_t)) for n images."""
        c = self.config
        return jepa_masks(n, self.grid, self.num_targets, (c.target_scale_min, c.target_scale_max),
                          (c.target_aspect_min, c.target_aspect_max), (c.context_scale_min, c.context_scale_max),
                          self.min_context, generator)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(x in [0, 1] after the run's --augment preset, context_idx, target_idx)."""
        x = augment(images, self.view_spec, generator)
        return (x, *self.masks(len(x), generator))

    # ---------------------------------------------------------------- the networks
    def predict(self, x: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        """Predicted target tokens (M, N, K_t, E) from the context patches of x alone."""
        context = self.encoder.backbone.forward_tokens(self.encoder.normalize(x), context_idx)
        m, n, k = target_idx.shape
        # every target block gets its own predictor pass: the batch repeated M times
        out = self.predictor(context.repeat(m, 1, 1), context_idx.repeat(m, 1), target_idx.reshape(m * n, k))
        return out.reshape(m, n, k, -1)

    @torch.no_grad()
    def targets(self, x: Tensor, target_idx: Tensor) -> Tensor:
        """The target encoder's layer-normalised patch tokens at target_idx: (M, N, K_t, E)."""
        teacher = self.teacher.net
        tokens = teacher.backbone.forward_tokens(teacher.normalize(x))[:, 1:]
        tokens = F.layer_norm(tokens, tokens.shape[-1:])
        m, n, k = target_idx.shape
        index = target_idx.permute(1, 0, 2).reshape(n, m * k, 1).expand(-1, -1, tokens.shape[-1])
        return tokens.gather(1, index).reshape(n, m, k, -1).transpose(0, 1)

    # ---------------------------------------------------------------- the objective
    def loss(self, views: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        x, context_idx, target_idx = views
        value = F.mse_loss(self.predict(x, context_idx, target_idx), self.targets(x, target_idx))
        return {"loss": value, "jepa": value.detach(),
                "context_fraction": torch.tensor(context_idx.shape[1] / self.num_patches)}

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.teacher.update(step, total_steps)
