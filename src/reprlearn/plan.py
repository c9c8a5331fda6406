"""The run's plan: what ``auto`` chose, what a step costs here, and how long the run will take.

Before the first training step the engine times a short warm-up (:func:`time_steps`: real
steps, forward, backward and optimiser, on a deep copy of the method, with every random
number generator put back afterwards), so the run's length and cost are known up front.
On a CPU, :func:`fit_to_budget` uses the same timing to keep the options left to ``auto``
(storage size, backbone, batch, epochs) within :data:`CPU_TIME_BUDGET` (or ``--time-budget``),
and says what it reduced and how to undo it. Explicit values are never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .config import RunConfig, parse_duration, step_budget

# auto keeps a CPU run to about an hour: long enough to learn from a few thousand photos at a small
# size, short enough that a first run answers the same day; --time-budget sets another target
CPU_TIME_BUDGET = 3600.0
# storage sides auto tries below the images' own, largest first, until the run fits its budget
SIZE_LADDER = (160, 128, 96, 64, 48, 32)
# the warm-up's steps: the first is left untimed (allocation, first-call overheads), the rest averaged
WARMUP_STEPS = 3
# on a CPU a step of a large batch can take minutes; the warm-up then times this many images a step
# and scales linearly (a CPU's time per image hardly depends on the batch)
PROBE_BATCH = 16
# a full-batch step expected to take under this long is timed at the full batch (exact, no scaling)
FULL_BATCH_SECONDS = 2.0
# the schedule plans this share of a time budget in steps: the epoch-end monitors, logging and
# checkpoints take the rest, so the schedule ends near the budget rather than after it
BUDGET_STEP_SHARE = 0.95
# the options auto may size to the machine (a flag, a config file or a saved run fixes them)
SIZED_OPTIONS = ("image_size", "backbone", "batch_size", "epochs")


@dataclass
class StepTiming:
    """Seconds per optimiser step, and how they were measured (said in the plan)."""

    seconds: float
    how: str


@dataclass
class Plan:
    """Lines of the plan block, and the choices ``auto`` reduced to fit the budget."""

    lines: list[tuple[str, str]] = field(default_factory=list)
    reduced: list[str] = field(default_factory=list)  # "image size 224 -> 64 ...; pass --image-size 224 ..."
    backbone_why: str = "as asked"
    augment_why: str = "as asked"
    length_why: str = ""  # set when a time budget chose the run's length

    def add(self, name: str, text: str) -> None:
        self.lines.append((name, text))

    def text(self, title: str) -> str:
        width = max((len(n) for n, _ in self.lines), default=0)
        body = [f"  {n:<{width}}  {t}" for n, t in self.lines]
        body += [f"  auto: {r}" for r in self.reduced]
        return "\n".join([title, *body])


def auto_options(overrides: dict[str, Any], config_layers: list[dict]) -> set[str]:
    """The options of :data:`SIZED_OPTIONS` left to ``auto``: not given by a flag, a config file or a
    saved run (the method's recipe values count as auto), or given as ``auto``/none."""
    given: dict[str, Any] = {}
    for layer in [*config_layers, overrides]:
        given.update({k.replace("-", "_"): v for k, v in (layer or {}).items()})
    return {name for name in SIZED_OPTIONS
            if name not in given or given[name] is None or str(given[name]).strip().lower() in ("auto", "none")}


def time_budget_seconds(cfg: RunConfig) -> float | None:
    return None if cfg.time_budget is None else parse_duration(cfg.time_budget)


def duration(seconds: float) -> str:
    """A rounded duration in words: 40 s, 12 min, 2.5 h."""
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- the timed warm-up


def time_steps(method, cfg: RunConfig, samples: torch.Tensor, fields: dict, pools: dict, device: torch.device,
               batch: int, steps_per_epoch: int, total_steps: int, unit: str = "images") -> StepTiming:
    """Seconds per optimiser step of ``method`` at a per-device ``batch``, from :data:`WARMUP_STEPS`
    real steps on a deep copy (the run's own weights, optimiser and random streams are left as
    they were). Steps of a large batch on a CPU are timed at :data:`PROBE_BATCH` images and scaled."""
    from .optim import build_optimizer

    saved = _random_state(device)
    try:
        model = copy.deepcopy(method).to(device).train()
        model.steps_per_epoch, model.total_steps = steps_per_epoch, total_steps
        optimizer = build_optimizer(cfg.optimizer, model, cfg.lr, cfg.weight_decay, cfg.momentum)
        picker = torch.Generator().manual_seed(cfg.seed + 1)  # the warm-up's own data order
        views_generator = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        samples = samples.to(device)
        fields = {k: v.to(device) for k, v in fields.items()}
        pools = {k: v.to(device) for k, v in pools.items()}

        def step_seconds(size: int) -> float:
            size = min(size, len(samples))
            times = []
            for _ in range(WARMUP_STEPS):
                start = time.perf_counter()
                _one_step(model, optimizer, cfg, samples, fields, pools, size, picker, views_generator)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - start)
            return float(np.mean(times[1:])) * cfg.accumulate, size

        probe = min(batch, PROBE_BATCH) if device.type == "cpu" else batch
        seconds, timed = step_seconds(probe)
        scaled = seconds * batch / timed
        if timed < batch and scaled < FULL_BATCH_SECONDS and batch <= len(samples):
            seconds, timed = step_seconds(batch)
            scaled = seconds
        how = (f"{WARMUP_STEPS - 1} timed warm-up steps of {timed} {unit}" +
               ("" if timed == batch else f", scaled to {batch}"))
        return StepTiming(scaled, how)
    finally:
        _restore_random_state(saved, device)


