"""Command line: argument parsing only; every command calls the public API.

    reprlearn train METHOD [options]     train, then print the evaluation table
    reprlearn eval RUN_DIR [options]     evaluate a run, write RUN_DIR/eval.json
    reprlearn embed RUN_DIR --data SOURCE --out FILE.npy   (and FILE.parquet beside it)
    reprlearn export RUN_DIR --format safetensors|torchscript|onnx --out PATH
    reprlearn sample RUN_DIR [--n 64] [--class C] --out FILE.png
    reprlearn reconstruct RUN_DIR --data SOURCE --out FILE.png
    reprlearn zeroshot RUN_DIR --data SOURCE [--classes FILE_OR_LIST]   zero-shot classification (clip, siglip)
    reprlearn search RUN_DIR --index SOURCE --query TEXT [--query-image PATH] [--k 8] [--out SHEET.png]
    reprlearn shards SOURCE --out DIR [--image-size N] [--shard-size 10000] [--workers N]   write WebDataset shards
    reprlearn curate score POOL --model RUN_DIR --out DIR      CLIP score of every pair of a pool
    reprlearn curate filter SCORES --keep RULE ... --out KEPT  keep the pairs the rules keep
    reprlearn curate experiment [POOL] --out DIR               filter, train at a fixed budget, compare
    reprlearn experiment NAME [--data SOURCE] [--seeds 3] --out DIR   measure a published claim
    reprlearn experiment --list          the experiments, with the data and time each needs
    reprlearn methods                    list the registered methods
    reprlearn --version                  the installed version

`reprlearn COMMAND --help` lists a command's options; `reprlearn train METHOD --help` adds the method's own.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from pathlib import Path
from typing import Any

# only light modules here: `reprlearn --help`, `--version` and `methods` must not wait for torch
from . import __version__
from .errors import ReprlearnError, fail
from .registry import did_you_mean, read_catalog


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are one line (no usage dump) with the closest valid names, and no
    abbreviations: ``--epoch`` is refused, not taken for ``--epochs``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def add_argument(self, *args, **kwargs):
        if "metavar" not in kwargs and kwargs.get("action", "store") in ("store", "append") \
                and "choices" not in kwargs:  # argparse would show the name in capitals (--knn-k KNN_K)
            kwargs["metavar"] = _value_name(args[-1].lstrip("-"), kwargs.get("type"))
        return super().add_argument(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        known = self._long_options() | {"help"}
        for arg in args[:args.index("--") if "--" in args else len(args)]:
            # a misspelled option is named first, not reported as the option it was meant for missing
            if arg.startswith("--") and arg[2:].split("=", 1)[0] not in known:
                self.error(self._unknown(arg))
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(self._unknown(extras[0]))
        return parsed

    def error(self, message: str):  # noqa: D401
        choice = re.match(r"(argument [^:]+): invalid choice: '(.*)' \(choose from (.*)\)$", message)
        if choice:  # argparse's "invalid choice" of a sub-command or a choices= option, with a suggestion
            head, word, listed = choice.groups()
            names = re.findall(r"'([^']*)'", listed) or [n.strip() for n in listed.split(",")]
            listing = f"choose one of: {', '.join(names)}"
            message = f"{head}: invalid choice {word!r}" + did_you_mean(word, names, listing)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _unknown(self, arg: str) -> str:
        if not arg.startswith("-"):
            return f"unexpected argument {arg!r}"
        flag = arg.split("=", 1)[0]
        return f"unknown option {flag}" + did_you_mean(flag.lstrip("-"), self._long_options(), prefix="--")

    def _long_options(self) -> set[str]:
        """Every --option of this parser and of its sub-commands' parsers, without the dashes."""
        names = set()
        for action in self._actions:
            names |= {o[2:] for o in action.option_strings if o.startswith("--")}
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    names |= sub._long_options() if isinstance(sub, _Parser) else set()
        return names


