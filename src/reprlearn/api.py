"""The public API: ``train``, ``load``, ``embed``, ``evaluate_run``. The CLI only calls these."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, load_yaml, merge_config, save_yaml
from .data import ImageSet, load_source
from .data.run_data import RunData, load_run_data
from .errors import ReprlearnError, fail
from .methods import METHODS, DataInfo, Method
from .methods.lookup import is_user_method, method_class, method_spec, short_name
from .nets import create_backbone
from .nets.encoder import Encoder

CONFIG_FILE = "config.yaml"


def methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


# ---------------------------------------------------------------- configs


def resolve_config(method: str, overrides: dict[str, Any], config_file: str | None = None,
                   base: dict | None = None, method_file: str | Path | None = None) -> tuple[RunConfig, Any]:
    """Merge base (a saved run) <- config file <- overrides; validate both config levels.

    Keys that are not run options are the method's options (e.g. ``temperature``).
    ``method`` is a registered name or a user's ``FILE.py:ClassName`` (see methods/lookup.py).
    """
    name = method or (base or {}).get("method") or "simclr"
    method_cls = method_class(name, method_file)
    defaults = {} if base else method_cls.run_defaults  # a saved run already holds its values
    layers = [defaults, base or {}, load_yaml(config_file) if config_file else {}, overrides]
    return merge_config(name, method_cls.Config, layers)


# ---------------------------------------------------------------- data


def data_info(train: ImageSet) -> DataInfo:
    x = train.images.reshape(-1, train.channels).astype(np.float64) / 255
    std = np.maximum(x.std(axis=0), 1e-3)
    return DataInfo(channels=train.channels, image_size=train.image_size, num_classes=train.num_classes,
                    mean=[float(v) for v in x.mean(axis=0)], std=[float(v) for v in std])


# ---------------------------------------------------------------- models


def backbone_name(cfg: RunConfig, info: DataInfo) -> str:
    if cfg.backbone != "auto":
        return cfg.backbone
    return "cnn" if info.image_size <= 32 else "resnet18"


def build_encoder(cfg: RunConfig, info: DataInfo) -> Encoder:
    torch.manual_seed(cfg.seed)  # the random_init baseline is exactly the weights training starts from
    backbone = create_backbone(backbone_name(cfg, info), in_channels=info.channels, image_size=info.image_size)
    return Encoder(backbone, info.mean, info.std)


def build_method(cfg: RunConfig, method_cfg: Any, info: DataInfo, method_file: str | Path | None = None) -> Method:
    from .augment import preset

    view_spec = preset(cfg.augment, info.image_size, info.channels)
    return method_class(cfg.method, method_file)(method_cfg, build_encoder(cfg, info), info, view_spec)


# ---------------------------------------------------------------- train


def _new_run_dir(method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{method}-{stamp}"
    i = 1
    while path.exists():
        path = Path("runs") / f"{method}-{stamp}-{i}"
        i += 1
    return path


def train(method: str | type = "simclr", *, out: str | Path | None = None, config: str | None = None,
          resume: bool = False, callbacks: list | None = None, **options: Any) -> Path:
    """Train ``method`` and return its run directory.

    ``method`` is a registered name, a user's ``FILE.py:ClassName``, or a :class:`Method`
    subclass itself (defined at the top level of a file the run can import again).
    ``options`` are run options (``data``, ``epochs``, ``batch_size`` ...) or the
    method's own (``temperature`` ...), as in ``reprlearn train --help``;
    ``callbacks`` are extra Lightning callbacks.
    """
    from .engine import CHECKPOINT, RunLock

    method = method_spec(method) if method else method
    run_dir = Path(out) if out else _new_run_dir(short_name(method or "simclr"))
    ckpt = run_dir / "checkpoints" / CHECKPOINT
    with RunLock(run_dir):
        base = None
        if resume:
            if not (run_dir / CONFIG_FILE).is_file():
                raise fail(f"cannot resume: {run_dir} has no {CONFIG_FILE}; give the run directory with --out")
            base = load_yaml(run_dir / CONFIG_FILE)
            if method and base.get("method") != method:
                raise fail(f"cannot resume: {run_dir} holds a {base.get('method')} run, not {method}")
        elif ckpt.exists():
            raise fail(f"{run_dir} already holds a trained run; pass --resume to continue it or --out NEW_DIR")
        cfg, method_cfg = resolve_config(method, options, config, base)
        _fit(cfg, method_cfg, run_dir, ckpt if resume and ckpt.exists() else None, callbacks or [])
    return run_dir


def _fit(cfg: RunConfig, method_cfg: Any, run_dir: Path, resume_from: Path | None, extra_callbacks: list) -> None:
    import lightning as L

    from .engine import CollapseWatch, KNNMonitor, TrainModule, fit
    from .files import atomic_write

    method_cls = method_class(cfg.method)
    data = load_run_data(cfg, method_cls.paired)
    train_set, eval_set = data.train, data.eval
    info = data_info(train_set)
    data.artifacts = method_cls.prepare(method_cfg, data, info)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_method(cfg, method_cfg, info)
    model.restore(data.artifacts)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_data = dataclasses.asdict(cfg)
    save_yaml(run_dir / CONFIG_FILE, config_data)
    for name, text in data.artifacts.items():  # e.g. tokenizer.json, beside the config
        with atomic_write(run_dir / name, "w") as f:
            f.write(text)
    if train_set.skipped:
        (run_dir / "skipped.txt").write_text("\n".join(train_set.skipped) + "\n")
        print(f"skipped {len(train_set.skipped)} unreadable items (listed in {run_dir / 'skipped.txt'}; "
              f"first: {train_set.skipped[0]})")
    meta = {"config": config_data, "data_info": dataclasses.asdict(info), "backbone": backbone_name(cfg, info),
            "skipped_items": len(train_set.skipped), "artifacts": data.artifacts}
    fit_set = data.fit
    fit_images = fit_set.tensor()  # one host copy (N, C, H, W) shared by the module and the collapse watch
    module = TrainModule(model, cfg, fit_images, meta, model.training_fields(data))
    callbacks = [CollapseWatch(fit_images), *extra_callbacks]
    if cfg.knn_monitor and eval_set is not None and eval_set.labels is not None and train_set.labels is not None:
        callbacks.append(KNNMonitor(train_set.tensor(), train_set.labels, eval_set.tensor(), eval_set.labels))
    print(f"training {cfg.method} on {train_set.name} ({len(fit_set)} images "
          f"{info.image_size}x{info.image_size}x{info.channels}), backbone {meta['backbone']}, run {run_dir}")
    trainer = fit(module, cfg, run_dir, callbacks, resume_from)
    if cfg.eval and trainer.is_global_zero and eval_set is not None:
        result = evaluate_run(run_dir, method=model, cfg=cfg, info=info, data=data, anomaly_class=cfg.exclude_class)
        from .evaluate import format_table

        print(format_table(result))


# ---------------------------------------------------------------- load / embed / evaluate


def read_checkpoint(run_dir: str | Path) -> dict:
    """The last checkpoint of a run, loaded without running any code from the file."""
    from .engine import CHECKPOINT

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
    import sys

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


def load(run_dir: str | Path, method_file: str | Path | None = None) -> Encoder:
    """The trained encoder of a run (heads dropped), in eval mode.

    It takes float images in [0, 1] shaped (N, C, H, W) and returns (N, feature_dim).
    ``method_file``: where a run of a user-file method finds its file now (see load_method).
    """
    method, cfg, info = load_method(run_dir, method_file)
    encoder = method.encoder
    encoder.run_config = cfg  # what it was trained with, for evaluation
    encoder.data_info = info
    return encoder.eval()


def embed(run_or_encoder: str | Path | torch.nn.Module, source: str | ImageSet, batch_size: int = 1024,
          device: str | None = None) -> np.ndarray:
    """(N, D) features of every image of ``source`` (a data spec or an ImageSet)."""
    from .evaluate import extract

    encoder = run_or_encoder if isinstance(run_or_encoder, torch.nn.Module) else load(run_or_encoder)
    images = load_source(source) if isinstance(source, str) else source
    if device:
        encoder = encoder.to(device)
    return extract(encoder, images.tensor(), batch_size)


def evaluate_run(run_dir: str | Path, *, method: Method | None = None, cfg: RunConfig | None = None,
                 info: DataInfo | None = None, data: RunData | None = None, eval_data: str | None = None,
                 labels_per_class: int | None = None, finetune: bool | None = None,
                 anomaly_class: int | None = None, iwae_k: int = 50, method_file: str | Path | None = None) -> dict:
    """Evaluate a run with the one harness; writes eval.json, umap.png and, for
    generative methods, reconstruction / sample / interpolation figures into the run;
    for image-text methods also zero-shot accuracy, retrieval Recall@K and CLIP-score AUROC."""
    from .augment import augment, preset
    from .evaluate import evaluate

    run_dir = Path(run_dir)
    if method is None:
        method, cfg, info = load_method(run_dir, method_file)
    if eval_data:
        cfg = dataclasses.replace(cfg, eval_data=eval_data)
    if data is None:
        data = load_run_data(dataclasses.replace(cfg, exclude_class=None), method.paired)
    train_set, eval_set, eval_pairs = data.train, data.eval, data.eval_pairs
    if eval_set is None:
        raise fail(f"{cfg.data} is too small to hold out evaluation images; give --data with a test set")
    per_class = labels_per_class or cfg.labels_per_class
    device = "cuda" if torch.cuda.is_available() and cfg.accelerator in ("auto", "gpu", "cuda") else "cpu"
    method = method.to(device).eval()
    views = None
    if finetune if finetune is not None else cfg.finetune:
        spec = preset(cfg.augment, info.image_size, info.channels)
        views = lambda x, g: augment(x, spec, g)  # noqa: E731
    if eval_set.labels is not None or not method.paired:
        result = evaluate(method.encoder, build_encoder(cfg, info), train_set, eval_set, labels_per_class=per_class,
                          seed=cfg.seed, max_train=cfg.eval_max_train, finetune_views=views, run_dir=run_dir,
                          method=short_name(cfg.method))
    else:  # captions but no labels (e.g. Flickr8k): no probe to fit; the joint space is scored below
        result = {"method": cfg.method, "test_images": len(eval_set),
                  "probes": "skipped: the evaluation pairs have no class labels"}
    if method.paired:
        from .evaluate.image_text_harness import image_text_metrics

        result.update(image_text_metrics(method, eval_pairs, device))
    result["labels_per_class"] = per_class
    result["eval_data"] = eval_set.name
    result["skipped_items"] = {"train": len(train_set.skipped), "eval": len(eval_set.skipped)}
    if hasattr(method, "reconstruct"):
        result.update(_generative_eval(method, cfg, info, eval_set, run_dir, anomaly_class, iwae_k, device))
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def search(run_dir: str | Path, index: str, queries: list[str] | None = None,
           query_images: list[str] | None = None, k: int = 8):
    """Semantic search of an image-text run: the top-``k`` images of source ``index`` per query
    (see :func:`reprlearn.search.search`); returns (hits per query, the index's uint8 images)."""
    from . import search as semantic

    if not (queries or query_images):
        raise fail("nothing to search for; give --query TEXT or --query-image PATH")
    method, cfg, info = load_method(run_dir)
    if not getattr(method, "paired", False):
        raise fail(f"{run_dir} is a {cfg.method} run; search needs an image-text run (clip or siglip)")
    return semantic.search(method, info, run_dir, index, queries, query_images, k)


def zeroshot(run_dir: str | Path, data: str | None = None, classes: str | list[str] | None = None,
             templates: list[str] | None = None) -> dict:
    """Zero-shot classification of ``data`` (default: the run's held-out pairs) with an image-text run.

    ``classes``: names in label order, as a list, a comma list or a file with one per line
    (default: the source's own class names). ``templates``: prompts with ``{}`` for the name.
    """
    from .data.pairs import load_pairs
    from .evaluate import extract
    from .evaluate.zero_shot import class_task, zero_shot_scores, zero_shot_tasks

    method, cfg, info = load_method(run_dir)
    if not method.paired:
        raise fail(f"{run_dir} is a {cfg.method} run; zero-shot needs an image-text run (clip or siglip)")
    if data is None:
        pairs = load_run_data(cfg, True).eval_pairs
        if pairs is None:
            raise fail(f"{cfg.data} has no held-out pairs; give --data with labelled images")
    else:
        pairs = load_pairs(data, "test", info.image_size)
    if pairs.images.images.shape[1:] != (info.image_size, info.image_size, info.channels):
        raise fail(f"{data} images are {pairs.images.images.shape[1:]} but the run was trained on "
                   f"{(info.image_size, info.image_size, info.channels)}; pass a source of that shape")
    tasks = [class_task(pairs, classes, templates)] if classes is not None or templates else zero_shot_tasks(pairs)
    method = method.to("cpu")
    image_emb = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor(), 512))
    result = zero_shot_scores(method.embed_texts, image_emb, tasks)
    if not result["zeroshot_tasks"]:
        raise fail(f"{pairs.name} holds no zero-shot task (no labels); give --data with labelled images and --classes")
    return {"tasks": result["zeroshot_tasks"], "zeroshot_top1": result["zeroshot_top1"],
            "zeroshot_chance": result["zeroshot_chance"]}


