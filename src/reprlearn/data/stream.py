"""The streaming path: samples read from shards (or a folder's files) by DataLoader workers.

For data too large for memory. Nothing is decoded up front: the parts (shards, or chunks of a
folder's files) are counted once (counts are cached by path, size and time), a few hundred
samples are read to learn the storage size, channels and normalisation, and then each epoch
streams:

    parts in an order shuffled from (seed, epoch)
      -> one contiguous range of that sequence per (rank, worker) slot, all of equal length
      -> a seeded sample shuffle buffer -> decode + resize to uint8 (in the worker)
      -> batches of uint8 (B, C, H, W) [+ labels, captions, keys], collated in pinned memory

Splitting the epoch's sample sequence (rather than whole shards, as webdataset's
``split_by_node``/``split_by_worker`` do) is what lets every rank take the same number of steps
with any number of shards: a slot reads only the parts its range overlaps, skipping the samples
before its start without decoding them. No sample is seen twice in an epoch; at most
``world x workers x (batch - 1) + (N mod world x workers)`` are left out of it, a different set
each epoch.

Resume is exact: the loader's state is (epoch, batches trained in it). Each worker's samples
follow from (seed, epoch, slot) alone, so a resumed epoch skips each worker's trained batches
(again without decoding) and rotates the workers so that batches come back in the same order an
uninterrupted run would have produced them. Batches prefetched but not trained when the run
stopped are read again, never lost; none is repeated.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..errors import ReprlearnError, fail
from .decode import IMAGE_EXTENSIONS, NPY_MAGIC, TIFF_MAGIC, BadItem, decode_image, side_for_sizes
from .imageset import ImageSet
from .samples import (FIELDS, IMAGE_MEMBERS, carries_captions, file_sample, has_field, image_bytes, read_sample,
                      shard_samples)

FOLDER_PART = 1000  # files of a folder per streamed part (the unit of shard-order shuffling)
PROBE = 256  # samples read before training to learn the storage size and channels


@dataclass
class Part:
    """One unit of the stream: a shard file, or a run of a folder's files."""

    path: str  # the shard, or the folder
    count: int  # its samples
    files: list | None = None  # folder parts: (relative path, label or None) per sample


@dataclass
class ShardStream:
    """A source read sample by sample: what is known before streaming it.

    Stands where an :class:`ImageSet` stands in :class:`~reprlearn.data.run_data.RunData`;
    ``head`` (the first samples, decoded) serves normalisation statistics and the monitors."""

    parts: list[Part]
    image_size: int
    channels: int
    has_labels: bool
    has_captions: bool
    class_names: list[str] | None
    name: str
    skip_bad: bool = False
    skipped: list[str] = field(default_factory=list)  # set by training from what the workers reported
    extra_fields: tuple[str, ...] = ()  # other registered fields (data/samples.py) its batches carry by name
    _head: ImageSet | None = field(default=None, repr=False)

    @property
    def head(self) -> ImageSet:
        """Its first (up to) 1024 samples, decoded once on first use."""
        if self._head is None:
            self._head = read_head(self, min(1024, len(self)))
        return self._head

    def __len__(self) -> int:
        return sum(p.count for p in self.parts)

    @property
    def fields(self) -> tuple[str, ...]:
        """The named fields each sample is read with (data/samples.py): a batch carries them all."""
        return ("image", "label", *(("captions",) if self.has_captions else ()), *self.extra_fields)

    @property
    def labels(self):  # the probes ask; a stream's labels are only known by reading it
        return None

    @property
    def num_classes(self) -> int:
        return len(self.class_names) if self.class_names else self.head.num_classes

    def decoded_bytes(self) -> int:
        """What the whole set would take decoded as uint8 at its storage size."""
        return len(self) * self.channels * self.image_size ** 2


# ---------------------------------------------------------------- opening a source


