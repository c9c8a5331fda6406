"""Variational autoencoder (Kingma & Welling 2014), and the base of cvae and hvae.

    h = backbone(x);  (μ, log σ²) = W h            q_φ(z|x) = N(μ, diag σ²)
    z = μ + σ ⊙ ε,  ε ~ N(0, I)                    (reparameterisation)
    L = −log p_θ(x|z) + β_t · KL(q_φ(z|x) ‖ N(0, I))   per image, mean over the batch

with β_t rising linearly from 0 to β over the first ``kl_warmup`` of training. With
β = 1 the loss is the negative ELBO, an upper bound on −log p(x) in nats. p_θ(x|z) is
a normalised distribution over the values the data take, in one of the two standard
ways (``--binarize``):

  8-bit data (default): a logistic (PixelCNN++) or Gaussian (DDPM) with per-pixel
    location and log-scale from the decoder, discretised over the 256 levels with the
    edge bins open (losses.discretized_*_log_prob). Training inputs are uniformly
    dequantised, x = (x_uint8 + u)/256, u ~ U[0, 1), so the encoder never sees the
    17 (digits) or 256 (CIFAR) exact levels; the likelihood is of the level itself.
    Evaluation uses the exact discrete likelihood of the uint8 values, x = x_uint8/255
    with no dequantisation noise. The log-scale is floored at −7 − ln 2, PixelCNN++'s −7
    on [−1, 1] (Salimans et al. 2017) carried to [0, 1]: an interior bin can then hold
    up to 0.973 of the mass (−7 on [0, 1] would cap it at 0.790, 0.34 bits per pixel).
  binarised data: Bernoulli(sigmoid(f_θ(z))) on x ∈ {0, 1}, thresholded at 0.5
    (``static``) or drawn x ~ Bernoulli(x_uint8/255) each time an image is seen
    (``dynamic``, as in the IWAE paper). The density is evaluated on one fixed
    binarisation of the test set: the threshold (static) or one Bernoulli draw from a
    generator seeded 0 (dynamic), so runs are comparable.

Evaluation hooks (``nelbo``, ``iwae``, ``sample`` ...) always use β = 1; ``iwae``
is the importance-weighted bound of Burda et al. 2016, tighter as K grows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..config import option
from ..data.pixels import require_8bit
from ..errors import fail
from ..losses import (bernoulli_log_prob, discretized_gaussian_log_prob, discretized_logistic_log_prob,
                      gaussian_kl, gaussian_log_prob)
from ..nets.decoders import build_decoder
from .autoencoder import AutoencoderMethod
from .base import METHODS, HasDensity, Samples

# The smallest log-scale of the discretised likelihood: PixelCNN++'s floor, −7 on data in [−1, 1]
# (Salimans et al. 2017), carried to pixels in [0, 1], where every scale halves: −7 − ln 2, s = 4.6e-4.
# A floor caps the mass of an interior bin of width w = 1/256 at its value for a centred mean,
# max_μ P(k) = 2σ(w/2s) − 1 = tanh(w/4s): 0.973 here (at least 0.040 bits per interior pixel), against
# 0.790 (0.34 bits) for −7 on the [0, 1] scale. The two edge bins are open and reach P = 1 at any floor.
LOG_SCALE_MIN = -7.0 - math.log(2)
DISCRETIZED = {"discretized-logistic": discretized_logistic_log_prob,
               "discretized-gaussian": discretized_gaussian_log_prob}


@dataclass
class VAEConfig:
    latent_dim: int = option(16, "size of the latent z", min=1, max=65536)
    binarize: str = option("none", "none: 8-bit data; static: threshold at 0.5; dynamic: x ~ Bernoulli(pixel) "
                           "each time an image is seen (IWAE paper)", choices=("none", "static", "dynamic"))
    likelihood: str = option("auto", "p(x|z): auto = bernoulli on binarised data, discretized-logistic on 8-bit "
                             "data; discretized-* are over the 256 levels of a pixel",
                             choices=("auto", "discretized-logistic", "discretized-gaussian", "bernoulli"))
    beta: float = option(1.0, "weight of the KL term (β-VAE); 1 = the ELBO", min=0.0)
    kl_warmup: float = option(0.1, "fraction of training over which the KL weight rises linearly 0 -> beta",
                              min=0.0, max=1.0)
    free_bits: float = option(0.0, "training only: each latent group's batch-mean KL counts as at least this many "
                              "nats (Kingma et al. 2016); 0 = the ELBO", min=0.0)


class VAEMethod(AutoencoderMethod, Samples, HasDensity):
    """Gaussian-latent VAE machinery; subclasses change the posterior, the prior or the conditioning.

    Views are (x, labels or None, ε): the noise is drawn in ``views`` from the engine's
    generator, so a step is reproducible from its seed. ``elbo_terms`` is the one
    place the model is evaluated; loss, nelbo and iwae are all built from it.
    """

    interpolation = "spherical"

    def __init__(self, config: Any, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        if config.binarize != "none" and config.likelihood not in ("auto", "bernoulli"):
            raise fail(f"--binarize {config.binarize} makes the data binary: use --likelihood bernoulli (or auto), "
                       f"or --binarize none for the {config.likelihood} likelihood on 8-bit data")
        per_pixel = 1 if self.likelihood_kind == "bernoulli" else 2  # a logit, or location and log-scale
        self.decoder = build_decoder(self.decoder_inputs(config), per_pixel * info.channels, info.image_size)
        # a buffer so a resumed run continues the warm-up where it stopped
        self.register_buffer("kl_weight", torch.tensor(0.0 if config.kl_warmup > 0 else config.beta))

    def code_inputs(self, config) -> int:
        return 2 * config.latent_dim  # μ and log σ²

    def decoder_inputs(self, config) -> int:
        """Width of the decoder's input (cvae adds the one-hot class)."""
        return config.latent_dim

    @property
    def likelihood_kind(self) -> str:
        """The likelihood in use: ``auto`` resolved by ``binarize``."""
        if self.config.likelihood == "auto":
            return "bernoulli" if self.config.binarize != "none" else "discretized-logistic"
        return self.config.likelihood

    @property
    def density_spec(self) -> dict[str, str]:
        """What ``nelbo`` and ``iwae`` are a density of, for eval.json."""
        if self.config.binarize == "none" and self.likelihood_kind == "bernoulli":
            return {"data": "binary", "likelihood": "bernoulli"}  # the data were binary already
        if self.config.binarize != "none":
            return {"data": "binarized", "binarize": self.config.binarize, "likelihood": self.likelihood_kind}
        return {"data": "8-bit", "likelihood": self.likelihood_kind}

    @property
    def noise_dim(self) -> int:
        """Standard-normal numbers one reparameterised sample of the latents uses."""
        return self.config.latent_dim

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------- the model
    def condition(self, labels: Tensor | None, what: str) -> Tensor | None:
        """What the networks are conditioned on besides x or z; nothing for an unconditional VAE."""
        return None

    def posterior(self, h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        """Backbone features -> (μ, log σ²) of q(z|x)."""
        return self.to_code(h).chunk(2, dim=1)

    def logits(self, z: Tensor, c: Tensor | None) -> Tensor:
        """f_θ(z): the parameters of p(x|z) per pixel: Bernoulli logits (N, C, H, W), or
        location and log-scale (N, 2C, H, W) of a discretised likelihood."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) per image (N,), in nats."""
        kind = self.likelihood_kind
        if kind == "bernoulli":
            if not ((x == 0) | (x == 1)).all():
                raise fail("a bernoulli likelihood is a distribution over {0, 1}, and these pixels are grey "
                           "levels: add --binarize static or --binarize dynamic (or use a discretized likelihood)")
            return bernoulli_log_prob(x, params)
        # in float32 even under bf16/fp16 autocast: bf16 cannot tell the 256 bin edges apart
        mean, log_scale = params.float().chunk(2, dim=1)
        return DISCRETIZED[kind](x.float(), mean, log_scale.clamp(min=LOG_SCALE_MIN))

    def mean_image(self, params: Tensor) -> Tensor:
        """The picture of p(x|z) in [0, 1]: the Bernoulli mean, or the location of a
        discretised likelihood clipped to [0, 1]."""
        if self.likelihood_kind == "bernoulli":
            return torch.sigmoid(params)
        return params[:, :self.info.channels].clamp(0, 1)

    def prior_latents(self, n: int, c: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """z ~ p(z), the decoder's input."""
        return torch.randn(n, self.config.latent_dim, generator=generator, device=self._device())

    def elbo_terms(self, h: Tensor, x: Tensor, c: Tensor | None, eps: Tensor) -> dict[str, Tensor]:
        """One reparameterised sample: per-image (N,) log p(x|z), closed-form KL, and
        log p(z) − log q(z|x) at the sampled z (for the importance weights)."""
        mu, logvar = self.posterior(h, c)
        log_std = 0.5 * logvar
        z = mu + log_std.exp() * eps
        zero = torch.zeros_like(z)
        return {
            "log_px": self.log_likelihood(x, self.logits(z, c)),
            "kl": gaussian_kl(mu, logvar),
            "log_ratio": gaussian_log_prob(z, zero, zero) - gaussian_log_prob(z, mu, log_std),
        }

    # ---------------------------------------------------------------- training
    def views(self, images: Tensor, generator: torch.Generator, labels: Tensor | None = None):
        """The data itself, no augmentation: dequantised 8-bit pixels, or a binarisation."""
        require_8bit(images, "vae")
        x = images.float()
        if self.config.binarize == "static":
            x = (x / 255 > 0.5).float()
        elif self.config.binarize == "dynamic":
            x = torch.bernoulli(x / 255, generator=generator)
        elif self.likelihood_kind == "bernoulli":
            x = x / 255  # refused in log_likelihood unless the data are binary
        else:
            x = (x + torch.rand(x.shape, generator=generator, device=x.device)) / 256
        eps = torch.randn(len(x), self.noise_dim, generator=generator, device=x.device)
        return x, labels, eps

    def loss(self, views) -> dict[str, Tensor]:
        x, labels, eps = views
        t = self.elbo_terms(self.encoder(x), x, self.condition(labels, "training"), eps)
        recon, kl = -t["log_px"].mean(), t["kl"].mean()
        groups = [v.mean() for k, v in t.items() if k.startswith("kl_")] or [kl]
        # free bits: a group below λ nats gets no KL gradient, so the optimiser cannot switch it off
        penalty = sum(g.clamp(min=self.config.free_bits) for g in groups) if self.config.free_bits > 0 else kl
        out = {"loss": recon + self.kl_weight * penalty, "recon": recon.detach(), "kl": kl.detach(),
               "kl_weight": self.kl_weight.clone()}
        out.update({k: v.mean().detach() for k, v in t.items() if k.startswith("kl_")})
        return out

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        ramp = self.config.kl_warmup * total_steps
        self.kl_weight.fill_(self.config.beta * (min(1.0, step / ramp) if ramp > 0 else 1.0))

    # ---------------------------------------------------------------- evaluation hooks
    # x: float images in [0, 1] (N, C, H, W), x_uint8/255; labels only matter to the conditional VAE.
    def density_data(self, x: Tensor) -> Tensor:
        """The test images the density is reported on: x itself for 8-bit data, else one fixed
        binarisation (the threshold, or one Bernoulli draw from a generator seeded 0)."""
        if self.config.binarize == "static":
            return (x > 0.5).float()
        if self.config.binarize == "dynamic":
            return torch.bernoulli(x, generator=torch.Generator(device=x.device).manual_seed(0))
        return x

    @torch.no_grad()
    def encode(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """μ of q(z|x): the code used for interpolations and latent plots."""
        return self.posterior(self.encoder(x), self.condition(labels, "encode"))[0]

    @torch.no_grad()
    def decode(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """Pixel logits whose sigmoid is ``mean_image`` of p(x|z) (the figures' contract)."""
        params = self.logits(z, self.condition(labels, "decode"))
        if self.likelihood_kind == "bernoulli":
            return params
        return torch.logit(self.mean_image(params), eps=1e-6)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """``mean_image`` of p(x|z = μ(x)), in [0, 1]."""
        c = self.condition(labels, "reconstruct")
        return self.mean_image(self.logits(self.posterior(self.encoder(x), c)[0], c))

    @torch.no_grad()
    def sample(self, n: int, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """n images from the prior: ``mean_image`` of p(x|z), z ~ p(z), in [0, 1]."""
        c = self.condition(labels, "sample")
        if c is not None and len(c) != n:
            raise ValueError(f"sample: {len(c)} labels for n={n} images")
        return self.mean_image(self.logits(self.prior_latents(n, c, generator), c))

    @torch.no_grad()
    def nelbo(self, x: Tensor, labels: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """−ELBO per image (N,) in nats, β = 1: one sample for −log p(x|z), closed-form KL."""
        t = self.elbo_terms(self.encoder(x), x, self.condition(labels, "nelbo"), self._noise(len(x), generator))
        return t["kl"] - t["log_px"]

    @torch.no_grad()
    def iwae(self, x: Tensor, k: int, labels: Tensor | None = None, generator: torch.Generator | None = None,
             max_rows: int = 4096) -> Tensor:
        """−log (1/K Σ_k p(x, z_k) / q(z_k|x)), z_k ~ q(z|x), per image (N,) in nats.

        The backbone runs once; the K samples go through heads and decoder in chunks
        of at most ``max_rows`` rows, and the mean is taken with logsumexp.
        """
        if k < 1:
            raise ValueError(f"iwae needs k >= 1, got {k}")
        n = len(x)
        h, c = self.encoder(x), self.condition(labels, "iwae")
        per_chunk = max(1, max_rows // n)
        log_w = []
        for start in range(0, k, per_chunk):
            m = min(per_chunk, k - start)  # rows are sample-major: row j*n + i is sample j of image i
            t = self.elbo_terms(_tile(h, m), _tile(x, m), _tile(c, m), self._noise(m * n, generator))
            log_w.append((t["log_px"] + t["log_ratio"]).view(m, n))
        return math.log(k) - torch.logsumexp(torch.cat(log_w), dim=0)

    @torch.no_grad()
    def anomaly_score(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """−ELBO per image: higher = less likely under the model."""
        return self.nelbo(x, labels)

    @torch.no_grad()
    def kl_per_group(self, x: Tensor, labels: Tensor | None = None) -> dict[str, float]:
        """Mean KL nats per image of each latent group (one group, "z", here)."""
        t = self.elbo_terms(self.encoder(x), x, self.condition(labels, "kl_per_group"), self._noise(len(x), None))
        groups = {k[3:]: float(v.mean()) for k, v in t.items() if k.startswith("kl_")}
        return groups or {"z": float(t["kl"].mean())}

    @torch.no_grad()
    def figure_rows(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        rows = {"input": x, "reconstruction": self.reconstruct(x, labels)}
        if labels is not None or not self.needs_labels:
            g = torch.Generator(device=self._device()).manual_seed(0)  # the same samples every time
            rows["sample"] = self.sample(len(x), labels, generator=g)
        return rows

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        return torch.randn(n, self.noise_dim, generator=generator, device=self._device())


def _tile(t: Tensor | None, m: int) -> Tensor | None:
    """m copies of a batch stacked along dim 0."""
    return None if t is None else t.repeat(m, *([1] * (t.dim() - 1)))


@METHODS.register("vae")
class VAE(VAEMethod):
    Config = VAEConfig
