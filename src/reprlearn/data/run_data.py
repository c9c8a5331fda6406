"""What a run trains and is evaluated on: ``load_run_data(cfg, captions) -> RunData``.

One entry point for every family: images (an :class:`ImageSet`) for training and for the
held-out evaluation, the image-caption pairs beside them for image-text methods, and the
images the method itself fits on (all of them, or all but ``--exclude-class``). A method
turns what it needs of this into named per-image tensors (``Method.training_fields``);
the engine hands those to ``views`` by name, so neither it nor the API branches on a
method's family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import fail
from .imageset import ImageSet, stratified_split
from .pairset import PairSet
from .sources import load_source


@dataclass
class RunData:
    train: ImageSet  # every training image: the probes fit on these
    eval: ImageSet | None  # held-out images the probes score on (None: too few to hold any out)
    train_pairs: PairSet | None = None  # image-text sources: each training image's captions
    eval_pairs: PairSet | None = None  # image-text sources: the held-out pairs (zero-shot, retrieval)
    fit_index: np.ndarray | None = None  # the training images the method fits on (None: all)
    # domain methods (--target-data): a second domain's training images and its held-out images,
    # brought to the source's shape (``shapes`` says how, for the run's first line)
    target: ImageSet | None = None
    target_eval: ImageSet | None = None
    shapes: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)  # what Method.prepare learned from the data

    @property
    def fit(self) -> ImageSet:
        """The images the method trains on."""
        return self.train if self.fit_index is None else self.train.subset(self.fit_index)


def default_eval_spec(data: str) -> str | None:
    """The test split of a named set (digits, cifar10) when the run names no --eval-data."""
    name, _, split = data.partition(":")
    if name in ("digits", "cifar10") and split in ("", "train"):
        return f"{name}:test"
    return None


# --target-data auto: the shifted domain the project builds for a named source (data/domains.py)
AUTO_TARGETS = {"digits": "digits-m", "cifar10": "cifar10-shifted"}


def target_spec(data: str, target: str) -> str:
    """``target``, or for ``auto`` the shifted domain of a named source; one line when there is none."""
    if target != "auto":
        return target
    name, _, split = data.partition(":")
    if name in AUTO_TARGETS and split in ("", "train"):
        return AUTO_TARGETS[name]
    raise fail(f"--target-data auto knows a target only for {', '.join(AUTO_TARGETS)} "
               f"({', '.join(f'{k} -> {v}' for k, v in AUTO_TARGETS.items())}); give --target-data SOURCE for {data}")


def load_run_data(cfg, captions: bool) -> RunData:
    """The run's data from its config (``data``, ``eval_data``, ``image_size``, ``skip_bad``,
    ``exclude_class``, ``target_data``, ``target_eval_data``); ``captions``: load images with
    their captions (image-text methods)."""
    data = _load_pairs(cfg) if captions else _load_images(cfg)
    if getattr(cfg, "target_data", None):
        if captions:
            raise fail(f"--target-data is for image-only methods; {cfg.method} trains on (image, caption) pairs")
        _load_target(cfg, data)
    if cfg.exclude_class is not None:  # anomaly detection: learn without one class, probes still see all
        if captions:
            raise fail(f"--exclude-class is for image-only methods; {cfg.method} trains on (image, caption) pairs")
        labels = data.train.labels
        if labels is None or cfg.exclude_class not in set(labels.tolist()):
            raise fail(f"--exclude-class {cfg.exclude_class} is not a label of {data.train.name}")
        data.fit_index = np.flatnonzero(labels != cfg.exclude_class)
    return data


def _load_images(cfg) -> RunData:
    """(training set, evaluation set); a 10% stratified hold-out when there is no test split."""
    train = load_source(cfg.data, cfg.image_size, cfg.skip_bad)
    eval_spec = cfg.eval_data or default_eval_spec(cfg.data)
    if eval_spec:
        test = load_source(eval_spec, cfg.image_size or train.image_size, cfg.skip_bad)
        _same_shape(test, train)
        return RunData(train, test)
    if len(train) < 20:
        return RunData(train, None)
    keep, held = stratified_split(train.labels, len(train), 0.1, seed=0)
    return RunData(train.subset(keep), train.subset(held, train.name + "[held-out 10%]"))


def _load_pairs(cfg) -> RunData:
    """Training pairs and held-out pairs: ``--eval-data``, else the source's own test split
    (scenes draws a disjoint set; digits and cifar10 have one), else a 10% hold-out."""
    from .pairs import load_pairs

    train = _with_probe_labels(load_pairs(cfg.data, "train", cfg.image_size, cfg.skip_bad))
    eval_spec = cfg.eval_data
    if eval_spec is None and cfg.data.partition(":")[0] in ("scenes", "digits", "cifar10"):
        eval_spec = cfg.data
    if eval_spec is not None:
        test = _with_probe_labels(load_pairs(eval_spec, "test", cfg.image_size or train.images.image_size,
                                             cfg.skip_bad))
        _same_shape(test.images, train.images)
    elif len(train) < 20:
        test = None
    else:
        keep, held = stratified_split(None, len(train), 0.1, seed=0)
        train, test = train.subset(keep), train.subset(held)
    return RunData(train.images, test.images if test is not None else None, train, test)


def _load_target(cfg, data: RunData) -> None:
    """The second domain: its training images and held-out images (--target-eval-data, else its
    test split, else a 10% hold-out), and every set brought to one size and channel count: the
    source's size (or --image-size), RGB when either domain is RGB (grey replicated)."""
    spec = target_spec(cfg.data, cfg.target_data)
    size = cfg.image_size or data.train.image_size
    target = load_source(spec, size, cfg.skip_bad)
    eval_spec = cfg.target_eval_data or default_eval_spec(spec)
    if eval_spec is None and spec.partition(":")[0] in ("digits-m", "cifar10-shifted"):
        eval_spec = spec.partition(":")[0] + ":test"
    if eval_spec:
        target_eval = load_source(eval_spec, size, cfg.skip_bad)
    elif len(target) >= 20:
        keep, held = stratified_split(target.labels, len(target), 0.1, seed=0)
        target, target_eval = target.subset(keep), target.subset(held, target.name + "[held-out 10%]")
    else:
        raise fail(f"target {spec} has {len(target)} images, too few to hold any out; give --target-eval-data")
    channels = max(data.train.channels, target.channels)
    before = (f"source {data.train.name} {data.train.image_size}x{data.train.image_size}x{data.train.channels}, "
              f"target {target.name} {target.image_size}x{target.image_size}x{target.channels}")
    grey = " (grey replicated to RGB)" if channels == 3 and min(data.train.channels, target.channels) == 1 else ""
    data.train, data.eval, target, target_eval = (
        None if s is None else _to_shape(s, size, channels) for s in (data.train, data.eval, target, target_eval))
    data.target, data.target_eval = target, target_eval
    data.shapes = f"{before}: both as {size}x{size}x{channels}{grey}"


def _to_shape(images: ImageSet, size: int, channels: int) -> ImageSet:
    """``images`` at ``size`` px with ``channels`` channels (grey -> RGB by replication)."""
    from .sources import resize_set

    images = resize_set(images, size)
    if images.channels == channels:
        return images
    return ImageSet(np.repeat(images.images, 3, axis=-1), images.labels, images.class_names, images.name,
                    list(images.skipped))


def _same_shape(test: ImageSet, train: ImageSet) -> None:
    if test.images.shape[1:] != train.images.shape[1:]:
        raise fail(f"evaluation images are {test.images.shape[1:]} but training images are "
                   f"{train.images.shape[1:]}; pass --image-size N")


def _with_probe_labels(pairs: PairSet) -> PairSet:
    """scenes: label each image by the shape of its first object, so the image tower gets the
    same kNN / linear probes as every other method's encoder."""
    if pairs.images.labels is None and pairs.attributes and "shape" in pairs.attributes:
        pairs.images.labels = pairs.attributes["shape"].astype(np.int64)
        pairs.images.class_names = list(pairs.attribute_names["shape"])
    return pairs
