"""The Lightning glue: one LightningModule trains any registered method.

Data path: the whole training set lives on the device as uint8 (N, C, H, W); a
batch is a tensor of indices from a ``DistributedSampler`` (one rank or many), so
there are no workers and no host->device image copies per step. Views are made on
the device from a generator seeded by (seed, step, rank): runs are reproducible and
a resumed run draws the same views it would have drawn.

The engine owns optimiser, warm-up + cosine schedule, precision, distribution,
checkpoints (written atomically, config included) and monitoring; methods only
compute named loss terms.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .config import RunConfig, step_budget
from .data.stream import default_workers, held, stream_steps
from .errors import ReprlearnError, fail
from .files import atomic_write
from .methods import Method
from .optim import build_optimizer, warmup_cosine
from .plan import (CPU_TIME_BUDGET, Plan, StepTiming, budget_steps, duration, fit_batch_to_data, fit_to_budget,
                   length_is_auto, steps_per_epoch, time_budget_seconds, time_steps)
from .runs import CHECKPOINT



class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A crash mid-write leaves the previous checkpoint intact; readers never see a
    half-written file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_write(path, "wb", durable=True) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)



class ResumableLoader(DataLoader):
    """Index batches whose position within the epoch survives a mid-epoch checkpoint.

    Lightning saves ``state_dict()`` with every checkpoint and hands it back on resume
    (its ``_Stateful`` loader protocol); the next epoch then skips the batches already
    trained on, so an interrupted run sees exactly the data an uninterrupted one sees.
    The sampler's permutation depends only on (seed, epoch), so skipping is exact.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.trained_in_epoch = 0  # set by the module after each training batch
        self._skip = 0

    def state_dict(self) -> dict:
        done = self.trained_in_epoch
        return {"trained_in_epoch": 0 if done >= len(self) else done}  # a finished epoch skips nothing

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("trained_in_epoch", 0))

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self.trained_in_epoch = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                yield batch


