"""One evaluation harness for every method: features in, one table and eval.json out.

The learned encoder is compared with three baselines under the same probes:
``raw_pixels`` (flattened pixels), ``pca`` (pixels projected to the feature
dimension) and ``random_init`` (the same architecture, untrained).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..data import ImageSet, stratified_split
from ..data.pixels import to_unit_array, unit_float
from ..data.run_data import labelled
from ..data.stream import ShardStream, eval_batches, read_subset
from ..errors import fail
from .probes import BACKENDS, L2_GRID, cluster_scores, few_label, finetune_top1, knn_top1, linear_probe, linear_top1

METRICS = ("knn_top1", "linear_top1", "knn_top1_few", "linear_top1_few", "nmi", "ari", "finetune_top1")
# the label-free rows (evaluate/labelfree.py), of the trained encoder and its random init
LABEL_FREE_METRICS = ("rankme", "alignment", "uniformity", "embedding_std", "effective_rank")


@torch.no_grad()
def extract(encoder: torch.nn.Module, images: torch.Tensor, batch_size: int | None = None) -> np.ndarray:
    """uint8 (N, C, H, W) (or float in [0, 1]) -> features (N, D) float32, the encoder in eval mode.

    ``batch_size`` None is 64 images a batch on a CPU, and 1,024 elsewhere. On a CPU a small CNN's
    activations then stay in cache and below glibc's mmap threshold, so no batch page-faults its
    buffers in afresh: on CIFAR-10 (10,000 images, 2 cores) 1.3 s against 1.9 s at 256 (340,000
    page faults) and 2.5 s at 1,024. Convolutions followed by a BatchNorm are folded into one
    (:func:`folded_for_inference`)."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    batch_size = batch_size or (64 if device.type == "cpu" else 1024)
    net = folded_for_inference(encoder)
    out = []
    for start in range(0, len(images), batch_size):
        x = unit_float(images[start:start + batch_size].to(device))
        out.append(net(x).float().cpu())
    encoder.train(was_training)
    return torch.cat(out).numpy()


def folded_for_inference(encoder: torch.nn.Module) -> torch.nn.Module:
    """``encoder`` (in eval mode) with each Conv2d that a BatchNorm2d follows in an nn.Sequential
    folded into one convolution (the same function to float rounding, ~1e-6): one pass less over
    the activations, 1.4x faster feature extraction on a CPU for the small CNN. A copy when there is
    something to fold, else ``encoder`` itself."""
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def pairs(module):
        return [(seq, i) for seq in module.modules() if isinstance(seq, torch.nn.Sequential)
                for i in range(len(seq) - 1) if isinstance(seq[i], torch.nn.Conv2d)
                and isinstance(seq[i + 1], torch.nn.BatchNorm2d) and seq[i + 1].track_running_stats]
    if not pairs(encoder):
        return encoder
    folded = copy.deepcopy(encoder).eval()
    for seq, i in pairs(folded):
        seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    return folded


def probe_split(train, test, max_train: int | None, seed: int):
    """The labelled sets the probes fit and score on. A streamed training set is decoded as a
    random subset of ``max_train`` (or whole, when smaller); with ``max_train`` None it stays a
    stream, and its features are extracted batch by batch."""
    if not labelled(test):  # evaluate/run.py scores unlabelled data label-free instead (evaluate/labelfree.py)
        raise fail(f"evaluation data {test.name} has no labels, which the probes need; give labelled evaluation "
                   "data, or score it with reprlearn.evaluate.labelfree.label_free_report")
    if not labelled(train):  # unlabelled training data: the probes split the labelled test set
        if isinstance(test, ShardStream):
            test = read_subset(test, min(len(test), 2 * (max_train or 20000)), seed)
        fit, score = stratified_split(test.labels, len(test), 0.5, seed)
        train, test = test.subset(fit, test.name + "[probe-fit]"), test.subset(score, test.name + "[probe-score]")
    if isinstance(train, ShardStream) and max_train is not None:
        return read_subset(train, min(max_train, len(train)), seed), test
    if max_train is not None and len(train) > max_train:
        keep = np.sort(np.random.default_rng(seed).choice(len(train), max_train, replace=False))
        train = train.subset(keep)
    return train, test


