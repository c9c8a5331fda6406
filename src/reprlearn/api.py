"""The public API: ``train``, ``load``, ``embed``, ``evaluate_run``. The CLI only calls these."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import RunConfig, build, load_yaml, save_yaml
from .data import ImageSet, load_source, stratified_split
from .data.pairs import PairSet
from .errors import fail
from .methods import METHODS, DataInfo, Method
from .nets import create_backbone
from .nets.encoder import Encoder

CONFIG_FILE = "config.yaml"
RUN_FIELDS = {f.name for f in dataclasses.fields(RunConfig)} - {"options"}


def methods() -> list[str]:
    """Names of the registered methods."""
    return METHODS.names()


# ---------------------------------------------------------------- configs


def resolve_config(method: str, overrides: dict[str, Any], config_file: str | None = None,
                   base: dict | None = None) -> tuple[RunConfig, Any]:
    """Merge base (a saved run) <- config file <- overrides; validate both config levels.

    Keys that are not run options are the method's options (e.g. ``temperature``).
    """
    merged: dict[str, Any] = {}
    options: dict[str, Any] = {}
    name = method or (base or {}).get("method") or "simclr"
    defaults = {} if base else METHODS.get(name).run_defaults  # a saved run already holds its values
    for layer in (defaults, base or {}, load_yaml(config_file) if config_file else {}, overrides):
        layer = dict(layer)
        options.update(layer.pop("options", None) or {})
        for key, value in layer.items():
            (merged if key.replace("-", "_") in RUN_FIELDS else options)[key] = value
    merged["method"] = name
    method_cls = METHODS.get(merged["method"])
    cfg = build(RunConfig, merged)
    method_cfg = build(method_cls.Config, options, where=f" for method {cfg.method} (or the run)")
    cfg.options = dataclasses.asdict(method_cfg)
    return cfg, method_cfg


# ---------------------------------------------------------------- data


def default_eval_spec(data: str) -> str | None:
    name, _, split = data.partition(":")
    if name in ("digits", "cifar10") and split in ("", "train"):
        return f"{name}:test"
    return None


def load_data(cfg: RunConfig) -> tuple[ImageSet, ImageSet | None]:
    """(training set, evaluation set); a 10% stratified hold-out when there is no test split."""
    train = load_source(cfg.data, cfg.image_size, cfg.skip_bad)
    eval_spec = cfg.eval_data or default_eval_spec(cfg.data)
    if eval_spec:
        test = load_source(eval_spec, cfg.image_size or train.image_size, cfg.skip_bad)
        if test.images.shape[1:] != train.images.shape[1:]:
            raise fail(f"evaluation images are {test.images.shape[1:]} but training images are "
                       f"{train.images.shape[1:]}; pass --image-size N")
        return train, test
    if len(train) < 20:
        return train, None
    keep, held = stratified_split(train.labels, len(train), 0.1, seed=0)
    return train.subset(keep), train.subset(held, train.name + "[held-out 10%]")


def load_pair_data(cfg: RunConfig) -> tuple[PairSet, PairSet | None]:
    """(training pairs, held-out pairs) for the image-text methods.

    The held-out pairs are ``--eval-data``, else the source's own test split (scenes
    draws a disjoint set; digits and cifar10 have one), else a 10% hold-out.
    """
    from .data.pairs import load_pairs

    train = _with_probe_labels(load_pairs(cfg.data, "train", cfg.image_size, cfg.skip_bad))
    eval_spec = cfg.eval_data
    if eval_spec is None and cfg.data.partition(":")[0] in ("scenes", "digits", "cifar10"):
        eval_spec = cfg.data
    if eval_spec is not None:
        test = _with_probe_labels(load_pairs(eval_spec, "test", cfg.image_size or train.images.image_size,
                                             cfg.skip_bad))
        if test.images.images.shape[1:] != train.images.images.shape[1:]:
            raise fail(f"evaluation images are {test.images.images.shape[1:]} but training images are "
                       f"{train.images.images.shape[1:]}; pass --image-size N")
        return train, test
    if len(train) < 20:
        return train, None
    keep, held = stratified_split(None, len(train), 0.1, seed=0)
    return train.subset(keep), train.subset(held)


def _with_probe_labels(pairs: PairSet) -> PairSet:
    """scenes: label each image by the shape of its first object, so the image tower gets the
    same kNN / linear probes as every other method's encoder."""
    if pairs.images.labels is None and pairs.attributes and "shape" in pairs.attributes:
        pairs.images.labels = pairs.attributes["shape"].astype(np.int64)
        pairs.images.class_names = list(pairs.attribute_names["shape"])
    return pairs


