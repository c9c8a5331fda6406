"""Data sources, one interface: ``load_source(spec) -> ImageSet``.

A spec is one of
  digits[:train|:test]    scikit-learn's 8x8 digits (embedded; fixed stratified split)
  digits-m[:train|:test]  the digits coloured and blended onto natural-image patches (MNIST-M's way)
  cifar10-shifted[:train|:test]  CIFAR-10 under a fixed colour transform and blur (data/domains.py)
  cifar10[:train|:test]   a local copy ($REPRLEARN_CIFAR10: shards or the python batches),
                          else the official archive, downloaded once and checksum-verified
  PATH or GLOB            WebDataset shards (.tar/.tar.gz with KEY.jpg|png [+ KEY.cls]);
                          several may be joined with commas
  FOLDER                  an image folder, one sub-folder per class (or flat, unlabelled); its
                          files images (16-bit PNG and TIFF of any band count kept deep) or .npy
                          arrays, one image each (data/decode.py)
  FILE.npz                arrays 'images' (N,H,W[,C]: uint8, uint16, other integers in 0..65535,
                          or floats in [0, 1]) and optional 'labels'
  FILE.csv | FILE.tsv     a header naming an image column (paths relative to the file, or to
                          ?base=FOLDER) and optionally a label column

Decoded images are cached as arrays (uint8, uint16 or float32) keyed by the files' content, so
no run decodes the same data twice.

Every image carries a key that leads back to it (``ImageSet.keys``):
  a folder's file          its path, the folder as given joined with the file's path under it
  a .csv/.tsv row          the image's path (resolved against the table's folder or ?base=)
  a WebDataset sample      SHARD_FILE_NAME/KEY, e.g. train-000003.tar/000123 (the sample's
                           members are KEY.jpg, KEY.cls ... inside that shard)
  digits, cifar10, digits-m, cifar10-shifted, FILE.npz
                           NAME:SPLIT/INDEX (FILE.npz/INDEX): the INDEX-th image of that source
"""

from __future__ import annotations

import glob
import os
import pickle
import re
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import fail
from .cache import cached, content_key
from .domains import cifar10_shifted, digits_m, is_domain_source, patch_shard
from .decode import BadItem, Collector, IMAGE_EXTENSIONS, as_pixels, decode_image, storage_size
from .imageset import ImageSet, stratified_split
from .samples import READER_VERSION, decode_shards, file_sample, read_sample

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"


