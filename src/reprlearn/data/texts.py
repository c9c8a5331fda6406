"""Text alone, for text methods (``mlm``): ``load_text_data(cfg) -> TextData``.

A text spec is one of
  scenes[:OPTIONS]        every caption of the generated scenes (data/scenes.py; the same
                          OPTIONS as the pair source); the test split is disjoint. Each caption
                          is labelled for the text probe: ``count`` (objects in its scene, 1-3,
                          every caption names it), ``first_colour`` (the colour it names first) and,
                          for one-object scenes, ``shape`` and ``colour``.
  caption shards          every caption (KEY.txt / KEY.json, all five of Flickr8k's) of
                          WebDataset shards, read member by member without decoding the images;
                          a folder of train-*/test-* shards gives its test shards for evaluation.
  FILE.txt (or any other  one text per non-empty line, read line by line.
   plain text file)
  FILE.csv | FILE.tsv     a header row with a text column (CAPTION_COLUMNS, or ?column=NAME);
   [?column=NAME]         a label column (LABEL_COLUMNS) beside it labels the texts for the probe.

Held-out texts: ``--eval-data``, else the source's test split (scenes, a train-/test- shard
folder), else every 10th text of the source (position 9, 19, ...), or, where several texts
describe one item (the captions of one image), every 10th item's texts, so that no held-out text
has a sibling in training. At most ``MAX_TEXTS`` texts are read per split (a line says when
more were there). Text files and shards are read line by line, member by member; a table is read
whole. What training holds is the tokenised texts, ``context_length`` int64 ids each.
A table given as ``--eval-data`` uses the training table's label names: a label the training
table lacks is -1 (not scored), as is an empty label cell.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import fail

MAX_TEXTS = 2_000_000  # per split: 2M texts of 32 tokens are 512 MB of ids
HOLD_OUT_EVERY = 10  # without a test split, every 10th text is held out


@dataclass
class TextSet:
    """Texts and, where the source has them, labels for the text probe: ``tasks`` maps a task name
    to (labels (N,) int64 with -1 where the task does not apply, class names)."""

    texts: list[str]
    name: str
    tasks: dict[str, tuple[np.ndarray, list[str]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    # which item (image) each text describes, where an item has several (scenes, caption shards):
    # evaluation asks whether a text's nearest neighbour describes the same item
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: np.ndarray, name: str | None = None) -> "TextSet":
        return TextSet([self.texts[i] for i in index], name or self.name,
                       {k: (y[index], names) for k, (y, names) in self.tasks.items()},
                       groups=None if self.groups is None else self.groups[index])


@dataclass
class TextData:
    """The text counterpart of RunData: training texts, held-out texts, what ``prepare`` learned."""

    train: TextSet
    eval: TextSet | None
    artifacts: dict[str, Any] = field(default_factory=dict)
    loader: str = "texts tokenised in memory"
    streamed: bool = False

    def captions(self, limit: int = 200_000) -> Iterator[str]:
        """The training texts a tokenizer is trained on (the first ``limit``)."""
        return iter(self.train.texts[:limit])

    @property
    def fit(self) -> TextSet:
        return self.train


def load_text_data(cfg) -> TextData:
    """The run's texts from ``cfg.data`` and ``cfg.eval_data`` (see the module docstring)."""
    train, test = load_texts(cfg.data, "train")
    if cfg.eval_data:
        test = with_label_names_of(train, load_texts(cfg.eval_data, "test")[0])
    elif test is None and len(train) >= 2 * HOLD_OUT_EVERY:
        index = np.arange(len(train))
        # by item where texts share one (an image's captions), so no held-out text has a sibling in training
        position = index if train.groups is None else train.groups
        held = position % HOLD_OUT_EVERY == HOLD_OUT_EVERY - 1
        if held.any() and not held.all():
            what = "text" if train.groups is None else "item's texts"
            train, test = (train.subset(index[~held]),
                           train.subset(index[held], f"{train.name}[every 10th {what} held out]"))
    return TextData(train, test)


def with_label_names_of(train: TextSet, test: TextSet) -> TextSet:
    """``test`` with each task's labels renumbered to ``train``'s class names (a name ``train`` lacks
    becomes -1, not scored): two tables number their labels each in its own sorted order."""
    tasks = dict(test.tasks)
    for task, (y, names) in test.tasks.items():
        if task in train.tasks:
            position = {name: i for i, name in enumerate(train.tasks[task][1])}
            lookup = np.array([position.get(name, -1) for name in names] + [-1], np.int64)
            tasks[task] = (lookup[np.where(y >= 0, y, len(names))], train.tasks[task][1])
    return TextSet(test.texts, test.name, tasks, test.skipped, test.groups)


def load_texts(spec: str, split: str = "train") -> tuple[TextSet, TextSet | None]:
    """(the texts of ``spec``'s ``split``, its own test split when it has one (train only), else None)."""
    from .pairs import caption_shards

    if not isinstance(spec, str) or not spec.strip():
        raise fail("empty text source; give scenes, caption shards, a .txt file (a text per line) or a .csv/.tsv")
    spec = spec.strip()
    head = spec.partition(":")[0]
    if head == "scenes":
        return _scenes(spec, split), (_scenes(spec, "test") if split == "train" else None)
    if head in ("digits", "cifar10") or head.startswith(("digits-", "cifar10-")):
        raise fail(f"{spec} holds images, not text; a text method trains on scenes, caption shards "
                   "(KEY.txt/KEY.json), a .txt file (a text per line) or a .csv/.tsv with a text column")
    if re.search(r"\.(csv|tsv)(\?|$)", spec, re.IGNORECASE):
        return _table(spec), None
    path = Path(spec).expanduser()
    if path.is_file() and not path.name.endswith((".tar", ".tar.gz", ".tgz")):
        return _lines(path), None
    shards = caption_shards(spec, split)
    if shards:
        own_test = None
        if split == "train" and path.is_dir():
            test = caption_shards(spec, "test")
            if test and set(test) != set(shards):
                own_test = _shard_texts(test, f"{spec} (test)")
        return _shard_texts(shards, f"{spec} ({split})" if path.is_dir() else spec), own_test
    raise fail(f"{spec} holds no text: give scenes, shards with KEY.txt/KEY.json captions, a .txt file "
               "(a text per line) or a .csv/.tsv with a text column")


