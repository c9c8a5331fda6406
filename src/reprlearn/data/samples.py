"""One reader for every sample: raw members in, named fields out.

A sample is what webdataset calls one: the members of a shard (or the files of a folder) that
share a key, as bytes by extension (``{"__key__": "cat_01", "jpg": b"...", "cls": b"3"}``).
:func:`read_sample` turns it into named fields::

    {"key": "train-000000.tar/cat_01",   # leads back to the sample (ImageSet.keys)
     "image": (H, W, C) array,           # any depth and channel count (data/decode.py)
     "label": 3,                         # from KEY.cls (None when absent and not required)
     "captions": ["a cat", ...],         # from KEY.json ("captions"/"caption") or KEY.txt
     "seg.png": b"...", ...}             # every member no field asked for reads, raw bytes

Only the fields asked for are decoded (a tokenizer reads captions without decoding images).
:data:`FIELDS` is the registry: a new field (e.g. a decoded segmentation mask) is one entry,
and then both loaders carry it: the in-memory one collects it into a column of the set
(``ImageSet.field(name)``), the streaming one into its batches.

What this replaces (the paths that used to be separate):
  in-memory shards, images     sources._decode_shard (wds.WebDataset, IMAGE_MEMBERS without gif)
  in-memory shards, captions   the same, with ``read_extra=pairs.shard_captions``
  in-memory folders            sources.load_folder (its own read_bytes + decode_image)
  streamed samples             stream._decode / stream._image_bytes (IMAGE_MEMBERS with gif),
                               stream._part_samples (its own tar and folder readers),
                               stream_caption_lists (shard_captions again)
Now all read their raw samples with :func:`shard_samples` / :func:`file_sample` and decode them
with :func:`read_sample`; in memory, :func:`decode_shards` collects the fields of every shard
(one process per shard) for :func:`~reprlearn.data.sources.load_shards` (images, labels, keys)
and :func:`~reprlearn.data.pairs.load_pair_shards` (the same plus captions).
The in-memory folder loader (sources.load_folder) reads each file with :func:`file_sample` and
:func:`read_sample` too, as the stream reads a folder's files.
Still separate: the table loaders (sources.load_image_table, pairs.load_csv) decode files
themselves (same decode_image, own error wording); whether shards carry captions is looked up
from tar headers (pairs._has_captions) and from a stream's first sample (open_stream), both by
:func:`carries_captions`; a streamed batch's ``keys`` are the samples' keys within their
shard (curate/scoring.py adds the shard's name), while sets read in memory or from a stream
(read_head, read_subset) carry full keys; digits, CIFAR-10 batches, .npz and scenes are arrays already.
"""

from __future__ import annotations

import json
import os
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import fail
from .decode import BadItem, Collector, decode_image, parse_label

# a sample's image member, by extension (16-bit PNG, TIFF and .npy decode at full depth; GIF its first frame)
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "npy")
READER_VERSION = 1  # part of the shard caches' keys: bump when what read_sample yields changes


@dataclass(frozen=True)
class Field:
    """A named field: the members it is read from and how.

    ``decode(members, where, options)`` gets the sample's members (bytes by extension) and returns
    the value, raising :class:`BadItem` for an unreadable one; it is called only when one of
    ``members`` is present. A sample without them gets ``None`` when the field is ``optional``
    (and not required by the caller), else a skip (or error) saying ``where`` ``missing``."""

    name: str
    members: tuple[str, ...]
    decode: Callable[[dict, str, dict], Any]
    missing: str
    optional: bool = False


def _image(members: dict, where: str, options: dict) -> Any:
    return decode_image(image_bytes(members), where, options.get("image_size"))


def _label(members: dict, where: str, options: dict) -> int:
    return parse_label(members["cls"], where)


def _captions(members: dict, where: str, options: dict) -> list[str]:
    """KEY.json's "captions" (a list) or "caption" (a string), else KEY.txt's non-empty lines."""
    if "json" in members:
        try:
            meta = json.loads(members["json"].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadItem(f"{where}.json is not valid UTF-8 JSON") from None
        raw = meta.get("captions", meta.get("caption")) if isinstance(meta, dict) else None
        if raw is None and "txt" not in members:
            raise BadItem(f"{where}.json has no 'captions' or 'caption' field")
        if raw is not None:
            raw = [raw] if isinstance(raw, str) else raw
            if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
                raise BadItem(f"{where}.json: 'captions' must be a list of strings")
            caps = [" ".join(c.split()) for c in raw]
            if not caps or not all(caps):
                raise BadItem(f"{where}.json has an empty caption")
            return caps
    try:
        text = members["txt"].decode("utf-8")
    except UnicodeDecodeError:
        raise BadItem(f"{where}.txt is not UTF-8 text") from None
    caps = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if not caps:
        raise BadItem(f"{where}.txt is an empty caption")
    return caps


# decoded in this order, cheap ones first: a sample whose caption or label is bad is never decoded
FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("captions", ("json", "txt"), _captions, "has no caption member (KEY.txt or KEY.json)"),
    Field("label", ("cls",), _label, "has no label (.cls) while other samples do", optional=True),
    Field("image", IMAGE_MEMBERS, _image, "has no image member (.jpg/.png)"),
)}


def has_field(members: dict, name: str) -> bool:
    """Whether a raw sample holds a member the field ``name`` is read from."""
    return any(m in members for m in FIELDS[name].members)