def load_source(spec: str, image_size: int | None = None, skip_bad: bool = False) -> ImageSet:
    """Load a data source by its spec (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise fail("empty data source; give --data digits, cifar10, a shard glob, a folder or an .npz file")
    spec = spec.strip()
    name, _, split = spec.partition(":")
    if name in ("digits", "cifar10") and split in ("", "train", "test"):
        split = split or "train"
        images = _digits(split) if name == "digits" else _cifar10(split, skip_bad)
        return resize_set(with_index_keys(images), image_size)
    if is_domain_source(name) and split in ("", "train", "test"):
        return resize_set(with_index_keys(_shifted_domain(name, split or "train", skip_bad)), image_size)
    if re.search(r"\.(csv|tsv)(\?|$)", spec, re.IGNORECASE):
        return load_image_table(spec, image_size, skip_bad)
    paths = expand_spec(spec)
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        shards = sorted(p for p in folder.iterdir() if p.name.endswith(SHARD_SUFFIXES))
        if shards:
            return load_shards(shards, image_size, skip_bad, name=str(folder))
        return load_folder(folder, image_size, skip_bad)
    if len(paths) == 1 and paths[0].suffix == ".npz":
        return resize_set(with_index_keys(load_npz(paths[0])), image_size)
    not_shards = [p for p in paths if not p.name.endswith(SHARD_SUFFIXES)]
    if not_shards:
        raise fail(f"{not_shards[0]} is not a shard (.tar, .tar.gz), folder or .npz file; "
                   "give --data digits, cifar10, a shard glob, an image folder or an .npz file")
    return load_shards(paths, image_size, skip_bad, name=spec)


def streamable_paths(spec: str) -> list[Path] | None:
    """The shard files or the image folder a spec names (what the streaming path can read), or None
    for a source that is in memory anyway (digits, an .npz, CIFAR-10 from its python batches)."""
    spec = (spec or "").strip()
    name, _, split = spec.partition(":")
    if name == "digits" and split in ("", "train", "test"):
        return None
    if name == "cifar10" and split in ("", "train", "test"):
        local = os.environ.get("REPRLEARN_CIFAR10")
        shards = sorted(Path(local).expanduser().glob(f"{split or 'train'}-*.tar*")) if local else []
        return shards or None
    paths = expand_spec(spec)
    if len(paths) == 1 and paths[0].is_dir():
        return paths
    if all(p.name.endswith(SHARD_SUFFIXES) for p in paths):
        return paths
    return None


def expand_spec(spec: str) -> list[Path]:
    """A source spec's paths: comma-separated parts, each with brace lists (``train-{000000..000127}.tar``,
    ``{a,b}.tar``) and globs expanded (sorted); a one-line error for a missing one."""
    from braceexpand import braceexpand

    paths: list[Path] = []
    parts = [p.strip() for p in re.split(r",(?![^{]*\})", spec) if p.strip()]  # commas outside braces
    for part in (q for p in parts for q in braceexpand(p)):
        part = os.path.expanduser(part)
        if any(ch in part for ch in "*?["):
            matches = sorted(glob.glob(part))
            if not matches:
                raise fail(f"no files match {part!r}; check the path and the pattern")
            paths.extend(Path(m) for m in matches)
        elif not os.path.exists(part):
            raise fail(f"data path {part!r} does not exist; check the path (or use digits / cifar10)")
        else:
            paths.append(Path(part))
    if not paths:
        raise fail(f"data source {spec!r} names no files")
    return paths


def resize_set(images: ImageSet, image_size: int | None) -> ImageSet:
    """``images`` resized to ``image_size`` px square (antialiased bilinear); None keeps them."""
    if image_size is None or image_size == images.image_size:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images.images).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    x = x.clamp(0, images.max_value).permute(0, 2, 3, 1)
    dtype = images.images.dtype
    resized = np.ascontiguousarray(x.numpy()) if dtype == np.float32 else x.round().numpy().astype(dtype)
    return replace(images, images=resized, skipped=list(images.skipped))


def fit_to(images: ImageSet, image_size: int, channels: int, where: str) -> ImageSet:
    """``images`` as a run trained at ``image_size`` px on ``channels`` channels takes them: resized
    (when they are not at that size already), grey replicated to RGB; any other channel change refused."""
    images = resize_set(images, image_size)
    if images.channels == channels:
        return images
    if (images.channels, channels) == (1, 3):
        return replace(images, images=np.repeat(images.images, 3, axis=-1), skipped=list(images.skipped))
    raise fail(f"{where} has {images.channels}-channel images but the run was trained on {channels}-channel ones; "
               f"give {channels}-channel images, or use a run trained on these")


def with_index_keys(images: ImageSet) -> ImageSet:
    """A named or in-memory source's keys: NAME/INDEX (``digits:test/17``), stable because its order is."""
    images.keys = [f"{images.name}/{i}" for i in range(len(images))]
    return images


# ---------------------------------------------------------------- digits


def _digits(split: str) -> ImageSet:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # pixel values are 0..16; scale to the 0..255 range every other source uses
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train, test = stratified_split(labels, len(labels), fraction=0.2, seed=0)
    index = train if split == "train" else test
    return ImageSet(images[index], labels[index], [str(d) for d in range(10)], f"digits:{split}")


def _shifted_domain(name: str, split: str, skip_bad: bool) -> ImageSet:
    """digits-m or cifar10-shifted (data/domains.py) built from their named sources."""
    if name == "digits-m":
        shard = patch_shard()
        return digits_m(_digits(split), split, file_digest(shard),
                        lambda: load_shards([shard], None, False, name=str(shard)).images)
    return cifar10_shifted(_cifar10(split, skip_bad), split)


