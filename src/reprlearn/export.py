"""A trained encoder in the standard formats: safetensors, TorchScript, ONNX; features as Parquet.

- ``safetensors``: the encoder's weights (heads dropped) under our names, and in the header (and
  in ``PATH.json`` beside it, e.g. ``encoder.safetensors.json``) what rebuilds it: backbone name
  and options, input channels and size, feature dim, the normalisation. ``reprlearn.load(PATH)``
  gives the encoder back. For the backbones with a torchvision/timm counterpart (see
  nets/interop.py) ``encoder.torchvision.safetensors`` or ``encoder.timm.safetensors`` holds the
  same weights under that library's names.
- ``torchscript`` / ``onnx``: the encoder as a graph from float images in [0, 1] (N, C, H, W),
  normalisation inside, to features (N, D); the batch size is free (each graph is run again at
  another batch size, and an ONNX graph is compared with PyTorch in onnxruntime). An image-text
  run (clip, siglip) gives both towers: ``PATH`` the image tower, ``PATH.text.EXT`` the text
  tower (token ids (N, context_length) int64 -> unit embeddings), and ``PATH.tokenizer.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import fail
from .files import atomic_write
from .nets import create_backbone
from .nets.encoder import Encoder
from .nets.interop import key_mapping, layout_of, to_reference

FORMATS = ("safetensors", "torchscript", "onnx")
FORMAT_VERSION = 1
# what the encoder takes, for users of the files: C = in_channels, any band count
INPUT = "float images in [0, 1], (N, C, H, W): 8-bit pixels / 255, 16-bit / 65535, float data as given in [0, 1]"


def encoder_meta(encoder: Encoder, backbone: str, info, method: str) -> dict:
    """What rebuilds ``encoder`` from its weights alone (and what a user of another tool needs to know)."""
    return {"format": "reprlearn-encoder", "version": FORMAT_VERSION, "method": method, "backbone": backbone,
            "backbone_options": {}, "in_channels": int(info.channels), "image_size": int(info.image_size),
            "feature_dim": int(encoder.feature_dim), "input": INPUT,
            "mean": [float(v) for v in encoder.mean.flatten()], "std": [float(v) for v in encoder.std.flatten()]}


def _sidecar(path: Path) -> Path:
    """FILE.EXT.json: the metadata beside an exported file, for people and other tools."""
    return path.with_name(path.name + ".json")


def _write_sidecar(path: Path, meta: dict) -> None:
    with atomic_write(_sidecar(path), "w") as f:
        f.write(json.dumps(meta, indent=2))


def _partial(path: Path) -> Path:
    """A hidden file beside ``path`` that a graph is written to and checked in before it replaces ``path``."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def save_safetensors(encoder: Encoder, meta: dict, out: str | Path) -> list[Path]:
    """Write the encoder's backbone weights + rebuild metadata; returns the files written. Each file
    is written whole or not at all (a crash leaves the previous export as it was)."""
    from safetensors.torch import save

    out = Path(out)
    if out.suffix != ".safetensors":
        raise fail(f"--out {out}: a safetensors export is a FILE.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    backbone = encoder.backbone
    meta = dict(meta)
    written = [out, _sidecar(out)]
    library = layout_of(meta["backbone"])
    if library:
        mapping = key_mapping(meta["backbone"], backbone)
        ref_path = out.with_suffix(f".{library}.safetensors")
        meta["reference"] = {"library": library, "file": ref_path.name, "keys": mapping}
        with atomic_write(ref_path) as f:
            f.write(save({k: v.detach().contiguous() for k, v in to_reference(meta["backbone"], backbone).items()},
                         metadata={"reprlearn": json.dumps({**meta, "layout": library})}))
        written.append(ref_path)
    tensors = {k: v.detach().contiguous() for k, v in backbone.state_dict().items()}
    with atomic_write(out) as f:
        f.write(save(tensors, metadata={"reprlearn": json.dumps(meta)}))
    _write_sidecar(out, meta)
    return written


def load_safetensors(path: str | Path) -> Encoder:
    """The encoder of a reprlearn safetensors export, in eval mode (its metadata as ``.export_info``)."""
    from safetensors import safe_open

    from .nets.interop import load_strict

    path = Path(path)
    if not path.is_file():
        raise fail(f"no file {path}; give a run directory or a .safetensors file written by `reprlearn export`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("reprlearn", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a broken file means the same thing to the user
        raise fail(f"{path} is not a readable safetensors file ({type(e).__name__}: {str(e)[:80]})") from None
    if meta.get("format") != "reprlearn-encoder":
        raise fail(f"{path} has no reprlearn metadata; load it into a backbone with --init-from instead")
    if meta.get("layout"):
        main = path.name.removesuffix(f".{meta['layout']}.safetensors") + ".safetensors"
        raise fail(f"{path} is the {meta['layout']} copy of an export; load {main}, or this one with {meta['layout']}")
    channels = meta["in_channels"]
    if not len(meta["mean"]) == len(meta["std"]) == channels:  # a per-channel mismatch would broadcast silently
        raise fail(f"{path} records {channels} input channels but a normalisation of {len(meta['mean'])} mean and "
                   f"{len(meta['std'])} std values; export the run again")
    backbone = create_backbone(meta["backbone"], in_channels=channels, image_size=meta["image_size"],
                               **meta.get("backbone_options", {}))
    load_strict(backbone, tensors, str(path))
    encoder = Encoder(backbone, meta["mean"], meta["std"])
    encoder.export_info = meta
    return encoder.eval()


def _example(shape: tuple) -> torch.Tensor:
    """Images for tracing and the ONNX check: uniform in [0, 1], fixed seed."""
    return torch.rand(shape, generator=torch.Generator().manual_seed(0))


def export_graph(module: nn.Module, example: torch.Tensor, out: Path, fmt: str, input_name: str,
                 output_name: str) -> Path:
    """``module`` (eval mode, CPU) as a TorchScript or ONNX graph with a free batch size."""
    import warnings

    module = module.eval().cpu()
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # the tracer warns about Python-level shape checks (the ViT's grid, the text length limit): they
        # hold for every input the graph is meant for (the run's image size, context_length tokens);
        # torch 2.13 marks TorchScript deprecated, and it is still what many serving stacks load
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*", category=DeprecationWarning)
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(out))
        else:
            _onnx(module, example, out, input_name, output_name)
    return out


def _onnx(module: nn.Module, example: torch.Tensor, out: Path, input_name: str, output_name: str) -> None:
    import importlib.util
    import logging

    # the exporter says at WARNING level that torchvision's detection ops are not there to register
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise fail(f"--format onnx needs {' and '.join(missing)}, not installed; pip install 'reprlearn[export]'")
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    try:
        torch.onnx.export(module, (example,), str(out), input_names=[input_name], output_names=[output_name],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - the exporter's errors are pages long; the cause is one line of them
        cause = next((line.strip() for line in str(e).splitlines() if "Error" in line and ":" in line), str(e)[:120])
        raise fail(f"torch's ONNX exporter cannot convert {type(module).__name__} ({cause[:160]}); "
                   "use --format torchscript or safetensors") from None


def onnx_max_error(path: Path, module: nn.Module, example: torch.Tensor) -> float | None:
    """max |ONNX Runtime - PyTorch| on ``example``, or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    runtime = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = runtime.get_inputs()[0].shape[0]
    if isinstance(batch, int):  # the exporter kept a fixed batch size: the graph is of no general use
        raise fail(f"the ONNX graph {path} has a fixed batch size of {batch} (the exporter could not keep it free "
                   "for this backbone); use --format torchscript")
    (got,) = runtime.run(None, {runtime.get_inputs()[0].name: example.numpy()})
    with torch.no_grad():
        want = module.eval()(example).numpy()
    return float(np.abs(got - want).max())


def export_towers(towers: list[tuple[str, nn.Module, torch.Tensor, str, str]], fmt: str, out: Path) -> list[Path]:
    """Each (suffix, module, example input, input name, output name) to ``out`` with the suffix before the
    extension; ONNX files are checked against PyTorch with onnxruntime when it is installed."""
    written = []
    for suffix, module, example, input_name, output_name in towers:
        path = out.with_name(out.stem + suffix + out.suffix)
        partial = _partial(path)  # checked before it replaces path: a failed check leaves an earlier export
        try:
            export_graph(module, example, partial, fmt, input_name, output_name)
            other = torch.cat([example, example[:1]])  # a batch size other than the traced one
            if fmt == "torchscript":  # a trace can bake the batch size in
                err = torchscript_max_error(partial, module, other)
                if err is None:
                    raise fail(f"the TorchScript graph {path} works only at the batch size it was traced on; "
                               "use --format onnx or safetensors for this backbone")
                if err > 1e-4:
                    raise fail(f"the TorchScript graph {path} differs from PyTorch by {err:.2e} (> 1e-4) at another "
                               "batch size; use --format onnx or safetensors for this backbone")
            if fmt == "onnx":
                err = onnx_max_error(partial, module, other)
                if err is not None and err > 1e-4:
                    raise fail(f"the ONNX graph {path} differs from PyTorch by {err:.2e} (> 1e-4); "
                               "please report it; use --format torchscript meanwhile")
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        written.append(path)
    return written


def torchscript_max_error(path: Path, module: nn.Module, example: torch.Tensor) -> float | None:
    """max |TorchScript - PyTorch| on ``example``, or None when the graph does not run on it."""
    with torch.no_grad():
        try:
            got = torch.jit.load(str(path))(example)
        except RuntimeError:
            return None
        want = module.eval()(example)
    if got.shape != want.shape:
        return float("inf")
    return float((got - want).abs().max())


def export_method(method, cfg, info, fmt: str, out: str | Path, batch: int = 2) -> list[Path]:
    """Export a trained method's encoder (``fmt`` in FORMATS) to ``out``; an image-text method's
    graphs are both towers and its tokenizer. Returns the files written."""
    from .methods import EmbedsText, ModelsText

    if fmt not in FORMATS:
        raise fail(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(method, ModelsText):
        raise fail(f"{cfg.method} is a text-only run and export writes image encoders; use its weights through "
                   "`reprlearn.load(RUN)`, or start clip/siglip's text tower from it with --text-init RUN")
    out = Path(out)
    encoder = method.encoder.eval().cpu()
    meta = encoder_meta(encoder, cfg.backbone, info, cfg.method)
    if fmt == "safetensors":
        return save_safetensors(encoder, meta, out)
    ext = ".pt" if fmt == "torchscript" else ".onnx"
    if out.suffix != ext:
        raise fail(f"--out {out}: a {fmt} export is a FILE{ext}")
    images = _example((batch, info.channels, info.image_size, info.image_size))
    if isinstance(method, EmbedsText):
        method = method.eval().cpu()
        context = method.config.context_length
        tokens = method.tokenize(["a photo", "two red squares left of a circle"])
        towers = [("", method.image_tower(), images, "images", "image_embeddings"),
                  (".text", method.text_tower(), tokens, "tokens", "text_embeddings")]
        meta.update(embed_dim=int(method.config.embed_dim), context_length=int(context),
                    tokenizer=f"{out.stem}.tokenizer.json",
                    text_input=f"token ids (N, {context}) int64 from the tokenizer: [SOT] text [EOT] then padding id "
                               f"{info.text.get('pad_id', 0)}", text_graph=f"{out.stem}.text{ext}",
                    image_output="unit image embeddings (N, embed_dim)",
                    text_output="unit text embeddings (N, embed_dim)")
        written = export_towers(towers, fmt, out)
        tokenizer_path = out.with_name(f"{out.stem}.tokenizer.json")
        method.tokenizer.save(tokenizer_path)
        written.append(tokenizer_path)
    else:
        written = export_towers([("", encoder, images, "images", "features")], fmt, out)
    meta["graph"] = fmt
    _write_sidecar(out, meta)
    return [*written, _sidecar(out)]


def write_features(features: np.ndarray, out: str | Path, labels: np.ndarray | None = None,
                   keys: list[str] | None = None, meta: dict | None = None) -> list[Path]:
    """``out`` as .npy and, beside it, .parquet with columns key, embedding (a fixed-size float32 list)
    and label when the source has labels.

    ``key`` is each row's key (the image's path, SHARD_FILE_NAME/KEY or NAME:SPLIT/INDEX), or its
    position in the source (int64) when no keys are given; ``meta`` (what made the features: the run,
    the source, the image size) is kept as JSON under the table's ``reprlearn`` metadata.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out)
    npy = out if out.suffix == ".npy" else out.with_suffix(".npy")
    features = np.ascontiguousarray(features, dtype=np.float32)
    n, d = features.shape
    if keys is not None and len(keys) != n:
        raise fail(f"{len(keys)} keys for {n} feature rows; give one key per row")
    with atomic_write(npy) as f:
        np.save(f, features)
    columns = {"key": pa.array([str(k) for k in keys], pa.string()) if keys is not None
               else pa.array(np.arange(n, dtype=np.int64)),
               "embedding": pa.FixedSizeListArray.from_arrays(pa.array(features.reshape(-1)), d)}
    if labels is not None:
        columns["label"] = pa.array(np.asarray(labels, dtype=np.int64))
    table = pa.table(columns)
    if meta:
        table = table.replace_schema_metadata({"reprlearn": json.dumps(meta)})
    parquet = npy.with_suffix(".parquet")
    with atomic_write(parquet) as f:
        pq.write_table(table, f)
    return [npy, parquet]
