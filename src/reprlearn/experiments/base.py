"""What an experiment is, and the steps most protocols share (train with the public API, probe).

An :class:`Experiment` states a claim, the protocol that tests it and one number per seed, the
*effect*, signed so that a positive effect supports the claim. ``arms(data, seed, work)`` runs
one seed of the protocol and returns each arm's metrics; ``effect(arms)`` reduces them to the
effect. The runner (runner.py) repeats this over seeds and applies the one verdict rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import fail
from ..registry import Registry


class Experiment:
    """One claim and its fixed protocol; subclasses fill the class attributes and two methods."""

    name: ClassVar[str] = ""
    claim: ClassVar[str] = ""  # the claim under test, one sentence
    protocol: ClassVar[str] = ""  # what is trained and measured, one sentence
    effect_text: ClassVar[str] = ""  # how the effect is computed from the arms, in words
    metric: ClassVar[str] = "linear_top1"  # the metric the chart shows per arm
    data: ClassVar[str] = "digits"  # the default --data
    data_choices: ClassVar[tuple[str, ...]] = ("digits", "cifar10")  # what --data may be
    margin: ClassVar[float] = 0.0  # the effect the claim needs (see runner.verdict)
    cost: ClassVar[str] = "not measured"  # the default protocol's time on 2 CPU cores (3 seeds)

    def arms(self, data: str, seed: int, work: Path) -> dict[str, dict[str, float]]:
        """Run one seed of the protocol in ``work``: {arm: {metric: value}}."""
        raise NotImplementedError

    def effect(self, arms: dict[str, dict[str, float]]) -> float:
        """The seed's effect, positive when it supports the claim."""
        raise NotImplementedError

    def check_data(self, data: str) -> None:
        if data not in self.data_choices:
            raise fail(f"experiment {self.name} runs on --data {' or '.join(self.data_choices)}, not {data!r}")


EXPERIMENTS: Registry[type[Experiment]] = Registry("experiment")


def register(cls: type[Experiment]) -> type[Experiment]:
    """Register an Experiment subclass under its ``name``."""
    return EXPERIMENTS.register(cls.name)(cls)


# ---------------------------------------------------------------- shared steps

# a short digits schedule: ~15 s a SimCLR run on 2 busy cores (10 epochs of 11 steps at batch 128)
SHORT = {"epochs": 10, "batch_size": 128, "warmup_epochs": 1}
_QUIET = {"eval": False, "progress": False, "checkpoint_every": 100000}
PROBE_MAX = 10000  # at most this many images of each split are embedded for the probes


FINISHED = "experiment-finished"  # written beside a run the protocol trained to its end


def train(method: str, work: Path, seed: int, **options) -> Path:
    """``reprlearn.train`` into ``work`` (quiet, no evaluation); a finished run there is reused, and
    one stopped part-way is resumed.

    A run on an .npz the protocol wrote should pass ``eval_data`` (the source's test split): without
    one the engine holds 10% of the training images out for evaluation."""
    from ..api import train as api_train
    from ..runs import CHECKPOINT

    finished = work / FINISHED
    if finished.is_file():
        return work
    # a checkpoint without the marker is a run stopped part-way (checkpoints are also written every
    # --checkpoint-every epochs): continue it exactly rather than take it for a finished one
    resume = (work / "checkpoints" / CHECKPOINT).is_file()
    run = api_train(method, out=work, seed=seed, resume=resume, **{**_QUIET, **options})
    finished.write_text("finished\n")
    return run


def labelled_splits(data: str, seed: int = 0):
    """(train, test) ImageSets of a labelled source (digits, cifar10, ...), at most PROBE_MAX each."""
    from ..data import load_source

    sets = []
    for split in ("train", "test"):
        images = load_source(f"{data}:{split}")
        if images.labels is None:
            raise fail(f"{data}:{split} has no labels; the experiments probe with labels (use digits or cifar10)")
        if len(images) > PROBE_MAX:
            images = images.subset(np.sort(np.random.default_rng(seed).permutation(len(images))[:PROBE_MAX]))
        sets.append(images)
    return tuple(sets)


def probe(run_or_encoder, data: str, seed: int, sets=None) -> dict[str, float]:
    """Linear-probe and kNN top-1 of an encoder's features on ``data``'s train/test splits."""
    from ..api import embed, load
    from ..evaluate import knn_top1, linear_top1

    encoder = run_or_encoder if not isinstance(run_or_encoder, (str, Path)) else load(run_or_encoder)
    train_set, test_set = sets or labelled_splits(data, seed)
    tr, te = embed(encoder, train_set), embed(encoder, test_set)
    return {"linear_top1": linear_top1(tr, train_set.labels, te, test_set.labels, seed=seed),
            "knn_top1": knn_top1(tr, train_set.labels, te, test_set.labels)}


def random_init(method: str, data: str, seed: int, **options):
    """The encoder ``method`` would start training from on ``data`` with this seed (the random-init baseline)."""
    from ..api import build_method, resolve_config
    from ..data import load_source
    from ..runs import data_info, untrained_encoder

    cfg, mcfg = resolve_config(method, {"data": data, "seed": seed, **options})
    info = data_info(load_source(data))
    return untrained_encoder(build_method(cfg, mcfg, info), cfg, info)


def best_other(arms: dict[str, dict[str, float]], arm: str, others: list[str], metric: str) -> float:
    """arms[arm][metric] minus the best of the ``others`` arms: the margin by which ``arm`` wins."""
    return arms[arm][metric] - max(arms[o][metric] for o in others)