def _scenes(spec: str, split: str) -> TextSet:
    from .pairs import load_pairs
    from .scenes import COLOURS, SHAPES

    pairs = load_pairs(spec, split)
    counts = np.array([len(c) for c in pairs.captions])
    per_caption = lambda a: np.repeat(a, counts)  # noqa: E731 - an image's attribute for each of its captions
    n_objects = per_caption(pairs.attributes["n_objects"])
    single = n_objects == 1
    tasks = {"count": (n_objects - 1, ["one", "two", "three"]),
             "shape": (np.where(single, per_caption(pairs.attributes["shape"]), -1), list(SHAPES)),
             "colour": (np.where(single, per_caption(pairs.attributes["colour"]), -1), list(COLOURS))}
    texts = [c for caps in pairs.captions for c in caps]
    # the colour named first: every caption names one, and with two or three objects a bag of words
    # does not tell which came first
    tasks["first_colour"] = (np.array([_first_of(t, COLOURS) for t in texts]), list(COLOURS))
    return TextSet(texts, f"{pairs.name} captions ({split})", {k: (y.astype(np.int64), n) for k, (y, n) in tasks.items()},
                   groups=np.repeat(np.arange(len(counts)), counts))


def _first_of(text: str, words: list[str]) -> int:
    """The index in ``words`` of the first of them that ``text`` names (-1: none)."""
    where = [(i, k) for k, w in enumerate(words) for i in [f" {text} ".find(f" {w} ")] if i >= 0]
    return min(where)[1] if where else -1


def _lines(path: Path) -> TextSet:
    def read() -> Iterator[str]:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = " ".join(line.split())
                if line:
                    yield line

    try:
        texts = list(itertools.islice(read(), MAX_TEXTS + 1))
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot read {path} as UTF-8 text ({' '.join(str(e).split())[:80]}); give a text file, "
                   "one text per line") from None
    if not texts:
        raise fail(f"{path} holds no text (every line is empty); give a file with one text per line")
    if len(texts) > MAX_TEXTS:
        print(f"{path}: read the first {MAX_TEXTS:,} texts; the file holds more (MAX_TEXTS per split)", flush=True)
    return TextSet(texts[:MAX_TEXTS], str(path))


def _table(spec: str) -> TextSet:
    from .tables import CAPTION_COLUMNS, LABEL_COLUMNS, column, read_table

    file_part, _, query = spec.partition("?")
    wanted = None
    for item in (q for q in query.split("&") if q):
        key, eq, value = item.partition("=")
        if key != "column" or not eq or not value:
            raise fail(f"{spec}: unknown option {item!r}; the only option of a text table is ?column=NAME")
        wanted = value
    table = Path(file_part).expanduser()
    if not table.is_file():
        raise fail(f"table {str(table)!r} does not exist; check the path")
    rows, header = read_table(table)
    col = column(header, (wanted.lower(),) if wanted else CAPTION_COLUMNS)
    if col is None:
        named = f"a column {wanted!r}" if wanted else f"a text column ({', '.join(CAPTION_COLUMNS)})"
        raise fail(f"{table} has no {named}; its header is {', '.join(header) or '(empty)'}; name one with "
                   "?column=NAME")
    label_col = column(header, LABEL_COLUMNS)
    texts, labels = [], []
    for _, line, fields in rows[:MAX_TEXTS]:
        text = " ".join(fields[col].split()) if col < len(fields) else ""
        if not text:
            raise fail(f"{table} line {line}: the text column {header[col]!r} is empty; fill it or drop the row")
        texts.append(text)
        if label_col is not None:
            labels.append(fields[label_col].strip() if label_col < len(fields) else "")
    if not texts:
        raise fail(f"{table} has a header but no rows; give it one text per row")
    tasks = {}
    if label_col is not None:
        names = sorted(set(labels) - {""})  # an empty label cell: the row is not scored (-1)
        lookup = {n: i for i, n in enumerate(names)}
        tasks[header[label_col].lower()] = (np.array([lookup.get(v, -1) for v in labels], np.int64), names)
    _say_if_cut(len(rows), str(table))
    return TextSet(texts, str(table), tasks)


def _say_if_cut(found: int, name: str) -> None:
    if found > MAX_TEXTS:
        print(f"{name}: read the first {MAX_TEXTS:,} of {found:,} texts (MAX_TEXTS per split)", flush=True)


def _shard_texts(shards: list[Path], name: str) -> TextSet:
    from .stream import open_stream, stream_caption_lists

    stream = open_stream(shards, None, False, name)
    texts, groups = [], []
    for i, captions in enumerate(stream_caption_lists(stream, len(stream))):
        texts += captions
        groups += [i] * len(captions)
        if len(texts) >= MAX_TEXTS:
            print(f"{name}: stopped at {MAX_TEXTS:,} captions (MAX_TEXTS per split)", flush=True)
            break
    if not texts:
        raise fail(f"{name} holds no readable captions; give shards with KEY.txt or KEY.json captions")
    return TextSet(texts[:MAX_TEXTS], name, groups=np.array(groups[:MAX_TEXTS]))
