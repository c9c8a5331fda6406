"""Data sources: each source kind loads, and each kind of bad input is a clear one-line error."""


import numpy as np
import pytest
from PIL import Image

from fakedata import SHARED, good_members, jpg_bytes, one_line_error, png_bytes, rgb, write_shard
from reprlearn.data import load_source
from reprlearn.errors import ReprlearnError



@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRLEARN_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------ sources that work


def test_digits_split_is_fixed_stratified_and_disjoint():
    train, test = load_source("digits"), load_source("digits:test")
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797
    assert set(np.unique(test.labels)) == set(range(10))
    assert train.images.max() == 255
    # stratified: each class holds about 20% of its images in the test split
    counts = np.bincount(test.labels) / (np.bincount(test.labels) + np.bincount(train.labels))
    assert np.all(np.abs(counts - 0.2) < 0.02)


def test_shards_decode_with_labels_and_cache(tmp_path):
    shard = write_shard(tmp_path / "a-000.tar.gz", good_members(4))
    first = load_source(str(shard))
    assert first.images.shape == (4, 8, 8, 3) and list(first.labels) == [0, 1, 0, 1]
    np.testing.assert_array_equal(first.images[2], rgb(2))  # PNG is lossless
    assert list((tmp_path / "cache" / "decoded").glob("*.npz")), "decoded arrays are cached"
    again = load_source(str(tmp_path / "a-*.tar.gz"))
    np.testing.assert_array_equal(again.images, first.images)


@pytest.mark.skipif(not (SHARED / "cifar10").is_dir(), reason="needs ../shared/data")
def test_cifar10_shard_from_shared_data():
    test = load_source(str(SHARED / "cifar10" / "test-000000.tar.gz"))
    assert test.images.shape == (10000, 32, 32, 3)
    assert test.class_names[0] == "airplane" and len(test.class_names) == 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_image_folder_and_npz(tmp_path):
    for c, name in enumerate(["cat", "dog"]):
        (tmp_path / "f" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rgb(10 * c + i)).save(tmp_path / "f" / name / f"{i}.png")
    folder = load_source(str(tmp_path / "f"))
    assert folder.class_names == ["cat", "dog"] and list(folder.labels) == [0, 0, 0, 1, 1, 1]
    np.savez(tmp_path / "x.npz", images=np.zeros((5, 6, 6), np.uint8), labels=np.arange(5))
    arr = load_source(str(tmp_path / "x.npz"))
    assert arr.images.shape == (5, 6, 6, 1) and list(arr.labels) == list(range(5))


def test_image_size_resizes_mixed_sizes(tmp_path):
    (tmp_path / "f" / "a").mkdir(parents=True)
    Image.fromarray(rgb(0, 8)).save(tmp_path / "f" / "a" / "0.png")
    Image.fromarray(rgb(1, 12)).save(tmp_path / "f" / "a" / "1.png")
    assert load_source(str(tmp_path / "f")).images.shape == (2, 10, 10, 3)  # stored at the median shorter side
    resized = load_source(str(tmp_path / "f"), image_size=6)
    assert resized.images.shape == (2, 6, 6, 3)


# ------------------------------------------------------------------ bad input


def test_missing_path_and_empty_spec(tmp_path):
    one_line_error(lambda: load_source(str(tmp_path / "nope")), "does not exist")
    one_line_error(lambda: load_source(str(tmp_path / "nope-*.tar")), "no files match")
    one_line_error(lambda: load_source(""), "empty data source")