def make_tokenizer(method_cfg: Any, pairs: PairSet):
    """The user's tokenizer.json, or a byte-level BPE trained on the training captions."""
    from .text import TextTokenizer

    if method_cfg.tokenizer:
        return TextTokenizer.load(method_cfg.tokenizer)
    return TextTokenizer.train((c for caps in pairs.captions for c in caps), vocab_size=method_cfg.vocab_size)


def tokenizer_info(tokenizer) -> dict:
    return {"vocab_size": tokenizer.vocab_size, "sot_id": tokenizer.sot_id, "eot_id": tokenizer.eot_id,
            "pad_id": tokenizer.pad_id}


def caption_tokens(captions: list[list[str]], tokenizer, context_length: int) -> dict[str, torch.Tensor]:
    """``tokens`` (N, M, L): every image's captions tokenised (rows past its count are padding);
    ``caption_counts`` (N,): how many captions each image has."""
    counts = torch.tensor([len(c) for c in captions])
    flat = tokenizer.encode([c for caps in captions for c in caps], context_length)
    tokens = torch.zeros(len(captions), int(counts.max()), context_length, dtype=torch.long)
    rows = torch.repeat_interleave(torch.arange(len(captions)), counts)
    cols = torch.cat([torch.arange(int(n)) for n in counts])
    tokens[rows, cols] = flat
    return {"tokens": tokens, "caption_counts": counts}


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


def build_method(cfg: RunConfig, method_cfg: Any, info: DataInfo) -> Method:
    from .augment import preset

    view_spec = preset(cfg.augment, info.image_size, info.channels)
    return METHODS.get(cfg.method)(method_cfg, build_encoder(cfg, info), info, view_spec)


# ---------------------------------------------------------------- train


