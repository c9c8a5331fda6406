"""Writing WebDataset shards from any image or image-caption source (``reprlearn shards``).

Each shard is a tar of ``KEY.jpg`` (or ``.png``) with ``KEY.cls`` (the label) and/or
``KEY.txt`` (the captions, one a line) beside it, the layout every reader here (and the
webdataset library) takes; ``classes.txt`` names the classes. Shards are encoded in worker
processes and written through a temporary file renamed into place, so a crash never leaves a
partial shard under its final name, and a rerun keeps the shards already finished.
"""

from __future__ import annotations

import io
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import fail
from ..files import atomic_write

FORMATS = ("jpg", "png")


def encode(image: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """(H, W, C) uint8 -> JPEG (quality 95, lossy) or PNG (lossless) bytes."""
    from PIL import Image

    buf = io.BytesIO()
    img = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    img.save(buf, format="JPEG" if fmt == "jpg" else "PNG", **({"quality": quality} if fmt == "jpg" else {}))
    return buf.getvalue()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, first: int, images: np.ndarray, labels: np.ndarray | None,
                captions: list[list[str]] | None, fmt: str) -> Path:
    """One shard of consecutive samples ``first ...``, written atomically (temporary file, rename)."""
    with atomic_write(path, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        for i, image in enumerate(images):
            key = f"{first + i:08d}"
            _tar_member(tar, f"{key}.{fmt}", encode(image, fmt))
            if labels is not None:
                _tar_member(tar, f"{key}.cls", str(int(labels[i])).encode())
            if captions is not None:
                _tar_member(tar, f"{key}.txt", "\n".join(captions[i]).encode("utf-8"))
    return path


def write_shards(source: str, out: str | Path, image_size: int | None = None, shard_size: int = 10000,
                 workers: int = 1, fmt: str = "jpg", split: str = "train", skip_bad: bool = False,
                 progress: bool = True) -> list[Path]:
    """Write ``source`` (any image or image-caption source) as ``out/SPLIT-000000.tar`` ...

    Shards whose final file exists are kept (a rerun finishes an interrupted job); the same
    source and options give the same shards. Returns every shard's path, in order.
    """
    from .pairs import is_pair_source, load_pairs
    from .sources import load_source

    if fmt not in FORMATS:
        raise fail(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    if shard_size < 1 or workers < 1:
        raise fail(f"--shard-size and --workers must be at least 1, got {shard_size} and {workers}")
    captions = None
    if is_pair_source(source):
        pairs = load_pairs(source, split, image_size, skip_bad)
        images, captions = pairs.images, pairs.captions
    else:
        images = load_source(source, image_size, skip_bad)
    if images.images.dtype != np.uint8 or images.channels not in (1, 3):  # JPEG/PNG members would cut them
        raise fail(f"{source} holds {images.images.dtype} images of {images.channels} channel(s); shards carry 8-bit "
                   "grey or RGB JPEG/PNG: train on the source itself (--loader memory) to keep its depth and bands")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if images.class_names:
        with atomic_write(out / "classes.txt", "w") as f:
            f.write("\n".join(images.class_names) + "\n")
    n = len(images)
    paths = [out / f"{split}-{i:06d}.tar" for i in range(-(-n // shard_size))]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    if progress:
        print(f"{source}: {n} images in {len(paths)} shards of {shard_size} in {out} "
              f"({len(paths) - len(todo)} already written)")

    def job(i: int):
        s = slice(i * shard_size, (i + 1) * shard_size)
        return (paths[i], i * shard_size, images.images[s], None if images.labels is None else images.labels[s],
                None if captions is None else captions[s], fmt)

    from tqdm import tqdm  # Lightning's progress bars use it too

    bar = tqdm(total=len(todo), unit="shard", disable=not progress or not todo)
    if workers == 1:
        for i in todo:
            write_shard(*job(i))
            bar.update()
    else:
        with ProcessPoolExecutor(workers) as pool:
            for _ in pool.map(_write_job, [job(i) for i in todo]):
                bar.update()
    bar.close()
    return paths


def _write_job(args) -> Path:
    return write_shard(*args)
