"""Typed configs: dataclasses whose fields carry their own help and limits.

Every option is declared once with :func:`option` (default, help, accepted values),
and the same declaration drives the CLI flags, YAML loading, validation and the
one-line errors. A run saves its resolved :class:`RunConfig` (with the method's own
config nested under ``options``) as YAML beside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .augment.spec import PRESETS
from .errors import fail
from .nets.registry import list_backbones
from .optim import OPTIMIZERS
from .registry import did_you_mean

LOGGERS = ("csv", "tensorboard", "mlflow", "wandb")  # --logger: Lightning's loggers of those trackers
DEFAULT_METHOD = "simclr"  # what `reprlearn train` trains when no method is named

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NONE = {"none", "null", "~", ""}


def option(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
           max: float | None = None, above: float | None = None, numbers_as_text: bool = False) -> Any:
    """Declare a config field: default, help text and accepted values.

    ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound; ``numbers_as_text``:
    a text option that also takes a bare number (``time_budget: 600`` in YAML or Python).
    """
    meta = {"help": help, "choices": choices, "min": min, "max": max, "above": above,
            "numbers_as_text": numbers_as_text}
    return field(default=default, metadata=meta)


def _describe(f: dataclasses.Field, typ: Any) -> str:
    """What an option accepts, in words, for error messages and --help."""
    m = f.metadata
    base, optional = _unwrap(typ)
    if m.get("choices"):
        text = "one of " + ", ".join(str(c) for c in m["choices"])
    elif base is bool:
        text = "true or false"
    elif base in (int, float):
        kind = "an integer" if base is int else "a number"
        lo = m.get("min")
        above = m.get("above")
        hi = m.get("max")
        if above is not None and hi is not None:
            text = f"{kind} > {above} and <= {hi}"
        elif above is not None:
            text = f"{kind} > {above}"
        elif lo is not None and hi is not None:
            text = f"{kind} from {lo} to {hi}"
        elif lo is not None:
            text = f"{kind} >= {lo}"
        elif hi is not None:
            text = f"{kind} <= {hi}"
        else:
            text = kind
    else:
        text = "a string"
    return text + (" (or none)" if optional else "")


def _unwrap(typ: Any) -> tuple[Any, bool]:
    """Return (base type, optional?) for X, X | None, Optional[X]."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        return args[0], True
    return typ, False


def _coerce(name: str, value: Any, f: dataclasses.Field, typ: Any) -> Any:
    base, optional = _unwrap(typ)
    bad = fail(f"bad value {value!r} for option '{name}': expected {_describe(f, typ)}")
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE and base is not str):
        if optional:
            return None
        raise bad
    if isinstance(value, str) and optional and base is str and value.strip().lower() in ("none", "null"):
        return None
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if base is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise bad from None
        if not isinstance(value, int):
            raise bad
    elif base is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise bad from None
        if not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise bad
        value = float(value)
    elif base is str:
        if f.metadata.get("numbers_as_text") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise bad
    elif base is dict:
        if not isinstance(value, dict):
            raise bad
        return value
    m = f.metadata
    if m.get("choices") and value not in m["choices"]:
        raise bad
    if base in (int, float):
        if m.get("min") is not None and value < m["min"]:
            raise bad
        if m.get("max") is not None and value > m["max"]:
            raise bad
        if m.get("above") is not None and value <= m["above"]:
            raise bad
    return value


