"""A run on disk: its config resolved, its method built from that config, its checkpoint read back.

Everything here is shared by training (engine.train_run), loading (api.load, evaluation)
and the tests; the public face is api.py.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_METHOD, RunConfig, load_yaml, merge_config, run_device
from .errors import ReprlearnError, fail
from .methods import DataInfo, Method
from .methods.lookup import is_user_method, method_class, short_name
from .nets import create_backbone
from .nets.encoder import Encoder

CONFIG_FILE = "config.yaml"
CHECKPOINT = "last.ckpt"


def resolve_config(method: str, overrides: dict[str, Any], config_file: str | None = None,
                   base: dict | None = None, method_file: str | Path | None = None) -> tuple[RunConfig, Any]:
    """Merge base (a saved run) <- config file <- overrides; validate both config levels.

    Keys that are not run options are the method's options (e.g. ``temperature``).
    ``method`` is a registered name or a user's ``FILE.py:ClassName`` (see methods/lookup.py).
    """
    file_layer = load_yaml(config_file) if config_file else {}
    # no method named: the saved run's, else the config file's `method:`, else the default
    name = method or (base or {}).get("method") or file_layer.get("method") or DEFAULT_METHOD
    method_cls = method_class(name, method_file)
    defaults = {} if base else method_cls.run_defaults  # a saved run already holds its values
    layers = [defaults, base or {}, file_layer, overrides]
    return merge_config(name, method_cls.Config, layers)


# ---------------------------------------------------------------- data


def data_info(train) -> DataInfo:
    """Shape, classes and per-channel normalisation of the training images (of a stream: its first images)."""
    from .data.stream import held

    sample = held(train)
    x = sample.images.reshape(-1, train.channels).astype(np.float64) / sample.max_value  # the model's [0, 1]
    std = np.maximum(x.std(axis=0), 1e-3)
    return DataInfo(channels=train.channels, image_size=train.image_size, num_classes=train.num_classes,
                    mean=[float(v) for v in x.mean(axis=0)], std=[float(v) for v in std])


# ---------------------------------------------------------------- models


def resolve_backbone(cfg: RunConfig, info: DataInfo) -> tuple[str, str]:
    """The backbone ``auto`` stands for on this data and device, and why (said when training starts;
    the run then records the name, so loading it elsewhere builds the same network)."""
    if cfg.backbone != "auto":
        return cfg.backbone, "as asked"
    size = info.image_size
    gpu = run_device(cfg) == "cuda"
    if size <= 32:
        return "cnn", f"auto: {size} px images"
    if not gpu and size <= 64:  # resnet18 keeps 64 px at full resolution (CIFAR stem): ~1 min a step on 2 cores
        return "cnn", f"auto: {size} px images on a CPU; --backbone resnet18 for more capacity at ~20x the time"
    return "resnet18", f"auto: {size} px images{' on a GPU' if gpu else ''}"


def backbone_name(cfg: RunConfig, info: DataInfo) -> str:
    return resolve_backbone(cfg, info)[0]


def build_encoder(cfg: RunConfig, info: DataInfo, init_from: str | None = None) -> Encoder:
    """The run's encoder on its seed; ``init_from``: its backbone's weights from that file (training
    with --init-from only: a trained run's weights come from its checkpoint)."""
    from .nets.interop import init_backbone

    torch.manual_seed(cfg.seed)  # the random_init baseline is exactly the weights training starts from
    name = backbone_name(cfg, info)
    backbone = create_backbone(name, in_channels=info.channels, image_size=info.image_size)
    if init_from:
        init_backbone(name, backbone, init_from)
    return Encoder(backbone, info.mean, info.std)


def untrained_encoder(method: Method, cfg: RunConfig, info: DataInfo) -> Encoder:
    """The random-init baseline: the encoder as ``method`` builds it before training, i.e. the method
    rebuilt from its config on the run's seed (a method may set up its encoder: ddpm's noise level,
    flow's identity normalisation), its weights exactly those training started from."""
    return type(method)(method.config, method_encoder(type(method), cfg, info), info, method.view_spec).encoder.eval()


def method_encoder(method_cls: type, cfg: RunConfig, info: DataInfo, init_from: str | None = None) -> Encoder | None:
    """The image encoder a method is built on; None for a text method, which builds its own text
    network first on the run's seed (so its random-init baseline is the weights training starts from)."""
    if method_cls.trains_on_text:
        torch.manual_seed(cfg.seed)
        return None
    return build_encoder(cfg, info, init_from)


def text_data_info() -> DataInfo:
    """A text method's data info: no images; ``prepare`` fills ``text`` with the tokenizer's sizes."""
    return DataInfo(channels=0, image_size=0, num_classes=0, mean=[], std=[])


def build_method(cfg: RunConfig, method_cfg: Any, info: DataInfo, method_file: str | Path | None = None,
                 init_from: str | None = None) -> Method:
    from .augment import preset

    cls = method_class(cfg.method, method_file)
    view_spec = None if cls.trains_on_text else preset(cfg.augment, info.image_size, info.channels)
    return cls(method_cfg, method_encoder(cls, cfg, info, init_from), info, view_spec)


# ---------------------------------------------------------------- train


def new_run_dir(method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{method}-{stamp}"
    i = 1
    while path.exists():
        path = Path("runs") / f"{method}-{stamp}-{i}"
        i += 1
    return path


def read_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of a run, loaded without running any code from the file."""
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / CHECKPOINT if run_dir.is_dir() else run_dir
    if not path.is_file():
        raise fail(f"no checkpoint at {path}; give a run directory written by `reprlearn train`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise fail(f"checkpoint {path} cannot be loaded safely ({type(e).__name__}: {str(e)[:80]})") from None


def load_method(run_dir: str | Path, method_file: str | Path | None = None) -> tuple[Method, RunConfig, DataInfo]:
    """The whole trained method of a run (heads, decoders, teachers), in eval mode.

    A run of a method in a user's file imports that file again, from the path the run
    recorded or from ``method_file``; a checkpoint never carries code.
    """
    ckpt = read_checkpoint(run_dir)
    meta = ckpt.get("reprlearn")
    if not meta:
        raise fail(f"{run_dir} is not a reprlearn checkpoint (no reprlearn metadata)")
    spec = meta["config"]["method"]
    if is_user_method(spec):
        file, _, cls_name = spec.rpartition(":")
        print(f"loading method {cls_name} from {method_file or file} (a user file, not part of reprlearn)",
              file=sys.stderr)
    try:
        cfg, method_cfg = resolve_config(spec, {}, base=meta["config"], method_file=method_file)
    except ReprlearnError as e:
        if not is_user_method(spec) or "unknown option" not in str(e):
            raise
        raise fail(f"{spec.rpartition(':')[2]} no longer matches the config this run was saved with ({e}); "
                   "restore the class as it was, or pass --method-file with the file the run used") from None
    info = DataInfo(**meta["data_info"])
    method = build_method(cfg, method_cfg, info, method_file)
    prefix = "method."
    try:
        method.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    except RuntimeError as e:
        first = " ".join(str(e).split())[:160]
        raise fail(f"the weights of {run_dir} do not fit {short_name(spec)} as it is defined now ({first}); "
                   "restore the class as it was when the run was trained") from None
    method.restore(meta.get("artifacts", {}))
    return method.eval(), cfg, info
