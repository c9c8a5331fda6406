"""MAE, masked autoencoders (He et al. 2022): reconstruct the pixels of hidden patches.

Per image a random ``mask_ratio`` of the patches is hidden (argsort of uniform noise
drawn from the engine's generator, so runs are reproducible). The ViT encoder runs
on the visible patches only (plus its cls token); a small transformer decoder gets
the encoded visible tokens back in full patch order with a learned mask token in
every hidden slot, adds its own fixed sin-cos positional embedding and predicts the
pixels of every patch. The loss is the MSE on the hidden patches only
(:func:`reprlearn.losses.masked_patch_mse`), by default against per-patch
normalised pixels (``norm_pix_loss``, as in the paper).

Evaluation uses the encoder alone (``self.encoder``: normalisation + the ViT, on all
patches, no mask); the decoder is dropped. Its features follow the ViT's ``pool``
(the cls token by default). MAE needs a ViT backbone: ``vit-micro`` (patch 2 on
images up to 16 px) by default, ``--backbone vit-tiny`` / ``vit-small`` for larger
images.

Hooks for the generative evaluation: ``reconstruct``, ``figure_rows`` and
``anomaly_score`` (all with fixed-seed masks); there is no latent to interpolate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..augment import augment
from ..augment.masks import num_masked, random_mask
from ..config import option
from ..errors import fail
from ..losses import masked_patch_mse
from ..nets.vit import Block, VisionTransformer, init_linears, sincos_pos_embed
from .base import METHODS, Method, Reconstructs

NORM_PIX_EPS = 1e-6


@dataclass
class MAEConfig:
    mask_ratio: float = option(0.75, "fraction of patches hidden from the encoder per image", above=0.0, max=0.99)
    decoder_dim: int = option(64, "decoder width (divisible by 4 and by decoder-heads)", min=4, max=4096)
    decoder_depth: int = option(1, "decoder transformer blocks", min=1, max=64)
    decoder_heads: int = option(4, "decoder attention heads", min=1, max=64)
    norm_pix_loss: bool = option(True, "regress each patch's pixels normalised by its own mean and std "
                                       "(the paper's norm_pix_loss)")

    def check(self) -> None:
        if self.decoder_dim % 4 or self.decoder_dim % self.decoder_heads:
            raise fail(f"decoder-dim {self.decoder_dim} must be divisible by 4 and by decoder-heads "
                       f"{self.decoder_heads}")


# ---------------------------------------------------------------- pure helpers


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """(N, C, H, W) -> (N, L, p*p*C), patches in row-major grid order (the ViT's token order),
    each flattened as (row, column, channel)."""
    n, c, h, w = x.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int) -> Tensor:
    """Inverse of :func:`patchify` for a square grid: (N, L, p*p*C) -> (N, C, H, W)."""
    n, length, _ = patches.shape
    grid = int(round(length ** 0.5))
    if grid * grid != length:
        raise ValueError(f"{length} patches do not form a square grid")
    p = patch_size
    x = patches.reshape(n, grid, grid, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, channels, grid * p, grid * p)


def patch_targets(patches: Tensor, normalize: bool) -> Tensor:
    """The regression targets: the patches, or each normalised as (t - mean) / sqrt(var + 1e-6)."""
    if not normalize:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + NORM_PIX_EPS).sqrt()


# ---------------------------------------------------------------- decoder


class MAEDecoder(nn.Module):
    """Encoded visible tokens -> pixel predictions for all L patches (N, L, out_dim)."""

    def __init__(self, num_patches: int, encoder_dim: int, dim: int, depth: int, num_heads: int, out_dim: int):
        super().__init__()
        self.num_patches = num_patches
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        grid = int(round(num_patches ** 0.5))
        table = torch.cat([torch.zeros(1, dim), sincos_pos_embed(dim, grid)])  # cls slot: zeros
        self.register_buffer("pos_embed", table[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        init_linears(self)

    def forward(self, latent: Tensor, keep_idx: Tensor) -> Tensor:
        """latent: (N, 1+K, encoder_dim) = cls + the visible patches ``keep_idx`` (N, K)."""
        x = self.embed(latent)
        n, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(n, self.num_patches, dim)
        index = keep_idx.unsqueeze(-1).expand(-1, -1, dim)
        full = full.scatter(1, index, x[:, 1:])  # unshuffle: visible tokens back in their slots
        x = torch.cat([x[:, :1], full], dim=1) + self.pos_embed.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))[:, 1:]


# ---------------------------------------------------------------- the method


@METHODS.register("mae")
class MAE(Method, Reconstructs):
    Config = MAEConfig
    # tuned for 8x8 digits on a CPU; --backbone vit-tiny for CIFAR-sized images
    run_defaults = {"backbone": "vit-micro", "augment": "none", "epochs": 60, "batch_size": 256,
                    "lr": 1.5e-3, "weight_decay": 0.05, "warmup_epochs": 5}
    eval_mask_seeds = (0, 1, 2, 3)  # masks anomaly_score averages over; seed 0 makes the figures

    def __init__(self, config: MAEConfig, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        vit = encoder.backbone
        if not isinstance(vit, VisionTransformer):
            raise fail("mae needs a ViT backbone (--backbone vit-tiny|vit-small ...)")
        self.patch_size, self.num_patches = vit.patch_size, vit.num_patches
        num_masked(self.num_patches, config.mask_ratio)  # fail now, not at the first step
        self.decoder = MAEDecoder(self.num_patches, vit.dim, config.decoder_dim, config.decoder_depth,
                                  config.decoder_heads, self.patch_size ** 2 * info.channels)

    # ---------------------------------------------------------------- the networks
    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """(x in [0, 1] after the run's --augment preset, keep_idx, mask)."""
        x = augment(images, self.view_spec, generator)
        keep_idx, mask = random_mask(len(x), self.num_patches, self.config.mask_ratio, generator, x.device)
        return x, keep_idx, mask

    def predict(self, x: Tensor, keep_idx: Tensor) -> Tensor:
        """Encode the visible patches ``keep_idx`` of x (in [0, 1]); predicted patches (N, L, p*p*C)."""
        latent = self.encoder.backbone.forward_tokens(self.encoder.normalize(x), keep_idx)
        return self.decoder(latent, keep_idx)

    def targets(self, x: Tensor) -> Tensor:
        return patch_targets(patchify(x, self.patch_size), self.config.norm_pix_loss)

    # ---------------------------------------------------------------- the objective
    def loss(self, views: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
        x, keep_idx, mask = views
        value = masked_patch_mse(self.predict(x, keep_idx), self.targets(x), mask)
        return {"loss": value, "mse_masked": value.detach()}

    # ---------------------------------------------------------------- evaluation hooks
    def _eval_mask(self, x: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        g = torch.Generator().manual_seed(seed)
        keep_idx, mask = random_mask(len(x), self.num_patches, self.config.mask_ratio, g, "cpu")
        return keep_idx.to(x.device), mask.to(x.device)

    def _pixels(self, pred: Tensor, patches: Tensor) -> Tensor:
        """Predictions in pixel space; normalised predictions are de-normalised with each
        target patch's own mean and std (for pictures only: it uses the hidden patch's statistics)."""
        if self.config.norm_pix_loss:
            mean = patches.mean(dim=-1, keepdim=True)
            std = (patches.var(dim=-1, keepdim=True) + NORM_PIX_EPS).sqrt()
            pred = pred * std + mean
        return pred.clamp(0, 1)

    def _masked_views(self, x: Tensor, seed: int = 0) -> tuple[Tensor, Tensor]:
        """(x with hidden patches grey, reconstruction: visible patches of x, hidden ones predicted)."""
        keep_idx, mask = self._eval_mask(x, seed)
        patches = patchify(x, self.patch_size)
        pixels = self._pixels(self.predict(x, keep_idx), patches)
        m = mask.unsqueeze(-1)
        recon = torch.where(m, pixels, patches)
        grey = torch.where(m, torch.full_like(patches, 0.5), patches)
        c = x.shape[1]
        return unpatchify(grey, self.patch_size, c), unpatchify(recon, self.patch_size, c)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """x (N, C, H, W) in [0, 1] -> visible patches of x, hidden ones (fixed-seed mask) predicted."""
        return self._masked_views(x)[1]

    @torch.no_grad()
    def figure_rows(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        masked, recon = self._masked_views(x)
        return {"input": x, "masked": masked, "reconstruction": recon}

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """Per-image MSE on the hidden patches (in the training loss's target space),
        averaged over the fixed masks of ``eval_mask_seeds``: (N,)."""
        targets = self.targets(x)
        scores = []
        for seed in self.eval_mask_seeds:
            keep_idx, mask = self._eval_mask(x, seed)
            scores.append(masked_patch_mse(self.predict(x, keep_idx), targets, mask, per_sample=True))
        return torch.stack(scores).mean(0)
