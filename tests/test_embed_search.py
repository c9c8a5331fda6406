"""embed and search on a folder of photos: the run's own storage size, keys that lead back to the
files, image search for an image-only run (SimCLR), --skip-bad, and refused image sizes."""

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import reprlearn
from reprlearn.cli import main
from reprlearn.data import load_source

N_PHOTOS, PHOTO_SIZE, RUN_SIZE = 40, 96, 32


def smooth_photo(rng: np.random.Generator) -> Image.Image:
    """A distinct smooth colour image: random 4x4 colours upsampled, plus a bright disc somewhere."""
    coarse = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    img = np.asarray(coarse.resize((PHOTO_SIZE, PHOTO_SIZE), Image.BICUBIC)).astype(np.float64)
    yy, xx = np.mgrid[:PHOTO_SIZE, :PHOTO_SIZE]
    cy, cx, r = rng.integers(15, PHOTO_SIZE - 15, 2).tolist() + [int(rng.integers(6, 20))]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(N_PHOTOS):
        smooth_photo(rng).save(folder / f"photo_{i:02d}.png")
    return folder


@pytest.fixture(scope="module")
def run(photos, tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("run") / "simclr"
    return reprlearn.train("simclr", data=str(photos), image_size=RUN_SIZE, epochs=1, eval=False, out=out,
                           batch_size=16, progress=False)


def files_of(folder):
    return sorted(folder.glob("*.png"))


def reference_features(run, paths) -> np.ndarray:
    """The encoder applied by hand: each file resized by PIL to the run's size, [0, 1] floats."""
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((RUN_SIZE, RUN_SIZE), Image.BICUBIC))
                  for p in paths])
    encoder = reprlearn.load(run)
    with torch.no_grad():
        return encoder(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255).numpy()


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_embed_uses_the_runs_image_size_and_each_photo_is_its_own_nearest(run, photos):
    features = reprlearn.embed(run, str(photos))
    expected = reference_features(run, files_of(photos))
    assert features.shape == expected.shape
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    sims = cosine(features, features)
    assert (sims.argmax(axis=1) == np.arange(N_PHOTOS)).all()


def test_embed_writes_the_files_paths_as_parquet_keys(run, photos, tmp_path, capsys):
    out = tmp_path / "photos.npy"
    assert main(["embed", str(run), "--data", str(photos), "--out", str(out)]) == 0
    table = pq.read_table(tmp_path / "photos.parquet")
    assert table["key"].to_pylist() == [str(p) for p in files_of(photos)]
    np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), np.load(out))


def test_search_finds_the_query_photo_first_for_an_image_only_run(run, photos, tmp_path, capsys):
    files = files_of(photos)
    query = files[7]
    sheet = tmp_path / "sheet.png"
    assert main(["search", str(run), "--index", str(photos), "--query-image", str(query), "--k", "5",
                 "--out", str(sheet)]) == 0
    lines = [line.split() for line in capsys.readouterr().out.splitlines() if line.strip()[:1].isdigit()]
    assert lines[0][-1] == str(query) and float(lines[0][2]) == pytest.approx(1.0, abs=1e-4)
    # the ranking and scores are the cosines of the embed features, computed here by hand
    features = reference_features(run, files)
    sims = cosine(features[7:8], features)[0]
    order = np.argsort(-sims)[:5]
    assert [line[-1] for line in lines] == [str(files[i]) for i in order]
    np.testing.assert_allclose([float(line[2]) for line in lines], sims[order], atol=2e-3)
    assert sheet.stat().st_size > 1000
    assert len(list((run / "search").glob("*.faiss"))) == 1  # the source's index is saved beside the run


