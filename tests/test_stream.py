"""The streaming path: every sample once an epoch over ranks x workers, exact resume, the
automatic choice between memory and stream, bad samples, folders, and streamed evaluation."""

import io
import tarfile

import numpy as np
import pytest
import torch

from reprlearn.data import load_source
from reprlearn.data import run_data
from reprlearn.data.shards import write_shards
from reprlearn.data.stream import StreamDataset, StreamLoader, eval_batches, open_stream, read_subset
from reprlearn.errors import ReprlearnError

from gloo_ranks import run_on_ranks


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    """digits:train (1,438 images) as three PNG shards of 500, 500 and 438: uneven on purpose."""
    out = tmp_path_factory.mktemp("shards")
    paths = write_shards("digits", out, shard_size=500, fmt="png", progress=False)
    return paths


def stream_of(paths, **kw):
    return open_stream(list(paths), kw.pop("image_size", None), kw.pop("skip_bad", False), "test-shards")


def keys_of_epoch(stream, world, rank, workers, epoch=0, batch=32, done=0, seed=0, buffer=100):
    dataset = StreamDataset(stream, batch, seed, world=world, rank=rank, workers=workers, buffer=buffer)
    loader = StreamLoader(dataset, workers, pin_memory=False, epoch_of=lambda: epoch)
    if done:
        loader.load_state_dict({"epoch": epoch, "trained_in_epoch": done})
    return [b["keys"] for b in loader]


def test_stream_reads_the_same_images_and_labels_as_memory(digit_shards):
    stream = stream_of(digit_shards)
    memory = load_source(",".join(map(str, digit_shards)))
    assert (len(stream), stream.image_size, stream.channels, stream.has_labels) == (1438, 8, 1, True)
    seen = {}
    for batch in eval_batches(stream, batch_size=100, workers=2):
        for key, image, label in zip(batch["keys"], batch["images"], batch["labels"]):
            seen[key] = (image, int(label))
    assert len(seen) == 1438
    for i in (0, 437, 1000, 1437):  # the shard writer names sample i by its index
        image, label = seen[f"{i:08d}"]
        np.testing.assert_array_equal(image.permute(1, 2, 0).numpy(), memory.images[i])
        assert label == memory.labels[i]


def _gather_epoch_keys(rank, world, out_dir):
    """One rank's epoch with 2 DataLoader workers; rank 0 writes every rank's keys."""
    import json
    from pathlib import Path

    import torch.distributed as dist

    stream = stream_of(Path(p) for p in json.loads((Path(out_dir) / "paths.json").read_text()))
    batches = keys_of_epoch(stream, world, rank, workers=2)
    everyone = [None] * world
    dist.all_gather_object(everyone, batches)
    if rank == 0:
        (Path(out_dir) / "keys.json").write_text(json.dumps(everyone))


