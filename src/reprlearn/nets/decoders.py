"""Decoders: a latent vector back to image logits (N, C, H, W), for the autoencoder family.

Tiny images (<= 16 px, e.g. 8x8 digits) use an MLP; larger ones a transposed-conv
stack that doubles the resolution from a 4-7 px seed map. Outputs are logits; the
method applies the sigmoid (pixels live in [0, 1]).
"""

from __future__ import annotations

from torch import Tensor, nn


class MLPDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, hidden: int = 256):
        super().__init__()
        self.shape = (channels, image_size, image_size)
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, channels * image_size * image_size),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).view(len(z), *self.shape)


class ConvDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, image_size: int, width: int = 128):
        super().__init__()
        seed, ups = image_size, 0
        while seed > 7 and seed % 2 == 0:
            seed, ups = seed // 2, ups + 1
        self.seed, self.width = seed, width
        self.fc = nn.Linear(latent_dim, width * seed * seed)
        layers: list[nn.Module] = []
        c = width
        for _ in range(ups):
            out = max(32, c // 2)
            layers += [nn.ConvTranspose2d(c, out, 4, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.fc(z).view(len(z), self.width, self.seed, self.seed).relu()
        return self.net(h)


def build_decoder(latent_dim: int, channels: int, image_size: int) -> nn.Module:
    if image_size <= 16:
        return MLPDecoder(latent_dim, channels, image_size)
    return ConvDecoder(latent_dim, channels, image_size)