def test_empty_folder_and_empty_shard(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(lambda: load_source(str(tmp_path / "empty")), "no images")
    shard = write_shard(tmp_path / "e.tar", [], gz=False)
    one_line_error(lambda: load_source(str(shard)), "no readable images")


@pytest.mark.parametrize("bad_name,bad_data,words", [
    ("bad.jpg", jpg_bytes(rgb(5))[:200], ["bad", "not a readable image"]),   # truncated JPEG
    ("bad.png", b"this is not an image at all", ["bad", "not a readable image"]),
    ("bad.jpg", b"", ["bad", "zero-byte"]),
])
def test_corrupt_member_named_or_skipped(tmp_path, bad_name, bad_data, words):
    shard = write_shard(tmp_path / "s.tar.gz", good_members(3) + [(bad_name, bad_data), ("bad.cls", b"1")])
    one_line_error(lambda: load_source(str(shard)), *words, "--skip-bad")
    skipped = load_source(str(shard), skip_bad=True)
    assert len(skipped) == 3 and len(skipped.skipped) == 1 and "bad" in skipped.skipped[0]


def test_non_integer_label(tmp_path):
    shard = write_shard(tmp_path / "s.tar.gz", good_members(2) + [("x.png", png_bytes(rgb(9))), ("x.cls", b"cat")])
    one_line_error(lambda: load_source(str(shard)), "x", "not an integer")
    assert len(load_source(str(shard), skip_bad=True)) == 2


def test_other_size_or_channels_inside_shard(tmp_path):
    gray = np.full((8, 8), 77, np.uint8)
    shard = write_shard(tmp_path / "s.tar.gz", good_members(2) + [("g.png", png_bytes(gray)), ("g.cls", b"0")])
    mixed = load_source(str(shard))  # a grey image among colour ones is kept, as RGB
    assert mixed.images.shape == (3, 8, 8, 3) and (mixed.images[2] == 77).all()
    big = write_shard(tmp_path / "b.tar.gz", good_members(2) + [("b.png", png_bytes(rgb(3, 16))), ("b.cls", b"0")])
    one_line_error(lambda: load_source(str(big)), "size", "--image-size")
    assert len(load_source(str(big), skip_bad=True)) == 2


def test_gzip_cut_short(tmp_path):
    full = write_shard(tmp_path / "full.tar.gz", good_members(40))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])
    one_line_error(lambda: load_source(str(cut)), "cut.tar.gz", "corrupt or cut short")
    partial = load_source(str(cut), skip_bad=True)
    assert 0 < len(partial) < 40 and "cut short" in partial.skipped[0]


def test_npz_problems(tmp_path):
    np.savez(tmp_path / "nolabels.npz", pixels=np.zeros((3, 4, 4), np.uint8))
    one_line_error(lambda: load_source(str(tmp_path / "nolabels.npz")), "no 'images' array")
    np.savez(tmp_path / "float.npz", images=np.full((3, 4, 4), 7.0, np.float32))
    one_line_error(lambda: load_source(str(tmp_path / "float.npz")), "float32", "[0, 1]")
    np.savez(tmp_path / "mismatch.npz", images=np.zeros((3, 4, 4), np.uint8), labels=np.arange(4))
    one_line_error(lambda: load_source(str(tmp_path / "mismatch.npz")), "4 labels for 3 images")
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 4, 4), np.uint8))
    one_line_error(lambda: load_source(str(tmp_path / "empty.npz")), "no images")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    one_line_error(lambda: load_source(str(tmp_path / "junk.npz")), "not a readable .npz")