def _new_run_dir(method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{method}-{stamp}"
    i = 1
    while path.exists():
        path = Path("runs") / f"{method}-{stamp}-{i}"
        i += 1
    return path


def train(method: str = "simclr", *, out: str | Path | None = None, config: str | None = None,
          resume: bool = False, callbacks: list | None = None, **options: Any) -> Path:
    """Train ``method`` and return its run directory.

    ``options`` are run options (``data``, ``epochs``, ``batch_size`` ...) or the
    method's own (``temperature`` ...), as in ``reprlearn train --help``;
    ``callbacks`` are extra Lightning callbacks.
    """
    from .engine import CHECKPOINT, RunLock

    run_dir = Path(out) if out else _new_run_dir(method)
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

    from .engine import Checkpointing, CollapseWatch, Interrupted, KNNMonitor, TrainModule, make_trainer

    train_pairs = eval_pairs = tokenizer = None
    if METHODS.get(cfg.method).paired:
        if cfg.exclude_class is not None:
            raise fail(f"--exclude-class is for image-only methods; {cfg.method} trains on (image, caption) pairs")
        train_pairs, eval_pairs = load_pair_data(cfg)
        train_set, eval_set = train_pairs.images, eval_pairs.images if eval_pairs is not None else None
        tokenizer = make_tokenizer(method_cfg, train_pairs)
    else:
        train_set, eval_set = load_data(cfg)
    info = data_info(train_set)
    if tokenizer is not None:
        info.text = tokenizer_info(tokenizer)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = build_method(cfg, method_cfg, info)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_data = dataclasses.asdict(cfg)
    save_yaml(run_dir / CONFIG_FILE, config_data)
    if tokenizer is not None:
        model.tokenizer = tokenizer
        tokenizer.save(run_dir / "tokenizer.json")
    if train_set.skipped:
        (run_dir / "skipped.txt").write_text("\n".join(train_set.skipped) + "\n")
        print(f"skipped {len(train_set.skipped)} unreadable items (listed in {run_dir / 'skipped.txt'}; "
              f"first: {train_set.skipped[0]})")
    meta = {"config": config_data, "data_info": dataclasses.asdict(info), "backbone": backbone_name(cfg, info),
            "skipped_items": len(train_set.skipped)}
    if tokenizer is not None:  # the checkpoint alone must be enough to embed new captions
        meta["tokenizer"] = tokenizer.to_json()
    if cfg.exclude_class is not None:  # anomaly detection: learn without one class, probes still see all
        if train_set.labels is None or cfg.exclude_class not in set(train_set.labels.tolist()):
            raise fail(f"--exclude-class {cfg.exclude_class} is not a label of {train_set.name}")
        fit_set = train_set.subset(np.flatnonzero(train_set.labels != cfg.exclude_class))
    else:
        fit_set = train_set
    fields: dict[str, torch.Tensor] = {}
    if model.needs_labels:
        if train_set.labels is None:
            raise fail(f"{cfg.method} is conditioned on labels, but {train_set.name} has none; "
                       "give --data with labels (KEY.cls members, class sub-folders or an npz 'labels' array)")
        fields["labels"] = torch.from_numpy(fit_set.labels)
    if model.paired:
        fields.update(caption_tokens(train_pairs.captions, model.tokenizer, method_cfg.context_length))
    fit_images = fit_set.tensor()  # one host copy (N, C, H, W) shared by the module and the collapse watch
    module = TrainModule(model, cfg, fit_images, meta, fields)
    checkpointing = Checkpointing(run_dir / "checkpoints", cfg.checkpoint_every, cfg.checkpoint_steps)
    callbacks = [checkpointing, CollapseWatch(fit_images), *extra_callbacks]
    if cfg.knn_monitor and eval_set is not None and eval_set.labels is not None and train_set.labels is not None:
        callbacks.append(KNNMonitor(train_set.tensor(), train_set.labels, eval_set.tensor(), eval_set.labels))
    trainer = make_trainer(cfg, run_dir, callbacks)
    print(f"training {cfg.method} on {train_set.name} ({len(fit_set)} images "
          f"{info.image_size}x{info.image_size}x{info.channels}), backbone {meta['backbone']}, run {run_dir}")
    resume_hint = f"resume with: reprlearn train {cfg.method} --out {run_dir} --resume"
    checkpointing.install_signal_handlers()
    try:
        trainer.fit(module, ckpt_path=str(resume_from) if resume_from else None)
    except Interrupted as e:
        raise Interrupted(f"{e}; {resume_hint}", e.exit_code - 128) from None
    except FloatingPointError as e:
        raise fail(f"{e}; {resume_hint} after changing it") from None
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        raise fail(f"out of memory at batch size {cfg.batch_size} ({type(e).__name__}); use a smaller "
                   f"--batch-size (e.g. {max(2, cfg.batch_size // 2)}), or --accumulate 2 to keep the "
                   "effective batch") from None
    except RuntimeError as e:
        if "out of memory" in str(e) or "can't allocate memory" in str(e):
            raise fail(f"out of memory at batch size {cfg.batch_size}; use a smaller --batch-size "
                       f"(e.g. {max(2, cfg.batch_size // 2)}), or --accumulate 2 to keep the effective batch") from None
        raise
    except OSError as e:
        if e.errno == 28:  # ENOSPC: the atomic write left the previous checkpoint intact
            raise fail(f"no space left on the disk of {run_dir}; the previous checkpoint is intact; "
                       f"free some space, then {resume_hint}") from None
        raise
    finally:
        checkpointing.restore_signal_handlers()
    if cfg.eval and trainer.is_global_zero and eval_set is not None:
        result = evaluate_run(run_dir, method=model, cfg=cfg, info=info, train_set=train_set,
                              eval_set=eval_set, anomaly_class=cfg.exclude_class, eval_pairs=eval_pairs)
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


def load_method(run_dir: str | Path) -> tuple[Method, RunConfig, DataInfo]:
    """The whole trained method of a run (heads, decoders, teachers), in eval mode."""
    ckpt = read_checkpoint(run_dir)
    meta = ckpt.get("reprlearn")
    if not meta:
        raise fail(f"{run_dir} is not a reprlearn checkpoint (no reprlearn metadata)")
    cfg, method_cfg = resolve_config(meta["config"]["method"], {}, base=meta["config"])
    info = DataInfo(**meta["data_info"])
    method = build_method(cfg, method_cfg, info)
    prefix = "method."
    method.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    if meta.get("tokenizer"):
        from .text import TextTokenizer

        method.tokenizer = TextTokenizer.from_json(meta["tokenizer"])
    return method.eval(), cfg, info


def load(run_dir: str | Path) -> Encoder:
    """The trained encoder of a run (heads dropped), in eval mode.

    It takes float images in [0, 1] shaped (N, C, H, W) and returns (N, feature_dim).
    """
    method, cfg, info = load_method(run_dir)
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
                 info: DataInfo | None = None, train_set: ImageSet | None = None,
                 eval_set: ImageSet | None = None, eval_data: str | None = None,
                 labels_per_class: int | None = None, finetune: bool | None = None,
                 anomaly_class: int | None = None, iwae_k: int = 50, eval_pairs: PairSet | None = None,
                 knn_k: int | None = None, knn_temperature: float | None = None,
                 probe_backend: str | None = None, linear_c: float | None = None) -> dict:
    """Evaluate a run with the one harness; writes eval.json, umap.png and, for
    generative methods, reconstruction / sample / interpolation figures into the run;
    for image-text methods also zero-shot accuracy, retrieval Recall@K and CLIP-score AUROC.

    ``knn_k``, ``knn_temperature``, ``probe_backend`` and ``linear_c`` override the run's config; the values
    used are recorded in eval.json under ``probes``."""
    from .augment import augment, preset
    from .evaluate import evaluate

    run_dir = Path(run_dir)
    if method is None:
        method, cfg, info = load_method(run_dir)
    if eval_data:
        cfg = dataclasses.replace(cfg, eval_data=eval_data)
    probe_opts = {"knn_k": knn_k if knn_k is not None else cfg.knn_k,
                  "knn_temperature": knn_temperature if knn_temperature is not None else cfg.knn_temperature,
                  "probe_backend": probe_backend or cfg.probe_backend,
                  "linear_c": linear_c if linear_c is not None else cfg.linear_c}
    if train_set is None or eval_set is None:
        if method.paired:
            train_pairs, eval_pairs = load_pair_data(cfg)
            train_set, eval_set = train_pairs.images, eval_pairs.images if eval_pairs is not None else None
        else:
            train_set, eval_set = load_data(cfg)
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
                          method=cfg.method, **probe_opts)
    else:  # captions but no labels (e.g. Flickr8k): no probe to fit; the joint space is scored below
        result = {"method": cfg.method, "test_images": len(eval_set),
                  "probes": "skipped: the evaluation pairs have no class labels"}
    if method.paired:
        result.update(image_text_metrics(method, eval_pairs, device))
    result["labels_per_class"] = per_class
    result["eval_data"] = eval_set.name
    result["skipped_items"] = {"train": len(train_set.skipped), "eval": len(eval_set.skipped)}
    if hasattr(method, "reconstruct"):
        result.update(_generative_eval(method, cfg, info, eval_set, run_dir, anomaly_class, iwae_k, device))
    (run_dir / "eval.json").write_text(json.dumps(result, indent=2))
    return result