class TrainModule(L.LightningModule):
    """Trains one method. ``images``: the in-memory path (uint8 (N, C, H, W), indexed per batch; a
    text method's token ids (N, L) in their place);
    ``stream``: the streaming path (batches of uint8 made by DataLoader workers, see data/stream.py)."""

    def __init__(self, method: Method, cfg: RunConfig, images: torch.Tensor | None, meta: dict,
                 fields: dict[str, torch.Tensor] | None = None, pools: dict[str, torch.Tensor] | None = None,
                 stream=None):
        super().__init__()
        self.method = method
        self.cfg = cfg
        self.meta = meta  # saved in every checkpoint: config, data info
        self._images_cpu = images  # uint8 (N, C, H, W); moved to the device in setup
        self.stream = stream
        self.workers = 0 if stream is None else (default_workers() if cfg.workers is None else cfg.workers)
        self.skipped: list[str] = []  # unreadable samples the streaming workers skipped (--skip-bad)
        # per-image tensors a method asks for besides the images (labels for cvae; caption
        # tokens for clip/siglip), indexed like the images and passed to views() by name
        self._fields_cpu = dict(fields or {})
        # whole tensors views() draws from by itself (a second domain's images), not indexed by the batch
        self._pools_cpu = dict(pools or {})
        clash = set(self._fields_cpu) & set(self._pools_cpu)
        if clash:
            raise ValueError(f"{type(method).__name__} names {sorted(clash)} as both a field and a pool")
        self.images: torch.Tensor | None = None
        self.planned_steps: int | None = None  # the steps a --time-budget allows (the schedules span them)
        self.fields: dict[str, torch.Tensor] = {}
        self.pools: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ data
    def setup(self, stage: str) -> None:
        self.on_fit_start()

    def on_fit_start(self) -> None:
        if self.stream is not None:
            return
        device = self.device if self.device.type != "meta" else torch.device("cpu")
        if self.images is None or self.images.device != device:
            self.images = self._images_cpu.to(device)
            self.fields = {name: value.to(device) for name, value in self._fields_cpu.items()}
            self.pools = {name: value.to(device) for name, value in self._pools_cpu.items()}

    def per_device_batch(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        return max(1, self.cfg.batch_size // world)

    def _training_images(self) -> int:
        return len(self.stream) if self.stream is not None else len(self._images_cpu)

    def train_dataloader(self) -> DataLoader:
        n = self._training_images()
        world, rank = self.trainer.world_size, self.trainer.global_rank
        batch = self.per_device_batch()
        if self.stream is not None:
            return self._stream_loader(n, world, rank, batch)
        if n < batch * world:
            raise fail(f"batch size {self.cfg.batch_size} is larger than the {n} training images; "
                       f"use --batch-size {max(2, n // 2)} or less")
        sampler = DistributedSampler(TensorDataset(torch.arange(n)), num_replicas=world, rank=rank,
                                     shuffle=True, seed=self.cfg.seed, drop_last=True)
        self.loader = ResumableLoader(TensorDataset(torch.arange(n)), batch_size=batch, sampler=sampler,
                                      drop_last=True)
        return self.loader

    def _stream_loader(self, n: int, world: int, rank: int, batch: int) -> DataLoader:
        from .data.stream import StreamDataset, StreamLoader

        if stream_steps(n, batch, world, self.workers) == 0:
            raise fail(f"{n} streamed images are too few for batches of {batch} on each of {world} rank(s) x "
                       f"{max(1, self.workers)} worker(s); use a smaller --batch-size or fewer --workers")
        # Lightning warns that a sized IterableDataset may repeat samples across workers; this one
        # splits its samples by rank and worker itself (data/stream.py)
        warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__` defined.*")
        dataset = StreamDataset(self.stream, batch, self.cfg.seed, world=world, rank=rank, workers=self.workers,
                                buffer=self.cfg.shuffle_buffer)
        self.loader = StreamLoader(dataset, self.workers, pin_memory=self.device.type == "cuda",
                                   epoch_of=lambda: self.current_epoch)
        return self.loader

    def _batch(self, batch) -> tuple[torch.Tensor, dict]:
        """(uint8 images, named fields) of a training batch, from either data path."""
        if self.stream is None:
            (index,) = batch
            return self.images[index], {name: value[index] for name, value in self.fields.items()}
        from .data.stream import take_batch

        batch = take_batch(batch)
        self.skipped += batch["skipped"]
        return batch["images"], self.method.stream_fields(batch)

    # ------------------------------------------------------------------ steps
    def _generator(self) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed((self.cfg.seed * 1_000_003 + self.global_step * 7919 + self.global_rank) % (2**63))
        return g

    def training_step(self, batch, batch_idx):
        # counted here, not in on_train_batch_end: callbacks (which write checkpoints) run before that hook
        self.loader.trained_in_epoch += 1
        images, fields = self._batch(batch)
        views = self.method.views(images, self._generator(), **fields, **self.pools)
        terms = self.method.loss(views)
        total = terms["loss"]
        for name, value in terms.items():
            if not torch.isfinite(value).all():
                raise FloatingPointError(
                    f"loss term '{name}' is {value.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                    f"the last good checkpoint is kept; lower --lr or set --grad-clip")
        n = len(images)
        self.log_dict({f"train/{k}": v.detach().float() for k, v in terms.items()},
                      on_step=True, on_epoch=True, prog_bar=False, sync_dist=True, batch_size=n)
        self.log("loss", total.detach().float(), prog_bar=True, logger=False, batch_size=n)
        for name in self.method.progress_terms:  # the method's own terms beside the loss on the bar
            self.log(name, terms[name].detach().float(), prog_bar=True, logger=False, batch_size=n)
        return total

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.method.after_optimizer_step(self.global_step, self.total_steps())

    def on_after_backward(self) -> None:
        self.method.after_micro_batch()

    def on_before_optimizer_step(self, optimizer) -> None:
        self.method.before_optimizer_step(self.global_step, self.total_steps())
        norms = [p.grad.detach().norm() for p in self.method.parameters() if p.grad is not None]
        if norms:
            self.log("train/grad_norm", torch.stack(norms).norm(), on_step=True, on_epoch=False)

    # ------------------------------------------------------------------ optimisation
    def steps_per_epoch(self) -> int:
        world = self.trainer.world_size if self._trainer is not None else 1
        if self.stream is not None:
            batches = stream_steps(len(self.stream), self.per_device_batch(), world, self.workers)
            return max(1, batches // self.cfg.accumulate)
        return max(1, len(self._images_cpu) // (self.per_device_batch() * world) // self.cfg.accumulate)

    def total_steps(self) -> int:
        """Optimiser steps the run will take: those its time budget allows, its step budget, else epochs x
        steps per epoch."""
        return self.planned_steps or step_budget(self.cfg) or self.steps_per_epoch() * self.cfg.epochs

    def configure_optimizers(self):
        c = self.cfg
        self.method.steps_per_epoch = self.steps_per_epoch()
        self.method.total_steps = self.total_steps()
        opt = build_optimizer(c.optimizer, self.method, c.lr, c.weight_decay, c.momentum)
        warmup = min(c.warmup_epochs * self.steps_per_epoch(), self.total_steps() // 2)
        total = self.total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["reprlearn"] = self.meta


class Interrupted(ReprlearnError):
    """The run stopped on SIGINT/SIGTERM after writing a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Checkpointing(L.Callback):
    """Writes ``last.ckpt`` (atomically, via the IO plugin): every N epochs, every M steps
    if asked, at the end of training, and when SIGINT or SIGTERM asks the run to stop.

    A signal only sets a flag; the checkpoint is written after the current batch, when
    model, optimiser and data position agree. A second Ctrl-C stops at once.
    """

    def __init__(self, directory: Path, every_epochs: int, every_steps: int | None = None):
        self.path = Path(directory) / CHECKPOINT
        self.every_epochs = every_epochs
        self.every_steps = every_steps
        self.requested: int | None = None
        self._previous: dict = {}
        self._saved_at: int | None = None  # global step of the last checkpoint written

    def install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals can only be handled in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler when fit starts; at an epoch boundary it
        # exits with SystemExit(0) and no checkpoint. Take the signals back so every stop
        # goes through the checkpoint-then-exit path above.
        if self._previous:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, self._on_signal)

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum, frame) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_steps and trainer.global_step % self.every_steps == 0:
            self._save(trainer)
        if self.requested is not None:
            self._save(trainer)
            name = signal.Signals(self.requested).name
            raise Interrupted(f"stopped by {name} at epoch {trainer.current_epoch + 1}, step {trainer.global_step}; "
                              f"checkpoint written", self.requested)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        done = trainer.current_epoch + 1
        if done % self.every_epochs == 0 or done == trainer.max_epochs:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if self._saved_at != trainer.global_step:  # a step budget can end the run mid-epoch
            self._save(trainer)

    def _save(self, trainer) -> None:
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = trainer.global_step


class RunLock:
    """An exclusive lock on a run directory, so two runs never interleave their files.

    Held by the launching process only (rank 0 of a distributed job); released by the
    OS when the process dies, so a killed run never leaves a stale lock behind.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._file = None

    def __enter__(self) -> "RunLock":
        if not _launcher_rank_zero():
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise fail(f"run directory {self.path.parent} is in use by {holder}; "
                       "wait for that run to finish or choose another --out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"reprlearn pid {os.getpid()}")
        self._file.flush()
        _HELD_LOCKS.add(self._file)
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            _HELD_LOCKS.discard(self._file)
            self._file.close()  # closing releases the flock
            self._file = None


# The lock files this process holds. A forked child (a DataLoader worker, a decoding process)
# closes its copies at once: a flock lives as long as any descriptor of it, so workers that
# outlive a SIGKILLed run by the seconds they take to notice would keep its directory locked.
_HELD_LOCKS: set = set()


def _release_in_child() -> None:
    for f in list(_HELD_LOCKS):
        f.close()  # this process's copy only; the parent keeps the lock
    _HELD_LOCKS.clear()


os.register_at_fork(after_in_child=_release_in_child)


def _launcher_rank_zero() -> bool:
    """True in the process that started the run (not a DDP worker Lightning or torchrun launched)."""
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def quiet_libraries() -> None:
    """Lightning's banners, tips and adverts are noise, from the CLI and from the Python API alike (both
    make their trainer here); the warnings we act on are kept."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    logging.getLogger("lightning.fabric").setLevel(logging.WARNING)
    for pattern in (".*LeafSpec.*", ".*smaller than the logging interval.*", ".*litlogger.*",
                    ".*does not have many workers.*", ".*weights_only.*",
                    ".*Experiment logs directory .* exists and is not empty.*",  # a resumed run: see ResumeReport
                    # the streaming loader splits its samples by rank and worker itself (data/stream.py)
                    ".*`IterableDataset` has `__len__` defined.*"):
        warnings.filterwarnings("ignore", message=pattern)


def make_trainer(cfg: RunConfig, run_dir: Path, callbacks: list, steps: int | None = None) -> L.Trainer:
    """The run's Lightning trainer; ``steps``: the run's length in optimiser steps when a time budget
    planned it (else its step budget, else its epochs)."""
    from .trackers import make_loggers

    quiet_libraries()
    strategy: Any = "auto"
    if cfg.strategy == "ddp":
        strategy = "ddp"
    elif cfg.strategy == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        strategy = FSDPStrategy()
    # a resumed run logs into the same folders (logs/, tb/); ResumeReport gives the CSV its earlier rows back
    loggers = make_loggers(cfg, run_dir)  # --logger: csv, tensorboard, mlflow, wandb
    return L.Trainer(
        accelerator=cfg.accelerator if cfg.accelerator != "cuda" else "gpu",
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=cfg.precision,
        max_epochs=-1 if steps or step_budget(cfg) else cfg.epochs,  # a budget in steps ends the run mid-epoch
        max_steps=steps or step_budget(cfg) or -1,
        accumulate_grad_batches=cfg.accumulate,
        gradient_clip_val=cfg.grad_clip,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,  # Checkpointing writes them
        enable_progress_bar=cfg.progress,
        enable_model_summary=False,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
        deterministic=False,
        use_distributed_sampler=False,  # our DistributedSampler already splits by rank
    )


class KNNMonitor(L.Callback):
    """Online kNN top-1 of the encoder on labelled data after each epoch (logged as monitor/knn_top1).

    Cheap enough to run every epoch: features of at most ``limit`` images per side.
    """

    def __init__(self, train_images, train_labels, test_images, test_labels, limit: int = 5000, k: int = 200,
                 temperature: float = 0.1):
        self.train = (train_images[:limit], train_labels[:limit])
        self.k, self.temperature = k, temperature  # the run's kNN probe settings
        self.test = (test_images[:limit], test_labels[:limit])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from .evaluate import extract, knn_top1

        if not trainer.is_global_zero:
            return
        encoder = pl_module.method.encoder
        acc = knn_top1(extract(encoder, self.train[0]), self.train[1], extract(encoder, self.test[0]), self.test[1],
                       k=self.k, temperature=self.temperature)
        pl_module.log("monitor/knn_top1", acc, rank_zero_only=True)


class TimeBudget(L.Callback):
    """Ends training once the run's time budget is spent, after the current batch; Checkpointing then
    writes ``last.ckpt`` (at train end) and the evaluation scores what was trained.

    The time counts across resumes: the checkpoint keeps the seconds already trained, and the engine
    reads them back (:func:`budget_state`) before the next attempt starts; the schedule a budget
    planned is in config.yaml as ``max_steps``, so a resumed run keeps it. Every rank stops together.
    """

    def __init__(self, budget: float, spent: float = 0.0, planned_steps: int | None = None):
        self.budget, self.spent, self.planned_steps = budget, spent, planned_steps
        self._start: float | None = None
        self.ended_at: int | None = None  # the global step the budget ended training at

    def elapsed(self) -> float:
        return self.spent + (0.0 if self._start is None else time.monotonic() - self._start)

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        if self.spent >= self.budget:  # a resumed run whose budget is already spent trains no further
            trainer.should_stop = True
            if trainer.is_global_zero:
                print(f"the time budget of {duration(self.budget)} is spent ({duration(self.spent)} trained); pass "
                      "a longer --time-budget (and a larger --max-steps) to train on", flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # only after an optimiser step: an accumulated gradient half-way is not thrown away
        spent = trainer.strategy.reduce_boolean_decision(self.elapsed() >= self.budget, all=False)
        if spent and not trainer.should_stop:
            trainer.should_stop = True
            self.ended_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        if self.ended_at is not None and trainer.is_global_zero:
            planned = f" of {self.planned_steps} planned" if self.planned_steps else ""
            then = "; evaluating what was trained" if pl_module.cfg.eval else ""
            print(f"time budget of {duration(self.budget)} reached at step {self.ended_at}{planned} "
                  f"(epoch {trainer.current_epoch + 1}); checkpoint written{then}", flush=True)

    def state_dict(self) -> dict:
        return {"spent": self.elapsed(), "budget": self.budget, "planned_steps": self.planned_steps}


def budget_state(checkpoint: Path) -> tuple[int, dict]:
    """(global step, TimeBudget state or {}) of a checkpoint, read without loading its tensors."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0)), dict(ckpt.get("callbacks", {}).get(TimeBudget.__qualname__) or {})


class CostEstimate(L.Callback):
    """Says once, after the first optimiser steps, the run's images/s and how long it will take.

    The first step (compilation, allocation) is left out of the measurement.
    """

    def __init__(self, images_per_step: int, total_steps, after: int = 5, unit: str = "images"):
        self.images_per_step, self.total_steps, self.after, self.unit = images_per_step, total_steps, after, unit
        self._start: float | None = None
        self._first = 0
        self.said: str | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.said is not None or not trainer.is_global_zero or step < 1:
            return
        if self._start is None:
            self._start, self._first = time.perf_counter(), step
            return
        if step - self._first < self.after:
            return
        seconds_per_step = (time.perf_counter() - self._start) / (step - self._first)
        left = max(0, self.total_steps() - step) * seconds_per_step
        self.said = (f"{self.images_per_step / seconds_per_step:.0f} {self.unit}/s; the {self.total_steps()} steps of "
                     f"this run take about {duration(left + step * seconds_per_step)} (training only)"
                     + (f", {duration(left)} of them left" if self._first > 1 else ""))  # a resumed run
        print(self.said, flush=True)


class CollapseWatch(L.Callback):
    """Logs collapse metrics of the encoder features on a fixed sample after every epoch and
    warns once per run when they fall below their floors (see monitor.py). The floors follow
    the weights training started from (a random ViT's embeddings already share a large common
    component, so only complete collapse is flagged for it), and are kept in the checkpoint so a
    resumed run judges by the same start."""

    def __init__(self, images: torch.Tensor, sample: int = 1024):
        self.images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:sample]]
        self.warned = False
        self.floors: tuple[float, float] | None = None

    def _metrics(self, pl_module):
        from .evaluate import extract
        from .monitor import collapse_report

        z = torch.from_numpy(extract(pl_module.method.encoder, self.images))
        return collapse_report(z, *(self.floors or ()))

    def on_train_start(self, trainer, pl_module) -> None:
        from .monitor import relative_floors

        if self.floors is None and trainer.is_global_zero:
            self.floors = relative_floors(self._metrics(pl_module)[0])

    def state_dict(self) -> dict:
        return {"floors": list(self.floors) if self.floors else None}

    def load_state_dict(self, state: dict) -> None:
        self.floors = tuple(state["floors"]) if state.get("floors") else None

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from .monitor import warn_collapse

        if not trainer.is_global_zero:
            return
        metrics, warning = self._metrics(pl_module)
        pl_module.log_dict({f"collapse/{k}": v for k, v in metrics.items()}, rank_zero_only=True)
        if warning and not self.warned:
            self.warned = True
            warn_collapse(f"epoch {trainer.current_epoch + 1}: {warning}")


@contextlib.contextmanager
def out_of_memory_in_one_line(batch_size: int):
    """Running out of memory (the GPU's or the host's) in training or its warm-up, as one line that
    names the batch and the fix."""
    fix = (f"use a smaller --batch-size (e.g. {max(2, batch_size // 2)}), or --accumulate 2 to keep the "
           "effective batch")
    try:
        yield
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise fail(f"out of memory at batch size {batch_size} ({type(e).__name__}); {fix}") from None
    except RuntimeError as e:
        if "out of memory" in str(e) or "can't allocate memory" in str(e):
            raise fail(f"out of memory at batch size {batch_size}; {fix}") from None
        raise


class ResumeReport(L.Callback):
    """A resumed run says where it resumes and what is left, and keeps one CSV log.

    Lightning's CSVLogger empties ``logs/metrics.csv`` when it opens it, so the earlier rows are
    read before the trainer is made and logged again once the checkpoint is restored: those of
    the steps before the checkpoint (later ones are trained again).
    """

    def __init__(self, run_dir: Path):
        self.earlier: list[dict[str, str]] = []
        path = Path(run_dir) / "logs" / "metrics.csv"
        if path.is_file():
            with open(path, newline="") as f:
                self.earlier = list(csv.DictReader(f))

    def on_train_start(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import CSVLogger

        step, total = trainer.global_step, pl_module.total_steps()
        for logger in (lg for lg in trainer.loggers if isinstance(lg, CSVLogger)):
            for row in self.earlier:
                if row.get("step", "").isdigit() and int(row["step"]) < step:
                    values = {k: _number(v) for k, v in row.items() if k != "step"}
                    logger.log_metrics({k: v for k, v in values.items() if v is not None}, step=int(row["step"]))
        if trainer.is_global_zero:
            left = max(0, total - step)
            print(f"resuming from epoch {trainer.current_epoch + 1}, step {step} of {total}; {left} steps "
                  f"({left / pl_module.steps_per_epoch():.1f} epochs) left", flush=True)


def _number(text: str | None) -> int | float | None:
    """A CSV cell as the number it was logged as (an empty cell, or text, is None)."""
    try:
        return int(text) if text and text.isdigit() else float(text or "")
    except ValueError:
        return None


def fit(module: TrainModule, cfg: RunConfig, run_dir: Path, callbacks: list, resume_from: Path | None) -> L.Trainer:
    """Train ``module`` with Lightning, writing checkpoints into ``run_dir/checkpoints``.

    Every failure a user can act on becomes one line with the fix (and, where the run can
    continue, the command that resumes it): SIGINT/SIGTERM, a non-finite loss, out of
    memory, a full disk.
    """
    checkpointing = Checkpointing(run_dir / "checkpoints", cfg.checkpoint_every, cfg.checkpoint_steps)
    resumed = [ResumeReport(run_dir)] if resume_from else []  # made before the trainer: see ResumeReport
    trainer = make_trainer(cfg, run_dir, [checkpointing, *resumed, *callbacks], steps=module.planned_steps)
    resume_hint = f"resume with: reprlearn train {cfg.method} --out {run_dir} --resume"
    checkpointing.install_signal_handlers()
    try:
        with out_of_memory_in_one_line(cfg.batch_size):
            trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None)
    except Interrupted as e:
        raise Interrupted(f"{e}; {resume_hint}", e.exit_code - 128) from None
    except FloatingPointError as e:
        raise fail(f"{e}; {resume_hint} after changing it") from None
    except OSError as e:
        if e.errno == 28:  # ENOSPC: the atomic write left the previous checkpoint intact
            raise fail(f"no space left on the disk of {run_dir}; the previous checkpoint is intact; "
                       f"free some space, then {resume_hint}") from None
        raise
    finally:
        checkpointing.restore_signal_handlers()
    return trainer


def train_run(cfg: RunConfig, method_cfg: Any, run_dir: Path, resume_from: Path | None, extra_callbacks: list,
              auto: set[str] | None = None):
    """Load the run's data, build its method, plan it (print what ``auto`` chose and what the run
    will cost, from a timed warm-up), save its resolved config and artifacts, and train it.

    ``auto``: the options of :data:`plan.SIZED_OPTIONS` the user left to reprlearn (see
    :func:`plan.auto_options`); on a CPU they are sized to the run's time budget. None (a resumed
    run, a library caller): every value as it is in ``cfg``.
    Returns (method, data info, RunData, trainer) for the evaluation that follows.
    """
    from .methods.lookup import method_class
    from .runs import build_method, resolve_backbone

    auto = set() if auto is None or resume_from is not None else set(auto)
    method_cls = method_class(cfg.method)
    plan = Plan()
    _check_budget_length(cfg, auto)
    timing = None
    if method_cls.trains_on_text:  # text alone (mlm): token ids take the images' place
        from .data.texts import load_text_data
        from .runs import text_data_info

        data = load_text_data(cfg)
        info, why = text_data_info(), "a text method: its own text transformer"
        data.artifacts = method_cls.prepare(method_cfg, data, info)
    else:
        data, info, timing = _sized_data(cfg, method_cfg, method_cls, auto, plan)
        cfg.backbone, why = resolve_backbone(cfg, info)  # recorded by name: a run loads the same network anywhere
    _resolve_autos(cfg, info, data, method_cls, plan, why)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # --init-from sets the backbone before the method is built (a teacher copies it); a resumed run's
    # weights come from its checkpoint
    init_from = cfg.init_from if resume_from is None else None
    model = build_method(cfg, method_cfg, info, init_from=init_from)
    model.restore(data.artifacts)
    if init_from:
        print(f"backbone {cfg.backbone} initialised from {init_from}")
    if resume_from is None:
        model.warm_start()
    module, watched = _train_module(model, cfg, data, info)
    with out_of_memory_in_one_line(cfg.batch_size):
        timing = timing or _time_module(module, model, cfg, watched)
    budget = _plan_length(module, cfg, auto, timing, resume_from, plan)
    _save_config(run_dir, cfg, data, plan)
    train_set = data.train
    if train_set.skipped:
        (run_dir / "skipped.txt").write_text("\n".join(train_set.skipped) + "\n")
    meta = {"config": dataclasses.asdict(cfg), "data_info": dataclasses.asdict(info), "backbone": cfg.backbone,
            "skipped_items": len(train_set.skipped), "artifacts": data.artifacts}
    module.meta = meta
    callbacks = [*extra_callbacks]
    if not method_cls.trains_on_text:
        callbacks.insert(0, CollapseWatch(watched))
    if cfg.knn_monitor and data.eval is not None and not method_cls.trains_on_text:
        train_probe, eval_probe = held(train_set), held(data.eval)
        if train_probe.labels is not None and eval_probe.labels is not None:
            callbacks.append(KNNMonitor(train_probe.tensor(), train_probe.labels, eval_probe.tensor(),
                                        eval_probe.labels, k=cfg.knn_k, temperature=cfg.knn_temperature))
    if budget is not None:
        callbacks.append(budget)
    unit = "texts" if method_cls.trains_on_text else "images"
    callbacks.append(CostEstimate(cfg.batch_size * cfg.accumulate, module.total_steps, unit=unit))
    _plan_lines(plan, cfg, data, info, module, timing, budget, run_dir, unit, watched)
    print(plan.text(f"training {cfg.method} on {train_set.name}, run {run_dir}"), flush=True)
    trainer = fit(module, cfg, run_dir, callbacks, resume_from)
    if module.skipped:  # the streaming workers' skips (--skip-bad), this run's epochs
        (run_dir / "skipped-streamed.txt").write_text("\n".join(module.skipped) + "\n")
        print(f"skipped {len(module.skipped)} unreadable samples while streaming (listed in "
              f"{run_dir / 'skipped-streamed.txt'}; first: {module.skipped[0]})")
    return model, info, data, trainer


def _check_budget_length(cfg: RunConfig, auto: set[str]) -> None:
    """A time budget plans the run's length from one process's warm-up; several processes would each
    time their own and disagree, so there the length must be given."""
    world = cfg.devices * cfg.num_nodes
    if cfg.time_budget is not None and world > 1 and length_is_auto(cfg, auto):
        raise fail(f"--time-budget plans the run's length on one device, not {world}; give --max-steps or "
                   "--epochs as well (the budget then ends training by time)")


def _sized_data(cfg: RunConfig, method_cfg, method_cls, auto: set[str], plan: Plan):
    """The run's images at their storage size, its data info, and the warm-up timing when ``auto``
    sized the run to its budget on a CPU (see :func:`plan.fit_to_budget`), else None.
    ``cfg.image_size`` (and the batch and epochs ``auto`` reduced) are set to what was chosen."""
    from .data.run_data import load_run_data
    from .runs import data_info

    data = load_run_data(cfg, captions=method_cls.trains_on_captions)
    info = data_info(data.train)
    data.artifacts = method_cls.prepare(method_cfg, data, info)
    reduced = fit_batch_to_data(cfg, auto, len(data.fit))
    if reduced:
        plan.reduced.append(reduced)
    native, timing = info.image_size, None
    if _may_size_to_budget(cfg, auto, data):
        budget = time_budget_seconds(cfg) or CPU_TIME_BUDGET
        probe = data.fit.subset(np.arange(min(256, len(data.fit)))).tensor()  # the warm-ups' images

        def measure(candidate: RunConfig):
            with out_of_memory_in_one_line(candidate.batch_size):
                return _time_candidate(candidate, method_cfg, info, data, probe)

        reduce_epochs = cfg.time_budget is None and length_is_auto(cfg, auto)  # a budget sets the length itself
        chosen, timing, reduced = fit_to_budget(cfg, auto, len(data.fit), native, budget, measure, reduce_epochs)
        plan.reduced += reduced
        cfg.epochs = chosen.epochs
        if chosen.image_size != native:  # decoded again at the chosen size: what --config reproduces
            cfg.image_size = chosen.image_size
            data = load_run_data(cfg, captions=method_cls.trains_on_captions)
            info = data_info(data.train)
            data.artifacts = method_cls.prepare(method_cfg, data, info)
    cfg.image_size = info.image_size
    return data, info, timing


def _may_size_to_budget(cfg: RunConfig, auto: set[str], data) -> bool:
    """auto sizes a run to its budget on one CPU process, for images held in memory (a stream or a
    second domain would have to be read again at each size tried)."""
    from .config import run_device

    return (bool(auto & {"image_size", "backbone", "epochs"}) and run_device(cfg) == "cpu"
            and cfg.devices * cfg.num_nodes == 1 and not data.streamed and data.target is None)


def _time_candidate(cfg: RunConfig, method_cfg, info, data, probe: torch.Tensor):
    """(StepTiming, backbone) of the run as ``cfg`` would make it: its backbone at ``cfg.image_size``,
    timed on ``probe`` images resized to that size."""
    import torch.nn.functional as F

    from .runs import build_method, resolve_backbone

    size = cfg.image_size
    info = dataclasses.replace(info, image_size=size)
    cfg = dataclasses.replace(cfg)
    cfg.backbone = resolve_backbone(cfg, info)[0]
    model = build_method(cfg, method_cfg, info)
    model.restore(data.artifacts)
    images = probe
    if probe.shape[-1] != size:
        images = F.interpolate(probe.float(), size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False).round().clamp(0, 255).to(torch.uint8)
    fields = {k: v[:len(images)] for k, v in model.training_fields(data).items()}
    per_epoch = steps_per_epoch(cfg, len(data.fit))
    timing = time_steps(model, cfg, images, fields, {}, torch.device("cpu"), cfg.batch_size, per_epoch,
                        per_epoch * cfg.epochs)
    return timing, cfg.backbone


def _resolve_autos(cfg: RunConfig, info, data, method_cls, plan: Plan, backbone_why: str) -> None:
    """Every remaining ``auto`` of the config replaced by what it stands for, so config.yaml records
    values a later --config reproduces; the reasons go to the plan."""
    from .augment.spec import auto_preset
    from .config import run_device

    if method_cls.trains_on_text:
        cfg.augment, plan.augment_why = "none", "a text method: no image views"
    elif cfg.augment == "auto":
        cfg.augment, why = auto_preset(info.image_size, info.channels)
        plan.augment_why = f"auto: {why}"
    else:
        plan.augment_why = "as asked"
    plan.backbone_why = backbone_why
    if cfg.loader == "auto":
        cfg.loader = "stream" if getattr(data, "streamed", False) else "memory"
    if cfg.accelerator == "auto":
        mps = getattr(torch.backends, "mps", None)
        cfg.accelerator = ("gpu" if run_device(cfg) == "cuda" else
                           "mps" if mps is not None and mps.is_available() else "cpu")
    if cfg.strategy == "auto":
        cfg.strategy = "single" if cfg.devices * cfg.num_nodes == 1 else "ddp"


def _train_module(model, cfg: RunConfig, data, info) -> tuple[TrainModule, torch.Tensor]:
    """The LightningModule of the run and the images the monitors and the warm-up use."""
    meta: dict = {}  # filled in once the run's config is final
    if model.trains_on_text:
        samples = model.training_samples(data)  # token ids (N, L), indexed per batch like images
        return TrainModule(model, cfg, samples, meta), samples
    fit_set = data.fit
    if data.streamed:  # nothing held but the first images (the monitors')
        if model.needs_labels and not fit_set.has_labels:
            model.stream_fields({})  # refuses in one line
        return TrainModule(model, cfg, None, meta, stream=fit_set), fit_set.head.tensor()
    watched = fit_set.tensor()  # one host copy (N, C, H, W) shared by the module and the collapse watch
    return TrainModule(model, cfg, watched, meta, model.training_fields(data), model.training_pools(data)), watched


def _time_module(module: TrainModule, model, cfg: RunConfig, watched: torch.Tensor) -> StepTiming | None:
    """The run's own seconds per step, from a warm-up on a copy of its method (None for a streamed
    image-text run: its caption fields exist only in the streamed batches)."""
    from .config import run_device

    if module.stream is not None and model.trains_on_captions:
        return None
    device = (torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if run_device(cfg) == "cuda"
              else torch.device("cpu"))
    if module.stream is not None:
        samples, fields = watched, {}
        if model.needs_labels:
            labels = module.stream.head.labels
            fields = model.stream_fields({"labels": torch.as_tensor(labels)}) if labels is not None else {}
    else:
        samples, fields = module._images_cpu, module._fields_cpu
    world = cfg.devices * cfg.num_nodes
    return time_steps(model, cfg, samples, fields, module._pools_cpu, device, max(1, cfg.batch_size // world),
                      module.steps_per_epoch(), module.total_steps(), "texts" if model.trains_on_text else "images")


def _plan_length(module: TrainModule, cfg: RunConfig, auto: set[str], timing: StepTiming | None,
                 resume_from: Path | None, plan: Plan) -> TimeBudget | None:
    """The run's length under its time budget, and the callback that ends training there (None: no
    budget). When the length is left to auto, the schedules span the steps the budget allows (from the
    warm-up), recorded as ``max_steps``; a resumed run keeps them and counts the time already trained."""
    budget = time_budget_seconds(cfg)
    if budget is None:
        return None
    done, state = budget_state(resume_from) if resume_from is not None else (0, {})
    spent = float(state.get("spent", 0.0))
    if length_is_auto(cfg, auto) and timing is not None:
        steps = budget_steps(budget, spent, done, timing)
        cfg.max_steps = module.planned_steps = steps
        plan.length_why = f"the steps {duration(budget)} allows at the warm-up's pace"
    return TimeBudget(budget, spent, module.total_steps())


def _save_config(run_dir: Path, cfg: RunConfig, data, plan: Plan) -> None:
    """config.yaml: every resolved value (a --config of it reproduces the run), the auto choices
    explained in comments above it; the method's artifacts beside it."""
    from .config import save_yaml
    from .runs import CONFIG_FILE

    run_dir.mkdir(parents=True, exist_ok=True)
    notes = [f"backbone: {cfg.backbone} ({plan.backbone_why})", f"augment: {cfg.augment} ({plan.augment_why})",
             f"loader: {cfg.loader} ({data.loader if hasattr(data, 'loader') else 'texts in memory'})",
             *plan.reduced]
    if plan.length_why:
        notes.append(f"max_steps: {cfg.max_steps} ({plan.length_why})")
    header = f"# the run's resolved options; `reprlearn train {cfg.method} --config THIS_FILE` trains it again\n"
    header += "".join(f"#   {line}\n" for line in notes)
    save_yaml(run_dir / CONFIG_FILE, dataclasses.asdict(cfg), header=header)
    for name, text in data.artifacts.items():  # e.g. tokenizer.json, beside the config
        with atomic_write(run_dir / name, "w") as f:
            f.write(text)


def _plan_lines(plan: Plan, cfg: RunConfig, data, info, module: TrainModule, timing: StepTiming | None,
                budget: TimeBudget | None, run_dir: Path, unit: str, watched: torch.Tensor) -> None:
    """The plan block's lines: data, storage, network, views, batch, length, device, expected time."""
    train_set = data.train
    if unit == "texts":
        plan.add("data", f"{len(watched)} texts of at most {watched.shape[1]} tokens, vocabulary "
                         f"{info.text['vocab_size']}")
    else:
        skipped = (f"; {len(train_set.skipped)} unreadable skipped (listed in {run_dir / 'skipped.txt'}; first: "
                   f"{train_set.skipped[0]})" if train_set.skipped else "")
        plan.add("data", f"{len(data.fit)} training images {info.image_size}x{info.image_size}x{info.channels}"
                         f"{skipped}" + (f"; {data.shapes}" if data.shapes else ""))
        if data.evaluation:  # which evaluation follows, decided before training (data/run_data.py)
            plan.add("evaluation", data.evaluation.removeprefix("evaluation: ")
                     + (f"; {data.eval.name}, {len(data.eval)} images" if data.eval is not None else ""))
        elif data.eval is not None:
            plan.add("evaluation", f"{data.eval.name}, {len(data.eval)} images")
        held_bytes = len(data.fit) * info.channels * info.image_size ** 2
        plan.add("storage", f"{info.image_size} px, {cfg.loader} ({data.loader}); {_megabytes(held_bytes)} decoded")
    plan.add("backbone", f"{cfg.backbone} ({plan.backbone_why})")
    plan.add("augment", f"{cfg.augment} ({plan.augment_why})")
    accumulate = f" x {cfg.accumulate} accumulated" if cfg.accumulate > 1 else ""
    plan.add("batch", f"{cfg.batch_size}{accumulate}")
    steps = module.total_steps()
    if module.planned_steps:
        length = f"{steps} optimiser steps ({plan.length_why})"
    elif step_budget(cfg):
        length = f"{steps} optimiser steps (--max-steps / --samples-seen)"
    else:
        length = f"{cfg.epochs} epochs x {module.steps_per_epoch()} steps = {steps} optimiser steps"
    plan.add("length", length)
    plan.add("device", _device_words(cfg))
    if timing is None:
        plan.add("time", "measured after the first steps (a streamed image-text run has no warm-up)")
    else:
        total = duration(timing.seconds * steps)
        plan.add("time", f"{total if total.startswith('under') else 'about ' + total} of training, "
                         f"{timing.seconds:.3g} s a step "
                         f"({timing.how})")
    if budget is not None:
        plan.add("budget", f"{duration(budget.budget)}" + (f", {duration(budget.spent)} already trained"
                                                           if budget.spent else "")
                 + "; training ends there with a checkpoint, then evaluates")


def _device_words(cfg: RunConfig) -> str:
    from .config import run_device

    if run_device(cfg) == "cuda":
        name = torch.cuda.get_device_name(0)
        return f"{cfg.devices * cfg.num_nodes} x {name}, precision {cfg.precision}"
    threads = torch.get_num_threads()
    return f"cpu, {threads} thread{'s' if threads != 1 else ''}, precision {cfg.precision}"


def _megabytes(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
