"""RealNVP (Dinh et al. 2017): an invertible map from pixels in (0, 1) to a standard-normal z.

    y ∈ (0, 1)^D  ->  s = logit(y)                                       (onto R^D; see below)
    per scale:    [actnorm, affine coupling with a checkerboard mask] x 3, squeeze 2x2 -> 4C channels,
                  [actnorm, affine coupling with a channel mask] x 3, factor out half the channels as z_i
    last scale:   [actnorm, checkerboard coupling] x 4 (channel couplings once the map is 1x1)

Affine coupling, mask b (1 where a value passes unchanged):

    y' = b ⊙ y + (1 − b) ⊙ (y ⊙ exp(s(b ⊙ y)) + t(b ⊙ y)),   log |det| = Σ (1 − b) ⊙ s

with s = tanh(·) scaled by a learned per-channel factor (RealNVP's stabiliser), s and t from a small
conv net whose last layer starts at zero (every coupling starts as the identity). Actnorm (Glow's,
Kingma & Dhariwal 2018) is y' = (y + b_c) · exp(l_c) per channel, its log-det H·W·Σ_c l_c,
initialised from the first training batch to zero mean and unit variance per channel. Masks
alternate in parity from one coupling to the next, so every value is transformed.

``transform`` gives z (N, D) and log |det ∂z/∂y| (N,), pre-processing included, so
log p(y) = log N(z; 0, I) + log |det|: a density on (0, 1)^D, normalised there exactly because the
map is onto R^D. RealNVP's own pre-processing logit(α + (1 − 2α) y), α = 0.05, maps (0, 1) onto a
bounded interval, so its density over the cube integrates to the Gaussian mass of a bounded set, less
than 1 (tests/methods/test_flow.py: 0.92 for its random flow, 0.1 with larger weights): here α = 0, y clamped to
[1e-7, 1 − 1e-7] against the measure-zero ends. ``inverse`` maps z back to y. As a backbone,
``forward(x)`` gives z of the centres (k + ½)/256 of the 8-bit levels k of images x in [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .registry import register_backbone

EDGE = 1e-7  # y is clamped to [EDGE, 1 − EDGE]: logit(0) = −∞


def squeeze(x: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 4C, H/2, W/2): each 2x2 block becomes 4 channels."""
    n, c, h, w = x.shape
    return x.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Inverse of :func:`squeeze`."""
    n, c, h, w = x.shape
    return x.view(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, 2 * h, 2 * w)


class ActNorm(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def _init(self, x: Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True) if x.numel() > x.shape[1] else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std.clamp(min=1e-3)))
        self.initialized.fill_(True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self._init(x)
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.bias) * self.log_scale.exp(), logdet.expand(x.shape[0])  # x.shape: a free batch in exports

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


def checkerboard(h: int, w: int, parity: int, device=None) -> Tensor:
    """(1, 1, H, W) mask, 1 where (i + j + parity) is even."""
    i, j = torch.arange(h, device=device)[:, None], torch.arange(w, device=device)[None]
    return ((i + j + parity) % 2 == 0).float()[None, None]


class Coupling(nn.Module):
    """An affine coupling; ``mask``: "checkerboard" (spatial) or "channel" (first/second half), ``parity`` 0/1."""

    def __init__(self, channels: int, mask: str, parity: int, hidden: int):
        super().__init__()
        self.mask, self.parity = mask, parity
        cin = channels if mask == "checkerboard" else channels // 2
        cout = channels if mask == "checkerboard" else channels - channels // 2
        self.net = nn.Sequential(nn.Conv2d(cin, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
                                 nn.Conv2d(hidden, 2 * cout, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)
        self.scale = nn.Parameter(torch.ones(1, cout, 1, 1))

    def _st(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.net(x).chunk(2, dim=1)
        return self.scale * torch.tanh(s), t

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(passive, active) halves of a channel mask."""
        a, b = x[:, :x.shape[1] // 2], x[:, x.shape[1] // 2:]
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, passive: Tensor, active: Tensor, like: Tensor) -> Tensor:
        return torch.cat([passive, active] if self.parity == 0 else [active, passive], dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask == "checkerboard":
            b = checkerboard(x.shape[2], x.shape[3], self.parity, x.device)
            s, t = self._st(x * b)
            s, t = s * (1 - b), t * (1 - b)
            return x * b + (1 - b) * (x * s.exp() + t), s.flatten(1).sum(1)
        passive, active = self._split(x)
        s, t = self._st(passive)
        return self._join(passive, active * s.exp() + t, x), s.flatten(1).sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        if self.mask == "checkerboard":
            b = checkerboard(y.shape[2], y.shape[3], self.parity, y.device)
            s, t = self._st(y * b)
            return y * b + (1 - b) * (y - t) * torch.exp(-s)
        passive, active = self._split(y)
        s, t = self._st(passive)
        return self._join(passive, (active - t) * torch.exp(-s), y)


def _steps(channels: int, mask: str, count: int, hidden: int, start: int = 0) -> nn.ModuleList:
    """count × (actnorm, coupling), masks of alternating parity."""
    layers = nn.ModuleList()
    for k in range(count):
        layers.append(ActNorm(channels))
        layers.append(Coupling(channels, mask, (start + k) % 2, hidden))
    return layers


class RealNVP(nn.Module):
    def __init__(self, in_channels: int, image_size: int, hidden: int = 64, squeezes: int | None = None):
        super().__init__()
        if squeezes is None:  # halve while the map stays at least 4 px, at most twice (8 px: once; 32 px: twice)
            squeezes, s = 0, image_size
            while squeezes < 2 and s % 2 == 0 and s // 2 >= 4:
                squeezes, s = squeezes + 1, s // 2
        self.shape = (in_channels, image_size, image_size)
        self.scales = nn.ModuleList()
        c, size = in_channels, image_size
        for _ in range(squeezes):
            if size % 2:
                raise ValueError(f"realnvp: a {size} px map cannot be squeezed; use fewer squeezes")
            checker = _steps(c, "checkerboard", 3, hidden)
            c, size = 4 * c, size // 2
            channel = _steps(c, "channel", 3, hidden)
            self.scales.append(nn.ModuleList([checker, channel]))
            c = c - c // 2  # half the channels leave as z_i
        self.last = _steps(c, "checkerboard" if size > 1 else "channel", 4, hidden)
        self.feature_dim = in_channels * image_size * image_size

    @staticmethod
    def preprocess(y: Tensor) -> tuple[Tensor, Tensor]:
        """s = logit(y) and its log |det| = Σ −log y − log(1 − y) per image."""
        p = y.clamp(EDGE, 1 - EDGE)
        log_p, log_q = torch.log(p), torch.log1p(-p)
        return log_p - log_q, (-log_p - log_q).flatten(1).sum(1)

    def transform(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y in (0, 1) (N, C, H, W) -> z (N, D) and log |det ∂z/∂y| (N,)."""
        h, logdet = self.preprocess(y)
        zs = []
        for checker, channel in self.scales:
            for layer in checker:
                h, ld = layer(h)
                logdet = logdet + ld
            h = squeeze(h)
            for layer in channel:
                h, ld = layer(h)
                logdet = logdet + ld
            out = h.shape[1] // 2
            zs.append(h[:, :out].flatten(1))
            h = h[:, out:]
        for layer in self.last:
            h, ld = layer(h)
            logdet = logdet + ld
        zs.append(h.flatten(1))
        return torch.cat(zs, dim=1), logdet

    def inverse(self, z: Tensor) -> Tensor:
        """z (N, D) -> y in (0, 1) (N, C, H, W)."""
        n = len(z)
        c, size = self.shape[0], self.shape[1]
        shapes = []  # the (channels, size) of each factored-out z_i, then of the last scale
        for _ in self.scales:
            c, size = 4 * c, size // 2
            shapes.append((c // 2, size))
            c = c - c // 2
        shapes.append((c, size))
        parts = list(z.split([ch * s * s for ch, s in shapes], dim=1))
        ch, s = shapes[-1]
        h = parts[-1].view(n, ch, s, s)
        for layer in reversed(self.last):
            h = layer.inverse(h)
        for i in reversed(range(len(self.scales))):
            checker, channel = self.scales[i]
            ch, s = shapes[i]
            h = torch.cat([parts[i].view(n, ch, s, s), h], dim=1)
            for layer in reversed(channel):
                h = layer.inverse(h)
            h = unsqueeze(h)
            for layer in reversed(checker):
                h = layer.inverse(h)
        return torch.sigmoid(h)

    def forward(self, x: Tensor) -> Tensor:
        """z of the level centres (k + ½)/256 of images x in [0, 1] (k = ⌊256 x⌋ clamped to 0..255): (N, D)."""
        return self.transform(((x * 256).floor().clamp(0, 255) + 0.5) / 256)[0]


@register_backbone("realnvp")
def realnvp(in_channels: int, image_size: int, hidden: int = 64, squeezes: int | None = None) -> RealNVP:
    return RealNVP(in_channels, image_size, hidden, squeezes)
