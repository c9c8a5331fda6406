"""A small U-Net for denoising diffusion (Ho et al. 2020, after PixelCNN++'s and Ronneberger et al.'s).

    ε_θ(x_t, t):  conv_in -> [ResBlock(t) (+ attention at the lowest resolution) -> downsample] per level
                  -> bottleneck: ResBlock(t), self-attention, ResBlock(t)
                  -> [upsample -> ResBlock(t) on (h, skip)] per level -> GroupNorm, SiLU, conv_out (zero-init)

Every ResBlock adds a projection of the time embedding (sinusoidal in t, then a 2-layer MLP) between
its two convolutions. Resolutions halve while the map stays at least 4 px, at most three levels
(8 px digits: 8, 4; 32 px CIFAR: 32, 16, 8); widths are ``width`` times 1, 2, 2.

As a backbone (``forward``) it gives the bottleneck's features, averaged over positions, for the
image at one noise level: the denoiser's input is √ᾱ_t · x, the mean of q(x_t | x_0 = x) (no noise
drawn, so a feature is a function of the image alone), at time t = ``feature_t``. The diffusion
method sets that level (``set_feature_level``); built alone it is t = 0 with ᾱ = 1, the clean image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_backbone


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (integer) times t (N,) -> (N, dim), as the Transformer's positions."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """h + conv(SiLU(GN(conv(SiLU(GN(h))) + W e_t))), with a 1x1 skip when the width changes."""

    def __init__(self, cin: int, cout: int, time_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.time = nn.Linear(time_dim, cout)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as its skip path
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Attention(nn.Module):
    """Single-head self-attention over the H·W positions, residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).view(n, 3, c, h * w).unbind(1)  # (N, C, L) each
        # one head, as a (N, 1, L, C) head axis: the same attention, in the 4-D form ONNX export supports
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (N, L, C)
        return x + self.out(a.transpose(1, 2).reshape(n, c, h, w))


class UNet(nn.Module):
    def __init__(self, in_channels: int, image_size: int, width: int = 32):
        super().__init__()
        sizes = [image_size]
        while len(sizes) < 3 and sizes[-1] % 2 == 0 and sizes[-1] // 2 >= 4:
            sizes.append(sizes[-1] // 2)
        widths = [width * m for m in (1, 2, 2)[:len(sizes)]]
        self.time_dim = 4 * width
        self.time_mlp = nn.Sequential(nn.Linear(width, self.time_dim), nn.SiLU(),
                                      nn.Linear(self.time_dim, self.time_dim))
        self.width = width
        self.conv_in = nn.Conv2d(in_channels, width, 3, padding=1)
        lowest = len(sizes) - 1
        self.down = nn.ModuleList(ResBlock(width if i == 0 else widths[i - 1], widths[i], self.time_dim)
                                  for i in range(len(sizes)))
        self.down_attn = nn.ModuleList(Attention(widths[i]) if i == lowest else nn.Identity()
                                       for i in range(len(sizes)))
        self.downsample = nn.ModuleList(nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1)
                                        for i in range(lowest))
        mid = widths[-1]
        self.mid1 = ResBlock(mid, mid, self.time_dim)  # built in this order: the seeded init depends on it
        self.mid_attn = Attention(mid)
        self.mid2 = ResBlock(mid, mid, self.time_dim)
        self.up = nn.ModuleList(ResBlock((widths[i + 1] if i < lowest else mid) + widths[i], widths[i], self.time_dim)
                                for i in range(len(sizes)))
        self.up_attn = nn.ModuleList(Attention(widths[i]) if i == lowest else nn.Identity() for i in range(len(sizes)))
        self.out_norm, self.conv_out = norm(width), nn.Conv2d(width, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.feature_dim = mid
        self.resolutions = sizes
        # the features' noise level (set by the diffusion method): time index and √ᾱ_t
        self.register_buffer("feature_t", torch.zeros((), dtype=torch.long))
        self.register_buffer("feature_signal", torch.ones(()))

    def set_feature_level(self, t: int, signal: float) -> None:
        """Features at time ``t`` with the denoiser's input √ᾱ_t · x (``signal`` = √ᾱ_t)."""
        self.feature_t.fill_(int(t))
        self.feature_signal.fill_(float(signal))

    def _bottleneck(self, x: Tensor, t: Tensor) -> tuple[Tensor, list[Tensor], Tensor]:
        emb = self.time_mlp(timestep_embedding(t, self.width).to(x.dtype))
        h, skips = self.conv_in(x), []
        for i, block in enumerate(self.down):
            h = self.down_attn[i](block(h, emb))
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        return h, skips, emb

    def denoise(self, x_t: Tensor, t: Tensor) -> Tensor:
        """ε_θ(x_t, t): the predicted noise, (N, C, H, W); t: (N,) integer times."""
        h, skips, emb = self._bottleneck(x_t, t)
        for i in reversed(range(len(self.up))):
            if h.shape[-1] != skips[i].shape[-1]:
                h = F.interpolate(h, size=skips[i].shape[-2:], mode="nearest")
            h = self.up_attn[i](self.up[i](torch.cat([h, skips[i]], dim=1), emb))
        return self.conv_out(F.silu(self.out_norm(h)))

    def forward(self, x: Tensor) -> Tensor:
        """The bottleneck, mean over positions, of √ᾱ_t · x at t = ``feature_t``: (N, feature_dim)."""
        t = self.feature_t.expand(x.shape[0])  # x.shape, not len(x): a traced graph keeps its batch size free
        return self._bottleneck(self.feature_signal * x, t)[0].mean(dim=(2, 3))


@register_backbone("unet")
def unet(in_channels: int, image_size: int, width: int = 32) -> UNet:
    return UNet(in_channels, image_size, width)
