"""The public API: ``train``, ``load``, ``embed``, ``evaluate_run``. The CLI only calls these."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DEFAULT_METHOD, RunConfig, load_yaml
from .data import ImageSet, load_source
from .data.run_data import RunData, load_run_data
from .errors import fail
from .methods import METHODS, DataInfo, EmbedsText, Method, ModelsText, Reconstructs, Samples
from .methods.lookup import method_spec, short_name
from .nets.encoder import Encoder
from .runs import (CONFIG_FILE, build_encoder, build_method, data_info, load_method, new_run_dir,  # noqa: F401
                   read_checkpoint, resolve_config)


def methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


def train(method: str | type | None = None, *, out: str | Path | None = None, config: str | None = None,
          resume: bool = False, callbacks: list | None = None, **options: Any) -> Path:
    """Train ``method`` and return its run directory.

    ``method`` is a registered name, a user's ``FILE.py:ClassName``, or a :class:`Method`
    subclass itself (defined at the top level of a file the run can import again); None: the
    resumed run's, else the ``method`` key of ``config``, else simclr.
    ``options`` are run options (``data``, ``epochs``, ``batch_size`` ...) or the
    method's own (``temperature`` ...), as in ``reprlearn train --help``;
    ``callbacks`` are extra Lightning callbacks.
    """
    from .engine import RunLock, train_run
    from .plan import auto_options
    from .evaluate import format_table
    from .runs import CHECKPOINT
    from .trackers import check_available, log_run_outputs

    method = method_spec(method) if method else method
    # a new run's config is resolved (and a bad option or method refused) before any run folder is made
    resolved = None if resume else resolve_config(method, options, config)
    if resolved:
        check_available(resolved[0])  # a requested tracker that is not installed: refused before the run
    named = method or (resolved[0].method if resolved else DEFAULT_METHOD)
    run_dir = Path(out) if out else new_run_dir(short_name(named))
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
        cfg, method_cfg = resolved or resolve_config(method, options, config, base)
        # what the user left to auto (a resumed run's saved config fixes every value)
        auto = None if resume else auto_options(options, [load_yaml(config)] if config else [])
        model, info, data, trainer = train_run(cfg, method_cfg, run_dir, ckpt if resume and ckpt.exists() else None,
                                               callbacks or [], auto=auto)
        result = table = None
        if cfg.eval and trainer.is_global_zero and data.eval is not None:
            result = evaluate_run(run_dir, method=model, cfg=cfg, info=info, data=data,
                                  anomaly_class=cfg.exclude_class)
            table = format_table(result)
            print(table)
        if trainer.is_global_zero:  # config, evaluation table and figures into each tracker
            log_run_outputs(trainer.loggers, run_dir, result, table)
    return run_dir


# ---------------------------------------------------------------- load / embed / evaluate


def load(run_dir: str | Path, method_file: str | Path | None = None) -> Encoder:
    """The trained encoder of a run (heads dropped), in eval mode; ``run_dir`` may also be a
    ``.safetensors`` file written by :func:`export` (then ``encoder.export_info`` is its metadata).

    It takes float images in [0, 1] shaped (N, C, H, W) and returns (N, feature_dim).
    ``method_file``: where a run of a user-file method finds its file now (see load_method).
    """
    if Path(run_dir).suffix == ".safetensors":
        from .export import load_safetensors

        return load_safetensors(run_dir)
    method, cfg, info = load_method(run_dir, method_file)
    encoder = method.encoder
    encoder.run_config = cfg  # what it was trained with, for evaluation
    encoder.data_info = info
    if method.trains_on_text:  # a text run's encoder takes token ids (N, L); this makes them from strings
        encoder.tokenize = method.tokenize
    return encoder.eval()


def embed(run_or_encoder: str | Path | torch.nn.Module, source: str | ImageSet, batch_size: int = 1024,
          device: str | None = None, image_size: int | None = None, skip_bad: bool = False,
          method_file: str | Path | None = None) -> np.ndarray:
    """(N, D) features of every image of ``source`` (a data spec or an ImageSet); for a text run (mlm),
    the pooled features of every text of ``source`` (a text spec, its training split).

    Images are stored as the run stored its training images: at its image size (a source's files are
    decoded straight to it; an ImageSet of another size is resized) and channel count, and the
    encoder applies the run's normalisation. ``image_size`` other than the run's is refused;
    ``skip_bad`` skips unreadable files and counts them instead of stopping.
    """
    encoder = _encoder(run_or_encoder, method_file)
    if getattr(getattr(encoder, "data_info", None), "channels", None) == 0:  # a text run (mlm): embed texts
        from .data.texts import load_texts
        from .evaluate.text import text_features

        if not isinstance(source, str):
            raise fail("a text run embeds texts; give a text source (scenes, caption shards, .txt, .csv)")
        if device:
            encoder = encoder.to(device)
        return text_features(encoder, encoder.tokenize(load_texts(source)[0].texts), next(encoder.parameters()).device)
    return _embed_images(encoder, _run_images(encoder, source, image_size, skip_bad), batch_size, device)


def _encoder(run_or_encoder: str | Path | torch.nn.Module, method_file: str | Path | None = None) -> torch.nn.Module:
    return run_or_encoder if isinstance(run_or_encoder, torch.nn.Module) else load(run_or_encoder, method_file)


def _embed_images(encoder: torch.nn.Module, images: ImageSet, batch_size: int, device: str | None) -> np.ndarray:
    from .evaluate import extract

    if device:
        encoder = encoder.to(device)
    return extract(encoder, images.tensor(), batch_size)


def _trained_shape(encoder: torch.nn.Module) -> tuple[int, int] | None:
    """(image side, channels) an encoder was trained on: a run's DataInfo, or an export's metadata;
    None for a module that records neither."""
    info = getattr(encoder, "data_info", None)
    if info is not None:
        return int(info.image_size), int(info.channels)
    meta = getattr(encoder, "export_info", None)
    return (int(meta["image_size"]), int(meta["in_channels"])) if meta else None


def _run_images(encoder: torch.nn.Module, source: str | ImageSet, image_size: int | None = None,
               skip_bad: bool = False) -> ImageSet:
    """``source``'s images as the encoder's run stored its own: at its image size and channel count."""
    from .data.sources import fit_to, resize_set

    shape = _trained_shape(encoder)
    if shape and image_size is not None and image_size != shape[0]:
        raise fail(f"--image-size {image_size} differs from the run's {shape[0]} px; the run's features are only "
                   f"right at its own size: leave --image-size out (or pass {shape[0]})")
    size = shape[0] if shape else image_size
    images = load_source(source, size, skip_bad) if isinstance(source, str) else source
    if not shape:
        return resize_set(images, size)
    return fit_to(images, *shape, source if isinstance(source, str) else images.name)  # resizes an ImageSet too


def export(run_dir: str | Path, format: str, out: str | Path, method_file: str | Path | None = None) -> list[Path]:
    """Write a run's encoder as ``format`` (safetensors, torchscript, onnx) to ``out`` (see export.py);
    returns the files written."""
    from .export import FORMATS, export_method

    if format not in FORMATS:
        raise fail(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    method, cfg, info = load_method(run_dir, method_file)
    return export_method(method, cfg, info, format, out)


def write_embeddings(run_or_encoder: str | Path | torch.nn.Module, source: str, out: str | Path,
                     method_file: str | Path | None = None, image_size: int | None = None,
                     skip_bad: bool = False) -> tuple[np.ndarray, list[Path]]:
    """Embed every image of ``source`` as :func:`embed` does; write ``out`` (.npy) and the same features
    as Parquet beside it (key, embedding[, label]; key = each image's path, SHARD_FILE_NAME/KEY or
    NAME:SPLIT/INDEX). Returns (features, files written)."""
    from .export import write_features

    encoder = _encoder(run_or_encoder, method_file)
    images = _run_images(encoder, source, image_size, skip_bad)
    if images.skipped:
        print(f"skipped {len(images.skipped)} unreadable items (first: {images.skipped[0]})")
    features = _embed_images(encoder, images, 1024, None)
    shape = _trained_shape(encoder)
    meta = {"run": None if isinstance(run_or_encoder, torch.nn.Module) else str(run_or_encoder), "source": source,
            "image_size": shape[0] if shape else images.image_size, "skip_bad": skip_bad}
    return features, write_features(features, out, images.labels, images.keys, meta)


EVAL_OPTIONS = {"labels_per_class", "finetune", "knn_k", "knn_temperature", "probe_backend", "linear_c",
                "baseline_cache"}


def evaluate_run(run_dir: str | Path, *, method: Method | None = None, cfg: RunConfig | None = None,
                 info: DataInfo | None = None, data: RunData | None = None, eval_data: str | None = None,
                 anomaly_class: int | None = None, iwae_k: int = 50, method_file: str | Path | None = None,
                 **overrides: Any) -> dict:
    """Evaluate a run with the one harness (see evaluate/run.py); writes eval.json and figures.

    ``overrides`` replace the run's evaluation options for this evaluation: ``labels_per_class``,
    ``finetune``, ``knn_k``, ``knn_temperature``, ``probe_backend``, ``linear_c``, ``baseline_cache``
    (None: the run's).
    """
    from .evaluate.run import evaluate_method

    unknown = set(overrides) - EVAL_OPTIONS
    if unknown:
        raise fail(f"unknown evaluation option {sorted(unknown)[0]!r}; the options are {', '.join(sorted(EVAL_OPTIONS))}")
    if method is None:
        method, cfg, info = load_method(run_dir, method_file)
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    if eval_data:
        cfg = dataclasses.replace(cfg, eval_data=eval_data)
    if data is None and method.trains_on_text:
        from .data.texts import load_text_data

        data = load_text_data(cfg)
    if data is None:
        data = load_run_data(dataclasses.replace(cfg, exclude_class=None), captions=method.trains_on_captions)
    return evaluate_method(method, cfg, info, data, Path(run_dir), anomaly_class=anomaly_class, iwae_k=iwae_k)


def search(run_dir: str | Path, index: str, queries: list[str] | None = None,
           query_images: list[str] | None = None, k: int = 8, query_keys: list[str] | None = None,
           skip_bad: bool = False):
    """The top-``k`` images of ``index`` (a data source, or a .npy/.parquet written by :func:`write_embeddings`)
    per query: image queries (``query_images`` paths, ``query_keys`` rows of the index) with any image
    run, text queries with an image-text run (see :func:`reprlearn.search.search`); returns (hits per
    query, the index's images). A text run (mlm) returns the top-``k`` texts of ``index`` per text
    query, and None for images."""
    from . import search as semantic

    if not (queries or query_images or query_keys):
        raise fail("nothing to search for; give --query TEXT, --query-image PATH or --query-key KEY")
    method, cfg, info = load_method(run_dir)
    if isinstance(method, ModelsText):  # a text run: the nearest texts of the index source, no images
        if query_images or query_keys:
            raise fail(f"{run_dir} is a {cfg.method} run (text only); --query-image and --query-key need an image run")
        return semantic.search_texts(method, run_dir, index, queries, k), None
    if queries and not isinstance(method, EmbedsText):
        raise fail(f"{run_dir} is a {cfg.method} run; a text query needs an image-text run (clip or siglip) "
                   "or a text run (mlm); search its images with --query-image PATH or --query-key KEY")
    return semantic.search(method, info, run_dir, index, queries, query_images, k, query_keys, skip_bad)


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
    if not isinstance(method, EmbedsText):
        raise fail(f"{run_dir} is a {cfg.method} run; zero-shot needs an image-text run (clip or siglip)")
    if data is None:
        pairs = load_run_data(cfg, True).eval_pairs
        if pairs is None:
            raise fail(f"{cfg.data} has no held-out pairs; give --data with labelled images")
    else:
        pairs = load_pairs(data, "test", info.image_size)
    info.check_images(pairs.images, data or cfg.eval_data or cfg.data)
    tasks = [class_task(pairs, classes, templates)] if classes is not None or templates else zero_shot_tasks(pairs)
    method = method.to("cpu")
    image_emb = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor(), 512))
    result = zero_shot_scores(method.embed_texts, image_emb, tasks)
    if not result["zeroshot_tasks"]:
        raise fail(f"{pairs.name} holds no zero-shot task (no labels); give --data with labelled images and --classes")
    return {"tasks": result["zeroshot_tasks"], "zeroshot_top1": result["zeroshot_top1"],
            "zeroshot_chance": result["zeroshot_chance"]}


def sample_images(run_dir: str | Path, out: str | Path, n: int = 64, cls: int | None = None, seed: int = 0) -> Path:
    """Write a PNG grid of samples from a generative run's prior (a row per class for cvae)."""
    from .evaluate import generative as gen

    method, cfg, info = load_method(run_dir)
    if not isinstance(method, Samples):
        raise fail(f"{cfg.method} cannot sample (no prior); sampling works for vae, cvae, hvae, ddpm and flow")
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
    if not isinstance(method, Reconstructs):
        raise fail(f"{cfg.method} does not reconstruct images; use an autoencoder run (ae, vae, mae, ...)")
    images = load_source(source, info.image_size)
    info.check_images(images, source)
    from .data.pixels import unit_float

    x = unit_float(images.tensor()[:n])
    labels = None
    if method.needs_labels:
        if images.labels is None:
            raise fail(f"{cfg.method} reconstructs with labels; {source} has none")
        labels = torch.from_numpy(images.labels[:n])
    return gen.reconstruction_figure(method, x, labels, Path(out), f"{cfg.method}: {source}")


# ---------------------------------------------------------------- curation (DataComp-style)


def curate_score(pool: str, run_dir: str | Path, out: str | Path, batch_size: int = 256, devices: int = 1,
                 progress: bool = True) -> dict:
    """CLIP-score every pair of ``pool`` with an image-text run into ``out`` (Parquet + float16 .npy
    per part; an interrupted call resumes). Returns the summary (pairs, skipped, seconds)."""
    from .curate.scoring import score_pool

    if batch_size < 1 or devices < 1:
        raise fail(f"--batch-size and --devices must be at least 1, got {batch_size} and {devices}")
    return score_pool(pool, run_dir, out, batch_size, devices, progress)


def curate_filter(scores: str | Path, rules: list[str], out: str | Path, target: str | None = None,
                  write_shards: str | Path | None = None, seed: int = 0, clusters: int = 100) -> dict:
    """Keep the pairs of a scored pool that every rule keeps (see curate/filters.py); write their keys
    to ``out`` (.parquet or a text list) and optionally new shards. Returns counts."""
    from .curate.subsets import select, write_kept, write_kept_shards

    if clusters < 1:
        raise fail(f"--clusters must be at least 1, got {clusters}")
    table, keep, manifest = select(scores, rules, target, seed, clusters)
    write_kept(table, keep, out)
    result = {"kept": int(keep.sum()), "pool": len(keep), "out": str(out)}
    if "corrupted" in table.column_names:
        corrupted = table["corrupted"].to_numpy()
        result["corrupted_kept"] = int((corrupted & keep).sum())
        result["corrupted"] = int(corrupted.sum())
    if write_shards:
        paths = write_kept_shards(manifest, set(table.filter(keep)["key"].to_pylist()), write_shards)
        result["shards"] = len(paths)
    return result


def curate_experiment(out: str | Path, pool: str | None = None, **options: Any) -> list[dict]:
    """The DataComp protocol on ``pool`` (default scenes:corrupt=0.5); see curate/experiment.py."""
    from .curate.experiment import DEFAULT_POOL, run_experiment

    return run_experiment(out, pool or DEFAULT_POOL, **options)