def test_unknown_file_kind(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    one_line_error(lambda: load_source(str(tmp_path / "notes.txt")), "notes.txt", "is not a shard")


# ---------------------------------------------------------------- photos as people have them


def _encode(img, fmt: str, **kw) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied():
    from PIL import Image

    from reprlearn.data.decode import decode_image

    a = np.zeros((8, 16, 3), np.uint8)
    a[:, :8] = 255  # left half white: a wide image
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(_encode(img, "PNG", exif=exif), "rotated.png", None)
    assert out.shape == (16, 8, 3)  # displayed upright: tall
    np.testing.assert_array_equal(out, np.rot90(a, k=-1))  # the white half is now on top


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grey_keeps_its_range(fmt):
    from PIL import Image

    from reprlearn.data.decode import decode_image

    values = np.array([[0, 257 * 128, 65535, 257 * 3 + 1]], dtype=np.uint16)
    out = decode_image(_encode(Image.fromarray(values), fmt), f"deep.{fmt.lower()}", None)
    assert out.dtype == np.uint16  # kept at 16 bits (tests/test_formats.py covers the scale)
    np.testing.assert_array_equal(out[..., 0], values)


def test_transparency_palette_cmyk_gif_webp_bmp_become_8_bit():
    from PIL import Image

    from reprlearn.data.decode import decode_image

    rgba = Image.fromarray(np.array([[[255, 0, 0, 128], [0, 255, 0, 255]]], np.uint8), "RGBA")
    np.testing.assert_array_equal(decode_image(_encode(rgba, "PNG"), "a.png", None)[0],
                                  [[128, 0, 0], [0, 255, 0]])  # composited on black
    la = Image.fromarray(np.array([[[200, 255], [200, 0]]], np.uint8), "LA")
    np.testing.assert_array_equal(decode_image(_encode(la, "PNG"), "la.png", None)[0, :, 0], [200, 0])
    palette = Image.fromarray(np.array([[10, 200]], np.uint8)).convert("P")
    assert decode_image(_encode(palette, "PNG"), "p.png", None).shape == (1, 2, 3)
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    red = decode_image(_encode(cmyk, "JPEG", quality=95), "c.jpg", None)
    assert red.shape == (4, 4, 3) and red[..., 0].min() > 200 and red[..., 1:].max() < 60
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    first = decode_image(gif, "anim.gif", None)
    assert first[..., 0].min() > 200 and first[..., 2].max() < 60  # the first frame
    for fmt in ("WEBP", "BMP"):
        img = Image.fromarray(rgb(4))
        out = decode_image(_encode(img, fmt, **({"lossless": True} if fmt == "WEBP" else {})), f"x.{fmt}", None)
        np.testing.assert_array_equal(out, rgb(4))


def test_a_folder_of_mixed_photos_loads_at_its_median_shorter_side(tmp_path, capsys):
    from PIL import Image

    for name, (w, h), mode in [("a.jpg", (40, 30), "RGB"), ("b.png", (20, 50), "L"), ("c.png", (24, 24), "RGB"),
                               ("d.webp", (60, 28), "RGB"), ("e.bmp", (26, 90), "RGB")]:
        (tmp_path / "photos").mkdir(exist_ok=True)
        Image.new(mode, (w, h), 120).save(tmp_path / "photos" / name)
    images = load_source(str(tmp_path / "photos"))
    assert images.images.shape == (5, 26, 26, 3)  # shorter sides 30, 20, 24, 28, 26: median 26; grey -> RGB
    assert "storing them at 26x26" in capsys.readouterr().out
    assert load_source(str(tmp_path / "photos"), image_size=16).images.shape == (5, 16, 16, 3)  # explicit wins


def test_the_default_storage_size_is_capped(tmp_path):
    from PIL import Image

    from reprlearn.data.decode import MAX_DEFAULT_SIZE, storage_size

    for i, side in enumerate((300, 400, 500)):
        Image.new("RGB", (side, side + i)).save(tmp_path / f"{i}.png")
    assert storage_size(sorted(tmp_path.iterdir()), "x") == MAX_DEFAULT_SIZE == 224
    same = tmp_path / "same"
    same.mkdir()
    for i in range(3):
        Image.new("RGB", (12, 9)).save(same / f"{i}.png")
    assert storage_size(sorted(same.iterdir()), "x") is None  # one size: kept as it is


def test_an_unquoted_shard_glob_on_the_command_line_is_one_source(tmp_path, monkeypatch):
    import reprlearn.api
    from reprlearn.cli import main

    shards = [write_shard(tmp_path / f"train-{i}.tar.gz", good_members(4)) for i in range(3)]
    seen = {}
    monkeypatch.setattr(reprlearn.api, "train", lambda name, **kw: seen.update(kw))
    assert main(["train", "simclr", "--data", *map(str, shards), "--epochs", "1"]) == 0  # as the shell expands *.tar.gz
    assert seen["data"] == ",".join(map(str, shards)) and seen["epochs"] == "1"
    assert len(load_source(seen["data"])) == 12


def test_brace_lists_and_commas_name_shards(tmp_path):
    shards = [write_shard(tmp_path / f"train-{i:06d}.tar.gz", good_members(2)) for i in range(4)]
    spec = str(tmp_path / "train-{000000..000002}.tar.gz")
    assert len(load_source(spec)) == 6  # three shards of two
    both = f"{tmp_path}/train-{{000000,000003}}.tar.gz,{shards[1]}"  # a comma inside braces and one outside
    assert len(load_source(both)) == 6
    one_line_error(lambda: load_source(str(tmp_path / "train-{000000..000009}.tar.gz")), "000004", "does not exist")


def test_a_csv_list_of_image_paths_with_class_names_is_an_image_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    rows = []
    for i, (w, h, mode, cls) in enumerate([(40, 30, "RGB", "dog"), (64, 64, "L", "cat"), (50, 80, "RGB", "dog"),
                                           (30, 40, "I;16", "cat")]):
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
        else:
            img = Image.fromarray(rng.integers(0, 255, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8), mode)
        img.save(tmp_path / "img" / f"{i}.png")
        rows.append(f"img/{i}.png,{cls},ignored")
    (tmp_path / "list.csv").write_text("path,label,note\n" + "\n".join(rows) + "\nimg/missing.png,cat,x\n")
    with pytest.raises(ReprlearnError, match=r"row 5 .*missing.png.* does not exist.*--skip-bad"):
        load_source(str(tmp_path / "list.csv"))
    images = load_source(str(tmp_path / "list.csv"), skip_bad=True)
    assert images.images.shape == (4, 40, 40, 3)  # median shorter side of 30, 64, 50, 30; grey made RGB
    assert images.class_names == ["cat", "dog"] and images.labels.tolist() == [1, 0, 1, 0]
    assert len(images.skipped) == 1