def test_two_gloo_ranks_with_two_workers_see_every_sample_at_most_once(digit_shards, tmp_path):
    import json

    (tmp_path / "paths.json").write_text(json.dumps([str(p) for p in digit_shards]))
    run_on_ranks(_gather_epoch_keys, 2, tmp_path)
    per_rank = json.loads((tmp_path / "keys.json").read_text())
    steps = [len(b) for b in per_rank]
    assert steps[0] == steps[1] == 2 * (1438 // 4 // 32)  # equal steps on every rank: no hang at the epoch's end
    keys = [k for rank in per_rank for batch in rank for k in batch]
    assert all(len(batch) == 32 for rank in per_rank for batch in rank)
    assert len(keys) == len(set(keys)) == 4 * (1438 // 4 // 32) * 32  # no duplicate
    # what is left out is at most the documented remainder: slots x (batch - 1) + N mod slots
    assert 1438 - len(keys) <= 4 * 31 + 1438 % 4


def test_epochs_are_shuffled_from_the_seed(digit_shards):
    stream = stream_of(digit_shards)
    e0, e0_again, e1 = (keys_of_epoch(stream, 1, 0, 1, epoch=e) for e in (0, 0, 1))
    assert e0 == e0_again
    assert e0 != e1
    other_seed = keys_of_epoch(stream, 1, 0, 1, epoch=0, seed=1)
    assert other_seed != e0
    # a buffer as large as the epoch shuffles it whole: the order is unrelated to the stored one
    flat = [int(k) for k in sum(keys_of_epoch(stream, 1, 0, 1, buffer=2000), [])]
    assert abs(np.corrcoef(np.arange(len(flat)), flat)[0, 1]) < 0.1


@pytest.mark.parametrize("done", [1, 3, 6])
def test_resumed_epoch_gives_exactly_the_remaining_batches_in_order(digit_shards, done):
    """After ``done`` trained batches (odd: the workers must be rotated) a resumed loader yields
    the rest of the epoch batch for batch as the uninterrupted one does."""
    stream = stream_of(digit_shards)
    whole = keys_of_epoch(stream, 1, 0, workers=2, epoch=2)
    resumed = keys_of_epoch(stream, 1, 0, workers=2, epoch=2, done=done)
    assert resumed == whole[done:]


def test_auto_keeps_what_fits_in_memory_and_streams_the_rest(digit_shards, monkeypatch):
    from reprlearn.config import RunConfig
    from reprlearn.data.imageset import ImageSet
    from reprlearn.data.stream import ShardStream

    spec = ",".join(map(str, digit_shards))
    cfg = RunConfig(data=spec, loader="auto")
    monkeypatch.setattr(run_data, "_available_host_memory", lambda: 1e9)
    data, why = run_data.open_images(spec, cfg, None)
    assert isinstance(data, ImageSet) and why.startswith("in memory: 92 KB decoded fits 25% of 1 GB")
    monkeypatch.setattr(run_data, "_available_host_memory", lambda: 200e3)  # 92 KB > 25% of 200 KB
    data, why = run_data.open_images(spec, cfg, None)
    assert isinstance(data, ShardStream) and why.startswith("streamed: 92 KB decoded exceeds 25% of 200 KB")
    data, why = run_data.open_images(spec, RunConfig(data=spec, loader="memory"), None)
    assert isinstance(data, ImageSet) and "as asked" in why
    with pytest.raises(ReprlearnError, match="cannot be streamed"):
        run_data.open_images("digits", RunConfig(loader="stream"), None)


def _corrupt_shard(path, good: int):
    """A shard of ``good`` tiny PNGs (labelled) and one truncated JPEG."""
    from PIL import Image

    with tarfile.open(path, "w") as tar:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for i in range(good):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8), i * 10 % 256, np.uint8)).save(buf, format="PNG")
            add(f"{i:04d}.png", buf.getvalue())
            add(f"{i:04d}.cls", b"1")
        add("bad.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")
        add("bad.cls", b"0")


def test_an_unreadable_sample_is_named_or_skipped_keeping_batches_full(tmp_path):
    path = tmp_path / "mixed.tar"
    _corrupt_shard(path, good=15)
    stream = stream_of([path])
    assert len(stream) == 16
    with pytest.raises(ReprlearnError, match=r"bad is not a readable image.*--skip-bad"):
        list(eval_batches(stream, batch_size=4, workers=0))
    skipping = stream_of([path], skip_bad=True)
    batches = list(StreamLoader(StreamDataset(skipping, 8, workers=1), 0, pin_memory=False))
    assert [len(b["keys"]) for b in batches] == [8, 8]  # the bad sample's place is taken within its batch
    assert sum(len(b["skipped"]) for b in batches) == 1 and "bad" in sum((b["skipped"] for b in batches), [])[0]


