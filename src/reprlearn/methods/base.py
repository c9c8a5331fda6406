"""The contract every method follows, so engine, registry and evaluation treat all alike.

A method is an ``nn.Module`` holding its networks. It declares its options as a
dataclass (``Config``), says which views it needs (``views``), and turns views into
named loss terms (``loss``). The engine owns optimisers, schedules, precision,
distribution and checkpoints; the method gets hooks after each micro-batch
(queues that must see every micro-batch's keys under gradient accumulation), before
each optimiser step (freezing a layer's gradients) and after it (EMA teachers,
schedules). Evaluation only needs ``encoder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..augment import ViewSpec, two_views
from ..data.run_data import RunData
from ..errors import fail
from ..nets.encoder import Encoder
from ..registry import Registry


@dataclass
class DataInfo:
    """What a method may know about the data: shapes and normalisation, never the files."""

    channels: int
    image_size: int
    num_classes: int
    mean: list[float]
    std: list[float]
    # image-text methods: the tokenizer's sizes {"vocab_size", "sot_id", "eot_id", "pad_id"}
    text: dict | None = None

    def check_images(self, images, source: str) -> None:
        """One line when ``source``'s images (an ImageSet) are not the shape the run was trained on."""
        want, got = (self.image_size, self.image_size, self.channels), images.images.shape[1:]
        if got != want:
            raise fail(f"{source} images are {got} but the run was trained on {want}; pass a source of that shape")


# every built-in method registers here by name (``reprlearn methods`` lists them)
METHODS: Registry = Registry("method")


class Ability:
    """Something the evaluation harness can use, declared by inheriting it (``class VAE(Method,
    Samples)``); evaluation dispatches on ``isinstance(method, Samples)``, never on attribute probing.

    ``requires`` names the members the ability needs; a method class that declares an ability
    and lacks one of them is refused when the class is created, i.e. at import.
    """

    requires: ClassVar[tuple[str, ...]] = ()


class Reconstructs(Ability):
    """``reconstruct(x, labels=None)`` -> images in [0, 1]; ``figure_rows(x, labels=None)`` -> named
    rows of the reconstruction figure; ``anomaly_score(x, labels=None)`` -> (N,), higher = more unusual."""

    requires = ("reconstruct", "figure_rows", "anomaly_score")


class Interpolates(Ability):
    """A latent to walk in: ``encode(x, labels=None)`` -> codes, ``decode(z, labels=None)`` -> images;
    ``interpolation``: "linear" or "spherical" (Gaussian latents)."""

    requires = ("encode", "decode", "interpolation")


class Samples(Ability):
    """``sample(n, labels=None, generator=None)`` -> n images from the model's prior."""

    requires = ("sample",)


class HasDensity(Ability):
    """A likelihood normalised over the values the data take: ``nelbo(x, labels=None, generator=None)``
    and ``iwae(x, k, labels=None, generator=None)`` in nats per image, ``kl_per_group(x, labels=None)``;
    ``density_data(x)`` gives the images the density is over (8-bit, or one fixed binarisation) and
    ``density_spec`` says which ({"data": "8-bit" | "binarized", "likelihood": ...}).
    ``importance_weighted = False``: evaluation skips ``iwae`` (too costly, e.g. ddpm's K chains of T
    steps) and reports bits/dim of ``nelbo``."""

    requires = ("nelbo", "iwae", "kl_per_group", "density_data", "density_spec")
    importance_weighted: ClassVar[bool] = True


class EmbedsText(Ability):
    """A joint image-text space: ``encode_image(x)``, ``image_tower()`` and ``embed_texts(texts)``,
    all unit embeddings."""

    requires = ("encode_image", "image_tower", "embed_texts")


class ModelsText(Ability):
    """A text method (``trains_on_text``): ``tokenize(texts)`` -> ids (N, L); ``corrupt(ids, generator)``
    -> (corrupted ids, chosen positions), the training corruption; ``token_logits(ids)`` -> (N, L, V)
    predictions of every position's token; ``embed_texts(texts)`` -> unit pooled embeddings.
    ``self.encoder`` maps ids (N, L) to pooled features (N, D)."""

    requires = ("tokenize", "corrupt", "token_logits", "embed_texts")


class AdaptsDomains(Ability):
    """Trained on a labelled source and a second (target) domain: ``classify(x)`` -> class logits
    of the adapted encoder and its classifier; ``references()`` -> {name: (encoder, classifier)}
    trained beside it from the same initialisation ("source_only": no alignment, "target_oracle":
    the target's labels); ``domain_distance(h_source, h_target, source_labels=None)`` -> the
    critic's distance estimate between two feature sets of the encoder."""

    requires = ("classify", "references", "domain_distance")


def abilities(method: type | object) -> list[type]:
    """The abilities a method (class or instance) declares, e.g. [Reconstructs, Samples]."""
    cls = method if isinstance(method, type) else type(method)
    return [a for a in cls.__mro__ if issubclass(a, Ability) and a is not Ability and not issubclass(a, nn.Module)]


