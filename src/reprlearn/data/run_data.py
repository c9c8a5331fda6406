"""What a run trains and is evaluated on: ``load_run_data(cfg, captions) -> RunData``.

One entry point for every family: images (an :class:`ImageSet`) for training and for the
held-out evaluation, the image-caption pairs beside them for image-text methods, and the
images the method itself fits on (all of them, or all but ``--exclude-class``). A method
turns what it needs of this into named per-image tensors (``Method.training_fields``);
the engine hands those to ``views`` by name, so neither it nor the API branches on a
method's family.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..errors import fail
from .imageset import ImageSet, stratified_split
from .pairset import PairSet
from .sources import fit_to, load_source
from .stream import ShardStream

MEMORY_SHARE = 0.25  # auto keeps a set in memory when its decoded size is at most this share of what is free


@dataclass
class RunData:
    train: ImageSet | ShardStream  # every training image: the probes fit on these (a stream: read, not held)
    eval: ImageSet | ShardStream | None  # held-out images the probes score on (None: too few to hold any out)
    train_pairs: PairSet | None = None  # image-text sources: each training image's captions
    eval_pairs: PairSet | None = None  # image-text sources: the held-out pairs (zero-shot, retrieval)
    fit_index: np.ndarray | None = None  # the training images the method fits on (None: all)
    # domain methods (--target-data): a second domain's training images and its held-out images,
    # brought to the source's shape (``shapes`` says how, for the run's first line)
    target: ImageSet | None = None
    target_eval: ImageSet | None = None
    shapes: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)  # what Method.prepare learned from the data
    loader: str = "memory, as asked"  # which data path training takes, and why (said in its first line)
    evaluation: str = ""  # what the evaluation after training will be, and why (said before training)

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, ShardStream)

    def captions(self, limit: int = 200_000):
        """The training captions (a tokenizer is trained on them): every one held in memory, or those
        of a stream's first ``limit`` samples."""
        if self.train_pairs is not None:
            return (c for caps in self.train_pairs.captions for c in caps)
        if self.streamed and self.train.has_captions:
            from .stream import stream_captions

            return stream_captions(self.train, limit)
        return None

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
    if cfg.exclude_class is not None and data.streamed:
        raise fail("--exclude-class needs the in-memory loader (a stream cannot drop a class without reading it "
                   "all first); pass --loader memory")
    if getattr(cfg, "target_data", None):
        if captions:
            raise fail(f"--target-data is for image-only methods; {cfg.method} trains on (image, caption) pairs")
        if data.streamed:
            raise fail("--target-data needs the in-memory loader for both domains; pass --loader memory")
        _load_target(cfg, data)
    if cfg.exclude_class is not None:  # anomaly detection: learn without one class, probes still see all
        if captions:
            raise fail(f"--exclude-class is for image-only methods; {cfg.method} trains on (image, caption) pairs")
        labels = data.train.labels
        if labels is None or cfg.exclude_class not in set(labels.tolist()):
            raise fail(f"--exclude-class {cfg.exclude_class} is not a label of {data.train.name}")
        data.fit_index = np.flatnonzero(labels != cfg.exclude_class)
    if not captions:  # image-text runs have their own evaluation (zero-shot, retrieval)
        data.evaluation = evaluation_plan(cfg, data)  # said in the run's plan block (engine)
    return data


def labelled(images) -> bool:
    """Whether every image of a set (in memory or streamed) carries a class label."""
    return images.has_labels if isinstance(images, ShardStream) else images.labels is not None


def evaluation_plan(cfg, data: RunData) -> str:
    """One line saying which evaluation follows training (labelled probes, label-free figures, or
    none) and why; what would make that evaluation fail is refused here, before any training step."""
    if not cfg.eval:
        return f"evaluation: none (--no-eval): training on all {len(data.train)} images of {data.train.name}"
    if data.eval is None:
        return (f"evaluation: none ({data.train.name} has {len(data.train)} images, too few to hold any out; "
                "give --eval-data)")
    source = cfg.eval_data or default_eval_spec(cfg.data) or cfg.data  # where the evaluation images come from
    if labelled(data.eval):
        return (f"evaluation: probes (labelled: {source} has labels): kNN, linear, few-label, k-means "
                "beside raw pixels, PCA and random init; RankMe, alignment/uniformity")
    if cfg.finetune:
        raise fail(f"--finetune needs labelled evaluation data and {source} has no labels; "
                   "drop --finetune or give --eval-data with labels")
    return (f"evaluation: label-free ({source} has no labels): RankMe, alignment/uniformity, "
            "neighbour and cluster sheets, trained vs random init")


