"""Image-text pairs, one interface: ``load_pairs(spec, split) -> PairSet``.

A spec is one of
  scenes[:OPTIONS]        generated shapes with compositional captions (see data/scenes.py);
                          OPTIONS, comma-separated: n=4000 (train images), test_n=1000,
                          seed=0, size=32, corrupt=0.0 (train only), single=0.333 (share of
                          one-object train images; the test split always has 40%),
                          captions=3 (wordings per image). e.g. scenes:n=4000,corrupt=0.1
                          split="test" draws with seed + 1,000,003 (disjoint from train).
  FILE.csv | FILE.tsv     a header row naming an image column and a caption column
   [?base=FOLDER]         (IMAGE_COLUMNS, CAPTION_COLUMNS; case-insensitive, first match
                          wins); image paths are relative to FOLDER (default: the file's
                          folder). Several rows with one image give it several captions.
  PATH, GLOB, FOLDER      WebDataset shards (.tar/.tar.gz, comma-separated lists too) with
                          KEY.jpg|png and KEY.txt (each non-empty line a caption) and/or
                          KEY.json ({"captions": [...]} or {"caption": "..."}; json wins).
                          A folder of shards named train-*/test-* gives the ``split`` ones.
  a labelled image source digits, cifar10, shards with KEY.cls (+ classes.txt), a class-per-
                          sub-folder image folder ...: anything ``load_source`` loads with
                          labels. Each image's captions are PROMPT_TEMPLATES filled with its
                          class name (digits: "zero" ... "nine"). ``split`` picks digits:test,
                          cifar10:test, or test-* shards in a folder.

Decoded images and captions are cached together (data/cache.py's folder, keyed by the files'
content), so the second load of a shard set or CSV reads one .npz.
"""

from __future__ import annotations

import os
import re
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path


from ..errors import ReprlearnError, fail
from .cache import cached, content_key
from .decode import BadItem, Collector, decode_image
from .imageset import ImageSet
from .pairset import PairSet, pair_set_arrays, pair_set_from
from .prompts import DIGIT_NAMES, prompts_for
from .scenes import TEST_SEED_OFFSET, make_scenes
from .samples import READER_VERSION, carries_captions, decode_shards
from .sources import SHARD_SUFFIXES, class_names_beside, expand_spec, file_digest, load_source

from .tables import CAPTION_COLUMNS, IMAGE_COLUMNS, column, read_table, split_spec  # noqa: E402
PAIRS_CACHE_VERSION = 1  # bump when pair decoding changes


# ------------------------------------------------------------------ entry points