def build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    """Make a ``cls`` from a mapping, coercing strings and validating every field.

    Unknown keys, bad types and out-of-range values each raise a one-line error
    naming the option and what it accepts.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in fields:
            known = sorted(n.replace("_", "-") for n in fields)
            raise fail(f"unknown option '{key}'{where}"
                       + did_you_mean(key.replace("_", "-"), known, f"known options: {', '.join(known)}"))
        kwargs[name] = _coerce(name.replace("_", "-"), value, fields[name], hints[name])
    obj = cls(**kwargs)
    for name, f in fields.items():  # defaults are validated too, so a bad default cannot hide
        if name not in kwargs:
            _coerce(name.replace("_", "-"), getattr(obj, name), f, hints[name])
    if hasattr(obj, "check"):
        obj.check()
    return obj


class FieldHelp(typing.NamedTuple):
    """One option as the command line shows it."""

    flag: str  # --flag name (hyphens)
    default: Any
    help: str  # the text, what it accepts and its default, once
    placeholder: str | None  # the value's name in --help: N, FLOAT, {a,b}, SOURCE ...; None for a switch


# what a free-text option's value is, for --help (numbers and choices name themselves by their type)
_PLACEHOLDERS = {"data": "SOURCE", "eval_data": "SOURCE", "target_data": "SOURCE", "target_eval_data": "SOURCE",
                 "init_from": "PATH", "tokenizer": "PATH", "text_init": "RUN_DIR", "backbone": "NAME",
                 "method": "NAME", "logger": "LIST", "mlflow_uri": "URI"}


def _placeholder(f: dataclasses.Field, typ: Any) -> str | None:
    base, _ = _unwrap(typ)
    if f.metadata.get("choices"):
        return "{" + ",".join(str(c) for c in f.metadata["choices"]) + "}"
    if base is bool:
        return None
    return {int: "N", float: "FLOAT"}.get(base) or _PLACEHOLDERS.get(f.name, "TEXT")


def describe_fields(cls: type) -> list[FieldHelp]:
    """Each documented field as the command line shows it.

    The help says what the option accepts where the placeholder does not (a range, "or none")
    and its default, once: a help text that already explains its default keeps its own words,
    and a default of none (the option is off) goes unsaid.
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help")
        if not text:
            continue
        typ = hints[f.name]
        base, optional = _unwrap(typ)
        if f.metadata.get("choices"):  # the placeholder lists them
            text += "; or none" if optional else ""
        elif base in (int, float) and _describe(f, typ) not in ("an integer", "a number"):
            text += f"; {_describe(f, typ)}"  # a range, or "or none"
        if f.default is not None and "(default" not in text and not isinstance(f.default, bool):
            text += f" (default: {f.default})"
        out.append(FieldHelp(f.name.replace("_", "-"), f.default, text, _placeholder(f, typ)))
    return out