def _load_images(cfg) -> RunData:
    """(training set, evaluation set); a 10% stratified hold-out when there is no test split and the
    run is evaluated (``--no-eval`` trains on every image)."""
    train, why = open_images(cfg.data, cfg, cfg.image_size)
    eval_spec = cfg.eval_data or default_eval_spec(cfg.data)
    if eval_spec:
        test, _ = open_images(eval_spec, cfg, cfg.image_size or train.image_size)
        _same_shape(test, train)
        return RunData(train, test, loader=why)
    if isinstance(train, ShardStream):
        if cfg.eval:
            raise fail(f"{train.name} is streamed, so no images can be held out of it for evaluation; give "
                       "--eval-data (e.g. the test shards), or --no-eval")
        return RunData(train, None, loader=why)
    if len(train) < 20 or not cfg.eval:
        return RunData(train, None, loader=why)
    keep, held = stratified_split(train.labels, len(train), 0.1, seed=0)
    return RunData(train.subset(keep), train.subset(held, train.name + "[held-out 10%]"), loader=why)


def open_images(spec: str, cfg, image_size: int | None) -> tuple[ImageSet | ShardStream, str]:
    """A source in memory (decoded once, cached) or as a stream, by ``cfg.loader``, and why."""
    from .sources import streamable_paths

    stream, streamed, why = choose_stream(streamable_paths(spec), cfg, image_size, spec,
                                          "shards and image folders", "not a shard set or folder")
    if streamed:
        return stream, why
    return load_source(spec, image_size or (stream.image_size if stream else None), cfg.skip_bad), why


def choose_stream(paths, cfg, image_size: int | None, name: str, streamable: str,
                  not_streamable: str) -> tuple[ShardStream | None, bool, str]:
    """(the source opened as a stream or None, whether to stream it, why), by ``cfg.loader``.

    ``paths``: what a stream would read (None or empty: the source cannot stream; ``streamable``
    names what can, for the refusal, ``not_streamable`` says why it is held in memory). ``auto``
    streams a source unless its decoded size fits a quarter of the host's free memory (and of
    the GPU's, when training on one); the stream it opened to count it is returned either way."""
    if not paths:
        if cfg.loader == "stream":
            raise fail(f"{name} cannot be streamed (only {streamable} can); pass --loader memory or auto")
        return None, False, f"in memory: {not_streamable}"
    if cfg.loader == "memory":
        return None, False, "in memory, as asked (--loader memory)"
    from .stream import open_stream

    stream = open_stream(paths, image_size, cfg.skip_bad, name)
    if cfg.loader == "stream":
        return stream, True, "streamed, as asked (--loader stream)"
    need = stream.decoded_bytes()
    budget, where = memory_budget(cfg)
    if need <= budget:
        return stream, False, f"in memory: {_size(need)} decoded fits {where}"
    return stream, True, f"streamed: {_size(need)} decoded exceeds {where}"


def memory_budget(cfg) -> tuple[float, str]:
    """The bytes ``auto`` may hold in memory, and the words that say whose memory."""
    from ..config import run_device

    host = _available_host_memory()
    budget, where = MEMORY_SHARE * host, f"{MEMORY_SHARE:.0%} of {_size(host)} free host memory"
    if run_device(cfg) == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info()
        if MEMORY_SHARE * free < budget:
            budget, where = MEMORY_SHARE * free, f"{MEMORY_SHARE:.0%} of {_size(free)} free GPU memory"
    return budget, where


def _available_host_memory() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    import os

    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _load_pairs(cfg) -> RunData:
    """Training pairs and held-out pairs: ``--eval-data``, else the source's own test split
    (scenes draws a disjoint set; digits and cifar10 have one), else a 10% hold-out."""
    from .pairs import caption_shards, load_pairs

    stream, streamed, why = choose_stream(caption_shards(cfg.data), cfg, cfg.image_size, cfg.data,
                                          "shards with KEY.txt/KEY.json captions", "not a caption shard set")
    if streamed:  # the evaluation pairs (zero-shot, retrieval) are held in memory
        if cfg.eval_data is None and cfg.eval:
            raise fail(f"{stream.name} is streamed, so no pairs can be held out of it for evaluation; give "
                       "--eval-data (e.g. the test shards), or --no-eval")
        if cfg.eval_data is None:
            return RunData(stream, None, loader=why)
        test = _with_probe_labels(load_pairs(cfg.eval_data, "test", stream.image_size, cfg.skip_bad))
        _same_shape(test.images, stream)
        return RunData(stream, test.images, None, test, loader=why)
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
    return RunData(train.images, test.images if test is not None else None, train, test, loader=why)


def _same_shape(test, train) -> None:
    got, want = (test.image_size, test.channels), (train.image_size, train.channels)
    if got != want:
        raise fail(f"evaluation images are {got[0]} px with {got[1]} channels but training images are {want[0]} px "
                   f"with {want[1]}; pass --image-size N")


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
        None if s is None else fit_to(s, size, channels, s.name) for s in (data.train, data.eval, target, target_eval))
    data.target, data.target_eval = target, target_eval
    data.shapes = f"{before}: both as {size}x{size}x{channels}{grey}"


def _with_probe_labels(pairs: PairSet) -> PairSet:
    """scenes: label each image by the shape of its first object, so the image tower gets the
    same kNN / linear probes as every other method's encoder."""
    if pairs.images.labels is None and pairs.attributes and "shape" in pairs.attributes:
        pairs.images.labels = pairs.attributes["shape"].astype(np.int64)
        pairs.images.class_names = list(pairs.attribute_names["shape"])
    return pairs