def test_a_folder_of_mixed_photos_streams_at_one_size(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, sizes in (("a", [(40, 30), (64, 64), (50, 80)]), ("b", [(30, 40), (90, 60)])):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i, (w, h) in enumerate(sizes):
            mode = "L" if i == 0 else "RGB"  # grey and colour mixed
            shape = (h, w) if mode == "L" else (h, w, 3)
            Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(tmp_path / "photos" / c / f"{i}.png")
    stream = stream_of([tmp_path / "photos"])
    assert (len(stream), stream.channels, stream.class_names) == (5, 3, ["a", "b"])
    assert stream.image_size == 50  # the median shorter side of 30, 64, 50, 30, 60
    batches = list(eval_batches(stream, batch_size=2, workers=0))
    images = torch.cat([b["images"] for b in batches])
    assert images.shape == (5, 3, 50, 50)
    assert sorted(torch.cat([b["labels"] for b in batches]).tolist()) == [0, 0, 0, 1, 1]


def test_read_subset_draws_distinct_samples(digit_shards):
    stream = stream_of(digit_shards)
    sub = read_subset(stream, 300, seed=0)
    full = load_source(",".join(map(str, digit_shards)))
    assert len(sub) == 300 and sub.labels is not None
    rows = {full.images[i].tobytes() for i in range(len(full))}
    assert all(img.tobytes() in rows for img in sub.images)
    assert len(np.unique(sub.images.reshape(300, -1), axis=0)) >= 290  # digits has a few exact duplicates


STREAM_RUN = ["--loader", "stream", "--workers", "2", "--epochs", "3", "--batch-size", "128", "--warmup-epochs", "1",
              "--no-eval", "--no-progress", "--checkpoint-every", "1"]
STREAM_STEPS = 2 * (1438 // 2 // 128)  # 2 workers' ranges of 719 samples: 5 batches of 128 each


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_streamed_run(digit_shards, tmp_path):
    """A real SIGKILL of a streamed run after a mid-epoch checkpoint: the resumed run ends with the
    weights of an uninterrupted one, bit for bit (no sample repeated or skipped, same order)."""
    import signal
    import time

    from test_reliability import assert_same_weights, cli, read_ckpt

    data = ",".join(map(str, digit_shards))
    ref = cli("train", "simclr", "--data", data, "--out", str(tmp_path / "ref"), *STREAM_RUN)
    _, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    run = tmp_path / "run"
    proc = cli("train", "simclr", "--data", data, "--out", str(run), *STREAM_RUN, "--checkpoint-steps", "3")
    deadline, step = time.time() + 300, 0
    while time.time() < deadline and not (step and step % STREAM_STEPS):
        assert proc.poll() is None, f"run ended early: {proc.communicate()}"
        if (run / "checkpoints" / "last.ckpt").exists():
            step = read_ckpt(run)["global_step"]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert step % STREAM_STEPS, "no mid-epoch checkpoint to resume from"
    resumed = cli("train", "simclr", "--data", data, "--out", str(run), "--resume", *STREAM_RUN,
                  "--checkpoint-steps", "3")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert_same_weights(read_ckpt(tmp_path / "ref"), read_ckpt(run), steps=3 * STREAM_STEPS)


def test_streamed_ddp_run_on_two_cpu_ranks_takes_equal_steps_and_loads(digit_shards, tmp_path):
    """Lightning's DDP launcher with the streaming loader: each rank reads its own ranges, no
    rank waits at the end of an epoch, and the run loads and embeds."""
    import subprocess
    import sys

    import reprlearn

    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "reprlearn.cli", "train", "simclr", "--data",
                           ",".join(map(str, digit_shards)), "--loader", "stream", "--workers", "1", "--devices", "2",
                           "--strategy", "ddp", "--accelerator", "cpu", "--epochs", "2", "--batch-size", "128",
                           "--no-eval", "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * (1438 // 2 // 64)  # 64 a rank: 11 full batches of each rank's 719
    assert reprlearn.embed(out, "digits:test").shape[0] == 359


def test_caption_shards_stream_with_their_captions_and_clip_trains_on_them(tmp_path):
    import json

    import reprlearn
    from reprlearn.data.pairs import load_pairs

    pairs = load_pairs("scenes:n=300", "train")
    paths = write_shards("scenes:n=300", tmp_path / "caps", shard_size=128, fmt="png", progress=False)
    stream = stream_of(paths)
    assert stream.has_captions and len(stream) == 300
    for batch in eval_batches(stream, batch_size=64, workers=1):
        for key, captions in zip(batch["keys"], batch["captions"]):
            assert captions == pairs.captions[int(key)]
    run = reprlearn.train("clip", data=",".join(map(str, paths)), eval_data="scenes:n=300", loader="stream",
                          workers=1, max_steps=3, batch_size=64, progress=False, out=tmp_path / "run",
                          eval_max_train=200)
    result = json.loads((run / "eval.json").read_text())
    assert "i2t_recall@1" in result and result["zeroshot_tasks"]