@dataclass
class RunConfig:
    """Everything about a training run except the method's own options."""

    method: str = option(DEFAULT_METHOD, "the method to train (see `reprlearn methods`), or FILE.py:ClassName")
    data: str = option("digits", "training data: digits, cifar10, a shard path/glob, an image folder or an .npz")
    eval_data: str | None = option(None, "evaluation data (default: the source's test split, or a 10% hold-out)")
    target_data: str | None = option(None, "a second domain's training images, for domain methods (domain-invariant): "
                                     "a source, or auto (digits -> digits-m, cifar10 -> cifar10-shifted)")
    target_eval_data: str | None = option(None, "held-out target-domain images (default: the target's test split, "
                                          "or a 10% hold-out)")
    image_size: int | None = option(None, "resize every image to this side (needed for folders of mixed sizes)", min=4, max=1024)
    exclude_class: int | None = option(None, "train without this class (anomaly detection; evaluated on it)", min=0)
    skip_bad: bool = option(False, "skip unreadable images and count them instead of stopping")
    loader: str = option("auto", "data path: memory (decoded once, batches index it on the device), stream (shards or "
                         "a folder read by DataLoader workers), or auto (memory when it fits)",
                         choices=("auto", "memory", "stream"))
    workers: int | None = option(None, "DataLoader workers of the streaming path (default: CPU cores - 1, at most 8)",
                                 min=0, max=256)
    shuffle_buffer: int = option(2000, "samples in each streaming worker's shuffle buffer", min=1, max=1 << 24)
    backbone: str = option("auto", "backbone: auto (cnn for images <= 32 px, else resnet18), a registered one "
                           f"({', '.join(list_backbones())}), or timm:NAME, any timm model (needs reprlearn[timm])")
    init_from: str | None = option(None, "initialise the backbone from this file: a reprlearn export (.safetensors), "
                                   "a reprlearn checkpoint, or a torchvision/timm-layout state dict (.safetensors, "
                                   ".pth); shapes must match exactly")
    augment: str = option("auto", "view preset", choices=PRESETS)
    epochs: int = option(150, "training epochs", min=1, max=100000)
    max_steps: int | None = option(None, "a budget of optimiser steps instead of --epochs (the schedules span it)", min=1)
    time_budget: str | None = option(None, "end training after this much time, with a checkpoint, then evaluate: 30m, "
                                     "2h, 90s or seconds; the schedules span the steps a timed warm-up says fit "
                                     "(unless --epochs, --max-steps or --samples-seen fix the length)",
                                     numbers_as_text=True)
    samples_seen: int | None = option(None, "a budget of samples seen instead of --epochs: optimiser steps x global "
                                      "batch x accumulate, rounded up to whole steps", min=1)
    batch_size: int = option(256, "global batch size (split across devices)", min=2, max=1 << 20)
    optimizer: str = option("adamw", "optimiser", choices=tuple(OPTIMIZERS))
    lr: float = option(2e-3, "peak learning rate (after warm-up)", above=0.0, max=100.0)
    weight_decay: float = option(1e-4, "weight decay", min=0.0, max=1.0)
    momentum: float = option(0.9, "SGD/LARS momentum", min=0.0, max=1.0)
    warmup_epochs: int = option(10, "epochs of linear learning-rate warm-up before the cosine decay", min=0, max=100000)
    accumulate: int = option(1, "gradient accumulation steps", min=1, max=1024)
    grad_clip: float | None = option(None, "clip the gradient norm to this value", above=0.0)
    precision: str = option("32", "numeric precision", choices=("32", "bf16-mixed", "16-mixed"))
    accelerator: str = option("auto", "device kind", choices=("auto", "cpu", "gpu", "cuda", "mps"))
    devices: int = option(1, "devices per node", min=1, max=1024)
    num_nodes: int = option(1, "nodes", min=1, max=100000)
    strategy: str = option("auto", "distribution strategy: single (one device), ddp, fsdp, or auto (single for one "
                           "device, else ddp)", choices=("auto", "single", "ddp", "fsdp"))
    seed: int = option(0, "random seed (initialisation, data order and views)", min=0, max=2**31 - 1)
    checkpoint_every: int = option(10, "write a checkpoint every N epochs (and always at the end)", min=1, max=100000)
    checkpoint_steps: int | None = option(None, "also write a checkpoint every N optimiser steps (mid-epoch)", min=1)
    knn_monitor: bool = option(False, "online kNN accuracy on the evaluation data after each epoch")
    eval: bool = option(True, "evaluate after training")
    finetune: bool = option(False, "also fine-tune the backbone with a linear head in the evaluation")
    labels_per_class: int = option(5, "labelled images per class for the low-label probes", min=1, max=100000)
    eval_max_train: int | None = option(20000, "at most this many training images for the probes (random subset)", min=10)
    knn_k: int = option(200, "neighbours of the kNN probe (lightly's and solo-learn's CIFAR-10 value)", min=1)
    knn_temperature: float = option(0.1, "temperature t of the kNN votes exp(sim / t) (DINO uses 0.07)", above=0.0)
    probe_backend: str = option("torch", "linear probe and PCA: torch on the run's device, or sklearn (former path)",
                                choices=("torch", "sklearn"))
    linear_c: float | None = option(None, "fix the linear probe's C (as sklearn's) instead of the L2 sweep", above=0.0)
    baseline_cache: bool = option(True, "reuse the baselines' scores (raw pixels, PCA, random init) from an earlier "
                                  "evaluation of byte-identical inputs with the same options and probe code")
    progress: bool = option(True, "show a progress bar")
    logger: str = option("csv,tensorboard", "experiment trackers, a comma list of csv, tensorboard, mlflow, wandb "
                         "(mlflow and wandb are the extras reprlearn[mlflow] and reprlearn[wandb])")
    mlflow_uri: str | None = option(None, "MLflow tracking URI (default: the local file store mlruns/ beside the "
                                    "run directory)")
    options: dict = field(default_factory=dict)  # the method's own config, as a dict

    def check(self) -> None:
        if self.backbone != "auto" and self.backbone not in list_backbones() and not self.backbone.startswith("timm:"):
            raise fail(f"bad value {self.backbone!r} for option 'backbone': expected auto, one of "
                       f"{', '.join(list_backbones())}, or timm:NAME")
        names = [n.strip() for n in self.logger.split(",")]
        bad = [n for n in names if n not in LOGGERS]
        if bad or not names:
            raise fail(f"bad value {self.logger!r} for option 'logger': expected a comma list of {', '.join(LOGGERS)}")
        if self.max_steps is not None and self.samples_seen is not None:
            raise fail("give one budget: --max-steps or --samples-seen, not both")
        if self.strategy == "single" and self.devices * self.num_nodes > 1:
            raise fail(f"strategy single trains on one device, not {self.devices * self.num_nodes}; use ddp or fsdp")
        if self.time_budget is not None:
            parse_duration(self.time_budget)  # a malformed budget is refused before any data is read
        if self.strategy == "fsdp" and self.precision == "16-mixed":
            raise fail("option 'precision' 16-mixed is not supported with fsdp here; use bf16-mixed or 32")


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | int | float) -> float:
    """Seconds in a duration: ``90s``, ``30m``, ``2h``, ``1.5h``, ``1d`` or plain seconds (``600``)."""
    raw = str(text).strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise fail(f"bad value {text!r} for option 'time-budget': expected a positive duration such as 90s, 30m, "
                   "2h or plain seconds")
    return seconds


