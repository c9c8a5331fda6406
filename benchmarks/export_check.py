"""Which export formats each registered backbone supports, measured: every backbone (random weights,
with its data normalisation in front) exported to safetensors, TorchScript and ONNX, each read back
and compared with eager PyTorch on 16 images (a batch size other than the 2 it was traced on).

    OMP_NUM_THREADS=1 python benchmarks/export_check.py [--size 32] [--out DIR]

Prints one row per backbone: seconds per export, file size, max |difference| from eager.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from reprlearn.export import export_graph, load_safetensors, onnx_max_error, save_safetensors
from reprlearn.nets import create_backbone, list_backbones
from reprlearn.nets.encoder import Encoder
from reprlearn.nets.interop import layout_of


def check(name: str, size: int, channels: int, out: Path) -> dict:
    torch.manual_seed(0)
    encoder = Encoder(create_backbone(name, in_channels=channels, image_size=size), [0.4] * channels,
                      [0.25] * channels).eval()
    example = torch.rand(2, channels, size, size)
    x = torch.rand(16, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = encoder(x)
    row = {"backbone": name, "layout": layout_of(name) or "-"}
    meta = {"format": "reprlearn-encoder", "backbone": name, "backbone_options": {}, "in_channels": channels,
            "image_size": size, "mean": [0.4] * channels, "std": [0.25] * channels}
    t = time.perf_counter()
    save_safetensors(encoder, meta, out / f"{name}.safetensors")
    with torch.no_grad():
        err = (load_safetensors(out / f"{name}.safetensors")(x) - want).abs().max().item()
    row["safetensors"] = (time.perf_counter() - t, (out / f"{name}.safetensors").stat().st_size, err)
    for fmt, ext in (("torchscript", ".pt"), ("onnx", ".onnx")):
        path = out / f"{name}{ext}"
        t = time.perf_counter()
        try:
            export_graph(encoder, example, path, fmt, "images", "features")
        except Exception as e:  # noqa: BLE001 - a backbone that cannot export is a row of the table
            row[fmt] = f"fails: {type(e).__name__}: {str(e)[:60]}"
            continue
        seconds = time.perf_counter() - t
        if fmt == "torchscript":
            with torch.no_grad():
                err = (torch.jit.load(str(path))(x) - want).abs().max().item()
        else:
            try:
                err = onnx_max_error(path, encoder, x)
            except Exception as e:  # noqa: BLE001
                row[fmt] = f"fails: {str(e)[:90]}"
                continue
        row[fmt] = (seconds, path.stat().st_size, err)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--out", type=Path)
    p.add_argument("--only", nargs="*", help="these backbones (default: all registered)")
    a = p.parse_args()
    out = a.out or Path(tempfile.mkdtemp())
    out.mkdir(parents=True, exist_ok=True)
    print(f"| backbone ({a.size} px, 3 channels) | layout | safetensors | torchscript | onnx |")
    print("| --- | --- | --- | --- | --- |")
    for name in a.only or list_backbones():
        row = check(name, a.size, 3, out)
        cells = []
        for fmt in ("safetensors", "torchscript", "onnx"):
            v = row[fmt]
            cells.append(v if isinstance(v, str) else f"{v[0]:.1f} s, {v[1] / 1e6:.1f} MB, max err {v[2]:.1e}"
                         if v[2] is not None else f"{v[0]:.1f} s, {v[1] / 1e6:.1f} MB")
        print(f"| {name} | {row['layout']} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
