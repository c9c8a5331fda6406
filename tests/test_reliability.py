"""Reliability: interrupted runs, numerical failure, full disks and busy run directories lose nothing.

The crash tests use a real subprocess and real signals (SIGKILL, SIGTERM, SIGINT).
"""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import reprlearn
from reprlearn.engine import RunLock
from reprlearn.errors import ReprlearnError
from reprlearn.methods.simclr import SimCLR

STEPS_PER_EPOCH = 1438 // 128  # digits train split, batch 128 -> 11 steps
RUN = ["--epochs", "5", "--batch-size", "128", "--warmup-epochs", "1", "--no-eval", "--no-progress",
       "--checkpoint-every", "1"]
KW = dict(epochs=5, batch_size=128, warmup_epochs=1, eval=False, progress=False, checkpoint_every=1)


def cli(*args: str) -> subprocess.Popen:
    # Every run compared bit for bit starts in a fresh process with the same settings: a
    # reference trained inside the long-lived test worker once differed in the last bits on CI
    # (worker state the test does not control), and MKL's strict CNR mode makes its GEMMs
    # independent of memory alignment.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MKL_CBWR": "AUTO,STRICT"}
    return subprocess.Popen([sys.executable, "-m", "reprlearn.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def read_ckpt(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, mid_epoch: bool, timeout: float = 120) -> int:
    """Block until the run has written a checkpoint (mid-epoch if asked); returns its step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        path = run / "checkpoints" / "last.ckpt"
        if path.exists():
            step = read_ckpt(run)["global_step"]  # safe: the file is only ever replaced whole
            if step > 0 and (not mid_epoch or step % STEPS_PER_EPOCH):
                return step
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


def train_reference(run: Path, args: list[str]) -> dict:
    proc = cli("train", "simclr", "--out", str(run), *args)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return read_ckpt(run)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The final weights of an uninterrupted run with the same seed."""
    run = tmp_path_factory.mktemp("ref") / "run"
    return train_reference(run, RUN)


def assert_same_weights(a: dict, b: dict, steps: int = 5 * STEPS_PER_EPOCH) -> None:
    assert a["global_step"] == b["global_step"] == steps
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference):
    run = tmp_path / "run"
    proc = cli("train", "simclr", "--out", str(run), *RUN, "--checkpoint-steps", "4")
    step = wait_for_checkpoint(run, proc, mid_epoch=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step % STEPS_PER_EPOCH != 0
    resumed = cli("train", "simclr", "--out", str(run), "--resume", *RUN, "--checkpoint-steps", "4")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_weights(reference, read_ckpt(run))
    # a write killed half-way can only leave a hidden temporary file, never a partial last.ckpt
    assert [p.name for p in (run / "checkpoints").iterdir() if not p.name.startswith(".")] == ["last.ckpt"]


# the signal tests use batch 32 (44 steps an epoch, 220 in all) so that a loaded machine still
# delivers the signal well before the run's last batch
SIGNAL_RUN = [*RUN, "--batch-size", "32"]
SIGNAL_STEPS = 5 * (1438 // 32)


@pytest.fixture(scope="module")
def reference_batch32(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref32") / "run"
    return train_reference(run, SIGNAL_RUN)


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_writes_checkpoint_and_says_how_to_resume(tmp_path, reference_batch32, sig, code):
    run = tmp_path / "run"
    proc = cli("train", "simclr", "--out", str(run), *SIGNAL_RUN)
    wait_for_checkpoint(run, proc, mid_epoch=False)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    last = err.strip().splitlines()[-1]
    assert f"stopped by {signal.Signals(sig).name}" in last and "--resume" in last and "Traceback" not in err
    stopped_at = read_ckpt(run)["global_step"]
    assert 0 < stopped_at < SIGNAL_STEPS
    resumed = cli("train", "simclr", "--out", str(run), "--resume", *SIGNAL_RUN)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert_same_weights(reference_batch32, read_ckpt(run), steps=SIGNAL_STEPS)


def test_second_run_in_same_directory_is_refused(tmp_path):
    run = tmp_path / "busy"
    with RunLock(run):
        with pytest.raises(ReprlearnError, match="in use by reprlearn pid"):
            reprlearn.train("simclr", out=run, **KW)
    # released: the same directory works once the first run is gone
    reprlearn.train("simclr", out=run, **{**KW, "epochs": 1})


def _signal_then_sleep(started) -> None:
    started.set()
    time.sleep(30)


def test_a_forked_worker_does_not_keep_the_run_directory_locked(tmp_path):
    """DataLoader workers are forked while the run holds its lock; when the run ends (or is
    SIGKILLed) a worker still alive must not keep the directory locked against the resume."""
    import multiprocessing

    run = tmp_path / "run"
    lock = RunLock(run).__enter__()
    fork = multiprocessing.get_context("fork")
    started = fork.Event()
    worker = fork.Process(target=_signal_then_sleep, args=(started,))
    worker.start()
    assert started.wait(30)  # the worker runs (what a fork does to its descriptors is done by now)
    try:
        lock.__exit__(None, None, None)  # the run's own descriptor closes, as at its death
        with RunLock(run):  # while the forked worker lives on
            pass
    finally:
        worker.kill()
        worker.join()


def test_nan_loss_stops_naming_step_and_term_keeping_last_good_checkpoint(tmp_path, monkeypatch):
    original = SimCLR.loss
    calls = {}  # per method instance: the plan's warm-up steps a copy of the trained one

    def poisoned(self, views):
        calls[id(self)] = calls.get(id(self), 0) + 1
        terms = original(self, views)
        if calls[id(self)] > STEPS_PER_EPOCH + 2:  # third step of the second epoch
            terms = {k: v * float("nan") for k, v in terms.items()}
        return terms

    monkeypatch.setattr(SimCLR, "loss", poisoned)
    with pytest.raises(ReprlearnError) as e:
        reprlearn.train("simclr", out=tmp_path / "r", **KW)
    message = str(e.value)
    assert f"at step {STEPS_PER_EPOCH + 2}" in message and "'loss'" in message and "\n" not in message
    assert read_ckpt(tmp_path / "r")["global_step"] == STEPS_PER_EPOCH  # the good epoch-1 checkpoint


def test_gradient_norm_is_logged_and_clipping_applies(tmp_path):
    free = reprlearn.train("simclr", out=tmp_path / "free", **{**KW, "epochs": 1})
    clipped = reprlearn.train("simclr", out=tmp_path / "clip", **{**KW, "epochs": 1, "grad_clip": 1e-6, "lr": 1.0,
                                                                   "optimizer": "sgd", "warmup_epochs": 0,
                                                                   "weight_decay": 0.0})
    header = (free / "logs" / "metrics.csv").read_text().splitlines()[0]
    assert "train/grad_norm" in header
    def distance_moved(run):
        trained = reprlearn.load(run)
        start = reprlearn.api.build_encoder(trained.run_config, trained.data_info)
        return torch.sqrt(sum(((p - q) ** 2).sum() for p, q in zip(trained.parameters(), start.parameters())))

    # 11 SGD steps (momentum 0.9, lr <= 1) on gradients clipped to norm 1e-6 move the weights by
    # at most 11 * 10 * 1e-6 in L2; unclipped training moves them by orders of magnitude more
    assert distance_moved(clipped) < 2e-4 < 1e-2 < distance_moved(free)


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, monkeypatch):
    def oom(self, views):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 40.00 GiB")

    monkeypatch.setattr(SimCLR, "loss", oom)
    with pytest.raises(ReprlearnError, match=r"out of memory at batch size 128.*--batch-size \(e.g. 64\)"):
        reprlearn.train("simclr", out=tmp_path / "r", **KW)


def test_disk_full_while_checkpointing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    import reprlearn.engine as engine

    saves = {"n": 0}
    real_save = torch.save

    def save_until_disk_full(obj, f, *a, **k):
        saves["n"] += 1
        if saves["n"] >= 3:
            f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(engine.torch, "save", save_until_disk_full)
    with pytest.raises(ReprlearnError, match="no space left.*previous checkpoint is intact.*--resume"):
        reprlearn.train("simclr", out=tmp_path / "r", **KW)
    monkeypatch.setattr(engine.torch, "save", real_save)
    assert read_ckpt(tmp_path / "r")["global_step"] == 2 * STEPS_PER_EPOCH
    assert [p.name for p in (tmp_path / "r" / "checkpoints").iterdir()] == ["last.ckpt"]


def test_skip_bad_items_are_counted_in_log_and_summary(tmp_path):
    from fakedata import good_members, write_shard

    members = good_members(40) + [("broken.jpg", b"\xff\xd8 not really"), ("broken.cls", b"1")]
    shard = write_shard(tmp_path / "s.tar.gz", members)
    with pytest.raises(ReprlearnError, match="broken"):
        reprlearn.train("simclr", out=tmp_path / "a", data=str(shard), **{**KW, "epochs": 1, "batch_size": 8})
    run = reprlearn.train("simclr", out=tmp_path / "b", data=str(shard), skip_bad=True,
                          **{**KW, "epochs": 1, "batch_size": 8})
    assert "broken" in (run / "skipped.txt").read_text()
    assert read_ckpt(run)["reprlearn"]["skipped_items"] == 1