def run_device(cfg: RunConfig) -> str:
    """"cuda" when the run may use a GPU and one is there (``--accelerator auto|gpu|cuda``), else "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "cpu"


def step_budget(cfg: RunConfig) -> int | None:
    """The run's budget in optimiser steps (--max-steps, or --samples-seen in whole steps), or None: epochs."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    if cfg.samples_seen is not None:
        return -(-cfg.samples_seen // (cfg.batch_size * cfg.accumulate))
    return None


def merge_config(method: str, method_config: type, layers: list[dict]) -> tuple[RunConfig, Any]:
    """Merge option layers, each later one winning (a method's run defaults, a saved run, a
    config file, the flags) into a validated :class:`RunConfig` and the method's own config.

    A key that is not a run option is the method's (e.g. ``temperature``); a layer's
    ``options`` mapping holds method options too (as a saved run stores them). A key that
    is neither is refused before anything runs, with every valid key listed.
    """
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"options"}
    method_fields = {f.name for f in dataclasses.fields(method_config)}
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for layer in layers:
        where = f" in config file {layer.source}" if isinstance(layer, ConfigFile) else ""
        layer = dict(layer)
        nested = layer.pop("options", None) or {}
        _check_keys(layer, run_fields | method_fields, where, method, run_fields, method_fields)
        _check_keys(nested, method_fields, f"{where} under 'options'", method, set(), method_fields)
        options.update(nested)
        for key, value in layer.items():
            (merged if key.replace("-", "_") in run_fields else options)[key] = value
    merged["method"] = method
    cfg = build(RunConfig, merged)
    method_cfg = build(method_config, options, where=f" for method {cfg.method} (or the run)")
    cfg.options = dataclasses.asdict(method_cfg)
    return cfg, method_cfg


def _check_keys(layer: dict, valid: set[str], where: str, method: str, run_keys: set[str],
                method_keys: set[str]) -> None:
    """One line for a key no option has: the closest valid keys, then all of them (run, then method)."""
    for key in layer:
        name = str(key).replace("-", "_")
        if name in valid:
            continue
        lists = ([f"run options: {', '.join(sorted(run_keys))}"] if run_keys else []) + \
                [f"{method.rpartition(':')[2]} options: {', '.join(sorted(method_keys)) or 'none'}"]
        raise fail(f"unknown option '{key}'{where}" + did_you_mean(name, valid, f"valid keys: {'; '.join(lists)}"))


def save_yaml(path: Path, data: dict, header: str = "") -> None:
    """``data`` as YAML, after ``header`` (comment lines, ignored when the file is read back);
    dict(): a ConfigFile saves as a plain mapping."""
    path.write_text(header + yaml.safe_dump(dict(data), sort_keys=False))


class ConfigFile(dict):
    """The mapping of a YAML config file, which remembers the file (errors about its keys name it)."""

    def __init__(self, data: dict, source: str):
        super().__init__(data)
        self.source = source


def load_yaml(path: str | Path) -> ConfigFile:
    p = Path(path)
    if not p.is_file():
        raise fail(f"config file {str(p)!r} not found; give the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise fail(f"config file {str(p)!r} is not valid YAML{where}; fix its syntax") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise fail(f"config file {str(p)!r} must hold a mapping of option: value")
    return ConfigFile(data, str(p))