# ---------------------------------------------------------------- npz


def load_npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise fail(f"{path} has no 'images' array (found: {', '.join(f.files) or 'nothing'}); "
                           "save images as np.savez(path, images=..., labels=...)")
            images = f["images"]
            labels = f["labels"] if "labels" in f else None
    except (OSError, ValueError, zlib.error) as e:
        raise fail(f"{path} is not a readable .npz file ({str(e)[:60]})") from None
    try:
        images = as_pixels(images, f"{path}: 'images'")
    except BadItem as e:
        raise fail(str(e)) from None
    return ImageSet(images, labels, None, str(path))


# ---------------------------------------------------------------- image folder


def load_folder(folder: Path, image_size: int | None, skip_bad: bool) -> ImageSet:
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [(p, i) for i, c in enumerate(classes) for p in sorted((folder / c).rglob("*")) if p.is_file()]
    else:
        files = [(p, None) for p in sorted(folder.iterdir()) if p.is_file()]
    files = [(p, c) for p, c in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise fail(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS[:4])} ...); "
                   "put images in one sub-folder per class")
    if image_size is None:  # photos of mixed sizes are stored at one size, not refused
        image_size = storage_size([p for p, _ in files], str(folder))
    stats = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in files]
    key = content_key("folder", stats, image_size, skip_bad)

    def decode() -> ImageSet:
        out = Collector(str(folder), skip_bad)
        for path, label in files:
            relative = str(path.relative_to(folder))
            try:  # the reader the stream reads a folder's files with (data/samples.py)
                sample = read_sample(file_sample(str(folder), relative, label), ("image", "label"), str(path),
                                     image_size=image_size)
            except BadItem as e:
                out.bad(str(e))
                continue
            out.add(relative, sample["image"], sample["label"], where=str(path))
        images, labels = out.arrays()
        return ImageSet(images, labels, classes or None, str(folder), out.skipped, out.keys)

    # the cache holds paths under the folder (its key does too); the key is the path as the user gave the folder
    images = cached(key, decode)
    images.keys = [str(folder / k) for k in images.keys or []] or None
    return images


# ---------------------------------------------------------------- CSV / TSV lists of image paths


def load_image_table(spec: str, image_size: int | None, skip_bad: bool) -> ImageSet:
    """``FILE.csv|tsv[?base=FOLDER]``: a header naming an image column and, optionally, a label column
    (integers, or class names numbered in sorted order); other columns are ignored."""
    from .tables import IMAGE_COLUMNS, LABEL_COLUMNS, column, read_table, split_spec

    table, base = split_spec(spec)
    rows, header = read_table(table)
    img_col, label_col = column(header, IMAGE_COLUMNS), column(header, LABEL_COLUMNS)
    if img_col is None:
        raise fail(f"{table} has columns {', '.join(map(repr, header)) or 'none'} but no image column; its header "
                   f"must name one ({', '.join(IMAGE_COLUMNS)}), and may name a label ({', '.join(LABEL_COLUMNS)})")
    if not rows:
        raise fail(f"{table} has a header but no rows; add one row per image")
    entries, problems = [], []
    for n, line, row in rows:
        where = f"{table} row {n} (line {line})"
        need = max(img_col, label_col if label_col is not None else 0)
        if need >= len(row) or not row[img_col].strip():
            problems.append(f"{where}: no image path")
            continue
        path = base / row[img_col].strip()
        if not path.is_file():
            problems.append(f"{where}: image {row[img_col].strip()!r} does not exist (looked for {path})")
            continue
        entries.append((where, path, (row[label_col].strip() or None) if label_col is not None else None))
    names = sorted({e[2] for e in entries if e[2] is not None}) if label_col is not None else []
    numeric = bool(names) and all(re.fullmatch(r"\d+", v) for v in names)
    classes = None if numeric or not names else names
    if image_size is None:
        image_size = storage_size([p for _, p, _ in entries], str(table))
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns, y) for _, p, y in entries]
    key = content_key("table", file_digest(table), stats, problems, image_size, skip_bad)

    def decode() -> ImageSet:
        out = Collector(str(table), skip_bad)
        for problem in problems:
            out.bad(problem)
        for where, path, value in entries:
            label = None if value is None else (int(value) if numeric else names.index(value))
            try:
                image = decode_image(path.read_bytes(), f"{where}: {path.name}", image_size)
            except BadItem as e:
                out.bad(str(e))
                continue
            out.add(str(path), image, label, where=where)
        images, labels = out.arrays()
        return ImageSet(images, labels, classes, str(table), out.skipped, out.keys)

    return cached(key, decode)