def _value_name(name: str, typ: Any) -> str:
    """What an argument's value is, for --help: N, FLOAT, SOURCE, RUN_DIR ... (as config.py names fields)."""
    if typ is int:
        return "N"
    if typ is float:
        return "FLOAT"
    names = {"run_dir": "RUN_DIR", "data": "SOURCE", "source": "SOURCE", "pool": "SOURCE", "classes": "FILE_OR_LIST"}
    return names.get(name.replace("-", "_"), "TEXT" if name.startswith(("query", "template")) else name.upper())


# flags handled by the command itself, not stored in RunConfig
_SPECIAL = {"out", "config", "resume", "options", "method"}
# data sources: several paths after the flag are one comma list
_SOURCES = {"data", "eval-data", "target-data", "target-eval-data"}


def _add_fields(parser: argparse.ArgumentParser, cls: type, title: str) -> None:
    """One flag per documented field of a config dataclass; the values are checked by config.build,
    which says what a field accepts (argparse only collects the strings)."""
    from .config import describe_fields

    group = parser.add_argument_group(title)
    for field in describe_fields(cls):
        flag = field.flag
        if flag in _SPECIAL:
            continue
        help_text = field.help.replace("%", "%%")  # argparse formats help with %
        if field.placeholder is None:  # a switch: --flag / --no-flag; help shows the one that changes something
            group.add_argument(f"--{flag}", dest=flag, action="store_const", const=True, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS if field.default else help_text)
            group.add_argument(f"--no-{flag}", dest=flag, action="store_const", const=False, default=argparse.SUPPRESS,
                               help=f"do not: {help_text}" if field.default else argparse.SUPPRESS)
        elif flag in _SOURCES:  # an unquoted glob reaches us as several paths: one source list
            group.add_argument(f"--{flag}", dest=flag, metavar=field.placeholder, nargs="+", action=_JoinSources,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(f"--{flag}", dest=flag, metavar=field.placeholder, default=argparse.SUPPRESS,
                               help=help_text)


class _JoinSources(argparse.Action):
    """``--data a.tar b.tar`` (what the shell makes of ``--data *.tar``) means the list ``a.tar,b.tar``."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, ",".join(values))


@functools.cache
def _method_names() -> tuple[str, ...]:
    return tuple(read_catalog("reprlearn.methods"))  # parsed from the source once per process


def _check_method(method: str) -> None:
    """A misspelled method is refused by name, before its options are looked for."""
    if method in _method_names():
        return
    from .methods.lookup import is_user_method

    if not is_user_method(method):
        raise fail(f"unknown method {method!r}" + did_you_mean(method, _method_names(), "choose one of: "
                   f"{', '.join(_method_names())}; or FILE.py:ClassName, a Method subclass in your own file"))


def _train_parser(method: str | None) -> argparse.ArgumentParser:
    from .config import DEFAULT_METHOD, RunConfig
    from .methods.lookup import method_class, short_name

    p = _Parser(prog="reprlearn train", usage="reprlearn train [METHOD] [options]",
                description="Train a method, then evaluate it (unless --no-eval). Options come from the method's "
                "defaults, then --config FILE.yaml, then the flags, each later one winning.")
    p.add_argument("method", nargs="?", metavar="METHOD", help=f"one of: {', '.join(_method_names())}; or "
                   f"FILE.py:ClassName, a Method subclass in your own file (see docs/adding-a-method.md); "
                   f"default: {DEFAULT_METHOD}")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/METHOD-TIMESTAMP)")
    p.add_argument("--config", metavar="FILE.yaml", help="options from a YAML file (flags override it)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_fields(p, RunConfig, "run options")
    shown = method or DEFAULT_METHOD  # no method named: the default method's options are accepted
    _add_fields(p, method_class(shown).Config,
                f"{short_name(shown)} options" + ("" if method else " (the default method)"))
    return p


def _flag_value(argv: list[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--flag VALUE`` or ``--flag=VALUE``), before argparse runs."""
    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag] + \
             [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    return values[-1] if values else None


def _implied_method(argv: list[str]) -> str | None:
    """No method named: the resumed run's (``--out RUN --resume``), else the ``method`` key of
    ``--config FILE``; so that its options are accepted, and it is the method trained."""
    from .config import load_yaml
    from .runs import CONFIG_FILE

    out, config = _flag_value(argv, "--out"), _flag_value(argv, "--config")
    files = ([Path(out) / CONFIG_FILE] if out and "--resume" in argv else []) + ([Path(config)] if config else [])
    for file in files:
        method = load_yaml(file).get("method") if file.is_file() else None
        if isinstance(method, str):
            return method
    return None


def _cmd_train(argv: list[str]) -> int:
    method = argv[0] if argv and not argv[0].startswith("-") else None
    implied = None if method else _implied_method(argv)
    if method or implied:
        _check_method(method or implied)
    args = vars(_train_parser(method or implied).parse_args(argv))
    from .api import train  # after the arguments are checked: a typo does not wait for the whole library

    name = args.pop("method") or implied
    out, config, resume = args.pop("out"), args.pop("config"), args.pop("resume")
    overrides: dict[str, Any] = {k.replace("-", "_"): v for k, v in args.items()}
    train(name, out=out, config=config, resume=resume, **overrides)
    return 0


def _cmd_eval(argv: list[str]) -> int:
    from .api import evaluate_run
    from .evaluate import format_table

    p = _Parser(prog="reprlearn eval", description="Evaluate a trained run; writes RUN_DIR/eval.json.")
    p.add_argument("run_dir")
    p.add_argument("--data", help="evaluation data (default: the run's evaluation data)")
    p.add_argument("--labels-per-class", type=int, help="labelled images per class for the low-label probes")
    p.add_argument("--finetune", action="store_true", help="also fine-tune the backbone with a linear head")
    p.add_argument("--anomaly-class", type=int, help="score test images by reconstruction error / negative ELBO "
                   "and report the AUROC of this class (train with --exclude-class C)")
    p.add_argument("--iwae-k", type=int, default=50, help="importance samples for the IWAE bound (VAEs)")
    p.add_argument("--method-file", metavar="FILE.py", help="a run of a method in a user file: import it from here "
                   "instead of the path the run recorded")
    p.add_argument("--knn-k", type=int, help="neighbours of the kNN probe (default: the run's, 200)")
    p.add_argument("--knn-temperature", type=float, help="temperature of the kNN votes (default: the run's, 0.1; "
                   "DINO uses 0.07)")
    p.add_argument("--probe-backend", choices=("torch", "sklearn"), help="linear probe and PCA: torch on the "
                   "run's device (default) or sklearn, the former CPU path")
    p.add_argument("--linear-c", type=float, help="fix the linear probe's C (sklearn's meaning; 1 is sklearn's "
                   "default) instead of sweeping its L2 weight on a validation split")
    p.add_argument("--no-baseline-cache", dest="baseline_cache", action="store_false", default=None,
                   help="score the baselines afresh instead of reusing an earlier evaluation's scores of "
                   "byte-identical inputs")
    a = p.parse_args(argv)
    if a.labels_per_class is not None and a.labels_per_class < 1:
        p.error(f"--labels-per-class must be >= 1, got {a.labels_per_class}")
    if a.iwae_k < 1:
        p.error(f"--iwae-k must be >= 1, got {a.iwae_k}")
    if a.knn_k is not None and a.knn_k < 1:
        p.error(f"--knn-k must be >= 1, got {a.knn_k}")
    if a.knn_temperature is not None and not a.knn_temperature > 0:
        p.error(f"--knn-temperature must be > 0, got {a.knn_temperature}")
    if a.linear_c is not None and not a.linear_c > 0:
        p.error(f"--linear-c must be > 0, got {a.linear_c}")
    result = evaluate_run(a.run_dir, eval_data=a.data, labels_per_class=a.labels_per_class,
                          finetune=a.finetune or None, anomaly_class=a.anomaly_class, iwae_k=a.iwae_k,
                          method_file=a.method_file, knn_k=a.knn_k, knn_temperature=a.knn_temperature,
                          probe_backend=a.probe_backend, linear_c=a.linear_c, baseline_cache=a.baseline_cache)
    print(format_table(result))
    return 0


def _cmd_embed(argv: list[str]) -> int:
    from .api import write_embeddings

    p = _Parser(prog="reprlearn embed", description="Write the (N, D) features of a data source to a .npy file "
                "and, beside it, a Parquet table (key, embedding[, label]; key = each image's path, "
                "SHARD_FILE_NAME/KEY or NAME:SPLIT/INDEX) for pandas, pyarrow or DuckDB. Images are stored at the "
                "run's own image size, as in training.")
    p.add_argument("run_dir", help="a run directory, or a .safetensors file written by `reprlearn export`")
    p.add_argument("--data", required=True, help="images to embed (any data source)")
    p.add_argument("--out", required=True, metavar="FILE.npy")
    p.add_argument("--image-size", type=int, metavar="N", help="the run's image size (the default); another size "
                   "is refused, since the run's features are only right at its own")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and count them")
    p.add_argument("--method-file", metavar="FILE.py", help="a run of a method in a user file: import it from here")
    a = p.parse_args(argv)
    if a.image_size is not None and a.image_size < 1:
        p.error(f"--image-size must be >= 1, got {a.image_size}")
    features, paths = write_embeddings(a.run_dir, a.data, a.out, a.method_file, a.image_size, a.skip_bad)
    print(f"wrote {features.shape[0]} x {features.shape[1]} features to {' and '.join(map(str, paths))}")
    return 0


def _cmd_export(argv: list[str]) -> int:
    from .api import export
    from .export import FORMATS

    p = _Parser(prog="reprlearn export", description="Write a run's encoder (heads dropped) in a standard format: "
                "safetensors (weights + a JSON to rebuild it; timm/torchvision-layout copy for resnet18/50 and "
                "the ViTs), torchscript or onnx (a graph from float images in [0, 1], normalisation inside, any "
                "batch size; clip/siglip: both towers and the tokenizer).")
    p.add_argument("run_dir")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, metavar="PATH", help="FILE.safetensors, FILE.pt (torchscript) or FILE.onnx")
    p.add_argument("--method-file", metavar="FILE.py", help="a run of a method in a user file: import it from here")
    a = p.parse_args(argv)
    for path in export(a.run_dir, a.format, a.out, a.method_file):
        print(f"wrote {path}")
    return 0