def image_text_metrics(method: Method, pairs: PairSet, device: str, max_images: int = 5000) -> dict:
    """Zero-shot accuracy (held-out tasks of the pairs), retrieval Recall@1/5/10 with chance,
    and the CLIP-score AUROC on held-out pairs.

    Retrieval is skipped for pairs made from class prompts (every image of a class shares
    its captions, so 'its own caption' means nothing there).
    """
    from .evaluate import extract
    from .evaluate import image_text as it

    out: dict[str, Any] = {}
    method = method.to(device).eval()
    image_emb = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor(), 512))
    zs = zero_shot_scores(method, pairs, image_emb)
    if zs["zeroshot_tasks"]:
        out.update(zs)
    if pairs.images.labels is not None and pairs.attributes is None:  # captions made from class prompts
        return out
    keep = min(len(pairs), max_images)
    text_image = torch.repeat_interleave(torch.arange(keep), torch.tensor([len(c) for c in pairs.captions[:keep]]))
    text_emb = method.embed_texts([c for caps in pairs.captions[:keep] for c in caps]).cpu()
    sim = image_emb[:keep] @ text_emb.T
    out.update(it.recall_at_k(sim, text_image))
    for k in (1, 5, 10):
        chance = it.recall_chance(text_image.numpy(), keep, k)
        out[f"i2t_recall@{k}_chance"], out[f"t2i_recall@{k}_chance"] = chance["i2t"], chance["t2i"]
    out["recall@5_chance"] = out["t2i_recall@5_chance"]  # one caption's own image among N: K / N
    auroc = it.clip_score_auroc(sim, text_image)
    out["clip_score_auroc"], out["clip_score_auroc_per_image"] = auroc["pooled"], auroc["per_image"]
    out["retrieval_images"], out["retrieval_texts"] = keep, len(text_image)
    return out