def open_stream(paths: list[Path], image_size: int | None, skip_bad: bool, name: str,
                extra_fields: tuple[str, ...] = ()) -> ShardStream:
    """A stream over shard files, or over one image folder (sub-folders are classes); its batches
    carry the image, label and captions (when it has them) and any registered ``extra_fields``."""
    from .sources import SHARD_SUFFIXES, class_names_beside

    unknown = [f for f in extra_fields if f not in FIELDS or f in ("image", "label", "captions")]
    if unknown:
        raise fail(f"{name}: {unknown[0]!r} is not an extra sample field; registered fields are {', '.join(FIELDS)} "
                   "(image, label and captions are carried already)")
    if len(paths) == 1 and paths[0].is_dir() and not any(p.name.endswith(SHARD_SUFFIXES)
                                                         for p in paths[0].iterdir()):
        parts, classes = _folder_parts(paths[0])
    else:
        if len(paths) == 1 and paths[0].is_dir():
            paths = sorted(p for p in paths[0].iterdir() if p.name.endswith(SHARD_SUFFIXES))
        parts = [Part(str(p), n) for p, n in zip(paths, shard_counts(paths))]
        parts = [p for p in parts if p.count]
        classes = class_names_beside(paths[0].parent)
    if not parts:
        raise fail(f"{name} holds no images; point --data at shards with KEY.jpg|png members or an image folder")
    first = list(itertools.islice(_raw_samples(parts, 0, min(PROBE, sum(p.count for p in parts))), PROBE))
    size, channels = _probe_shape(first, image_size, name)
    return ShardStream(parts, size, channels, has_labels=has_field(first[0], "label"),
                       has_captions=carries_captions(first[0]), class_names=classes, name=name,
                       skip_bad=skip_bad, extra_fields=tuple(extra_fields))


def _folder_parts(folder: Path) -> tuple[list[Part], list[str] | None]:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [(str(p.relative_to(folder)), i) for i, c in enumerate(classes)
                 for p in sorted((folder / c).rglob("*")) if p.is_file()]
    else:
        files = [(p.name, None) for p in sorted(folder.iterdir()) if p.is_file()]
    files = [f for f in files if os.path.splitext(f[0])[1].lower() in IMAGE_EXTENSIONS]
    # class folders one after another would put one class in each slot's range: mix the files
    # once (seeded) so that every part holds every class, as a shard written from the folder would
    random.Random(0).shuffle(files)
    chunks = [files[i:i + FOLDER_PART] for i in range(0, len(files), FOLDER_PART)]
    return [Part(str(folder), len(c), c) for c in chunks], classes or None


def shard_counts(paths: list[Path]) -> list[int]:
    """Samples (keys with an image member) per shard, read from the tar headers once and cached
    by (path, size, mtime)."""
    from .cache import cache_dir

    index_path = cache_dir() / "shard-counts.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    counts, changed = [], False
    for p in paths:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in index:
            index[key], changed = _count_shard(p), True
        counts.append(int(index[key]))
    if changed:
        from ..files import atomic_write

        try:
            with atomic_write(index_path, "w") as f:
                f.write(json.dumps(index))
        except OSError:
            pass  # an index we cannot write only costs a recount
    return counts


def _count_shard(path: Path) -> int:
    from webdataset.tariterators import base_plus_ext

    keys = set()
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    key, ext = base_plus_ext(member.name)  # webdataset's own grouping of members by key
                    if ext and ext.lower() in IMAGE_MEMBERS:
                        keys.add(key)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise fail(f"shard {path} is corrupt or unreadable ({type(e).__name__}); fix or remove it") from None
    return len(keys)


def _probe_shape(samples: list[dict], image_size: int | None, name: str) -> tuple[int, int]:
    """(storage side, channels) from the first samples: their one size, else the median shorter side
    capped at 224 (said in one line); RGB when any of them is colour."""
    import io

    from PIL import Image

    sizes, colour = [], False
    for s in samples:
        data = image_bytes(s)
        try:
            with Image.open(io.BytesIO(data)) as img:
                sizes.append(img.size)
                colour |= img.mode not in ("L", "LA", "1", "I", "I;16", "I;16B", "I;16L", "F")
        except Exception:  # noqa: BLE001 - named (or skipped) when it is decoded
            if data is not None and (data[:6] == NPY_MAGIC or data[:4] in TIFF_MAGIC):  # Pillow cannot open these
                try:
                    h, w, c = decode_image(data, name, None).shape
                except BadItem:
                    continue
                sizes.append((w, h))
                colour |= c != 1
    if not sizes:
        raise fail(f"{name}: none of its first {len(samples)} samples is a readable image; check the data")
    if image_size is None:  # one size: stored at its shorter side (centre-cropped if not square)
        image_size = side_for_sizes(sizes, name) or min(sizes[0])
    return image_size, 3 if colour else 1


