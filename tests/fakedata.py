"""Small generated images and WebDataset shards for tests (good and deliberately broken)."""

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprlearn.errors import ReprlearnError

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"  # ../shared/data beside the repo


def epoch_losses(run: Path) -> list[float]:
    """The mean training loss of every epoch, read from the run's CSV log (``train/loss_epoch``)."""
    import csv

    losses = {}
    for log in sorted(Path(run).glob("logs*/metrics.csv")):
        for row in csv.DictReader(log.open()):
            if row.get("train/loss_epoch"):
                losses[int(row["epoch"])] = float(row["train/loss_epoch"])
    return [losses[e] for e in sorted(losses)]


def assert_loss_went_down(run: Path) -> None:
    """A smoke run learned something: its last epoch's mean loss is below its first's."""
    losses = epoch_losses(run)
    assert len(losses) >= 2, f"need two epochs of logged loss, got {losses}"
    assert losses[-1] < losses[0], f"training loss did not go down: {losses}"


def one_line_error(fn, *words) -> str:
    """Call ``fn``; it must raise a one-line ReprlearnError containing every word."""
    with pytest.raises(ReprlearnError) as e:
        fn()
    message = str(e.value)
    assert "\n" not in message
    for w in words:
        assert w in message, message
    return message


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_shard(path: Path, members: list[tuple[str, bytes]], gz: bool = True) -> Path:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(raw.getvalue()) if gz else raw.getvalue())
    return path


def rgb(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def good_members(n: int = 4) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        out += [(f"img{i:03d}.png", png_bytes(rgb(i))), (f"img{i:03d}.cls", str(i % 2).encode())]
    return out
