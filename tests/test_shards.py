"""reprlearn shards: any source written as WebDataset shards reads back as the same images,
labels and captions; a rerun keeps finished shards; a crash leaves no partial shard."""

import numpy as np
import pytest
from PIL import Image

from reprlearn.cli import main
from reprlearn.data import load_source
from reprlearn.data.pairs import load_pairs
from reprlearn.data import shards as shard_writer


def photo_folder(root, per_class=5):
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, 12)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(per_class):  # smooth colour ramps, as photos are (JPEG keeps them close)
            a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            img = a + (b - a) * (ramp[:, None, None] + ramp[None, :, None]) / 2
            Image.fromarray(img.round().astype(np.uint8)).save(root / c / f"{i}.png")
    return root


def test_folder_to_shards_and_back_is_the_same_images_and_labels(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    assert main(["shards", str(folder), "--out", str(tmp_path / "s"), "--shard-size", "4", "--format", "png"]) == 0
    written = sorted((tmp_path / "s").glob("train-*.tar"))
    assert [p.name for p in written] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    before, after = load_source(str(folder)), load_source(str(tmp_path / "s"))
    np.testing.assert_array_equal(after.images, before.images)  # png: lossless, same order
    np.testing.assert_array_equal(after.labels, before.labels)
    assert after.class_names == before.class_names == ["cat", "dog"]
    lossy = shard_writer.write_shards(str(folder), tmp_path / "j", shard_size=10, progress=False)  # jpg, quality 95
    again = load_source(str(lossy[0]))
    assert np.abs(again.images.astype(int) - before.images.astype(int)).mean() < 3
    np.testing.assert_array_equal(again.labels, before.labels)


def test_pairs_keep_their_captions(tmp_path):
    paths = shard_writer.write_shards("scenes:n=30,size=16", tmp_path / "p", shard_size=16, fmt="png", progress=False)
    assert len(paths) == 2
    before, after = load_pairs("scenes:n=30,size=16"), load_pairs(",".join(map(str, paths)))
    assert after.captions == before.captions
    np.testing.assert_array_equal(after.images.images, before.images.images)


def test_a_rerun_keeps_finished_shards_and_a_crash_leaves_no_partial_one(tmp_path, monkeypatch):
    folder = photo_folder(tmp_path / "photos")
    out = tmp_path / "s"
    paths = shard_writer.write_shards(str(folder), out, shard_size=4, fmt="png", progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    paths[1].unlink()  # as if the job had stopped before writing it
    real, calls = shard_writer.encode, []

    def failing(image, fmt, quality=95):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk went away")
        return real(image, fmt, quality)

    monkeypatch.setattr(shard_writer, "encode", failing)
    with pytest.raises(OSError):
        shard_writer.write_shards(str(folder), out, shard_size=4, fmt="png", progress=False)
    assert not paths[1].exists() and not list(out.glob(".*tmp"))  # nothing under the final name, no temp left
    monkeypatch.setattr(shard_writer, "encode", real)
    calls.clear()
    shard_writer.write_shards(str(folder), out, shard_size=4, fmt="png", progress=False)
    assert paths[1].is_file()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (paths[0], paths[2]))  # kept, not rewritten
    np.testing.assert_array_equal(load_source(str(out)).images, load_source(str(folder)).images)


def test_parallel_workers_write_the_same_shards(tmp_path):
    folder = photo_folder(tmp_path / "photos")
    one = shard_writer.write_shards(str(folder), tmp_path / "a", shard_size=3, fmt="png", progress=False)
    two = shard_writer.write_shards(str(folder), tmp_path / "b", shard_size=3, fmt="png", workers=2, progress=False)
    assert [p.read_bytes() for p in one] == [p.read_bytes() for p in two]
