"""Colorization (Zhang et al. 2016, simplified): predict an image's colour from its grey levels.

Every RGB image is split into luma and chroma with the YUV transform (:func:`rgb_to_yuv`):
the encoder sees the luma Y replicated to three channels (so the backbone is the ordinary
RGB one and ``self.encoder`` evaluates colour images unchanged), and a decoder
(``build_decoder`` from the backbone's features) predicts the chroma (U, V) on a coarse
``chroma-size`` x ``chroma-size`` grid: the target is the chroma average-pooled to that grid
(chroma varies slowly; Zhang et al. also predict it at a quarter of the resolution). The coarse
grid keeps the decoder a small MLP: a transposed-conv decoder up to 32x32 cost about seven times
the small CNN encoder's compute and learnt less (docs/methods/pretext.md). The decoder reads the pooled features,
the ones evaluated; a per-location decoder on the feature map before the pool was tried and
gave worse features (local colour cues rather than image-level ones).

* ``--target l2``: regression of U and V, mean squared error;
* ``--target classes``: each of U and V is quantised into ``num-bins`` equal bins over its
  range, a pixel's class is the (U-bin, V-bin) pair (``num-bins``² classes), per-pixel
  cross-entropy (the paper's classification loss, without its class rebalancing, soft
  encoding or annealed-mean decoding).

Images are flipped horizontally at random (from the engine's generator). The decoder is
dropped for evaluation. Grayscale data is refused at construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import option
from ..data.pixels import unit_float
from ..errors import fail
from ..nets.decoders import build_decoder
from .base import METHODS, Method

# BT.601 YUV: Y in [0, 1], U in [-U_MAX, U_MAX], V in [-V_MAX, V_MAX]
U_MAX, V_MAX = 0.436, 0.615


@dataclass
class ColorizationConfig:
    target: str = option("l2", "chroma target: l2 regression of (U, V) or per-pixel classes of quantised (U, V)",
                         choices=("l2", "classes"))
    num_bins: int = option(8, "bins per chroma axis for --target classes (num-bins² classes)", min=2, max=64)
    chroma_size: int = option(8, "side of the predicted chroma grid (the target chroma is average-pooled to it; "
                              "at most the image side)", min=1, max=1024)


def rgb_to_yuv(x: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> (N, 3, H, W) YUV (BT.601)."""
    r, g, b = x.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.stack([y, 0.492 * (b - y), 0.877 * (r - y)], 1)


def grayscale3(x: Tensor) -> Tensor:
    """The luma of (N, 3, H, W) RGB images, replicated to three equal channels."""
    return rgb_to_yuv(x)[:, :1].expand(-1, 3, -1, -1).contiguous()


def chroma_classes(uv: Tensor, num_bins: int) -> Tensor:
    """(N, 2, H, W) chroma -> (N, H, W) long class index u_bin * num_bins + v_bin."""
    u = ((uv[:, 0] + U_MAX) / (2 * U_MAX) * num_bins).long().clamp(0, num_bins - 1)
    v = ((uv[:, 1] + V_MAX) / (2 * V_MAX) * num_bins).long().clamp(0, num_bins - 1)
    return u * num_bins + v


@METHODS.register("colorization")
class Colorization(Method):
    Config = ColorizationConfig
    run_defaults = {"epochs": 4, "warmup_epochs": 0}

    def __init__(self, config, encoder, info, view_spec):
        if info.channels != 3:
            raise fail(f"colorization needs colour images; the training data has {info.channels} channel"
                       f"{'s' if info.channels != 1 else ' (grayscale)'}; give --data with RGB images, e.g. cifar10")
        super().__init__(config, encoder, info, view_spec)
        out = 2 if config.target == "l2" else config.num_bins ** 2
        self.chroma_size = min(config.chroma_size, info.image_size)
        self.decoder = build_decoder(encoder.feature_dim, out, self.chroma_size)

    def views(self, images: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        x = unit_float(images)
        flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        yuv = rgb_to_yuv(x)
        uv = F.adaptive_avg_pool2d(yuv[:, 1:], self.chroma_size)
        target = uv if self.config.target == "l2" else chroma_classes(uv, self.config.num_bins)
        return yuv[:, :1].expand(-1, 3, -1, -1).contiguous(), target

    def predict(self, gray: Tensor) -> Tensor:
        """Grey input (N, 3, H, W) -> chroma (N, 2, S, S) for l2, class logits (N, bins², S, S) for classes,
        S = ``chroma_size``."""
        return self.decoder(self.encoder(gray))

    def loss(self, views):
        gray, target = views
        pred = self.predict(gray)
        if self.config.target == "l2":
            value = F.mse_loss(pred, target)
            return {"loss": value, "l2": value.detach()}
        value = F.cross_entropy(pred, target)
        return {"loss": value, "ce": value.detach()}