def zero_shot_scores(method: Method, pairs: PairSet, image_emb: torch.Tensor, tasks: list | None = None) -> dict:
    """Top-1/top-5 of each zero-shot task with its chance level; their means as
    ``zeroshot_top1`` / ``zeroshot_chance`` (None when the pairs hold no task)."""
    from .data.scenes import zero_shot_tasks
    from .evaluate import image_text as it

    scores: dict[str, dict] = {}
    for task in tasks if tasks is not None else zero_shot_tasks(pairs):
        classifier = it.zero_shot_classifier(lambda t: method.embed_texts(t).cpu(), task.prompts())
        acc = it.zero_shot_accuracy(image_emb[torch.from_numpy(task.index)], classifier, torch.from_numpy(task.labels))
        n_classes = len(task.class_names)
        scores[task.name] = {**acc, "chance": 1 / n_classes, "top5_chance": min(5, n_classes) / n_classes,
                             "images": len(task.index), "classes": n_classes}
    means = {key: float(np.mean([t[key] for t in scores.values()])) if scores else None for key in ("top1", "chance")}
    return {"zeroshot_tasks": scores, "zeroshot_top1": means["top1"], "zeroshot_chance": means["chance"]}


def zeroshot(run_dir: str | Path, data: str | None = None, classes: str | list[str] | None = None,
             templates: list[str] | None = None) -> dict:
    """Zero-shot classification of ``data`` (default: the run's held-out pairs) with an image-text run.

    ``classes``: names in label order, as a list, a comma list or a file with one per line
    (default: the source's own class names). ``templates``: prompts with ``{}`` for the name.
    """
    from .data.pairs import PROMPT_TEMPLATES, load_pairs
    from .evaluate import extract

    method, cfg, info = load_method(run_dir)
    if not method.paired:
        raise fail(f"{run_dir} is a {cfg.method} run; zero-shot needs an image-text run (clip or siglip)")
    if data is None:
        pairs = load_pair_data(cfg)[1]
        if pairs is None:
            raise fail(f"{cfg.data} has no held-out pairs; give --data with labelled images")
    else:
        pairs = load_pairs(data, "test", info.image_size)
    if pairs.images.images.shape[1:] != (info.image_size, info.image_size, info.channels):
        raise fail(f"{data} images are {pairs.images.images.shape[1:]} but the run was trained on "
                   f"{(info.image_size, info.image_size, info.channels)}; pass a source of that shape")
    tasks = None
    if classes is not None or templates:
        names = _class_list(classes) if classes is not None else pairs.images.class_names
        labels = pairs.images.labels
        if labels is None or not names:
            raise fail(f"{pairs.name} has no class labels; zero-shot with --classes needs labelled images "
                       "(KEY.cls members, class sub-folders, digits, cifar10)")
        if labels.max() >= len(names):
            raise fail(f"{pairs.name} has labels up to {labels.max()} but only {len(names)} class names were given")
        chosen = templates or PROMPT_TEMPLATES
        for t in chosen:
            if "{}" not in t:
                raise fail(f"prompt template {t!r} has no {{}} for the class name")
        tasks = [_PromptTask("class", np.arange(len(labels)), labels, list(names), list(chosen))]
    method = method.to("cpu")
    image_emb = torch.from_numpy(extract(method.image_tower(), pairs.images.tensor(), 512))
    result = zero_shot_scores(method, pairs, image_emb, tasks)
    if not result["zeroshot_tasks"]:
        raise fail(f"{pairs.name} holds no zero-shot task (no labels); give --data with labelled images and --classes")
    return {"tasks": result["zeroshot_tasks"], "zeroshot_top1": result["zeroshot_top1"],
            "zeroshot_chance": result["zeroshot_chance"]}


class _PromptTask:
    """A zero-shot task with the user's class names and templates (same shape as scenes.ZeroShotTask)."""

    def __init__(self, name, index, labels, class_names, templates):
        self.name, self.index, self.labels, self.class_names, self.templates = name, index, labels, class_names, templates

    def prompts(self) -> list[list[str]]:
        return [[t.format(c) for t in self.templates] for c in self.class_names]


def _class_list(classes: str | list[str]) -> list[str]:
    if isinstance(classes, (list, tuple)):
        names = [str(c).strip() for c in classes]
    elif Path(classes).is_file():
        names = [line.strip() for line in Path(classes).read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in str(classes).split(",")]
    if not names or not all(names):
        raise fail(f"--classes {classes!r} names no classes (or has an empty one); give a file with one name "
                   "per line or a comma list")
    return names


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
