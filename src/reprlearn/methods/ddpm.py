"""DDPM, denoising diffusion probabilistic models (Ho et al. 2020): a hierarchical VAE with T latent
layers, a fixed encoder (the forward process) and one shared, time-conditioned decoder.

    forward process   q(x_t | x_{t−1}) = N(√(1 − β_t) x_{t−1}, β_t I),   t = 1..T
    closed form       q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I),   ᾱ_t = Π_{s ≤ t} (1 − β_s)
    posterior         q(x_{t−1} | x_t, x_0) = N(μ̃_t, β̃_t I),   β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t),
                      μ̃_t = √ᾱ_{t−1} β_t / (1 − ᾱ_t) · x_0 + √α_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · x_t
    reverse process   p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I),   μ_θ = (x_t − β_t / √(1 − ᾱ_t) · ε_θ(x_t, t)) / √α_t
    training          L_simple = E_{t, x_0, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²   (mean per value)
    bound             −log p(x_0) ≤ L_T + Σ_{t=2}^T L_{t−1} + L_0,
                      L_T = KL(q(x_T | x_0) ‖ N(0, I)),  L_{t−1} = E_q KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),
                      L_0 = −E_q log p_θ(x_0 | x_1)

Schedules (``--schedule``): ``linear`` β from 1e-4 to 0.02 (Ho et al., for T = 1000; both ends scaled
by 1000/T for other T, as Nichol & Dhariwal 2021, and clipped at 0.999 for T < 50), ``cosine``
ᾱ_t = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s)·π/2), s = 0.008, β_t clipped at 0.999 (Nichol &
Dhariwal 2021). σ_t² (``--variance``): ``small`` β̃_t or
``large`` β_t (Ho et al. found both sample alike); L_0 always uses σ_1² = β_1.

The data space. The diffusion runs on the encoder's normalised pixels, x_0 = (c − m)/s per channel
(the dataset's mean m and std s, where Ho et al. 2020 map pixels to [−1, 1]: the same noise schedule
then meets data of another spread, so the figures are not of Ho et al.'s setting), with c = (k + ½)/256 the centre of 8-bit level k's bin, so the evaluated encoder (normalisation + this
U-Net) is the network that denoises. p_θ(x_0 | x_1) is N(μ_θ, β_1) mapped back to the [0, 1] scale
(location s μ + m, scale s √β_1) and discretised over the 256 levels
(losses.discretized_gaussian_log_prob), as in Ho et al.; the KL terms do not depend on the affine map,
so the bound is in nats of the 8-bit images, on the footing of vae and hvae (8 bits/dim = uniform).

Evaluating the bound. L_T is closed form; L_0 takes one x_1 ~ q(x_1 | x_0); the sum over t takes
one t per stratum of 2..T, at most ``--bound-steps`` K strata, log-spaced (``bound_strata``: the
terms fall roughly as 1/t, so on T = 1000 and K = 50: 45 strata, the first 9 single steps), t
uniform in its stratum [lo, hi) and weighted by its size hi − lo, one x_t ~ q(x_t | x_0) each: an
unbiased estimate of the sum; K = 0 or K ≥ T − 1 takes every t once (Ho et al.'s estimate: one
x_t per term). By default, then, the reported bound is this stratified estimate (45 strata on
T = 1000), not a sum over every t. Cost: at most K + 1 U-Net passes per image. There is no importance-weighted bound
(it needs K whole chains of T steps per image):
``importance_weighted = False``, and bits/dim is of this bound.

Representations. The encoder gives the U-Net bottleneck's mean over positions for the denoiser's
input √ᾱ_t x_0 (the mean of q(x_t | x_0), no noise drawn) at t = ``--feature-t`` (nets/unet.py);
the random-init baseline is the same untrained network at the same level. Sampling is ancestral,
x_T ~ N(0, I), T steps; the image is μ_θ of the last step, mapped to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..config import option
from ..data.pixels import require_8bit
from ..errors import fail
from ..losses import discretized_gaussian_log_prob, gaussian_kl, gaussian_kl_between, pixel_levels
from ..nets.unet import UNet
from .base import METHODS, HasDensity, Method, Reconstructs, Samples


@dataclass
class DDPMConfig:
    timesteps: int = option(1000, "diffusion steps T", min=2, max=100000)
    schedule: str = option("linear", "β_t schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)",
                           choices=("linear", "cosine"))
    variance: str = option("small", "reverse-process variance σ_t²: small = β̃_t (posterior), large = β_t",
                           choices=("small", "large"))
    feature_t: int = option(20, "noise level t (1..T) of the encoder's features: the U-Net bottleneck at √ᾱ_t x",
                            min=1, max=100000)
    bound_steps: int = option(50, "at most this many times t per image for the bound's sum over t (log-spaced "
                              "strata, unbiased); 0 = all T − 1 terms", min=0, max=100000)

    def check(self) -> None:
        if self.feature_t > self.timesteps:
            raise fail(f"--feature-t {self.feature_t} is beyond the {self.timesteps} diffusion steps; "
                       f"give a level from 1 to {self.timesteps}")


def beta_schedule(kind: str, timesteps: int) -> Tensor:
    """β_1..β_T (T,) in float64."""
    if kind == "linear":
        scale = 1000 / timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64).clamp(max=0.999)
    s = 0.008
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


def bound_strata(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """[lo, hi) strata of t = 2..T for the bound's sum, at most ``steps`` of them, log-spaced (the
    terms fall roughly as 1/t, so the first strata are single steps); 0 or ≥ T − 1: every t alone."""
    if steps == 0 or steps >= timesteps - 1:
        return [(t, t + 1) for t in range(2, timesteps + 1)]
    edges = np.unique(np.round(np.geomspace(2, timesteps + 1, steps + 1)).astype(int))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


class Diffusion:
    """The fixed forward process's constants for t = 1..T (index t − 1), float64 on the CPU; ``at(name, t)``
    gathers them for integer times t (N,) on t's device, shaped to broadcast over images."""

    def __init__(self, betas: Tensor):
        self.T = len(betas)
        self.beta = betas
        self.alpha = 1 - betas
        self.alpha_bar = torch.cumprod(self.alpha, 0)
        prev = torch.cat([torch.ones(1, dtype=betas.dtype), self.alpha_bar[:-1]])  # ᾱ_{t−1}, ᾱ_0 = 1
        self.alpha_bar_prev = prev
        self.posterior_var = betas * (1 - prev) / (1 - self.alpha_bar)  # β̃_t (0 at t = 1)
        self.coef_x0 = prev.sqrt() * betas / (1 - self.alpha_bar)
        self.coef_xt = self.alpha.sqrt() * (1 - prev) / (1 - self.alpha_bar)

    def at(self, name: str, t: Tensor, like: Tensor) -> Tensor:
        """The constant ``name`` at times t, in ``like``'s dtype and device, shaped to broadcast over it."""
        values = getattr(self, name)[t.cpu() - 1].to(like.device, like.dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        ab = self.at("alpha_bar", t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(μ̃_t, β̃_t) of q(x_{t−1} | x_t, x_0)."""
        return self.at("coef_x0", t, x0) * x0 + self.at("coef_xt", t, x0) * xt, self.at("posterior_var", t, x0)

    def p_mean(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """μ_θ = (x_t − β_t / √(1 − ᾱ_t) ε_θ) / √α_t."""
        beta, alpha_bar, alpha = (self.at(name, t, xt) for name in ("beta", "alpha_bar", "alpha"))
        return (xt - beta / (1 - alpha_bar).sqrt() * eps) / alpha.sqrt()


@METHODS.register("ddpm")
class DDPM(Method, Reconstructs, Samples, HasDensity):
    Config = DDPMConfig
    run_defaults = {"backbone": "unet", "augment": "none", "epochs": 60, "batch_size": 128, "lr": 1e-3,
                    "warmup_epochs": 2, "weight_decay": 0.0}
    importance_weighted = False  # see the module docstring: bits/dim is of the variational bound

    def __init__(self, config: DDPMConfig, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if not isinstance(encoder.backbone, UNet):
            raise fail(f"ddpm needs the U-Net backbone, got {type(encoder.backbone).__name__}; add --backbone unet")
        self.diffusion = Diffusion(beta_schedule(config.schedule, config.timesteps))
        t = config.feature_t
        encoder.backbone.set_feature_level(t, math.sqrt(float(self.diffusion.alpha_bar[t - 1])))
        var = self.diffusion.posterior_var if config.variance == "small" else self.diffusion.beta
        self.sigma2 = torch.cat([self.diffusion.beta[:1], var[1:]])  # σ_1² = β_1 (the decoder), then σ_t²

    @property
    def unet(self) -> UNet:
        return self.encoder.backbone

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _times(self, t: int | Tensor, n: int) -> Tensor:
        return torch.full((n,), t, dtype=torch.long, device=self._device()) if isinstance(t, int) else t

    # ---------------------------------------------------------------- data space
    def to_diffusion(self, x: Tensor) -> Tensor:
        """Images in [0, 1] (8-bit levels or dequantised values) -> x_0: their bin centres, normalised."""
        return self.encoder.normalize((pixel_levels(x) + 0.5) / 256)

    def to_image(self, x0: Tensor) -> Tensor:
        """x_0 -> pixels in [0, 1]."""
        return (x0 * self.encoder.std + self.encoder.mean).clamp(0, 1)

    # ---------------------------------------------------------------- training
    def views(self, images: Tensor, generator: torch.Generator):
        """(x_0, t ~ U{1..T}, ε ~ N(0, I)) from the uint8 batch."""
        require_8bit(images, "ddpm")
        x0 = self.encoder.normalize((images.float() + 0.5) / 256)
        t = torch.randint(1, self.config.timesteps + 1, (len(x0),), generator=generator, device=x0.device)
        return x0, t, torch.randn(x0.shape, generator=generator, device=x0.device)

    def loss(self, views) -> dict[str, Tensor]:
        x0, t, eps = views
        mse = (self.unet.denoise(self.diffusion.q_sample(x0, t, eps), t) - eps).pow(2).mean()
        return {"loss": mse, "eps_mse": mse.detach()}

    # ---------------------------------------------------------------- the bound
    def step_kl(self, x0: Tensor, xt: Tensor, t: Tensor) -> Tensor:
        """KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)) per image (N,), t ≥ 2."""
        mean_q, var_q = self.diffusion.q_posterior(x0, xt, t)
        mean_p = self.diffusion.p_mean(xt, t, self.unet.denoise(xt, t))
        var_p = self.sigma2[t.cpu() - 1].to(xt.device, xt.dtype).view(-1, *([1] * (xt.dim() - 1)))
        return gaussian_kl_between(mean_q, var_q.log().expand_as(xt), mean_p, var_p.log().expand_as(xt))

    def prior_term(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) per image."""
        ab = float(self.diffusion.alpha_bar[-1])
        return gaussian_kl(math.sqrt(ab) * x0, torch.full_like(x0, math.log(1 - ab)))

    def decoder_term(self, x: Tensor, x0: Tensor, eps: Tensor) -> Tensor:
        """L_0 = −log p_θ(x_0 | x_1) per image at one x_1 ~ q(x_1 | x_0), discretised over the 8-bit levels of x."""
        t = self._times(1, len(x0))
        x1 = self.diffusion.q_sample(x0, t, eps)
        mean = self.diffusion.p_mean(x1, t, self.unet.denoise(x1, t)) * self.encoder.std + self.encoder.mean
        log_std = 0.5 * math.log(float(self.diffusion.beta[0])) + self.encoder.std.log()
        return -discretized_gaussian_log_prob(x, mean, log_std.expand_as(mean))

    @torch.no_grad()
    def bound_terms(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Per image (N,) in nats: L_T, the estimate of Σ_{t=2}^T L_{t−1} (see the module docstring), L_0."""
        x0, n = self.to_diffusion(x), len(x)
        noise = lambda: torch.randn(x0.shape, generator=generator, device=x0.device)  # noqa: E731
        total = torch.zeros(n, device=x0.device, dtype=x0.dtype)
        for lo, hi in bound_strata(self.config.timesteps, self.config.bound_steps):
            u = torch.rand(n, generator=generator, device=x0.device)  # t uniform in [lo, hi), per image
            t = (lo + (u * (hi - lo)).floor().long()).clamp(max=hi - 1)
            total = total + (hi - lo) * self.step_kl(x0, self.diffusion.q_sample(x0, t, noise()), t)
        return {"prior": self.prior_term(x0), "diffusion": total, "decoder": self.decoder_term(x, x0, noise())}

    # ---------------------------------------------------------------- evaluation hooks
    @property
    def density_spec(self) -> dict[str, str]:
        k = self.config.bound_steps
        strata = len(bound_strata(self.config.timesteps, k))
        every = k == 0 or k >= self.config.timesteps - 1
        steps = "all T − 1 terms" if every else f"estimated from {strata} log-spaced strata, one t each"
        return {"data": "8-bit", "likelihood": "discretized-gaussian decoder",
                "bound": f"variational: L_T + sum of L_t over t ({steps}) + L_0, T = {self.config.timesteps}"}

    def density_data(self, x: Tensor) -> Tensor:
        return x

    @torch.no_grad()
    def nelbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """The bound L_T + Σ L_{t−1} + L_0 per image (N,), in nats."""
        return sum(self.bound_terms(x, generator).values())

    def iwae(self, x: Tensor, k: int, labels: Tensor | None = None, generator: torch.Generator | None = None):
        raise fail("ddpm has no importance-weighted bound (K chains of T denoiser passes per image); "
                   "its density is the variational bound, nelbo")

    @torch.no_grad()
    def kl_per_group(self, x: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Mean nats per image of L_T (prior), Σ L_{t−1} (diffusion) and L_0 (decoder)."""
        g = torch.Generator(device=x.device).manual_seed(0)
        return {name: float(v.mean()) for name, v in self.bound_terms(x, g).items()}

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling, x_T ~ N(0, I), x_{t−1} = μ_θ(x_t, t) + σ_t z; the image is μ_θ at t = 1."""
        dev = self._device()
        x = torch.randn(n, self.info.channels, self.info.image_size, self.info.image_size, generator=generator,
                        device=dev)
        for step in range(self.config.timesteps, 0, -1):
            t = self._times(step, n)
            x = self.diffusion.p_mean(x, t, self.unet.denoise(x, t))
            if step > 1:
                x = x + math.sqrt(float(self.sigma2[step - 1])) * torch.randn(x.shape, generator=generator, device=dev)
        return self.to_image(x)

    @torch.no_grad()
    def denoised(self, x: Tensor, t: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(x_t as an image, the one-step estimate x̂_0 = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t) for x_t ~ q(x_t | x)."""
        x0, tt = self.to_diffusion(x), self._times(t, len(x))
        xt = self.diffusion.q_sample(x0, tt, torch.randn(x0.shape, generator=generator, device=x0.device))
        ab = float(self.diffusion.alpha_bar[t - 1])
        x0_hat = (xt - math.sqrt(1 - ab) * self.unet.denoise(xt, tt)) / math.sqrt(ab)
        return self.to_image(xt / math.sqrt(ab)), self.to_image(x0_hat)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """x̂_0 from x_t at the feature level (noise from a generator seeded 0)."""
        return self.denoised(x, self.config.feature_t, torch.Generator(device=x.device).manual_seed(0))[1]

    @torch.no_grad()
    def figure_rows(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        rows = {"input": x}
        for t in sorted({self.config.feature_t, self.config.timesteps // 4, self.config.timesteps // 2}):
            noisy, clean = self.denoised(x, max(1, t), torch.Generator(device=x.device).manual_seed(0))
            rows[f"x_t/√ᾱ t={t}"], rows[f"x̂_0 t={t}"] = noisy, clean
        return rows

    @torch.no_grad()
    def anomaly_score(self, x: Tensor) -> Tensor:
        """The bound per image: higher = less likely."""
        return self.nelbo(x, generator=torch.Generator(device=x.device).manual_seed(0))
