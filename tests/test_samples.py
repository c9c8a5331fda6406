"""The one sample reader (data/samples.py): named fields from hand-made shards, the same for the
in-memory and the streamed path, and fields asked for by name."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reprlearn.data import samples
from reprlearn.data.decode import BadItem
from reprlearn.data.imageset import ImageSet
from reprlearn.data.pairs import load_pairs
from reprlearn.data.pairset import PairSet
from reprlearn.data.samples import Field, decode_shards, read_sample, shard_samples
from reprlearn.data.sources import load_shards, load_source
from reprlearn.data.stream import eval_batches, open_stream, read_head
from reprlearn.errors import ReprlearnError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRLEARN_CACHE", str(tmp_path / "cache"))


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def pixels(seed: int, shape=(6, 6, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A shard written member by member with tarfile (not the project's writer)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_reader_gives_named_fields_of_hand_made_samples(tmp_path):
    mask = np.arange(36, dtype=np.uint8).reshape(6, 6)
    shard = write_tar(tmp_path / "part-000000.tar", [
        ("a.png", png(pixels(0))), ("a.cls", b"3"),
        ("b.png", png(pixels(1))), ("b.txt", b"  a red  square\n\nsecond   line\n"),
        ("b.json", json.dumps({"captions": ["from json"]}).encode()),
        ("c.png", png(pixels(2))), ("c.txt", b"only text"), ("c.seg.png", png(mask)), ("c.meta", b"\x00\x01"),
    ])
    raw = list(shard_samples(shard))
    assert [r["__key__"] for r in raw] == ["a", "b", "c"]
    a, b, c = (read_sample(r, ("image", "label", "captions") if r["__key__"] != "a" else ("image", "label"))
               for r in raw)
    assert a["key"] == "part-000000.tar/a" and a["label"] == 3
    np.testing.assert_array_equal(a["image"], pixels(0))
    assert b["captions"] == ["from json"] and b["label"] is None  # json wins over txt
    np.testing.assert_array_equal(b["image"], pixels(1))
    assert c["captions"] == ["only text"]
    assert c["seg.png"] == png(mask) and c["meta"] == b"\x00\x01"  # extra members kept as raw bytes
    # only what is asked for is decoded: captions alone never touch the image
    assert set(read_sample(raw[2], ("captions",))) == {"key", "captions", "png", "seg.png", "meta"}
    # txt lines: each non-empty line one caption, spaces collapsed
    assert read_sample({**raw[1], "json": b"{}"}, ("captions",))["captions"] == ["a red square", "second line"]


def test_reader_names_the_bad_member(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("x.png", b"not a png"), ("y.png", png(pixels(0))), ("y.cls", b"-1"),
                                           ("z.cls", b"1"), ("w.png", png(pixels(1))), ("w.json", b"{broken")])
    raw = {r["__key__"]: r for r in shard_samples(shard)}
    for key, fields, words in (("x", ("image",), "x is not a readable image"), ("y", ("label",), "negative label"),
                               ("z", ("image",), "has no image member"), ("w", ("captions",), "not valid UTF-8 JSON")):
        with pytest.raises(BadItem, match=words):
            read_sample(raw[key], fields)
    with pytest.raises(BadItem, match="has no label"):
        read_sample(raw["w"], ("image", "label"), require=("label",))
    with pytest.raises(ReprlearnError, match="no sample field 'mask'"):
        read_sample(raw["w"], ("image", "mask"))


def test_shards_in_memory_skip_and_count_bad_samples(tmp_path):
    shard = write_tar(tmp_path / "s.tar", [("a.png", png(pixels(0))), ("a.cls", b"0"), ("b.png", b"broken"),
                                           ("b.cls", b"1"), ("c.png", png(pixels(2))), ("c.cls", b"x"),
                                           ("d.cls", b"1"), ("e.png", png(pixels(4))), ("e.cls", b"1")])
    with pytest.raises(ReprlearnError, match="b is not a readable image.*--skip-bad"):
        load_source(str(shard))
    images = load_source(str(shard), skip_bad=True)
    assert images.keys == ["s.tar/a", "s.tar/e"] and images.labels.tolist() == [0, 1]
    assert len(images.skipped) == 3  # b (image), c (label), d (no image)
    assert sum("has no image member" in s for s in images.skipped) == 1
    np.testing.assert_array_equal(images.images, np.stack([pixels(0), pixels(4)]))
    again = load_source(str(shard), skip_bad=True)  # from the cache: the same columns
    assert again.keys == images.keys and again.skipped == images.skipped


def caption_shards(tmp_path) -> list[Path]:
    members = [[], []]
    for i in range(10):
        members[i % 2] += [(f"{i:03d}.png", png(pixels(i, (8, 8, 3)))), (f"{i:03d}.cls", str(i % 3).encode())]
        members[i % 2] += [(f"{i:03d}.txt", f"caption {i}\nanother {i}".encode())] if i % 3 else \
            [(f"{i:03d}.json", json.dumps({"caption": f"json {i}"}).encode())]
    return [write_tar(tmp_path / f"train-{j:06d}.tar", m) for j, m in enumerate(members)]


def test_memory_and_stream_read_the_same_fields(tmp_path):
    paths = caption_shards(tmp_path)
    spec = ",".join(map(str, paths))
    pairs = load_pairs(spec, "train")
    memory = pairs.images
    stream = open_stream(paths, None, False, "caps")
    assert stream.has_captions and stream.has_labels and len(stream) == 10
    head = read_head(stream, 10)
    assert head.keys == memory.keys == [f"train-{i % 2:06d}.tar/{i:03d}" for i in (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)]
    np.testing.assert_array_equal(head.images, memory.images)
    np.testing.assert_array_equal(head.labels, memory.labels)
    assert memory.labels.tolist() == [int(k[-3:]) % 3 for k in memory.keys]
    streamed = {}
    for batch in eval_batches(stream, batch_size=3, workers=0):
        for key, image, captions in zip(batch["keys"], batch["images"], batch["captions"]):
            streamed[key] = (image.permute(1, 2, 0).numpy(), captions)
    for key, image, captions in zip(memory.keys, memory.images, pairs.captions):
        i = int(key[-3:])
        assert captions == ([f"caption {i}", f"another {i}"] if i % 3 else [f"json {i}"])
        np.testing.assert_array_equal(streamed[key.split("/")[1]][0], image)
        assert streamed[key.split("/")[1]][1] == captions
    # the images alone (no captions asked for) are the same pixels, labels and keys
    images = load_source(spec)
    assert images.keys == memory.keys and images.fields == ["image", "label", "key"]
    np.testing.assert_array_equal(images.images, memory.images)


def test_a_field_by_name_and_a_new_field_needs_no_new_class(tmp_path, monkeypatch):
    def mask(members, where, options):  # a new field: the KEY.seg.png mask as an (H, W) array
        return np.array(Image.open(io.BytesIO(members["seg.png"])))

    monkeypatch.setitem(samples.FIELDS, "mask", Field("mask", ("seg.png",), mask, "has no mask (KEY.seg.png)"))
    masks = [np.full((4, 4), i, np.uint8) for i in range(3)]
    shard = write_tar(tmp_path / "seg.tar", [m for i in range(3) for m in (
        (f"{i}.png", png(pixels(i, (4, 4, 3)))), (f"{i}.cls", b"1"), (f"{i}.seg.png", png(masks[i])))])
    images = load_shards([shard], None, False, "seg", fields=("mask",))
    assert images.fields == ["image", "label", "key", "mask"]
    np.testing.assert_array_equal(np.stack(images.field("mask")), np.stack(masks))
    assert images.field("key") == ["seg.tar/0", "seg.tar/1", "seg.tar/2"]
    part = images.subset(np.array([2, 0]))
    assert part.field("key") == ["seg.tar/2", "seg.tar/0"]
    np.testing.assert_array_equal(part.field("mask")[0], masks[2])
    with pytest.raises(ReprlearnError, match="no field 'depth'.*image, label, key, mask"):
        images.field("depth")
    stream = open_stream([shard], None, False, "seg", extra_fields=("mask",))
    batch = next(iter(eval_batches(stream, batch_size=3, workers=0)))
    for key, m in zip(batch["keys"], batch["mask"]):
        np.testing.assert_array_equal(m, masks[int(key)])
    with pytest.raises(ReprlearnError, match="'depth' is not an extra sample field"):
        open_stream([shard], None, False, "seg", extra_fields=("depth",))


def test_columns_survive_subsets_and_the_cache(tmp_path):
    from reprlearn.data.cache import cached

    images = ImageSet(pixels(0, (3, 4, 4, 1)), np.array([0, 1, 0]), name="cols", keys=["a", "b", "c"],
                      columns={"depth": np.arange(3, dtype=np.float32), "source": ["x", "y", "z"],
                               "tags": [["p"], [], ["q", "r"]]})
    back = cached("test-columns", lambda: images)
    back = cached("test-columns", lambda: pytest.fail("decoded twice"))
    assert back.fields == ["image", "label", "key", "depth", "source", "tags"]
    np.testing.assert_array_equal(back.field("depth"), [0, 1, 2])
    assert back.field("source") == ["x", "y", "z"] and back.field("tags") == [["p"], [], ["q", "r"]]
    assert images.subset(np.array([True, False, True])).field("tags") == [["p"], ["q", "r"]]
    with pytest.raises(ReprlearnError, match="field 'bad' has 2 entries for 3 images"):
        ImageSet(pixels(0, (3, 4, 4, 1)), columns={"bad": [1, 2]})
    pairs = PairSet(images, [["one"], ["two"], ["three", "3"]], "p")
    assert pairs.field("captions")[2] == ["three", "3"] and pairs.field("source") == ["x", "y", "z"]
    assert pairs.fields == ["image", "label", "key", "depth", "source", "tags", "captions"]


def test_a_folder_reads_the_same_in_memory_and_streamed(tmp_path):
    folder = tmp_path / "photos"
    for c, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(pixels(10 * c + i)).save(folder / name / f"{i}.png")
    (folder / "dog" / "bad.png").write_bytes(b"")
    with pytest.raises(ReprlearnError, match="dog/bad.png is an empty"):
        load_source(str(folder))
    memory = load_source(str(folder), skip_bad=True)
    assert memory.keys == [str(folder / n / f"{i}.png") for n in ("cat", "dog") for i in range(3)]
    assert memory.labels.tolist() == [0, 0, 0, 1, 1, 1] and len(memory.skipped) == 1
    stream = open_stream([folder], None, True, "photos")
    head = read_head(stream, len(stream))
    got = {k: (image, label) for k, image, label in zip(head.keys, head.images, head.labels)}
    assert sorted(got) == sorted(memory.keys)
    for key, image, label in zip(memory.keys, memory.images, memory.labels):
        np.testing.assert_array_equal(got[key][0], image)
        assert got[key][1] == label


def test_metadata_json_is_not_a_caption(tmp_path):
    from reprlearn.data.pairs import is_pair_source

    meta = json.dumps({"source_file": "0016E5_07959.png", "split": "val"}).encode()  # as CamVid's shards hold
    shard = write_tar(tmp_path / "val-000000.tar", [m for i in range(3) for m in (
        (f"{i}.png", png(pixels(i))), (f"{i}.json", meta), (f"{i}.seg.png", png(pixels(i, (6, 6)))))])
    assert not is_pair_source(str(shard))
    stream = open_stream([shard], None, False, "val")
    assert not stream.has_captions and stream.fields == ("image", "label")
    head = read_head(stream, 3)
    np.testing.assert_array_equal(head.images, load_source(str(shard)).images)
    assert read_sample(next(shard_samples(shard)), ("image",))["json"] == meta  # kept as a raw member
    captioned = write_tar(tmp_path / "c.tar", [("0.png", png(pixels(0))), ("0.json", b'{"caption": "a cat"}')])
    assert is_pair_source(str(captioned)) and open_stream([captioned], None, False, "c").has_captions