PIXEL_BASELINE_MAX = 20000  # streamed sets: the pixel baselines fit on at most this many images (spread evenly)


@dataclass
class Encoded:
    """What the probes need of one image set: each encoder's features and the labels; the flat
    pixels (the baselines), of every image or, for a stream, of an evenly spread subset."""

    features: list[np.ndarray]
    labels: np.ndarray
    pixels: torch.Tensor
    pixel_labels: np.ndarray


@torch.no_grad()
def encode(images, encoders: list[torch.nn.Module], device) -> Encoded:
    """Features of ``images`` (an ImageSet, or a stream read once batch by batch) under each encoder."""
    if not isinstance(images, ShardStream):
        x = images.tensor(device)
        flat = images.images.reshape(len(images), -1)  # 8-bit pixels as bytes (the exact kNN), deeper ones as [0, 1]
        pixels = torch.from_numpy(flat if flat.dtype == np.uint8 else to_unit_array(flat))
        return Encoded([extract(e, x) for e in encoders], images.labels, pixels, images.labels)
    modes = [e.training for e in encoders]
    for e in encoders:
        e.eval()
    every = -(-len(images) // PIXEL_BASELINE_MAX)
    feats: list[list[torch.Tensor]] = [[] for _ in encoders]
    labels, pixels, pixel_labels, seen = [], [], [], 0
    for batch in eval_batches(images):
        x = unit_float(batch["images"].to(device, non_blocking=True))
        for out, e in zip(feats, encoders):
            out.append(e(x).float().cpu())
        labels.append(batch["labels"])
        keep = (torch.arange(seen, seen + len(x)) % every) == 0
        pixels.append(batch["images"][keep].reshape(int(keep.sum()), -1))
        pixel_labels.append(batch["labels"][keep])
        seen += len(x)
    for e, mode in zip(encoders, modes):
        e.train(mode)
    return Encoded([torch.cat(f).numpy() for f in feats], torch.cat(labels).numpy(), torch.cat(pixels),
                   torch.cat(pixel_labels).numpy())


def score_features(train_f, train_y, test_f, test_y, labels_per_class: int, seed: int, *, knn_k: int = 200,
                   knn_temperature: float = 0.1, backend: str = "torch", linear_c: float | None = None,
                   knn_features: tuple | None = None) -> dict:
    """Every probe on one feature set; the features may be tensors on a device (the torch probes run there).
    ``knn_features``: the same (train, test) vectors up to a scale, for the kNN's cosine (8-bit pixels,
    whose similarities :func:`probes.knn_top1` computes exactly by an integer GEMM)."""
    linear = linear_probe(train_f, train_y, test_f, test_y, seed=seed, c=linear_c) if backend == "torch" else \
        {"top1": linear_top1(train_f, train_y, test_f, test_y, seed=seed, backend=backend, c=linear_c)}
    knn_train, knn_test = knn_features or (train_f, test_f)
    result = {
        "knn_top1": knn_top1(knn_train, train_y, knn_test, test_y, k=knn_k, temperature=knn_temperature),
        "linear_top1": linear["top1"],
    }
    result.update(few_label(train_f, train_y, test_f, test_y, labels_per_class, draws=5, seed=seed, knn_k=knn_k,
                            knn_temperature=knn_temperature, backend=backend, linear_c=linear_c))
    result.update(cluster_scores(test_f, test_y, seed=seed, backend=backend))
    if "l2" in linear:
        result["linear_l2"] = linear["l2"]
    return result


def pca_project(train: torch.Tensor, test: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets projected on the top ``dim`` principal axes of ``train`` (centred with its mean):
    the eigenvectors of its scatter matrix (decomposed in float64) on the tensors' device. On a
    CPU only the top ``dim`` are computed (LAPACK's MRRR, scipy's ``driver="evr"``): 2.5x faster
    than the full decomposition for 128 of 3,072 axes, the same axes to 1e-15."""
    mean = train.mean(0)
    centred = train - mean
    if centred.device.type == "cpu" and centred.dtype == torch.float32:
        import scipy.linalg
        import scipy.linalg.blas

        # the scatter's upper triangle alone (BLAS syrk: half the products of a GEMM, 1.7x faster)
        upper = scipy.linalg.blas.ssyrk(1.0, centred.numpy().T, trans=0, lower=0).astype(np.float64)
        d = len(upper)
        _, top = scipy.linalg.eigh(upper, lower=False, subset_by_index=[d - dim, d - 1], driver="evr")
        vectors = torch.from_numpy(top)
    else:
        vectors = torch.linalg.eigh((centred.T @ centred).double())[1][:, -dim:]  # eigenvalues ascending
    axes = vectors.flip(1).to(train.dtype)
    return centred @ axes, (test - mean) @ axes


def evaluate(encoder: torch.nn.Module, random_encoder: torch.nn.Module, train: ImageSet | ShardStream,
             test: ImageSet | ShardStream, *,
             labels_per_class: int = 5, seed: int = 0, max_train: int | None = 20000,
             finetune_views: Callable | None = None, run_dir: Path | None = None, method: str = "",
             knn_k: int = 200, knn_temperature: float = 0.1, probe_backend: str = "torch",
             linear_c: float | None = None, baseline_cache: bool = True) -> dict:
    """Score ``encoder`` and the baselines; write umap.png into ``run_dir`` when given.

    ``probe_backend`` ``torch`` runs the probes and PCA on the encoder's device; ``sklearn`` is
    the former CPU path (sklearn's LogisticRegression with C = 1 and PCA), kept for comparison.
    ``linear_c`` fixes the linear probe's C (sklearn's meaning) instead of the torch probe's sweep.
    ``baseline_cache`` reuses a baseline's stored scores when its inputs, options and probe code
    are byte for byte those of an earlier evaluation (baseline_cache.py); eval.json names them."""
    if probe_backend not in BACKENDS:
        raise fail(f"unknown probe backend {probe_backend!r}; use one of {', '.join(BACKENDS)}")
    train, test = probe_split(train, test, max_train, seed)
    device = next(encoder.parameters()).device
    on = device if probe_backend == "torch" else "cpu"
    random_init = random_encoder.to(device)
    tr, te = encode(train, [encoder, random_init], device), encode(test, [encoder, random_init], device)
    train_f, test_f = tr.features[0], te.features[0]
    opts = {"knn_k": knn_k, "knn_temperature": knn_temperature, "backend": probe_backend, "linear_c": linear_c}

    def score(a, b, train_y=tr.labels, test_y=te.labels, **knn) -> dict:
        a, b = torch.as_tensor(a).to(on), torch.as_tensor(b).to(on)
        return score_features(a, train_y, b, test_y, labels_per_class, seed, **opts, **knn)

    result: dict = {"method": method, "train_images": len(tr.labels), "test_images": len(te.labels),
                    "feature_dim": int(train_f.shape[1])}
    result.update(score(train_f, test_f))
    if finetune_views is not None:
        if isinstance(train, ShardStream) or isinstance(test, ShardStream):
            raise fail("--finetune needs the evaluation images in memory; pass --loader memory or --eval-max-train N")
        result["finetune_top1"] = finetune_top1(encoder, train.tensor(device), train.labels, test.tensor(device),
                                                test.labels, finetune_views, seed=seed)
    reused: list[str] = []

    def baseline(name: str, compute: Callable[[], dict], *inputs, **extra) -> dict:
        if not baseline_cache:
            return compute()
        from .baseline_cache import cached_scores

        options = {**opts, **extra, "labels_per_class": labels_per_class, "seed": seed, "device": str(on)}
        scores, hit = cached_scores(name, options, list(inputs), compute)
        if hit:
            reused.append(name)
        return scores

    pixel_bytes = (tr.pixels.to(on), te.pixels.to(on))
    pix_train, pix_test = (unit_float(p) for p in pixel_bytes)
    pixel_score = lambda a, b, **knn: score(a, b, tr.pixel_labels, te.pixel_labels, **knn)  # noqa: E731
    pixel_inputs = (tr.pixels, tr.pixel_labels, te.pixels, te.pixel_labels)
    raw_pixels = lambda: pixel_score(pix_train, pix_test, knn_features=pixel_bytes)  # noqa: E731
    result["baselines"] = {"raw_pixels": baseline("raw_pixels", raw_pixels, *pixel_inputs)}
    dim = min(train_f.shape[1], pix_train.shape[1], len(pix_train))
    if probe_backend == "torch":
        pca = lambda: pixel_score(*pca_project(pix_train, pix_test, dim))  # noqa: E731
    else:
        def pca() -> dict:
            from sklearn.decomposition import PCA

            fitted = PCA(n_components=dim, random_state=seed).fit(pix_train.numpy())
            return pixel_score(fitted.transform(pix_train.numpy()), fitted.transform(pix_test.numpy()))
    result["baselines"]["pca"] = baseline("pca", pca, *pixel_inputs, dim=dim)
    if len(pix_train) < len(tr.labels) or len(pix_test) < len(te.labels):
        result["pixel_baselines_images"] = {"train": len(pix_train), "test": len(pix_test)}
    result["baselines"]["random_init"] = baseline("random_init", lambda: score(tr.features[1], te.features[1]),
                                                  tr.features[1], tr.labels, te.features[1], te.labels)
    if reused:
        result["baselines_reused"] = reused
    result["probes"] = _probe_record(result, opts)
    if run_dir is not None:
        from .figures import umap_plot

        names = test.class_names or [str(c) for c in range(int(te.labels.max()) + 1)]
        umap_plot(test_f, te.labels, names, Path(run_dir) / "umap.png",
                  title=f"{method} test embeddings (UMAP)", seed=seed)
    return result


def _probe_record(result: dict, opts: dict) -> dict:
    """The probe settings for eval.json, with the L2 weight each linear probe chose (moved out of the rows)."""
    linear: dict = {"backend": opts["backend"]}
    chosen = {name: row.pop("linear_l2", None) for name, row in
              [(result["method"] or "encoder", result), *result["baselines"].items()]}
    if opts["linear_c"] is not None:
        linear.update(C=opts["linear_c"])
    elif opts["backend"] == "torch":
        linear.update(val_fraction=0.2, l2_grid=list(L2_GRID), chosen_l2=chosen)
    else:
        linear.update(C=1.0)
    linear["solver"] = "torch L-BFGS, strong Wolfe" if opts["backend"] == "torch" else "sklearn lbfgs"
    return {"knn_k": opts["knn_k"], "knn_temperature": opts["knn_temperature"], "linear": linear}


def format_table(result: dict) -> str:
    """The learned encoder beside each baseline, one metric per row."""
    if "masked_token_accuracy" in result:  # a text method (evaluate/text.py)
        from .text import format_text_table

        return format_text_table(result)
    beside = ["random_init"] if result.get("evaluation") == "label-free" else list(result.get("baselines", {}))
    columns = [result.get("method") or "encoder", *beside]
    rows = [m for m in METRICS if m in result]
    width = max(12, *(len(c) + 2 for c in columns))
    lines = ["metric".ljust(18) + "".join(c.rjust(width) for c in columns)]
    for m in rows:
        cells = [result[m]] + [result["baselines"][b].get(m) for b in columns[1:]]
        lines.append(m.ljust(18) + "".join(("-" if v is None else f"{v:.4f}").rjust(width) for v in cells))
    lines += _label_free_rows(result, columns, width)
    lines += _label_free_notes(result)
    probes = result.get("probes")
    if isinstance(probes, dict):
        lin = probes["linear"]
        chosen = ", ".join(f"{k} {v:g}" for k, v in lin.get("chosen_l2", {}).items())
        lines.append(f"probes: kNN k={probes['knn_k']} t={probes['knn_temperature']:g}; linear {lin['backend']}"
                     + (f" (L2 chosen: {chosen})" if chosen else f" (C={lin.get('C')})"))
    elif probes:
        lines.append(f"probes: {probes}")
    if result.get("baselines_reused"):
        lines.append("baselines reused from an earlier evaluation of the same inputs: "
                     + ", ".join(result["baselines_reused"]) + " (--no-baseline-cache scores them afresh)")
    lines += _image_text_lines(result)
    lines += _domain_lines(result)
    return "\n".join(lines)


def _image_text_lines(result: dict) -> list[str]:
    """Zero-shot and retrieval rows of image-text runs, each beside its chance level."""
    lines = []
    for name, task in (result.get("zeroshot_tasks") or {}).items():
        lines.append(f"zeroshot {name:<9s} top1 {task['top1']:.4f}  top5 {task['top5']:.4f}  "
                     f"(chance {task['chance']:.4f} / {task['top5_chance']:.4f}, {task['images']} images)")
    if result.get("zeroshot_top1") is not None:
        lines.append(f"zeroshot_top1      {result['zeroshot_top1']:.4f}  (chance {result['zeroshot_chance']:.4f})")
    for direction in ("i2t", "t2i"):
        if f"{direction}_recall@1" in result:
            cells = "  ".join(f"R@{k} {result[f'{direction}_recall@{k}']:.4f} "
                              f"(chance {result[f'{direction}_recall@{k}_chance']:.4f})" for k in (1, 5, 10))
            lines.append(f"{direction}_recall  {cells}")
    if "clip_score_auroc" in result:
        lines.append(f"clip_score_auroc   {result['clip_score_auroc']:.4f} pooled, "
                     f"{result['clip_score_auroc_per_image']:.4f} per image (chance 0.5)")
    return lines


def _domain_lines(result: dict) -> list[str]:
    """The evaluation table's rows for domain adaptation."""
    if "target_top1" not in result:
        return []
    cells = [("target_top1", "adapted"), ("source_only_top1", "source only"), ("lambda0_top1", "λ=0"),
             ("target_oracle_top1", "oracle")]
    row = "  ".join(f"{label} {result[k]:.4f}" for k, label in cells if result.get(k) is not None)
    lines = [f"target top-1       {row}", f"source top-1       {result['source_top1']:.4f}"]
    if "worst_domain_top1" in result:
        lines.append(f"worst domain top-1 {result['worst_domain_top1']:.4f}")
    dc = result["domain_classifier"]
    lines.append("domain classifier  " + "  ".join(f"{k} {v:.4f}" for k, v in dc.items()) + "  (0.5: indistinguishable)")
    lines.append(f"critic W1          {result['critic_w1']:.4f}")
    return lines


def _label_free_rows(result: dict, columns: list[str], width: int) -> list[str]:
    """The label-free rows of an evaluation table: the trained encoder's figure under the first column,
    the random init's under ``random_init``, '-' under any other (the pixel baselines)."""
    free = result.get("label_free")
    if not free:
        return []
    by_column = {columns[0]: free["encoder"], "random_init": free["random_init"]}
    cells = lambda m: (by_column.get(c, {}).get(m) for c in columns)  # noqa: E731
    return [m.ljust(18) + "".join(("-" if v is None else f"{v:.4f}").rjust(width) for v in cells(m))
            for m in LABEL_FREE_METRICS]


def _label_free_notes(result: dict) -> list[str]:
    """How the label-free rows were measured and how to read them, and the sheets written."""
    free = result.get("label_free")
    if not free:
        return []
    lines = [f"label-free: {free['images']} training images ({free['pair_images']} for alignment/uniformity); "
             f"RankMe up to {min(free['images'], free['feature_dim'])} (higher: more directions used), "
             "alignment lower = views closer, uniformity lower = more spread"]
    if free.get("sheets"):
        lines.append("sheets: " + ", ".join(free["sheets"].values()) + " in the run folder")
    return lines
