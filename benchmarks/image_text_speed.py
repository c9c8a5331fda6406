"""Training throughput (pairs/s) of ``clip`` and ``siglip``: a full optimiser step (both towers
forward and backward, loss, AdamW) on random images and caption tokens, measured side by side.

    python benchmarks/image_text_speed.py                                  # CPU: batch 256, few steps
    python benchmarks/image_text_speed.py --device cuda --batch-size 1024 --precision bf16-mixed

Image tower ViT-Tiny (patch 4 on 32 px), text tower the methods' defaults at width 128
(3 layers), 32-token captions. The steps go through the methods' own ``loss`` so the
figure is what ``reprlearn train`` pays per step, minus data indexing.
"""

from __future__ import annotations

import argparse
import time

import torch

from reprlearn.api import build_method, resolve_config
from reprlearn.methods import DataInfo


def make(method: str, image_size: int, device: str):
    cfg, mcfg = resolve_config(method, {"backbone": "vit-tiny", "text_width": 128, "text_layers": 3,
                                        "context_length": 32})
    info = DataInfo(channels=3, image_size=image_size, num_classes=0, mean=[0.5] * 3, std=[0.25] * 3,
                    text={"vocab_size": 4096, "sot_id": 1, "eot_id": 2, "pad_id": 0})
    model = build_method(cfg, mcfg, info).to(device)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-4)


def step_time(model, opt, images, tokens, steps: int, autocast: bool) -> float:
    device = images.device
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss((images, tokens))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    times = sorted(times[2:])  # the first steps include allocation and kernel selection
    return times[len(times) // 2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--precision", default="32", choices=("32", "bf16-mixed"))
    a = p.parse_args()
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(a.batch_size, 3, a.image_size, a.image_size, generator=g).to(device)
    tokens = torch.randint(3, 4096, (a.batch_size, 32), generator=g)
    lengths = torch.randint(8, 31, (a.batch_size,), generator=g)
    tokens[:, 0] = 1
    tokens[torch.arange(a.batch_size), lengths] = 2
    tokens[torch.arange(32)[None] > lengths[:, None]] = 0
    tokens = tokens.to(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}, torch {torch.__version__}, batch {a.batch_size}, {a.image_size} px, "
          f"precision {a.precision}")
    results = {}
    for method in ("clip", "siglip"):
        model, opt = make(method, a.image_size, device)
        seconds = step_time(model, opt, images, tokens, a.steps, a.precision == "bf16-mixed")
        results[method] = a.batch_size / seconds
        print(f"{method:7s} {seconds * 1000:8.1f} ms/step  {results[method]:9.0f} pairs/s")
    print(f"siglip / clip throughput: {results['siglip'] / results['clip']:.2f}")


if __name__ == "__main__":
    main()
