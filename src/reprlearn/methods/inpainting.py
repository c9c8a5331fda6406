"""Context encoders (Pathak et al. 2016): fill in a hidden square from its surroundings.

Per image a square of side ``round(mask_fraction · H)`` is hidden at a random position
(from the engine's generator) and filled with the dataset's per-channel mean; the encoder
(``self.encoder``) sees the masked image, a decoder (``build_decoder`` from the backbone's
features) predicts the whole image (pixel logits -> sigmoid), and the loss is the squared
error on the hidden square only (:func:`masked_l2`; pixels outside it do not count).

Optional adversarial term (``adversarial_weight`` > 0, default 0 = off): a small MLP
discriminator D judges the hidden square, real vs. predicted. The engine has one optimiser
and one backward, so both players are trained by one loss with stop-gradients:

    loss = l2 + w · BCE(D_sg(fake), real)  +  ½[BCE(D(real), real) + BCE(D(fake.detach()), fake)]

where D_sg is D evaluated with detached parameters (``torch.func.functional_call``): the
generator term moves only the encoder/decoder (towards fooling D), the discriminator term
only D (``fake.detach()``), so the two objectives never push the same parameters.

Evaluation uses ``self.encoder`` on unmasked images; decoder and D are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..config import option
from ..data.pixels import unit_float
from ..errors import fail
from ..nets.decoders import build_decoder
from .base import METHODS, Method


@dataclass
class InpaintingConfig:
    mask_fraction: float = option(0.5, "side of the hidden square as a fraction of the image side", above=0.0, max=0.95)
    adversarial_weight: float = option(0.0, "weight of the adversarial term (0 = off)", min=0.0, max=100.0)
    disc_hidden: int = option(256, "hidden width of the discriminator", min=1, max=65536)


def mask_side(image_size: int, fraction: float) -> int:
    side = int(round(fraction * image_size))
    if side < 1 or side >= image_size:
        raise fail(f"mask-fraction {fraction} gives a {side} px square on {image_size} px images; "
                   "choose a fraction that hides at least one pixel and keeps some context")
    return side


def random_square(n: int, image_size: int, side: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(mask (N, 1, H, W) bool True = hidden, top (N,), left (N,)): one side x side square per image."""
    if device is None:
        device = generator.device if generator is not None else "cpu"
    top = torch.randint(0, image_size - side + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, image_size - side + 1, (n,), generator=generator, device=device)
    ar = torch.arange(image_size, device=device)
    rows = (ar >= top[:, None]) & (ar < top[:, None] + side)
    cols = (ar >= left[:, None]) & (ar < left[:, None] + side)
    return (rows[:, :, None] & cols[:, None, :]).unsqueeze(1), top, left


def crop_squares(x: Tensor, top: Tensor, left: Tensor, side: int) -> Tensor:
    """The side x side square at (top[i], left[i]) of every image: (N, C, side, side)."""
    ar = torch.arange(side, device=x.device)
    rows = (top[:, None] + ar)[:, :, None]
    cols = (left[:, None] + ar)[:, None, :]
    n_idx = torch.arange(len(x), device=x.device)[:, None, None]
    return x.permute(0, 2, 3, 1)[n_idx, rows, cols].permute(0, 3, 1, 2)


def masked_l2(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the hidden pixels only (mask (N, 1, H, W) bool, broadcast over channels)."""
    m = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target) * m).pow(2).sum() / m.sum().clamp_min(1)


@METHODS.register("inpainting")
class Inpainting(Method):
    Config = InpaintingConfig
    run_defaults = {"epochs": 30, "warmup_epochs": 2}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        self.side = mask_side(info.image_size, config.mask_fraction)
        self.decoder = build_decoder(encoder.feature_dim, info.channels, info.image_size)
        self.register_buffer("fill", torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.discriminator = None
        if config.adversarial_weight > 0:
            self.discriminator = nn.Sequential(
                nn.Flatten(), nn.Linear(info.channels * self.side * self.side, config.disc_hidden),
                nn.LeakyReLU(0.2, inplace=True), nn.Linear(config.disc_hidden, 1))

    def views(self, images: Tensor, generator: torch.Generator):
        x = unit_float(images)
        mask, top, left = random_square(len(x), self.info.image_size, self.side, generator, x.device)
        masked = torch.where(mask, self.fill.to(x.dtype), x)
        return masked, x, mask, top, left

    def loss(self, views):
        masked, x, mask, top, left = views
        pred = torch.sigmoid(self.decoder(self.encoder(masked)))
        recon = masked_l2(pred, x, mask)
        out = {"loss": recon, "l2": recon.detach()}
        if self.discriminator is not None:
            fake = crop_squares(pred, top, left, self.side)
            real = crop_squares(x, top, left, self.side)
            frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            fake_logit = functional_call(self.discriminator, frozen, (fake,))
            adv = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
            d_real = self.discriminator(real)
            d_fake = self.discriminator(fake.detach())
            disc = 0.5 * (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                          + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            out["loss"] = recon + self.config.adversarial_weight * adv + disc
            out["adv"], out["disc"] = adv.detach(), disc.detach()
        return out