def carries_captions(members: dict) -> bool:
    """Whether a raw sample holds captions: a KEY.txt, or a KEY.json with a "captions" or "caption"
    field (a KEY.json of other metadata, as CamVid's shards hold, is not a caption)."""
    if "txt" in members:
        return True
    try:
        meta = json.loads(members["json"].decode("utf-8")) if "json" in members else None
    except (UnicodeDecodeError, ValueError):
        return True  # a caption member that cannot be read: named when it is decoded
    return isinstance(meta, dict) and ("captions" in meta or "caption" in meta)


def image_bytes(members: dict) -> bytes | None:
    """The sample's image member (the first of IMAGE_MEMBERS it has), or None."""
    return next((members[k] for k in IMAGE_MEMBERS if k in members), None)


def sample_key(members: dict) -> str:
    """The key that leads back to a sample: SHARD_FILE_NAME/KEY for a shard's, FOLDER/PATH for a file's."""
    if members.get("__folder__"):
        return str(Path(members["__url__"]) / members["__key__"])
    return f"{Path(members['__url__']).name}/{members['__key__']}"


def read_sample(members: dict, fields: tuple[str, ...] = ("image", "label"), where: str | None = None,
                require: tuple[str, ...] = (), **options) -> dict:
    """A raw sample's named fields: ``key``, each of ``fields`` decoded (registry order), and every
    member none of ``fields`` reads, as raw bytes under its extension. ``require`` makes optional
    fields (the label) required; ``options`` go to the decoders (``image_size``). Raises
    :class:`BadItem` naming ``where`` (default URL:KEY) for an unreadable or missing field."""
    unknown = [f for f in fields if f not in FIELDS]
    if unknown:
        raise fail(f"no sample field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
    where = where or f"{members.get('__url__', '')}:{members['__key__']}"
    if "__unreadable__" in members:
        raise BadItem(f"{where} cannot be read ({members['__unreadable__']})")
    sample: dict[str, Any] = {"key": sample_key(members)}
    for name, spec in FIELDS.items():
        if name not in fields:
            continue
        if has_field(members, name):
            sample[name] = spec.decode(members, where, options)
        elif spec.optional and name not in require:
            sample[name] = None
        else:
            raise BadItem(f"{where} {spec.missing}")
    read = {m for name in fields for m in FIELDS[name].members}  # nothing else is lost: kept raw
    sample.update((k, v) for k, v in members.items() if not k.startswith("__") and k not in read
                  and k not in sample)
    return sample


# ---------------------------------------------------------------- raw samples


def shard_samples(path: str | Path) -> Iterator[dict]:
    """A shard's raw samples in stored order, grouped by key with webdataset's tar reader (without
    its splitting by worker: callers split). Tar errors are the caller's to handle."""
    from webdataset.tariterators import tarfile_samples

    yield from tarfile_samples(iter([{"url": str(path)}]))


def file_sample(folder: str, relative: str, label: int | None) -> dict:
    """One file of an image folder as a raw sample: its bytes under its extension, its class as a
    ``cls`` member (a file that cannot be read: why, for :func:`read_sample` to name)."""
    ext = os.path.splitext(relative)[1].lower().lstrip(".")
    members = {"__key__": relative, "__url__": folder, "__folder__": True}
    try:
        with open(os.path.join(folder, relative), "rb") as f:
            members[ext] = f.read()
    except OSError as e:
        members["__unreadable__"] = e.strerror or type(e).__name__
    if label is not None:
        members["cls"] = str(label).encode()
    return members


# ---------------------------------------------------------------- shards in memory


def decode_shards(paths: list[Path], fields: tuple[str, ...], image_size: int | None, skip_bad: bool,
                  name: str) -> Collector:
    """Every sample of every shard read with :func:`read_sample`, collected into columns (one process
    per shard). A bad sample stops with one line, or is skipped and counted with ``skip_bad``."""
    jobs = [(str(p), fields, image_size, skip_bad) for p in paths]
    if len(jobs) > 1:  # decoding is CPU-bound Pillow work: one process per shard
        with ProcessPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
            parts = list(pool.map(_decode_shard, jobs))
    else:
        parts = [_decode_shard(jobs[0])]
    out = Collector(name, skip_bad)
    for part in parts:
        if isinstance(part, str):  # an error message from the worker
            raise fail(part)
    for samples, skipped in parts:
        for sample in samples:
            out.add(sample.pop("key"), sample.pop("image"), sample.pop("label", None), **sample)
        out.skipped.extend(skipped)
    return out


def _decode_shard(job: tuple) -> tuple[list[dict], list[str]] | str:
    """One shard's samples (only the fields asked for) and skips, or an error message (picklable)."""
    path, fields, image_size, skip_bad = job
    samples, skipped = [], []

    def bad(message: str) -> None:
        if not skip_bad:
            raise BadItem(message)
        skipped.append(message)

    try:
        try:
            for members in shard_samples(path):
                try:
                    sample = read_sample(members, fields, image_size=image_size)
                except BadItem as e:
                    bad(str(e))
                    continue
                samples.append({k: sample[k] for k in ("key", *fields)})
        except (tarfile.TarError, EOFError, zlib.error, OSError, ValueError) as e:
            bad(f"shard {path} is corrupt or cut short after {len(samples)} images ({type(e).__name__})")
    except BadItem as e:
        return f"{e}; fix or remove it, or pass --skip-bad to skip unreadable items"
    return samples, skipped