def load_pairs(spec: str, split: str = "train", image_size: int | None = None, skip_bad: bool = False) -> PairSet:
    """Load image-text pairs by spec (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise fail("empty image-text source; give scenes, a captions .csv/.tsv, caption shards or a labelled source")
    if split not in ("train", "test"):
        raise fail(f"split {split!r} is not train or test")
    spec = spec.strip()
    head, _, options = spec.partition(":")
    if head == "scenes":
        return _scenes(options, split, image_size)
    if _is_table(spec):
        return load_csv(spec, image_size, skip_bad)
    if head in ("digits", "cifar10") and options in ("", "train", "test"):
        return _from_labels(load_source(f"{head}:{options or split}", image_size, skip_bad))
    shards = pair_shards(spec, split)
    if shards and _has_captions(shards[0]):
        named = expand_spec(spec)
        name = f"{spec} ({split})" if len(named) == 1 and named[0].is_dir() else spec
        return load_pair_shards(shards, image_size, skip_bad, name)
    if shards:
        return _from_labels(load_source(",".join(map(str, shards)), image_size, skip_bad))
    return _from_labels(load_source(spec, image_size, skip_bad))


def is_pair_source(spec: str) -> bool:
    """True for sources that carry their own captions: scenes, .csv/.tsv files, shards with .txt/.json."""
    if not isinstance(spec, str) or not spec.strip():
        return False
    spec = spec.strip()
    if spec.partition(":")[0] == "scenes" or _is_table(spec):
        return True
    try:
        shards = pair_shards(spec, "train")
    except ReprlearnError:
        return False
    return bool(shards) and _has_captions(shards[0])


def caption_shards(spec: str, split: str = "train") -> list[Path]:
    """The shards a spec names when they carry captions (what the streaming path can read), else []."""
    spec = (spec or "").strip()
    if not spec or spec.partition(":")[0] in ("scenes", "digits", "cifar10") or _is_table(spec):
        return []
    shards = pair_shards(spec, split)
    return shards if shards and _has_captions(shards[0]) else []


def _is_table(spec: str) -> bool:
    return bool(re.search(r"\.(csv|tsv)(\?|$)", spec, re.IGNORECASE))


def pair_shards(spec: str, split: str) -> list[Path]:
    """The shards a spec names ([] when it names something else); a folder gives its ``split`` shards."""
    paths = expand_spec(spec)
    if len(paths) == 1 and paths[0].is_dir():
        shards = sorted(p for p in paths[0].iterdir() if p.name.endswith(SHARD_SUFFIXES))
        mine = [p for p in shards if re.match(rf"{split}[-_.]", p.name)]
        return mine or shards
    if all(p.is_file() and p.name.endswith(SHARD_SUFFIXES) for p in paths):
        return paths
    return []


def _has_captions(shard: Path, look: int = 64) -> bool:
    """Whether a shard's first members include captions: a .txt, or a .json with a caption field
    (data/samples.py's carries_captions; read with tarfile, lazily)."""
    try:
        with tarfile.open(shard, "r:*") as tar:
            for i, member in enumerate(tar):
                ext = member.name.rpartition(".")[2]
                if member.isfile() and ext in ("txt", "json") and \
                        carries_captions({ext: tar.extractfile(member).read()}):
                    return True
                if i >= look:
                    break
    except (tarfile.TarError, EOFError, OSError, zlib.error):
        return False
    return False


# ------------------------------------------------------------------ scenes


_SCENE_OPTIONS = {"n": int, "test_n": int, "seed": int, "size": int, "corrupt": float, "single": float, "captions": int}


def _scenes(options: str, split: str, image_size: int | None) -> PairSet:
    opts: dict = {"n": 4000, "test_n": 1000, "seed": 0, "size": 32, "corrupt": 0.0, "single": None, "captions": 3}
    for item in (x.strip() for x in options.split(",") if x.strip()):
        if item in ("train", "test"):
            split = item
            continue
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or key not in _SCENE_OPTIONS:
            raise fail(f"scenes option {item!r} is not one of {', '.join(k + '=' for k in _SCENE_OPTIONS)} "
                       "(e.g. scenes:n=4000,seed=0,size=32,corrupt=0.1)")
        try:
            opts[key] = _SCENE_OPTIONS[key](value.strip())
        except ValueError:
            raise fail(f"scenes option {key}={value!r} is not a {_SCENE_OPTIONS[key].__name__}") from None
    size = image_size or opts["size"]
    if split == "test":  # clean captions, a disjoint seed, 40% single-object images for zero-shot
        return make_scenes(opts["test_n"], opts["seed"] + TEST_SEED_OFFSET, size, 0.0, 0.4, opts["captions"])
    return make_scenes(opts["n"], opts["seed"], size, opts["corrupt"], opts["single"], opts["captions"])


# ------------------------------------------------------------------ labelled sources -> prompts


def _from_labels(images: ImageSet) -> PairSet:
    if images.labels is None:
        raise fail(f"{images.name} has no captions and no labels; give an image-text source (scenes, a .csv/.tsv "
                   "with image and caption columns, shards with KEY.txt/KEY.json) or a labelled image source")
    names = images.class_names or [str(c) for c in range(int(images.labels.max()) + 1)]
    if images.name.startswith("digits") and names == [str(d) for d in range(10)]:
        names = list(DIGIT_NAMES)
    names = [" ".join(n.replace("_", " ").split()) for n in names]
    prompts = [prompts_for(n) for n in names]
    captions = [list(prompts[int(y)]) for y in images.labels]
    images = replace(images, class_names=names, skipped=list(images.skipped))
    return PairSet(images, captions, images.name)


# ------------------------------------------------------------------ CSV / TSV


def load_csv(spec: str, image_size: int | None = None, skip_bad: bool = False) -> PairSet:
    """``FILE.csv`` or ``FILE.tsv``, optionally ``?base=FOLDER`` (image paths relative to FOLDER)."""
    table, base = split_spec(spec)
    rows, header = read_table(table)
    img_col = column(header, IMAGE_COLUMNS)
    cap_col = column(header, CAPTION_COLUMNS)
    if img_col is None or cap_col is None:
        missing = " or ".join(w for w, c in (("image", img_col), ("caption", cap_col)) if c is None)
        raise fail(f"{table} has columns {', '.join(map(repr, header)) or 'none'} but no {missing} column; "
                   f"its header must name an image column ({', '.join(IMAGE_COLUMNS)}) "
                   f"and a caption column ({', '.join(CAPTION_COLUMNS)})")
    if not rows:
        raise fail(f"{table} has a header but no rows; add one row per (image, caption)")
    problems: list[str] = []  # found before decoding, in row order; raised (or skipped) first
    groups: dict[str, tuple[str, str, list[str]]] = {}  # resolved path -> (where, as written, captions)
    for n, line, row in rows:
        where = f"{table} row {n} (line {line})"
        if max(img_col, cap_col) >= len(row):
            problems.append(f"{where}: has {len(row)} fields, the header {len(header)}")
            continue
        image, caption = row[img_col].strip(), " ".join(row[cap_col].split())
        resolved = str(base / image)
        if not image:
            problems.append(f"{where}: empty image path")
        elif not caption:
            problems.append(f"{where}: empty caption for {image}")
        elif resolved in groups:
            groups[resolved][2].append(caption)
        elif not os.path.isfile(resolved):
            problems.append(f"{where}: image {image!r} does not exist (looked for {resolved})")
        else:
            groups[resolved] = (where, image, [caption])
    stats = [(r, os.stat(r).st_size, os.stat(r).st_mtime_ns) for r in groups]
    key = content_key("pairs-table", PAIRS_CACHE_VERSION, file_digest(table), str(base), stats, problems,
                      image_size, skip_bad)

    def decode() -> PairSet:
        out = Collector(str(table), skip_bad)
        for p in problems:
            out.bad(p)
        captions: list[list[str]] = []
        for resolved, (where, image, caps) in groups.items():
            where = f"{where}: {image}"
            try:
                array = decode_image(Path(resolved).read_bytes(), where, image_size)
            except BadItem as e:
                out.bad(str(e))
                continue
            before = len(out.images)
            out.add(where, array, None)
            if len(out.images) > before:
                captions.append(caps)
        images, _ = out.arrays()
        return PairSet(ImageSet(images, None, None, str(table), out.skipped), captions, str(table))

    return cached(key, decode, pair_set_arrays, pair_set_from, prefix="pairs-")


# ------------------------------------------------------------------ caption shards


def load_pair_shards(paths: list[Path], image_size: int | None = None, skip_bad: bool = False,
                     name: str = "") -> PairSet:
    """Caption shards in memory: every sample's image, label, key and captions, read by data/samples.py's
    one reader (the reader :func:`~reprlearn.data.sources.load_shards` uses, asked for captions too)."""
    key = content_key("pairs-shards", PAIRS_CACHE_VERSION, READER_VERSION, [file_digest(p) for p in paths],
                      image_size, skip_bad)

    def decode() -> PairSet:
        out = decode_shards(paths, ("image", "label", "captions"), image_size, skip_bad, name)
        images, labels = out.arrays()
        classes = class_names_beside(paths[0].parent) if labels is not None else None
        return PairSet(ImageSet(images, labels, classes, name, out.skipped, out.keys), out.columns["captions"], name)

    return cached(key, decode, pair_set_arrays, pair_set_from, prefix="pairs-")