def _cmd_sample(argv: list[str]) -> int:
    from .api import sample_images

    p = _Parser(prog="reprlearn sample", description="Samples from a generative run's prior, as a PNG grid.")
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--class", dest="cls", type=int, help="the class to generate (cvae)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, metavar="FILE.png")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    print(f"wrote {sample_images(a.run_dir, a.out, n=a.n, cls=a.cls, seed=a.seed)}")
    return 0


def _cmd_reconstruct(argv: list[str]) -> int:
    from .api import reconstruct_images

    p = _Parser(prog="reprlearn reconstruct", description="Images beside their reconstructions, as a PNG grid.")
    p.add_argument("run_dir")
    p.add_argument("--data", required=True, help="images to reconstruct (any data source)")
    p.add_argument("--n", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--out", required=True, metavar="FILE.png")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error(f"--n must be >= 1, got {a.n}")
    print(f"wrote {reconstruct_images(a.run_dir, a.data, a.out, n=a.n)}")
    return 0


def _cmd_zeroshot(argv: list[str]) -> int:
    from .api import zeroshot

    p = _Parser(prog="reprlearn zeroshot", description="Zero-shot classification with an image-text run: each "
                "class's prompts are embedded by the text tower and every image gets the closest class.")
    p.add_argument("run_dir")
    p.add_argument("--data", help="labelled images (default: the run's held-out data; on scenes the shape and "
                   "colour tasks of single-object images)")
    p.add_argument("--classes", help="class names in label order: a file (one per line) or a comma list "
                   "(default: the source's classes.txt / class names)")
    p.add_argument("--template", action="append", dest="templates", metavar="TEXT",
                   help="a prompt template with {} for the class name (repeatable; default: the built-in set)")
    a = p.parse_args(argv)
    result = zeroshot(a.run_dir, data=a.data, classes=a.classes, templates=a.templates)
    for name, task in result["tasks"].items():
        print(f"{name:12s} top1 {task['top1']:.3f}  top5 {task['top5']:.3f}  chance {task['chance']:.3f}  "
              f"({task['images']} images, {task['classes']} classes)")
    print(f"{'mean':12s} top1 {result['zeroshot_top1']:.3f}  chance {result['zeroshot_chance']:.3f}")
    return 0


def _cmd_shards(argv: list[str]) -> int:
    from .data.shards import FORMATS, write_shards

    p = _Parser(prog="reprlearn shards", description="Write any image or image-caption source as WebDataset "
                "shards (KEY.jpg + KEY.cls / KEY.txt, classes.txt); a rerun keeps the shards already written.")
    p.add_argument("source", help="images or pairs to write (any data source)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--image-size", type=int, help="store every image at this side (shorter side, centre crop)")
    p.add_argument("--shard-size", type=int, default=10000, help="images per shard (default 10000)")
    p.add_argument("--workers", type=int, default=1, help="processes encoding shards in parallel (default 1)")
    p.add_argument("--format", choices=FORMATS, default="jpg", help="jpg (quality 95) or png (lossless)")
    p.add_argument("--split", choices=("train", "test"), default="train", help="shard names: SPLIT-000000.tar")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images and count them")
    a = p.parse_args(argv)
    paths = write_shards(a.source, a.out, a.image_size, a.shard_size, a.workers, a.format, a.split, a.skip_bad)
    print(f"{len(paths)} shards in {a.out}")
    return 0


def _cmd_search(argv: list[str]) -> int:
    from .api import search
    from .search import contact_sheet

    p = _Parser(prog="reprlearn search", description="Search with any run: the images of --index closest (cosine) to "
                "a query image or a row of the index (every image run), or to a text (clip, siglip); an index of "
                "a source is saved in RUN_DIR/search/ and reused. A text run (mlm) searches texts.")
    p.add_argument("run_dir")
    p.add_argument("--index", required=True, metavar="SOURCE", help="images to search (any data source), or a "
                   ".npy/.parquet written by `reprlearn embed` with this run (not embedded again); for a text run "
                   "(mlm), texts (scenes, caption shards, .txt, .csv)")
    p.add_argument("--query", action="append", default=[], metavar="TEXT", help="a text query (repeatable; "
                   "clip, siglip, mlm)")
    p.add_argument("--query-image", action="append", default=[], metavar="PATH", help="an image query (repeatable)")
    p.add_argument("--query-key", action="append", default=[], metavar="KEY", help="the index's row with this key "
                   "(a path as `search` prints it) as the query, by its stored feature (repeatable)")
    p.add_argument("--k", type=int, default=8, help="results per query (default 8)")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images of --index and count them")
    p.add_argument("--out", metavar="SHEET.png", help="also draw the results as a contact sheet, paths under images")
    a = p.parse_args(argv)
    hits, images = search(a.run_dir, a.index, a.query, a.query_image, k=a.k, query_keys=a.query_key,
                          skip_bad=a.skip_bad)
    titles = [*a.query, *a.query_image, *a.query_key]
    for title, row in zip(titles, hits):
        print(f"query: {title}")
        for h in row:
            where = h.key if h.key is not None else f"item {h.index}"
            print(f"  {h.rank:3d}. score {h.score:.3f}  {where}" + (f"  {h.caption}" if h.caption else ""))
    if a.out and images is None:
        print("no contact sheet: a text run's results are texts (listed above)")
    elif a.out:
        print(f"wrote {contact_sheet(titles, hits, images, a.out)}")
    return 0


def _cmd_curate(argv: list[str]) -> int:
    from .api import curate_experiment, curate_filter, curate_score
    from .curate.experiment import DEFAULT_SAMPLES_SEEN, format_rows

    p = _Parser(prog="reprlearn curate", description="DataComp-style curation: score a pool of image-text pairs, "
                "filter it, and compare filters by training at a fixed number of samples seen.")
    sub = p.add_subparsers(dest="step", required=True, parser_class=_Parser)
    s = sub.add_parser("score", help="CLIP score of every pair (Parquet + image embeddings; resumable)")
    s.add_argument("pool", help="pairs to score: caption shards, a .csv/.tsv, scenes[:OPTIONS]")
    s.add_argument("--model", required=True, metavar="RUN_DIR", help="a clip or siglip run")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--batch-size", type=int, default=256)
    s.add_argument("--devices", type=int, default=1, help="scoring processes, each on its own parts (and GPU)")
    f = sub.add_parser("filter", help="keep the pairs every --keep rule keeps")
    f.add_argument("scores", metavar="SCORES", help="a directory written by `reprlearn curate score`")
    f.add_argument("--keep", action="append", required=True, metavar="RULE",
                   help="none, clip-score:top=F, clip-score:min=X, image-based[:clusters=K], dedup:cos=C, "
                   "min-words=N, min-chars=N; A&B both, A|B either; repeated rules are intersected")
    f.add_argument("--out", required=True, metavar="KEPT", help="kept keys: FILE.parquet or a text list")
    f.add_argument("--target", metavar="SOURCE", help="image-based: images whose clusters are kept, or a .npy of "
                   "their embeddings (default: the pool's test split)")
    f.add_argument("--write-shards", metavar="DIR", help="also write the kept pairs as WebDataset shards")
    f.add_argument("--clusters", type=int, default=100, help="k-means clusters of image-based rules that name "
                   "none (default 100)")
    f.add_argument("--seed", type=int, default=0, help="k-means seed")
    e = sub.add_parser("experiment", help="score, filter by each strategy, train clip on each, evaluate")
    e.add_argument("pool", nargs="?", help="the pool (default: scenes:corrupt=0.5)")
    e.add_argument("--eval", metavar="SOURCE", help="clean held-out pairs (default: the scenes pool's test split)")
    e.add_argument("--samples-seen", type=int, default=DEFAULT_SAMPLES_SEEN, help="every run's budget")
    e.add_argument("--model", metavar="RUN_DIR", help="the scoring run (default: one trained on --seed-data)")
    e.add_argument("--seed-data", metavar="SOURCE", help="clean pairs to train the scorer on "
                   "(default for scenes: scenes:n=1000,seed=1)")
    e.add_argument("--strategy", action="append", default=[], metavar="NAME=RULE", help="an extra strategy")
    e.add_argument("--target", metavar="SOURCE", help="image-based target (default: the evaluation images)")
    e.add_argument("--clusters", type=int, default=20, help="k-means clusters of image-based (default 20)")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a training option for every run (e.g. batch_size=256, text_width=128)")
    e.add_argument("--corrupt", type=float, metavar="F", help="first give this share of the pool's images another "
                   "image's captions (a real caption source; the corrupted keys are recorded)")
    e.add_argument("--seed-size", type=int, default=0, metavar="N", help="with --corrupt: hold N clean pairs of "
                   "the pool apart as the scorer's seed data")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--out", required=True, metavar="DIR")
    a = p.parse_args(argv)
    if a.step == "score":
        r = curate_score(a.pool, a.model, a.out, a.batch_size, a.devices)
        print(f"scored {r['pairs']} pairs of {a.pool} in {a.out} ({r['scored_now']} of {len(r['parts'])} parts now, "
              f"{r['seconds']:.1f} s); {r['skipped']} unreadable items skipped"
              + (f", listed in {a.out}/skipped.txt (first: {r['first_skipped']})" if r["skipped"] else ""))
    elif a.step == "filter":
        r = curate_filter(a.scores, a.keep, a.out, a.target, a.write_shards, a.seed, a.clusters)
        print(f"kept {r['kept']} of {r['pool']} pairs ({r['kept'] / max(r['pool'], 1):.1%}) in {a.out}"
              + (f"; {r['corrupted_kept']} of {r['corrupted']} corrupted pairs kept" if "corrupted" in r else "")
              + (f"; {r['shards']} shards in {a.write_shards}" if a.write_shards else ""))
    else:
        strategies, options = {}, {}
        for item, into, what in [(s, strategies, "--strategy NAME=RULE") for s in a.strategy] + \
                [(o, options, "--option KEY=VALUE") for o in a.option]:
            k, eq, v = item.partition("=")
            if not eq or not k:
                p.error(f"{item!r} is not {what}")
            into[k.strip()] = v.strip()
        rows = curate_experiment(a.out, a.pool, eval_spec=a.eval, samples_seen=a.samples_seen, model=a.model,
                                 seed_data=a.seed_data, strategies=strategies, target=a.target,
                                 clusters=a.clusters, train_options=options, seed=a.seed, corrupt=a.corrupt,
                                 seed_size=a.seed_size)
        print(format_rows(rows))
        print(f"wrote {a.out}/table.csv and {a.out}/table.png")
    return 0


def _cmd_experiment(argv: list[str]) -> int:
    # experiments are protocols on top of the API (a layer above it, as this CLI is)
    from .experiments import experiment_list, run_experiment

    p = _Parser(prog="reprlearn experiment", description="Measure a published claim with a small fixed protocol "
                "over seeds; writes table.csv, chart.png and summary.md with the effect, its spread and the verdict.")
    p.add_argument("name", nargs="?", help="the experiment (see --list)")
    p.add_argument("--list", action="store_true", help="list the experiments, their data and time on 2 CPU cores")
    p.add_argument("--data", metavar="SOURCE", help="the data (default: the experiment's own, see --list)")
    p.add_argument("--seeds", default="3", metavar="N", help="seeds 0..N-1 (default 3; the verdict needs >= 2)")
    p.add_argument("--out", metavar="DIR", help="where the table, chart and summary go")
    a = p.parse_args(argv)
    if a.list:
        for e in experiment_list():
            data = "/".join(e["data_choices"])
            print(f"{e['name']:22s} {e['claim']}\n{'':22s} data: {data} (default {e['data']}); time: {e['cost']}")
        return 0
    if not a.name:
        p.error("give an experiment NAME, or --list")
    if not a.out:
        p.error("give --out DIR for the table, chart and summary")
    try:
        seeds = int(a.seeds)
    except ValueError:
        seeds = a.seeds
    r = run_experiment(a.name, a.out, a.data, seeds)
    sd = "n/a" if r["effect_sd"] != r["effect_sd"] else f"{r['effect_sd']:.4g}"
    print(f"{r['experiment']} on {r['data']}: effect {r['effect_mean']:+.4g} ± {sd} over {r['seeds']} seeds "
          f"({r['effect']}) -> {r['verdict']}")
    print(f"wrote {a.out}/table.csv, {a.out}/chart.png and {a.out}/summary.md")
    return 0


def _cmd_methods(argv: list[str]) -> int:
    # read from the source (methods.CATALOG and each module's docstring): no torch, under a second
    _Parser(prog="reprlearn methods", description="List the registered methods, each with its paper.").parse_args(argv)
    for name, (_, description) in read_catalog("reprlearn.methods").items():
        print(f"{name:16s} {description}")
    return 0


COMMANDS = {"shards": _cmd_shards, "train": _cmd_train, "eval": _cmd_eval, "embed": _cmd_embed,
            "export": _cmd_export, "sample": _cmd_sample,
            "reconstruct": _cmd_reconstruct, "zeroshot": _cmd_zeroshot, "search": _cmd_search,
            "curate": _cmd_curate, "experiment": _cmd_experiment, "methods": _cmd_methods}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(f"reprlearn {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in COMMANDS:
        what = "option" if argv[0].startswith("-") else "command"
        print(f"reprlearn: error: unknown {what} {argv[0]!r}"
              + did_you_mean(argv[0], COMMANDS, f"choose one of: {', '.join(COMMANDS)} (see reprlearn --help)"),
              file=sys.stderr)
        return 2
    # Lightning's banners are quieted where the trainer is made (engine.make_trainer), for the API too
    try:
        return COMMANDS[argv[0]](argv[1:])
    except BrokenPipeError:  # `reprlearn methods | head`: the reader left, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ReprlearnError as e:
        print(f"reprlearn: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