def read_head(stream: ShardStream, n: int) -> ImageSet:
    """The first ``n`` samples in stored order, decoded (statistics, the collapse watch, the kNN monitor)."""
    samples = []
    for raw in itertools.islice(_raw_samples(stream.parts, 0, len(stream)), n * 2):
        if (sample := _decode(raw, stream)) is not None:
            samples.append(sample)
        if len(samples) == n:
            break
    if not samples:
        raise fail(f"{stream.name}: none of its first samples could be decoded; check the data")
    return _image_set(samples, stream, stream.name + f"[first {len(samples)}]")


def _image_set(samples: list[dict], stream: ShardStream, name: str, skipped: list[str] | None = None) -> ImageSet:
    """Decoded samples as an in-memory set: the image, label and key columns."""
    labels = [s["label"] for s in samples]
    has = stream.has_labels and all(label is not None for label in labels)
    return ImageSet(np.stack([s["image"] for s in samples]), np.asarray(labels, np.int64) if has else None,
                    stream.class_names, name, list(skipped or []), [s["key"] for s in samples])


# ---------------------------------------------------------------- reading samples


def _raw_samples(parts: list[Part], start: int, stop: int) -> Iterator[dict]:
    """Samples ``start ... stop-1`` of the concatenated parts, undecoded (bytes by member name).
    Parts wholly before ``start`` are not opened; samples before it in the first part are read
    but not decoded."""
    offset = 0
    for part in parts:
        lo, hi = max(start - offset, 0), min(stop - offset, part.count)
        offset += part.count
        if hi <= 0 or lo >= part.count or lo >= hi:
            if offset >= stop:
                break
            continue
        yield from itertools.islice(_part_samples(part), lo, hi)
        if offset >= stop:
            break


def _part_samples(part: Part) -> Iterator[dict]:
    if part.files is not None:
        for rel, label in part.files:
            yield file_sample(part.path, rel, label)
        return
    try:
        for sample in shard_samples(part.path):  # the ranges are split here, not by webdataset
            if image_bytes(sample) is not None:  # what the count counted
                yield sample
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise fail(f"shard {part.path} is corrupt or cut short ({type(e).__name__}); fix or remove it") from None


def _decode(raw: dict, stream: ShardStream, bad: list | None = None) -> dict | None:
    """A raw sample's fields by data/samples.py's one reader (key, image as (H, W, C) uint8 at the
    storage size and channels, label, captions when the stream has them), or None for an unreadable
    sample when ``skip_bad`` (its reason appended to ``bad``)."""
    where = f"{raw.get('__url__', stream.name)}:{raw['__key__']}"
    try:
        sample = read_sample(raw, stream.fields, where, require=("label",) if stream.has_labels else (),
                             image_size=stream.image_size)
        sample["image"] = _stream_pixels(sample["image"], stream, where)
        return sample
    except BadItem as e:
        if not stream.skip_bad:
            raise fail(f"{e}; fix or remove it, or pass --skip-bad to skip unreadable items") from None
        if bad is not None:
            bad.append(str(e))
        return None


def _stream_pixels(image: np.ndarray, stream: ShardStream, where: str) -> np.ndarray:
    """A decoded image at the stream's channels, as 8-bit grey or RGB (anything else refused)."""
    if image.dtype != np.uint8 or image.shape[2] not in (1, 3):  # never cut to 8 bits or to RGB here
        raise fail(f"{where} is a {image.dtype} image of {image.shape[2]} channel(s); the streaming loader "
                   "carries 8-bit grey or RGB only: pass --loader memory to keep its depth and bands")
    if image.shape[2] == stream.channels:
        return image
    if stream.channels == 3:  # grey in a colour stream is replicated
        return np.repeat(image, 3, axis=2)
    luma = np.array([0.299, 0.587, 0.114], np.float32)  # colour in a grey stream is its luma
    return np.round(image.astype(np.float32) @ luma)[..., None].astype(np.uint8)


def stream_captions(stream: ShardStream, n: int) -> Iterator[str]:
    """The captions of the first ``n`` samples (images not decoded): what a tokenizer is trained on."""
    for captions in stream_caption_lists(stream, n):
        yield from captions