def _generative_eval(method: Method, cfg: RunConfig, info: DataInfo, eval_set: ImageSet, run_dir: Path,
                     anomaly_class: int | None, iwae_k: int, device: str) -> dict:
    """Figures and metrics of the autoencoder family (see evaluate/generative.py)."""
    from .evaluate import generative as gen

    torch.manual_seed(cfg.seed)
    x = eval_set.tensor(device).float() / 255
    labels = torch.from_numpy(eval_set.labels).to(device) if eval_set.labels is not None else None
    cond = labels if method.needs_labels else None
    out: dict[str, Any] = {}
    recon = torch.cat([method.reconstruct(x[s:s + 512], **_kw(cond, s)) for s in range(0, len(x), 512)])
    out["recon_mse"] = float((recon - x).pow(2).mean())
    pick = torch.arange(min(16, len(x)), device=device)
    figures = {"reconstructions": gen.reconstruction_figure(method, x[pick], _sub(cond, pick), run_dir /
                                                            "reconstructions.png", f"{cfg.method}: test images")}
    if hasattr(method, "sample"):
        figures["samples"] = gen.samples_figure(method, run_dir / "samples.png", info.num_classes,
                                                needs_labels=method.needs_labels, seed=cfg.seed)
    if getattr(method, "interpolation", None):
        figures["interpolation"] = gen.interpolation_figure(method, x[pick], _sub(cond, pick),
                                                            run_dir / "interpolation.png")
        if getattr(method.config, "latent_dim", None) == 2:
            figures["latent_grid"] = gen.latent_grid_figure(method, run_dir / "latent_grid.png")
    if hasattr(method, "nelbo"):
        out.update(gen.density(method, x, cond, iwae_k))
    if anomaly_class is not None:
        if eval_set.labels is None or anomaly_class not in set(eval_set.labels.tolist()):
            raise fail(f"--anomaly-class {anomaly_class} is not a label of {eval_set.name}")
        if method.needs_labels:
            out["anomaly_auroc"] = None  # a conditional model would be told the class: not a fair test
        else:
            out["anomaly_auroc"] = gen.anomaly_auroc(method, x, eval_set.labels, anomaly_class)
            out["anomaly_class"] = anomaly_class
            out["trained_without_class"] = cfg.exclude_class
    out["figures"] = {k: str(v.name) for k, v in figures.items()}
    return out


