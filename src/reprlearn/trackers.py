"""Experiment trackers (``--logger csv,tensorboard,mlflow,wandb``), through Lightning's own loggers.

- csv: ``RUN/logs/metrics.csv`` (always cheap, always there by default);
- tensorboard: ``RUN/tb/`` event files;
- mlflow: a local file store, ``mlruns/`` beside the run directory, so every run under ``runs/``
  is one experiment in one store (``mlflow ui --backend-store-uri runs/mlruns``), or ``--mlflow-uri``
  (e.g. ``sqlite:///mlflow.db`` where sqlalchemy is installed, or a tracking server). MLflow 3 keeps
  the file store in maintenance mode behind ``MLFLOW_ALLOW_FILE_STORE``, which is set for a file URI;
- wandb: offline (files under ``RUN/wandb/``, ``wandb sync`` uploads them) unless ``WANDB_API_KEY``
  is set or ``WANDB_MODE=online``.

Besides the training curves, each tracker gets the run's resolved config, the final evaluation
table (as metrics ``eval/NAME`` and as a text table) and the figures (UMAP, reconstructions,
samples: every PNG the evaluation wrote) when training ends; see :func:`log_run_outputs`.
mlflow and wandb are optional extras: asking for one that is not installed fails in one line
before the run starts.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from .config import LOGGERS, RunConfig
from .errors import fail

EXTRA = {"mlflow": "mlflow", "wandb": "wandb"}  # tracker -> the module it needs (and reprlearn's extra of that name)


def requested(cfg: RunConfig) -> list[str]:
    """The trackers of ``--logger``, in order, each once."""
    names = [n.strip() for n in cfg.logger.split(",")]
    return [n for i, n in enumerate(names) if n in LOGGERS and n not in names[:i]]


def check_available(cfg: RunConfig) -> None:
    """Fail in one line when a requested tracker's library is not installed."""
    for name in requested(cfg):
        module = EXTRA.get(name)
        if module and importlib.util.find_spec(module) is None:
            raise fail(f"--logger {name} needs {module}, which is not installed; pip install 'reprlearn[{name}]' "
                       f"or drop {name} from --logger")


def make_loggers(cfg: RunConfig, run_dir: Path, suffix: str = "") -> list:
    """Lightning loggers for ``--logger``; ``suffix`` keeps a resumed run's local logs beside the earlier ones."""
    check_available(cfg)
    loggers = []
    for name in requested(cfg):
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            loggers.append(CSVLogger(run_dir, name="", version=f"logs{suffix}"))
        elif name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(run_dir, name="", version=f"tb{suffix}"))
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            uri = mlflow_uri(cfg, run_dir)
            if uri.startswith("file:"):  # MLflow 3 keeps its file store (in maintenance) behind this switch; a
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # database store needs sqlalchemy
            loggers.append(MLFlowLogger(experiment_name="reprlearn", run_name=run_dir.name, tracking_uri=uri,
                                        tags={"method": cfg.method, "run_dir": str(run_dir.resolve())}))
        elif name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
            loggers.append(WandbLogger(project=os.environ.get("WANDB_PROJECT", "reprlearn"), name=run_dir.name,
                                       save_dir=str(run_dir), offline=not online))
    for logger in loggers:
        logger.log_hyperparams(flat_config(cfg))
    return loggers


def mlflow_uri(cfg: RunConfig, run_dir: Path) -> str:
    """``--mlflow-uri``, else the file store ``mlruns/`` in the folder that holds the run directory."""
    return cfg.mlflow_uri or (Path(run_dir).resolve().parent / "mlruns").as_uri()


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as flat params: run options by name, the method's as ``options.NAME``."""
    import dataclasses

    data = dataclasses.asdict(cfg)
    options = data.pop("options", {}) or {}
    flat = {k: v for k, v in data.items()}
    flat.update({f"options.{k}": v for k, v in options.items()})
    return {k: ("none" if v is None else v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in flat.items()}


def eval_metrics(result: dict, prefix: str = "eval/") -> dict[str, float]:
    """The numbers of an evaluation result, flattened to ``eval/a/b`` names (booleans and text left out)."""
    out: dict[str, float] = {}
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(eval_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            out[name] = float(value)
    return out


def run_files(run_dir: Path) -> list[Path]:
    """What a run hands to the trackers as artifacts: its config, evaluation and figures."""
    run_dir = Path(run_dir)
    files = [run_dir / n for n in ("config.yaml", "eval.json", "tokenizer.json")]
    return [f for f in files if f.is_file()] + sorted(run_dir.glob("*.png"))


def log_run_outputs(loggers: list, run_dir: Path, result: dict | None, table: str | None = None) -> None:
    """After training (and evaluation): the final evaluation table as metrics (and as text), the
    config, eval.json and every figure of the run as artifacts, in each tracker that keeps them."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

    metrics = eval_metrics(result) if result else {}
    files = run_files(run_dir)
    for logger in loggers:
        if metrics:
            logger.log_metrics(metrics, step=0)
        if isinstance(logger, MLFlowLogger):
            for f in files:
                logger.experiment.log_artifact(logger.run_id, str(f))
            if table:
                logger.experiment.log_text(logger.run_id, table, "eval_table.txt")
        elif isinstance(logger, TensorBoardLogger):
            _tensorboard(logger, files, table)
        elif type(logger).__name__ == "WandbLogger":
            _wandb(logger, files, table)
        logger.save()


def _tensorboard(logger, files: list[Path], table: str | None) -> None:
    import numpy as np
    from PIL import Image

    writer = logger.experiment
    for f in files:
        if f.suffix == ".png":
            image = np.asarray(Image.open(f).convert("RGB"))
            writer.add_image(f"figures/{f.stem}", image, 0, dataformats="HWC")
        else:
            writer.add_text(f"files/{f.name}", "    " + f.read_text().replace("\n", "\n    "), 0)
    if table:
        writer.add_text("eval/table", "    " + table.replace("\n", "\n    "), 0)
    writer.flush()


def _wandb(logger, files: list[Path], table: str | None) -> None:
    import wandb

    run = logger.experiment
    images = {f"figures/{f.stem}": wandb.Image(str(f)) for f in files if f.suffix == ".png"}
    if images:
        run.log(images)
    for f in files:
        run.save(str(f), base_path=str(f.parent), policy="now")
    if table:
        run.summary["eval_table"] = table
