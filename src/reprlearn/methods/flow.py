"""A normalizing flow, RealNVP (Dinh et al. 2017), trained by exact maximum likelihood.

    y = (k + u) / 256,  u ~ U[0, 1)^D                         (uniform dequantisation of 8-bit levels k)
    z = f(y)  (nets/realnvp.py: logit pre-processing, affine couplings, squeezes, actnorm)
    log p(y) = log N(f(y); 0, I) + log |det ∂f/∂y|               (exact: f is a bijection (0, 1)^D -> R^D)
    L = E_u[−log p(y)] + D log 256   per image, in nats of the 8-bit levels

What is exact and what is bounded. p(y) is a normalised density on (0, 1)^D; the bins
[k/256, (k+1)/256)^D tile that cube, so P(k) = ∫_bin(k) p(y) dy = 256^−D E_u p((k + u)/256) is a normalised
distribution over the 256^D images: Σ_k P(k) = 1 exactly. Its NLL −log P(k) is bounded (Jensen, Theis et al. 2016; the
variational-dequantisation argument of Ho et al. 2019 with q(u|k) uniform):

    −log P(k) ≤ −log (1/K Σ_j p((k + u_j)/256)) + D log 256 ≤ ...  ≤ E_u[−log p((k + u)/256)] + D log 256

``nelbo`` is the right-hand side with one u (the training objective); ``iwae`` the middle with K
draws of u, which tightens to −log P(k) as K grows. bits/dim in eval.json is the iwae one (the
harness's convention), so "exact" here means: the flow's density is exact, its discrete NLL is
bounded by an estimate that converges to it (tests/methods/test_flow.py checks Σ_k P(k) = 1).

Representation for the probes: the encoder is the flow itself, its features the latent z = f(x)
(D values, the Gaussian coordinates of the image, factored-out scales first) of the centres
(k + ½)/256 of the test images' levels, with no dequantisation noise. z is the only representation a
flow has: it keeps all the information of x (f is invertible), so the probes measure how linearly
separable the classes become in the coordinates where the data are Gaussian. The encoder's normalisation is the identity (the flow
sees pixels in [0, 1]; its actnorm layers standardise). Samples: z ~ N(0, I), y = f⁻¹(z), shown as
the level ⌊256 y⌋.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import option
from ..data.pixels import require_8bit
from ..errors import fail
from ..losses import LEVELS, gaussian_log_prob, pixel_levels
from ..nets.realnvp import RealNVP
from .base import METHODS, HasDensity, Method, Reconstructs, Samples


@dataclass
class FlowConfig:
    temperature: float = option(1.0, "samples: z ~ N(0, T² I); below 1 trades variety for cleaner images "
                                "(Kingma & Dhariwal 2018); the likelihood is always at T = 1", above=0.0, max=10.0)


def dequantize(levels: Tensor, generator: torch.Generator | None = None, num_levels: int = LEVELS) -> Tensor:
    """y = (k + u) / L, u ~ U[0, 1): a point of level k's bin."""
    u = torch.rand(levels.shape, generator=generator, device=levels.device)
    return (levels.float() + u) / num_levels


@METHODS.register("flow")
class Flow(Method, Reconstructs, Samples, HasDensity):
    Config = FlowConfig
    run_defaults = {"backbone": "realnvp", "augment": "none", "epochs": 60, "batch_size": 128, "lr": 1e-3,
                    "warmup_epochs": 2, "weight_decay": 0.0, "grad_clip": 100.0}

    def __init__(self, config: FlowConfig, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if not isinstance(encoder.backbone, RealNVP):
            raise fail(f"flow needs the RealNVP backbone, got {type(encoder.backbone).__name__}; "
                       "add --backbone realnvp")
        encoder.mean.zero_()  # the flow models the pixels themselves: no normalisation in front
        encoder.std.fill_(1.0)
        self.levels = LEVELS

    @property
    def flow(self) -> RealNVP:
        return self.encoder.backbone

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------- the density
    def log_density(self, y: Tensor) -> Tensor:
        """log p(y) per image (N,), y in (0, 1)^D."""
        z, logdet = self.flow.transform(y)
        zero = torch.zeros_like(z)
        return gaussian_log_prob(z, zero, zero) + logdet

    def discrete_nll(self, levels: Tensor, k: int, generator: torch.Generator | None = None,
                     max_rows: int = 8192) -> Tensor:
        """−log (1/K Σ_j p((k + u_j)/L)) + D log L per image (N,): the K-draw bound on −log P(levels).
        The K draws go through the flow in chunks of at most ``max_rows`` images."""
        n, d = len(levels), levels[0].numel()
        per_chunk, log_p = max(1, max_rows // n), []
        for start in range(0, k, per_chunk):
            m = min(per_chunk, k - start)  # rows are draw-major: row j*n + i is draw j of image i
            tiled = levels.repeat(m, *([1] * (levels.dim() - 1)))
            log_p.append(self.log_density(dequantize(tiled, generator, self.levels)).view(m, n))
        return math.log(k) - torch.logsumexp(torch.cat(log_p), dim=0) + d * math.log(self.levels)

    # ---------------------------------------------------------------- training
    def views(self, images: Tensor, generator: torch.Generator) -> Tensor:
        require_8bit(images, "flow")
        return dequantize(images, generator, self.levels)

    def loss(self, y: Tensor) -> dict[str, Tensor]:
        d = y[0].numel()
        nll = (-self.log_density(y) + d * math.log(self.levels)).mean()
        return {"loss": nll, "bits_per_dim": (nll / (d * math.log(2))).detach()}

    # ---------------------------------------------------------------- evaluation hooks (x = k/255 in [0, 1])
    density_spec = {"data": "8-bit", "likelihood": "flow density on uniformly dequantised pixels",
                    "bound": "E_u −log p((k+u)/256) + D log 256 (nelbo, one u); K draws of u (iwae)"}

    def density_data(self, x: Tensor) -> Tensor:
        return x

    @torch.no_grad()
    def nelbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return self.discrete_nll(pixel_levels(x), 1, generator)

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        if k < 1:
            raise ValueError(f"iwae needs k >= 1, got {k}")
        return self.discrete_nll(pixel_levels(x), k, generator)

    @torch.no_grad()
    def kl_per_group(self, x: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """A flow has no latent KL: no groups."""
        return {}

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        z = self.config.temperature * torch.randn(n, self.flow.feature_dim, generator=generator, device=self._device())
        return pixel_levels(self.flow.inverse(z)) / (self.levels - 1)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """f⁻¹(f(x)): the round trip through z, x's level centres (k + ½)/256 up to rounding."""
        return self.flow.inverse(self.flow(x)).clamp(0, 1)

    @torch.no_grad()
    def figure_rows(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        g = torch.Generator(device=self._device()).manual_seed(0)
        return {"input": x, "f⁻¹(f(x))": self.reconstruct(x), "sample": self.sample(len(x), generator=g)}

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        return self.nelbo(x, generator=torch.Generator(device=x.device).manual_seed(0))