# ---------------------------------------------------------------- WebDataset shards


def load_shards(paths: list[Path], image_size: int | None, skip_bad: bool, name: str,
                fields: tuple[str, ...] = ()) -> ImageSet:
    """Shards in memory: every sample's image, label and key, read by data/samples.py's one reader;
    other registered ``fields`` (data/samples.py FIELDS) asked for become the set's columns."""
    # the names are in the key too: an image's key is SHARD_FILE_NAME/KEY
    key = content_key("shards", READER_VERSION, [(p.name, file_digest(p)) for p in paths], image_size, skip_bad,
                      *([list(fields)] if fields else []))

    def decode() -> ImageSet:
        out = decode_shards(paths, ("image", "label", *fields), image_size, skip_bad, name)
        images, labels = out.arrays()
        return ImageSet(images, labels, class_names_beside(paths[0].parent), name, out.skipped, out.keys,
                        out.fields())

    return cached(key, decode)


def file_digest(path: Path) -> str:
    """SHA-1 of a file's bytes (cache keys follow content, not names or times)."""
    import hashlib

    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def class_names_beside(folder: Path) -> list[str] | None:
    """The class names in ``folder/classes.txt`` (one a line, in label order), or None."""
    names = folder / "classes.txt"
    if names.is_file():
        return [line.strip() for line in names.read_text().splitlines() if line.strip()]
    return None


# ---------------------------------------------------------------- CIFAR-10 by name


def _cifar10(split: str, skip_bad: bool) -> ImageSet:
    local = os.environ.get("REPRLEARN_CIFAR10")
    if local:
        root = Path(local).expanduser()
        if not root.exists():
            raise fail(f"REPRLEARN_CIFAR10={local!r} does not exist; point it at a CIFAR-10 copy or unset it")
        shards = sorted(root.glob(f"{split}-*.tar*"))
        if shards:
            return load_shards(shards, None, skip_bad, name=f"cifar10:{split}")
        batches = root / "cifar-10-batches-py" if (root / "cifar-10-batches-py").is_dir() else root
        return _cifar_batches(batches, split)
    archive = _download_cifar()
    extracted = archive.parent / "cifar-10-batches-py"
    if not extracted.is_dir():
        with tarfile.open(archive) as tar:
            tar.extractall(archive.parent, filter="data")
    return _cifar_batches(extracted, split)


def _cifar_batches(folder: Path, split: str) -> ImageSet:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for n in names:
        path = folder / n
        if not path.is_file():
            raise fail(f"{path} is missing; REPRLEARN_CIFAR10 must hold shards or the python batches")
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")  # the official format; only from a verified archive
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return ImageSet(np.concatenate(images), np.concatenate(labels), classes, f"cifar10:{split}")


def _download_cifar() -> Path:
    import hashlib
    import urllib.request

    from .cache import cache_dir

    target = cache_dir() / "cifar10" / "cifar-10-python.tar.gz"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    print(f"downloading CIFAR-10 from {CIFAR_URL} (163 MB) ...")
    try:
        urllib.request.urlretrieve(CIFAR_URL, tmp)
    except OSError as e:
        raise fail(f"could not download CIFAR-10 ({e}); set REPRLEARN_CIFAR10 to a local copy") from None
    digest = hashlib.md5(tmp.read_bytes()).hexdigest()
    if digest != CIFAR_MD5:
        tmp.unlink()
        raise fail(f"CIFAR-10 download has checksum {digest}, expected {CIFAR_MD5}; try again later")
    os.replace(tmp, target)
    return target