def _kw(labels: torch.Tensor | None, start: int, size: int = 512) -> dict:
    return {} if labels is None else {"labels": labels[start:start + size]}


def _sub(labels: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if labels is None else labels[index]


def sample_images(run_dir: str | Path, out: str | Path, n: int = 64, cls: int | None = None, seed: int = 0) -> Path:
    """Write a PNG grid of samples from a generative run's prior (a row per class for cvae)."""
    from .evaluate import generative as gen

    method, cfg, info = load_method(run_dir)
    if not hasattr(method, "sample"):
        raise fail(f"{cfg.method} cannot sample (no prior); sampling works for vae, cvae and hvae")
    if cls is not None and not 0 <= cls < info.num_classes:
        raise fail(f"--class {cls} is out of range; the run has classes 0..{info.num_classes - 1}")
    if cls is not None and not method.needs_labels:
        raise fail(f"--class needs a conditional model (cvae); {cfg.method} samples unconditionally")
    return gen.samples_figure(method, Path(out), info.num_classes, n=n, cls=cls,
                              needs_labels=method.needs_labels, seed=seed)


def reconstruct_images(run_dir: str | Path, source: str, out: str | Path, n: int = 16) -> Path:
    """Write a PNG grid of the first ``n`` images of ``source`` beside their reconstructions."""
    from .evaluate import generative as gen

    method, cfg, info = load_method(run_dir)
    if not hasattr(method, "reconstruct"):
        raise fail(f"{cfg.method} does not reconstruct images; use an autoencoder run (ae, vae, mae, ...)")
    images = load_source(source, info.image_size)
    if images.images.shape[1:] != (info.image_size, info.image_size, info.channels):
        raise fail(f"{source} images are {images.images.shape[1:]} but the run was trained on "
                   f"{(info.image_size, info.image_size, info.channels)}")
    x = images.tensor()[:n].float() / 255
    labels = None
    if method.needs_labels:
        if images.labels is None:
            raise fail(f"{cfg.method} reconstructs with labels; {source} has none")
        labels = torch.from_numpy(images.labels[:n])
    return gen.reconstruction_figure(method, x, labels, Path(out), f"{cfg.method}: {source}")