def test_search_an_embeddings_file_by_image_and_by_key(run, photos, tmp_path, capsys, monkeypatch):
    out = tmp_path / "emb.npy"
    assert main(["embed", str(run), "--data", str(photos), "--out", str(out)]) == 0
    files = files_of(photos)
    import reprlearn.search as search_module

    def no_embedding(*args, **kwargs):
        raise AssertionError("an embeddings index is not embedded again")

    monkeypatch.setattr(search_module, "source_index", no_embedding)
    capsys.readouterr()
    assert main(["search", str(run), "--index", str(out), "--query-image", str(files[3]),
                 "--query-key", str(files[11]), "--k", "3", "--out", str(tmp_path / "s.png")]) == 0
    text = capsys.readouterr().out
    blocks = text.split("query: ")[1:]
    firsts = [block.splitlines()[1].split() for block in blocks]
    assert firsts[0][-1] == str(files[3]) and firsts[1][-1] == str(files[11])
    assert float(firsts[1][2]) == pytest.approx(1.0, abs=1e-5)  # the stored feature itself
    assert main(["search", str(run), "--index", str(out), "--query-key", "no/such/key"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a key of the index" in err and len(err.splitlines()) == 1


def test_embed_skip_bad_skips_a_truncated_jpeg(run, photos, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in files_of(photos)[:5]:
        (folder / p.name).write_bytes(p.read_bytes())
    Image.open(files_of(photos)[5]).save(folder / "cut.jpg", quality=95)
    data = (folder / "cut.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    out = tmp_path / "f.npy"
    assert main(["embed", str(run), "--data", str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "cut.jpg" in err and "--skip-bad" in err and len(err.splitlines()) == 1
    assert main(["embed", str(run), "--data", str(folder), "--out", str(out), "--skip-bad"]) == 0
    assert "skipped 1 unreadable" in capsys.readouterr().out
    keys = pq.read_table(tmp_path / "f.parquet")["key"].to_pylist()
    assert keys == [str(folder / p.name) for p in files_of(photos)[:5]]
    np.testing.assert_allclose(np.load(out), reference_features(run, files_of(photos)[:5]), rtol=1e-4, atol=1e-4)


def test_embed_refuses_another_image_size_in_one_line(run, photos, tmp_path, capsys):
    assert main(["embed", str(run), "--data", str(photos), "--out", str(tmp_path / "f.npy"),
                 "--image-size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert "64" in err and f"{RUN_SIZE} px" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "f.npy").exists()
    assert main(["embed", str(run), "--data", str(photos), "--out", str(tmp_path / "f.npy"),
                 "--image-size", str(RUN_SIZE)]) == 0


def test_a_text_query_on_an_image_only_run_is_one_line(run, photos, capsys):
    assert main(["search", str(run), "--index", str(photos), "--query", "a red disc"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs an image-text run" in err and "--query-image" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- keys of every source


def test_keys_of_tables_named_sources_and_subsets(photos, tmp_path):
    table = tmp_path / "list.csv"
    names = [p.name for p in files_of(photos)[:4]]
    table.write_text("image,label\n" + "".join(f"{n},{i % 2}\n" for i, n in enumerate(names)))
    rows = load_source(f"{table}?base={photos}")
    assert rows.keys == [str(photos / n) for n in names]
    digits = load_source("digits:test")
    assert digits.keys[:2] == ["digits:test/0", "digits:test/1"] and len(digits.keys) == len(digits)
    part = digits.subset(np.array([5, 2]))
    assert part.keys == ["digits:test/5", "digits:test/2"]
    assert digits.subset(digits.labels == 3).keys == [k for k, y in zip(digits.keys, digits.labels) if y == 3]
    np.savez(tmp_path / "a.npz", images=np.zeros((3, 8, 8), np.uint8))
    assert load_source(str(tmp_path / "a.npz")).keys == [f"{tmp_path / 'a.npz'}/{i}" for i in range(3)]


def test_shard_keys_lead_to_the_sample(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "part-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for key in ("cat_01", "dog_07"):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 8, 3), 40, np.uint8)).save(buf, format="PNG")
            info = tarfile.TarInfo(f"{key}.png")
            info.size = len(buf.getvalue())
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    assert load_source(str(shard)).keys == ["part-000000.tar/cat_01", "part-000000.tar/dog_07"]


def test_a_cache_entry_without_keys_still_loads(tmp_path):
    from reprlearn.data.cache import image_set_arrays, image_set_from
    from reprlearn.data.imageset import ImageSet

    arrays = image_set_arrays(ImageSet(np.zeros((2, 4, 4, 1), np.uint8), name="old", keys=["a", "b"]))
    np.savez(tmp_path / "new.npz", **arrays)
    del arrays["keys"], arrays["has_keys"]  # what an entry from before keys holds
    np.savez(tmp_path / "old.npz", **arrays)
    with np.load(tmp_path / "new.npz") as f:
        assert image_set_from(f).keys == ["a", "b"]
    with np.load(tmp_path / "old.npz") as f:
        restored = image_set_from(f)
    assert restored.keys is None and len(restored) == 2


def test_fit_to_replicates_grey_for_a_colour_run_and_refuses_the_reverse():
    from reprlearn.data.imageset import ImageSet
    from reprlearn.data.sources import fit_to
    from reprlearn.errors import ReprlearnError

    grey = ImageSet(np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4, 1), name="g", keys=["a", "b"])
    rgb = fit_to(grey, 4, 3, "g")
    assert rgb.images.shape == (2, 4, 4, 3) and rgb.keys == ["a", "b"]
    assert all(np.array_equal(rgb.images[..., c], grey.images[..., 0]) for c in range(3))
    with pytest.raises(ReprlearnError, match="3-channel images but the run was trained on 1-channel"):
        fit_to(rgb, 4, 1, "c")


def test_a_stored_vector_comes_back_from_both_index_kinds():
    from reprlearn.search import build_index, query_index, stored_vector, unit_rows

    x = unit_rows(np.random.default_rng(1).standard_normal((400, 8)))
    for index in (build_index(x), build_index(x, exact_limit=0, nprobe=4)):
        np.testing.assert_allclose(stored_vector(index, 123), x[123], atol=1e-6)
        assert query_index(index, stored_vector(index, 123)[None], 1)[1][0, 0] == 123