def _one_step(model, optimizer, cfg, samples, fields, pools, size, picker, views_generator) -> None:
    for _ in range(cfg.accumulate):
        index = torch.randint(len(samples), (size,), generator=picker).to(samples.device)
        autocast = torch.autocast(samples.device.type, dtype=torch.bfloat16 if cfg.precision == "bf16-mixed"
                                  else torch.float16, enabled=cfg.precision != "32")
        with autocast:
            views = model.views(samples[index], views_generator, **{k: v[index] for k, v in fields.items()}, **pools)
            loss = model.loss(views)["loss"]
        loss.backward()
        model.after_micro_batch()
    model.before_optimizer_step(0, model.total_steps)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.after_optimizer_step(1, model.total_steps)


def _random_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- steps and budgets


def steps_per_epoch(cfg: RunConfig, images: int) -> int:
    world = cfg.devices * cfg.num_nodes
    return max(1, images // (max(1, cfg.batch_size // world) * world) // cfg.accumulate)


def schedule_steps(cfg: RunConfig, images: int) -> int:
    """Optimiser steps of the run's length as configured (a step budget, else epochs)."""
    return step_budget(cfg) or steps_per_epoch(cfg, images) * cfg.epochs


def length_is_auto(cfg: RunConfig, auto: set[str]) -> bool:
    """The run's length is reprlearn's to choose: no --epochs, --max-steps or --samples-seen."""
    return "epochs" in auto and step_budget(cfg) is None


def budget_steps(budget: float, spent: float, done: int, timing: StepTiming) -> int:
    """Optimiser steps a time budget allows: those already done plus what the time left buys."""
    from .errors import fail

    more = math.floor(max(0.0, budget - spent) * BUDGET_STEP_SHARE / timing.seconds)
    if done + more < 1:
        raise fail(f"a time budget of {duration(budget)} allows no training step (one takes about "
                   f"{timing.seconds:.1f} s here); give a longer --time-budget")
    return done + more


# ---------------------------------------------------------------- auto on a CPU


def fit_to_budget(cfg: RunConfig, auto: set[str], images: int, native: int, budget: float, measure,
                  reduce_epochs: bool) -> tuple[RunConfig, StepTiming, list[str]]:
    """The largest storage size (the images' own, then down :data:`SIZE_LADDER`) whose run fits
    ``budget`` seconds, then fewer epochs (``reduce_epochs``) if even the smallest does not. Only
    options in ``auto`` change. ``measure(cfg) -> (StepTiming, backbone name)`` times a candidate.
    Returns (config, its timing, what was reduced, each with the flag that keeps it)."""
    sizes = [native] + ([s for s in SIZE_LADDER if s < native] if "image_size" in auto else [])
    first = None
    for size in sizes:
        chosen = dataclasses.replace(cfg, image_size=size)
        timing, backbone = measure(chosen)
        chosen.backbone = backbone
        seconds = timing.seconds * schedule_steps(chosen, images)
        first = first or (chosen, seconds)
        if seconds <= budget:
            break
    reduced = []
    if chosen.image_size != native:
        reduced.append(f"image size {native} -> {chosen.image_size} to fit {duration(budget)} on this CPU (at {native} "
                       f"px about {duration(first[1])}); pass --image-size {native} to keep it")
    if "backbone" in auto and chosen.backbone != first[0].backbone:
        reduced.append(f"backbone {first[0].backbone} -> {chosen.backbone} at {chosen.image_size} px on this CPU; "
                       f"pass --backbone {first[0].backbone} to keep it")
    if seconds > budget and reduce_epochs:
        epochs = max(1, math.floor(budget / (timing.seconds * steps_per_epoch(chosen, images))))
        if epochs < chosen.epochs:
            reduced.append(f"epochs {chosen.epochs} -> {epochs} to fit {duration(budget)} on this CPU; "
                           f"pass --epochs {chosen.epochs} to keep them")
            chosen.epochs = epochs
    return chosen, timing, reduced


def fit_batch_to_data(cfg: RunConfig, auto: set[str], images: int) -> str | None:
    """An auto batch larger than the training set becomes the largest power of two that fits it."""
    if "batch_size" not in auto or cfg.batch_size <= images or images < 2:
        return None
    before, cfg.batch_size = cfg.batch_size, 2 ** int(math.log2(images))
    return f"batch {before} -> {cfg.batch_size}: {images} training images; pass --batch-size to choose"