class Method(nn.Module):
    Config: ClassVar[type]
    # run options this method trains best with by default (the user's flags still win)
    run_defaults: ClassVar[dict] = {}
    # conditional methods (cvae) get the batch's labels: views(images, generator, labels=...)
    needs_labels: ClassVar[bool] = False
    # image-text methods (clip, siglip) train on (image, caption) pairs and get the batch's
    # captions: views(images, generator, tokens=..., caption_counts=...)
    trains_on_captions: ClassVar[bool] = False
    # text methods (mlm) train on text alone: the engine hands ``views`` the batch's token ids
    # (N, L) in place of images, and ``self.encoder`` is the method's own text network
    trains_on_text: ClassVar[bool] = False
    # loss terms shown on the progress bar beside the total (all terms are logged regardless)
    progress_terms: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for ability in abilities(cls):
            missing = [name for name in ability.requires if getattr(cls, name, None) is None]
            if missing:
                raise TypeError(f"{cls.__name__} declares {ability.__name__} but does not define "
                                f"{', '.join(missing)}")

    def __init__(self, config: Any, encoder: Encoder, info: DataInfo, view_spec: ViewSpec):
        super().__init__()
        # optimiser steps per epoch, set by the engine before training (schedules given in epochs)
        self.steps_per_epoch = 1
        # optimiser steps of the whole run, set with it (schedules over the run's progress)
        self.total_steps = 1
        self.config = config
        self.encoder = encoder  # evaluated; heads live beside it and are dropped
        self.info = info
        self.view_spec = view_spec

    # ------------------------------------------------------------------ data
    @classmethod
    def prepare(cls, config: Any, data: RunData, info: DataInfo) -> dict[str, str]:
        """Before the method is built: learn what its networks need from the training data
        (image-text methods: a tokenizer), put the sizes into ``info`` (saved with the run), and
        return text artifacts by file name; they are saved in the run folder and in every
        checkpoint, and handed to :meth:`restore` after training and after loading."""
        return {}

    def restore(self, artifacts: dict[str, str]) -> None:
        """Take back what :meth:`prepare` returned (from the checkpoint when a run is loaded)."""

    def training_fields(self, data: RunData) -> dict[str, Tensor]:
        """Per-image tensors ``views`` takes by name, indexed like ``data.fit`` (labels for
        conditional methods, caption tokens for image-text methods)."""
        if not self.needs_labels:
            return {}
        if data.fit.labels is None:
            raise fail(f"{type(self).__name__.lower()} is conditioned on labels, but {data.train.name} has none; "
                       "give --data with labels (KEY.cls members, class sub-folders or an npz 'labels' array)")
        return {"labels": torch.from_numpy(data.fit.labels)}

    def stream_fields(self, batch: dict) -> dict[str, Tensor]:
        """The streaming path's counterpart of :meth:`training_fields`: the same named tensors for
        one streamed batch, from its ``labels`` (and ``captions``) as the workers read them."""
        if not self.needs_labels:
            return {}
        if "labels" not in batch:
            raise fail(f"{type(self).__name__.lower()} is conditioned on labels, but the streamed samples have none; "
                       "give shards with KEY.cls members or class sub-folders")
        return {"labels": batch["labels"]}

    def training_pools(self, data: RunData) -> dict[str, Tensor]:
        """Whole tensors ``views`` takes by name besides the batch, moved to the device once and
        not indexed by it (domain methods: the target domain's images, to draw a batch from)."""
        return {}

    def training_samples(self, data) -> Tensor:
        """Text methods: the tensor of training samples the engine indexes per batch (token ids
        (N, L)), made once from ``data`` (a TextData) after :meth:`restore`."""
        raise NotImplementedError(f"{type(self).__name__} trains on images")

    def warm_start(self) -> None:
        """Called once by the engine before a new run trains (not when loading one): start
        weights from elsewhere (``clip --text-init RUN``). A resumed run's checkpoint overrides it."""

    # ------------------------------------------------------------------ training
    def views(self, images: Tensor, generator: torch.Generator) -> Any:
        """uint8 batch (N, C, H, W) on the device -> whatever ``loss`` takes. Two views by default."""
        return two_views(images, self.view_spec, generator)

    def loss(self, views: Any) -> dict[str, Tensor]:
        """Named loss terms; the total under "loss"."""
        raise NotImplementedError

    def after_micro_batch(self) -> None:
        """Called by the engine after the backward pass of every micro-batch (``--accumulate N``
        runs N of them per optimiser step): collect what the step must see from each of them."""

    def before_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the engine once the step's gradients are complete, before the optimiser
        (and gradient clipping) uses them: e.g. zero a layer's gradients to keep it frozen."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called by the engine after every optimiser step (EMA updates, queues, schedules)."""
