"""Image-text pairs: CSV/TSV, caption shards, Flickr8k, labelled sets as prompts, and scenes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fakedata import SHARED, jpg_bytes, one_line_error, png_bytes, rgb, write_shard
from reprlearn.data.pairs import is_pair_source, load_pairs
from reprlearn.data.pairset import PairSet
from reprlearn.data.prompts import PROMPT_TEMPLATES, fill_template
from reprlearn.data.scenes import COLOURS, SHAPES, ZERO_SHOT_TEMPLATES, make_scenes
from reprlearn.evaluate.zero_shot import zero_shot_tasks

FLICKR = SHARED / "flickr8k"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRLEARN_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------ CSV / TSV


def image_folder(root: Path, n: int = 3) -> Path:
    (root / "img").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rgb(i)).save(root / "img" / f"{i}.png")
    return root


def test_csv_groups_captions_per_image(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "pairs.csv").write_text(
        "Image,Caption,extra\n"
        "img/0.png,a red thing,x\n"
        "img/1.png,\"a blue thing, with a comma\",y\n"
        "img/0.png,  the   same red   thing ,z\n\n")
    pairs = load_pairs(str(tmp_path / "pairs.csv"))
    assert isinstance(pairs, PairSet) and len(pairs) == 2
    assert pairs.captions == [["a red thing", "the same red thing"], ["a blue thing, with a comma"]]
    np.testing.assert_array_equal(pairs.images.images[1], rgb(1))
    assert pairs.first_captions() == ["a red thing", "a blue thing, with a comma"]
    assert is_pair_source(str(tmp_path / "pairs.csv"))
    assert list((tmp_path / "cache" / "decoded").glob("pairs-*.npz")), "images and captions are cached"
    again = load_pairs(str(tmp_path / "pairs.csv"))
    assert again.captions == pairs.captions
    np.testing.assert_array_equal(again.images.images, pairs.images.images)


def test_tsv_with_other_column_names_and_base_folder(tmp_path):
    image_folder(tmp_path / "data")
    (tmp_path / "meta").mkdir()
    table = tmp_path / "meta" / "pairs.tsv"
    table.write_text("id\tfilepath\ttitle\n1\timg/2.png\ta green one\n2\timg/0.png\tred, again\n")
    pairs = load_pairs(f"{table}?base={tmp_path / 'data'}", image_size=4)
    assert pairs.captions == [["a green one"], ["red, again"]]
    assert pairs.images.images.shape == (2, 4, 4, 3)
    one_line_error(lambda: load_pairs(str(table)), "row 1", "img/2.png", "does not exist")


def test_csv_errors_name_the_row(tmp_path):
    image_folder(tmp_path)
    (tmp_path / "img" / "bad.png").write_bytes(b"not an image")
    table = tmp_path / "t.csv"

    def err(text, *words):
        table.write_text(text)
        return one_line_error(lambda: load_pairs(str(table)), *words)

    err("image,caption\nimg/0.png,ok\nimg/9.png,missing\n", "row 2", "img/9.png", "does not exist")
    err("image,caption\nimg/0.png,ok\nimg/1.png,ok\nimg/2.png,   \n", "row 3", "empty caption")
    err("image,caption\nimg/bad.png,a caption\n", "row 1", "bad.png", "not a readable image")
    message = err("picture,words\nimg/0.png,x\n", "'picture'", "'words'", "image column", "filepath")
    assert "caption" in message and "title" in message
    err("image,caption\n", "no rows")
    one_line_error(lambda: load_pairs(str(tmp_path / "nope.csv")), "nope.csv", "does not exist")
    # --skip-bad: the bad rows are skipped and recorded, the good ones kept
    table.write_text("image,caption\nimg/0.png,ok\nimg/9.png,missing\nimg/1.png,\nimg/bad.png,x\n")
    pairs = load_pairs(str(table), skip_bad=True)
    assert pairs.captions == [["ok"]] and len(pairs.images.skipped) == 3


# ------------------------------------------------------------------ caption shards


def members(i, txt=None, meta=None, image=True):
    out = [(f"k{i:03d}.png", png_bytes(rgb(i)))] if image else []
    if txt is not None:
        out.append((f"k{i:03d}.txt", txt.encode()))
    if meta is not None:
        out.append((f"k{i:03d}.json", json.dumps(meta).encode()))
    return out


def test_shards_with_txt_and_json_captions(tmp_path):
    a = write_shard(tmp_path / "s-000.tar.gz", members(0, txt="only the txt\n") + members(
        1, txt="the txt loses", meta={"captions": ["one", "two"]}))
    b = write_shard(tmp_path / "s-001.tar", members(2, meta={"caption": "a  single caption"}) + members(
        3, txt="line one\n\nline two\n"), gz=False)
    assert is_pair_source(str(tmp_path / "s-*.tar*")) and is_pair_source(str(tmp_path))
    pairs = load_pairs(f"{a},{b}")
    assert pairs.captions == [["only the txt"], ["one", "two"], ["a single caption"], ["line one", "line two"]]
    np.testing.assert_array_equal(pairs.images.images[3], rgb(3))
    cached = load_pairs(str(tmp_path / "s-*.tar*"))
    assert cached.captions == pairs.captions


def test_shard_errors_name_the_key(tmp_path):
    def err(shard_members, *words):
        shard = write_shard(tmp_path / "e.tar.gz", members(0, txt="fine") + shard_members)
        return one_line_error(lambda: load_pairs(str(shard)), *words)

    err(members(1), "k001", "no caption member", "--skip-bad")
    err(members(1, txt="  \n"), "k001", "empty caption")
    err(members(1, meta={"captions": ["ok", ""]}), "k001", "empty caption")
    err(members(1, meta={"other": 1}), "k001", "no 'captions' or 'caption'")
    err(members(1, txt="x", image=False), "k001", "no image member")
    shard = write_shard(tmp_path / "e.tar.gz", members(0, txt="fine") + members(1))
    assert load_pairs(str(shard), skip_bad=True).captions == [["fine"]]
    one_line_error(lambda: load_pairs(str(tmp_path / "missing-*.tar")), "no files match")
    one_line_error(lambda: load_pairs(str(tmp_path / "missing.tar")), "does not exist")
    one_line_error(lambda: load_pairs(""), "empty")
    empty = write_shard(tmp_path / "empty.tar", [], gz=False)
    one_line_error(lambda: load_pairs(str(empty)), "no readable images")


@pytest.fixture(scope="module")
def flickr(tmp_path_factory):
    if not FLICKR.is_dir():
        pytest.skip("needs ../shared/data/flickr8k")
    mp = pytest.MonkeyPatch()
    mp.setenv("REPRLEARN_CACHE", str(tmp_path_factory.mktemp("flickr-cache")))
    try:
        yield {split: load_pairs(str(FLICKR), split) for split in ("train", "test")}
    finally:
        mp.undo()


def test_flickr8k_shards_load_with_five_captions(flickr):
    train, test = flickr["train"], flickr["test"]
    assert train.images.images.shape == (7316, 96, 96, 3) and len(test) == 775
    assert test.name.endswith("(test)")
    for split in (train, test):
        assert all(len(c) == 5 for c in split.captions)
    assert all(c.strip() for caps in test.captions for c in caps)
    assert not set(map(tuple, train.captions[:500])) & set(map(tuple, test.captions))


# ------------------------------------------------------------------ labelled sets -> prompts


def test_labelled_sources_become_prompts(tmp_path):
    digits = load_pairs("digits", split="test")
    assert digits.images.class_names[7] == "seven" and len(digits) == 359
    y = int(digits.images.labels[0])
    assert digits.captions[0] == [fill_template(t, digits.images.class_names[y]) for t in PROMPT_TEMPLATES]
    assert not is_pair_source("digits")
    # shards with KEY.cls and classes.txt (the cifar10 layout), a folder split by file name
    shard = [(f"c{i}.jpg", jpg_bytes(rgb(i))) for i in range(4)]
    shard = [m for i, jpg in enumerate(shard) for m in (jpg, (f"c{i}.cls", str(i % 2).encode()))]
    write_shard(tmp_path / "train-000.tar.gz", shard)
    write_shard(tmp_path / "test-000.tar.gz", shard[:4])
    (tmp_path / "classes.txt").write_text("apple_tree\ncat\n")
    assert not is_pair_source(str(tmp_path))
    train, test = load_pairs(str(tmp_path)), load_pairs(str(tmp_path), split="test")
    assert len(train) == 4 and len(test) == 2
    assert train.captions[0][0] == "a photo of an apple tree." and train.captions[1][2] == "an image of a cat."
    assert fill_template("An {} here", "dog") == "A dog here"
    one_line_error(lambda: load_pairs(str(tmp_path / "test-000.tar.gz"), split="val"), "split")


def test_unlabelled_images_are_not_pairs(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((3, 4, 4), np.uint8))
    one_line_error(lambda: load_pairs(str(tmp_path / "x.npz")), "no captions and no labels")


# ------------------------------------------------------------------ scenes


def test_scenes_are_deterministic_and_specs_parse():
    a, b = make_scenes(200, seed=3), make_scenes(200, seed=3)
    np.testing.assert_array_equal(a.images.images, b.images.images)
    assert a.captions == b.captions and a.images.images.shape == (200, 32, 32, 3)
    c = make_scenes(200, seed=4)
    assert not np.array_equal(a.images.images, c.images.images)
    assert all(len(caps) == 3 and len(set(caps)) == 3 for caps in a.captions)
    spec = load_pairs("scenes:n=120,seed=3,size=24,captions=2")
    assert spec.images.images.shape == (120, 24, 24, 3) and all(len(c) == 2 for c in spec.captions)
    assert is_pair_source("scenes") and is_pair_source("scenes:n=10")
    one_line_error(lambda: load_pairs("scenes:m=3"), "m=3", "n=")
    one_line_error(lambda: load_pairs("scenes:n=abc"), "n=", "int")


def test_scene_captions_are_truthful():
    s = make_scenes(400, seed=1)
    rgb_of = {"red": (220, 30, 30), "green": (40, 180, 40), "blue": (40, 70, 230),
              "yellow": (240, 220, 30), "purple": (150, 50, 200), "orange": (250, 140, 20)}
    assert set(rgb_of) == set(COLOURS)
    palette = np.array([rgb_of[c] for c in COLOURS], np.float32)
    for i, caps in enumerate(s.captions):
        shape, colour = SHAPES[s.attributes["shape"][i]], COLOURS[s.attributes["colour"][i]]
        n = s.attributes["n_objects"][i]
        for cap in caps:
            assert colour in cap and shape in cap, (cap, colour, shape)
            assert ("two shapes" in cap) <= (n == 2) and ("three shapes" in cap) <= (n == 3)
        if n == 1:  # the image's shape pixels have the named colour
            others = [c for c in COLOURS if c != colour]
            assert not any(f" {o} " in f" {cap} " for cap in caps for o in others)
            d = np.linalg.norm(s.images.images[i].reshape(-1, 1, 3).astype(np.float32) - palette, axis=2)
            assert np.bincount(d.argmin(1)[d.min(1) < 40], minlength=len(COLOURS)).argmax() == COLOURS.index(colour)


def test_scene_corruption_replaces_a_recorded_fraction():
    clean, dirty = make_scenes(300, seed=2), make_scenes(300, seed=2, corrupt=0.1)
    np.testing.assert_array_equal(clean.images.images, dirty.images.images)
    assert dirty.corrupted.dtype == bool and dirty.corrupted.sum() == 30 and not clean.corrupted.any()
    for i in range(300):
        if dirty.corrupted[i]:
            assert dirty.captions[i] != clean.captions[i]
            assert dirty.captions[i] in [clean.captions[j] for j in range(300) if j != i]
        else:
            assert dirty.captions[i] == clean.captions[i]
    sub = dirty.subset(np.flatnonzero(dirty.corrupted))
    assert len(sub) == 30 and sub.corrupted.all() and len(sub.attributes["shape"]) == 30


def test_zero_shot_tasks_on_the_test_split():
    train, test = load_pairs("scenes:n=200,test_n=300"), load_pairs("scenes:n=200,test_n=300", split="test")
    assert len(test) == 300 and not np.array_equal(train.images.images[:5], test.images.images[:5])
    single = np.flatnonzero(test.attributes["n_objects"] == 1)
    assert len(single) == 120  # 40% single-object images
    tasks = zero_shot_tasks(test)
    assert [t.name for t in tasks] == ["shape", "colour"]
    for name, index, labels, class_names, _ in tasks:
        np.testing.assert_array_equal(index, single)
        np.testing.assert_array_equal(labels, test.attributes[name][single])
        assert class_names == test.attribute_names[name]
    shape, colour = tasks
    assert shape.templates == ZERO_SHOT_TEMPLATES["shape"] and shape.prompts()[2][0] == "a picture of a triangle."
    assert colour.prompts()[COLOURS.index("orange")][1] == "an orange object."
    digits = zero_shot_tasks(load_pairs("digits:test"))
    assert [t.name for t in digits] == ["class"] and digits[0].class_names[0] == "zero"