def stream_caption_lists(stream: ShardStream, n: int) -> Iterator[list[str]]:
    """Each of the first ``n`` samples' captions as one list (images not decoded; unreadable samples skipped)."""
    for raw in _raw_samples(stream.parts, 0, min(n, len(stream))):
        try:
            yield read_sample(raw, ("captions",), raw["__key__"])["captions"]
        except BadItem:
            continue


# ---------------------------------------------------------------- the epoch's order


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * 1_000_003 + int(p) + 1) % (2**63)
    return h


def epoch_parts(parts: list[Part], seed: int, epoch: int, shuffle: bool) -> list[Part]:
    if not shuffle:
        return list(parts)
    order = np.random.default_rng(_seed(seed, epoch)).permutation(len(parts))
    return [parts[i] for i in order]


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer of ``size`` samples (webdataset's approach, seeded here per slot and epoch)."""
    buffer: list[dict] = []
    for s in samples:
        if len(buffer) < size:
            buffer.append(s)
            continue
        i = rng.randrange(size)
        yield buffer[i]
        buffer[i] = s
    rng.shuffle(buffer)
    yield from buffer


class StreamDataset(torch.utils.data.IterableDataset):
    """Whole batches of one epoch of a :class:`ShardStream`, made in DataLoader workers.

    ``train=True``: shuffled, equal full batches per (rank, worker) slot (see the module
    docstring). ``train=False`` (evaluation): every sample once, in stored order within each
    slot, the last batch of a slot short. ``epoch``, ``done`` (batches the consumer already has in
    this epoch) and ``workers`` are set by :class:`StreamLoader` before each epoch."""

    def __init__(self, stream: ShardStream, batch_size: int, seed: int = 0, *, train: bool = True,
                 world: int = 1, rank: int = 0, workers: int = 1, buffer: int = 2000):
        super().__init__()
        self.stream, self.batch_size, self.seed, self.train = stream, batch_size, seed, train
        self.world, self.rank, self.workers, self.buffer = world, rank, max(1, workers), buffer
        self.epoch, self.done = 0, 0

    def slots(self) -> int:
        return self.world * self.workers

    def __len__(self) -> int:  # this rank's batches in an epoch
        if self.train:
            return stream_steps(len(self.stream), self.batch_size, self.world, self.workers)
        return sum(-(-(hi - lo) // self.batch_size) for lo, hi in self._eval_ranges()[self.rank * self.workers:
                                                                                         (self.rank + 1) * self.workers])

    def _eval_ranges(self) -> list[tuple[int, int]]:
        bounds = np.linspace(0, len(self.stream), self.slots() + 1).round().astype(int)
        return list(zip(bounds[:-1], bounds[1:]))

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        workers = info.num_workers if info is not None else 1
        if workers != self.workers:
            raise RuntimeError(f"StreamDataset planned for {self.workers} workers, run with {workers}")
        # rotation: after a resume the first worker serves the batch an uninterrupted epoch would come to next
        logical = (worker + self.done) % workers
        slot = self.rank * workers + logical
        parts = epoch_parts(self.stream.parts, self.seed, self.epoch, self.train)
        if self.train:
            per_slot = len(self.stream) // self.slots()
            batches = per_slot // self.batch_size
            start, stop = slot * per_slot, slot * per_slot + batches * self.batch_size
            skip = self.done // workers + (1 if logical < self.done % workers else 0)
        else:
            start, stop = self._eval_ranges()[slot]
            skip = 0
        samples: Iterator[dict] = _raw_samples(parts, start, stop)
        if self.train:
            samples = _shuffled(samples, self.buffer, random.Random(_seed(self.seed, self.epoch, slot)))
        samples = itertools.islice(samples, skip * self.batch_size, None)  # undecoded: skipping costs only reading
        try:
            while True:
                chunk = list(itertools.islice(samples, self.batch_size))
                if not chunk:
                    return
                yield self._collate(chunk)
        except ReprlearnError as e:  # raised in the main process by take_batch, as one line
            yield {"error": str(e)}

    def _collate(self, chunk: list[dict]) -> dict[str, Any]:
        bad: list[str] = []
        items = [(s["__key__"], d) for s in chunk if (d := _decode(s, self.stream, bad)) is not None]
        # "keys" are the samples' names in their part (KEY, or a folder file's path under it), as before
        if not items:
            raise fail(f"{self.stream.name}: a whole batch of {len(chunk)} samples was unreadable "
                       f"(first: {bad[0] if bad else '?'}); check the data")
        if self.train and len(items) < len(chunk):
            # a skipped sample's place is taken by another of its batch, so that every rank
            # keeps the same number of full batches (no rank waits at the end of the epoch)
            items += [items[i % len(items)] for i in range(len(chunk) - len(items))]
        images = np.stack([d["image"] for _, d in items])
        batch: dict[str, Any] = {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                                 "keys": [k for k, _ in items], "skipped": bad}
        if self.stream.has_labels:
            batch["labels"] = torch.tensor([d["label"] for _, d in items], dtype=torch.long)
        if self.stream.has_captions:
            batch["captions"] = [d["captions"] for _, d in items]
        for name in self.stream.extra_fields:
            batch[name] = [d[name] for _, d in items]
        return batch


class StreamLoader(torch.utils.data.DataLoader):
    """The DataLoader over a :class:`StreamDataset`: one batch per item (made in the workers),
    pinned when training on a GPU, and a state (epoch, batches trained) that Lightning saves in
    every checkpoint and gives back on resume (its stateful-loader protocol)."""

    def __init__(self, dataset: StreamDataset, workers: int, pin_memory: bool, epoch_of=lambda: 0):
        dataset.workers = max(1, workers)
        super().__init__(dataset, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                         persistent_workers=False, prefetch_factor=2 if workers else None)
        self.epoch_of = epoch_of  # the trainer's current epoch, read when an epoch's iteration starts
        self.trained_in_epoch = 0  # counted by the module after each training batch
        self._resume: dict | None = None

    def state_dict(self) -> dict:
        done = self.trained_in_epoch
        return {"epoch": int(self.dataset.epoch), "trained_in_epoch": 0 if done >= len(self) else done}

    def load_state_dict(self, state: dict) -> None:
        self._resume = dict(state)

    def __iter__(self):
        epoch = int(self.epoch_of())
        done = 0
        if self._resume is not None:
            done = int(self._resume.get("trained_in_epoch", 0)) if int(self._resume.get("epoch", -1)) == epoch else 0
            self._resume = None
        self.dataset.epoch, self.dataset.done = epoch, done
        self.trained_in_epoch = done
        return super().__iter__()


def held(images):
    """The images of a set held in memory: all of an ImageSet, the first of a stream (its ``head``):
    what normalisation statistics and the monitors look at."""
    return images.head if isinstance(images, ShardStream) else images


def take_batch(batch: dict) -> dict:
    """A streamed batch as the training or evaluation loop receives it; a worker's error raised here."""
    if "error" in batch:
        raise fail(batch["error"])
    return batch


def default_workers() -> int:
    """DataLoader workers when none are asked for: the CPU cores but one (for the training loop), 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def stream_steps(n: int, batch: int, world: int, workers: int) -> int:
    """Batches each rank trains on in an epoch of ``n`` samples (see StreamDataset)."""
    workers = max(1, workers)
    return workers * (n // (world * workers) // batch)


def eval_batches(stream: ShardStream, batch_size: int = 512, workers: int | None = None) -> Iterator[dict]:
    """Every sample of ``stream`` once, in batches (evaluation: features are extracted from these
    and only the features kept)."""
    workers = default_workers() if workers is None else workers
    dataset = StreamDataset(stream, batch_size, train=False, workers=workers)
    for batch in StreamLoader(dataset, workers, pin_memory=False):
        yield take_batch(batch)


def read_subset(stream: ShardStream, n: int, seed: int) -> ImageSet:
    """``n`` samples of ``stream`` drawn uniformly without replacement (seeded), decoded: the probes'
    training subset (``--eval-max-train``). Every part is read, only the chosen samples decoded."""
    chosen = set(np.random.default_rng(seed).choice(len(stream), n, replace=False).tolist())
    samples, bad = [], []
    for i, raw in enumerate(_raw_samples(stream.parts, 0, len(stream))):
        if i in chosen and (sample := _decode(raw, stream, bad)) is not None:
            samples.append(sample)
    stream.skipped += bad
    return _image_set(samples, stream, f"{stream.name}[{len(samples)} of {len(stream)}]", bad)
