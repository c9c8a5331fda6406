"""Speed of ``reprlearn.augment.two_views`` against an equivalent kornia pipeline.

Both make two SimCLR views (random resized crop, horizontal flip, colour jitter
p=0.8 with (0.4, 0.4, 0.4, 0.1), grayscale p=0.2; no blur, as SimCLR on CIFAR)
of a batch of uint8 images, including the uint8 -> float conversion.

    python benchmarks/augment_speed.py                  # CPU, 2 threads
    python benchmarks/augment_speed.py --device cuda    # a GPU

Needs the ``bench`` extra (kornia); kornia is used only here, never by the library.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(fns, device: torch.device, warmup: int, min_iters: int, min_seconds: float) -> list[float]:
    """Median seconds per call of each function, timed in alternation so load from
    other processes hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    sync(device)
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_iters or time.perf_counter() - start < min_seconds:
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            sync(device)
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:i]")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--size", type=int, default=32, help="image side (images are 3 x size x size)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iters", type=int, default=10, help="at least this many timed calls")
    parser.add_argument("--seconds", type=float, default=6.0, help="and at least this long in all")
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    import kornia
    import kornia.augmentation as K

    from reprlearn.augment import preset, two_views

    g = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8, generator=g, device=device)
    spec = preset("simclr", args.size, 3)
    assert spec.blur_p == 0.0 or args.size >= 64

    torch.manual_seed(0)
    kornia_pipe = torch.nn.Sequential(
        K.RandomResizedCrop((args.size, args.size), scale=spec.crop_scale, ratio=spec.crop_ratio),
        K.RandomHorizontalFlip(p=spec.hflip_p),
        K.ColorJitter(spec.brightness, spec.contrast, spec.saturation, spec.hue, p=spec.jitter_p),
        K.RandomGrayscale(p=spec.grayscale_p),
    ).to(device)
    if spec.blur_p > 0:
        sigma = spec.blur_sigma
        k = max(3, int(0.1 * args.size)) | 1
        kornia_pipe.append(K.RandomGaussianBlur((k, k), sigma, p=spec.blur_p))

    def ours():
        return two_views(images, spec, g)

    def theirs():
        x = images.float().div_(255)
        return kornia_pipe(x), kornia_pipe(x)

    with torch.no_grad():
        t_ours, t_kornia = bench([ours, theirs], device, args.warmup, args.iters, args.seconds)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    n = args.batch  # images per call (each gets two views)
    print(f"torch {torch.__version__}, kornia {kornia.__version__}, device {device} ({dev_name}),"
          f" threads {torch.get_num_threads()}")
    print(f"batch {args.batch} uint8 3x{args.size}x{args.size}, two views per image, median of alternating timed calls")
    print(f"reprlearn.two_views : {t_ours * 1e3:8.2f} ms/batch  {n / t_ours:10.0f} images/s")
    print(f"kornia pipeline x2  : {t_kornia * 1e3:8.2f} ms/batch  {n / t_kornia:10.0f} images/s")
    print(f"speed-up (kornia time / ours): {t_kornia / t_ours:.2f}x")


if __name__ == "__main__":
    main()
