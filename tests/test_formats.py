"""Images beyond 8-bit grey/RGB: 16-bit PNG and TIFF kept deep, .npy/.npz arrays of any pixel type,
many-band TIFF tiles; the [0, 1] scale, per-channel statistics, colour ops on bands, export and the
8-bit path left exactly as it was."""

import io
import struct
import zlib
from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

import reprlearn
from fakedata import one_line_error, write_shard
from reprlearn.augment import augment, preset
from reprlearn.data import load_source
from reprlearn.data.decode import decode_image
from reprlearn.data.imageset import ImageSet

TINY = dict(epochs=1, eval=False, batch_size=8, warmup_epochs=0, progress=False)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRLEARN_CACHE", str(tmp_path / "cache"))


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, "PNG")
    return out.getvalue()


def _tiff(array: np.ndarray, **kw) -> bytes:
    out = io.BytesIO()
    tifffile.imwrite(out, array, **kw)
    return out.getvalue()


def _png16_rgb(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG written by hand (signature, IHDR with bit depth 16 and colour type 2, IDAT, IEND)."""
    h, w, _ = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ 16 bits kept


def test_16_bit_png_keeps_the_bits_below_the_eighth():
    values = np.array([[100 * 256, 100 * 256 + 1, 100 * 256 + 255, 65535]], np.uint16)  # one high byte, three low
    out = decode_image(_png(Image.fromarray(values)), "deep.png", None)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 0], values)
    x = ImageSet(out[None]).tensor()
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x[0, 0].numpy(), values.astype(np.float32) / np.float32(65535))
    assert len(set(x[0, 0, 0, :3].tolist())) == 3  # 8-bit truncation would make these three equal


@pytest.mark.parametrize("planar", [False, True])
def test_16_bit_tiff_bands_are_scaled_per_channel_by_65535(planar):
    rng = np.random.default_rng(0)
    bands = 5
    # band c: high byte 16 c + 1, low byte random; so every band differs from the others only below bit 8 at times
    hwc = ((16 * np.arange(bands) + 1) * 256 + rng.integers(0, 256, (6, 7, bands))).astype(np.uint16)
    data = _tiff(np.moveaxis(hwc, -1, 0)) if planar else _tiff(hwc, photometric="minisblack", planarconfig="contig")
    out = decode_image(data, "tile.tif", None)
    assert out.dtype == np.uint16 and out.shape == (6, 7, bands)
    np.testing.assert_array_equal(out, hwc)
    x = ImageSet(out[None]).tensor()[0]
    for c in range(bands):
        np.testing.assert_array_equal(x[c].numpy(), hwc[..., c].astype(np.float32) / np.float32(65535))


def test_photo_tiffs_and_lzw_tiffs_read_as_before_and_at_full_depth():
    def tiff(img: Image.Image, **kw) -> bytes:
        out = io.BytesIO()
        img.save(out, "TIFF", **kw)
        return out.getvalue()

    rgb = np.random.default_rng(6).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    # LZW needs a codec tifffile lacks without imagecodecs: Pillow reads it, at full depth
    np.testing.assert_array_equal(decode_image(tiff(Image.fromarray(rgb), compression="tiff_lzw"), "a.tif", None), rgb)
    grey16 = np.array([[0, 100 * 256 + 1, 65535, 7]], np.uint16)
    out = decode_image(tiff(Image.fromarray(grey16), compression="tiff_lzw"), "g.tif", None)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out[..., 0], grey16)
    rgba = Image.fromarray(np.array([[[255, 0, 0, 128], [0, 255, 0, 255]]], np.uint8), "RGBA")
    np.testing.assert_array_equal(decode_image(tiff(rgba), "rgba.tif", None)[0], [[128, 0, 0], [0, 255, 0]])
    cmyk = decode_image(tiff(Image.new("CMYK", (2, 2), (0, 255, 255, 0))), "c.tif", None)
    np.testing.assert_array_equal(cmyk[0, 0], [255, 0, 0])  # photo layouts become RGB, not 4 bands


def test_a_16_bit_colour_png_is_refused_not_cut_to_8_bits(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.png").write_bytes(_png16_rgb(np.full((4, 4, 3), 1000, np.uint16)))
    one_line_error(lambda: load_source(str(tmp_path / "x")), "a.png", "16-bit colour PNG", "TIFF")


def test_mixed_depths_in_one_folder_are_stored_at_16_bits_exactly(tmp_path):
    Image.fromarray(np.array([[0, 1, 255]], np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.array([[0, 300, 65535]], np.uint16)).save(tmp_path / "b.png")
    images = load_source(str(tmp_path))
    assert images.images.dtype == np.uint16
    np.testing.assert_array_equal(images.images[..., 0], [[[0, 257, 65535]], [[0, 300, 65535]]])


def test_resizing_a_16_bit_image_keeps_its_depth(tmp_path):
    Image.fromarray(np.full((10, 14), 1001, np.uint16)).save(tmp_path / "a.png")
    Image.fromarray(np.full((12, 12), 40003, np.uint16)).save(tmp_path / "b.png")
    images = load_source(str(tmp_path), image_size=6)
    assert images.images.dtype == np.uint16 and images.images.shape == (2, 6, 6, 1)
    np.testing.assert_array_equal(np.unique(images.images[0]), [1001])  # a flat image stays flat, low bits kept
    np.testing.assert_array_equal(np.unique(images.images[1]), [40003])


@pytest.mark.parametrize("kind", ["npy", "tif"])
def test_arrays_and_tiles_of_two_sizes_are_stored_at_the_median_side(tmp_path, kind):
    first, second = np.full((5, 10, 14), 7, np.uint16), np.full((12, 12, 5), 9, np.uint16)  # 14 x 10, 12 x 12
    if kind == "npy":
        np.save(tmp_path / "a.npy", first)  # channels first
        np.save(tmp_path / "b.npy", second)  # channels last
    else:  # band-separate, then interleaved (which Pillow cannot open to read its size)
        tifffile.imwrite(tmp_path / "a.tif", first)
        tifffile.imwrite(tmp_path / "b.tif", second, photometric="minisblack", planarconfig="contig")
    images = load_source(str(tmp_path))
    assert images.images.shape == (2, 11, 11, 5) and images.images.dtype == np.uint16  # median of 10 and 12
    assert [np.unique(a).tolist() for a in images.images] == [[7], [9]]


# ------------------------------------------------------------------ arrays


def test_npy_channel_axis_rule_and_pixel_types(tmp_path):
    rng = np.random.default_rng(1)
    hwc = rng.random((9, 8, 4), dtype=np.float32)
    for name, array in (("chw", np.moveaxis(hwc, -1, 0)), ("hwc", hwc)):
        out = decode_image(_npy(array), f"{name}.npy", None)
        np.testing.assert_array_equal(out, hwc)  # the smaller of the first and last axes holds the channels
    assert decode_image(_npy(np.zeros((5, 6), np.int32) + 70), "i.npy", None).dtype == np.uint16
    grey = decode_image(_npy(np.ones((3, 3, 3), np.float64)), "tie.npy", None)
    assert grey.dtype == np.float32 and grey.shape == (3, 3, 3)


def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def test_arrays_outside_their_range_are_refused_in_one_line(tmp_path):
    (tmp_path / "nan").mkdir()
    bad = np.full((4, 4), 0.5, np.float32)
    bad[1, 2] = np.nan
    np.save(tmp_path / "nan" / "a.npy", bad)
    one_line_error(lambda: load_source(str(tmp_path / "nan")), "a.npy", "NaN")
    np.savez(tmp_path / "inf.npz", images=np.full((2, 4, 4), np.inf, np.float32))
    one_line_error(lambda: load_source(str(tmp_path / "inf.npz")), "NaN or infinite")
    np.savez(tmp_path / "wide.npz", images=np.linspace(-2, 3, 32, dtype=np.float32).reshape(2, 4, 4))
    one_line_error(lambda: load_source(str(tmp_path / "wide.npz")), "[-2, 3]", "[0, 1]")
    np.savez(tmp_path / "signed.npz", images=np.full((2, 4, 4), -1000, np.int16))
    one_line_error(lambda: load_source(str(tmp_path / "signed.npz")), "int16", "-1000")
    one_line_error(lambda: ImageSet(np.full((1, 2, 2, 1), 2.0, np.float32)), "[2, 2]", "[0, 1]")


def test_npz_of_16_bit_and_float_images_is_kept_as_given(tmp_path):
    deep = np.arange(2 * 4 * 4 * 2, dtype=np.uint16).reshape(2, 4, 4, 2) * 1001
    np.savez(tmp_path / "deep.npz", images=deep, labels=np.array([0, 1]))
    loaded = load_source(str(tmp_path / "deep.npz"))
    assert loaded.images.dtype == np.uint16 and loaded.max_value == 65535
    np.testing.assert_array_equal(loaded.images, deep)
    unit = np.linspace(0, 1, 32, dtype=np.float32).reshape(2, 4, 4, 1)
    np.savez(tmp_path / "unit.npz", images=unit)
    np.testing.assert_array_equal(load_source(str(tmp_path / "unit.npz")).tensor()[:, 0].numpy(), unit[..., 0])


# ------------------------------------------------------------------ statistics and colour ops


def test_per_channel_mean_and_std_are_numpys_on_the_data():
    from reprlearn.runs import data_info

    rng = np.random.default_rng(2)
    images = (rng.random((6, 5, 5, 5)) * np.array([100, 1000, 4095, 30000, 65535])).astype(np.uint16)
    info = data_info(ImageSet(images))
    x = images.astype(np.float64) / 65535
    np.testing.assert_allclose(info.mean, x.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(info.std, np.maximum(x.std(axis=(0, 1, 2)), 1e-3), rtol=1e-12)
    assert info.channels == 5


def test_colour_ops_are_skipped_on_five_bands_with_a_note(capsys, monkeypatch):
    import reprlearn.augment.views as views

    monkeypatch.setattr(views, "_colour_skip_said", set())
    x = torch.rand(4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    colour_only = replace(preset("none", 8, 5), jitter_p=1.0, brightness=0.9, contrast=0.9, grayscale_p=1.0,
                          solarize_p=0.0)
    out = augment(x, colour_only, torch.Generator().manual_seed(1))
    assert torch.equal(out, x)  # no geometry asked, and the colour ops left the bands alone
    assert "5 channels; colour jitter and grayscale" in capsys.readouterr().out
    augment(x, colour_only, torch.Generator().manual_seed(1))
    assert capsys.readouterr().out == ""  # said once
    rgb = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(augment(rgb, colour_only, torch.Generator().manual_seed(1)), rgb)  # RGB still jittered


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def tiff_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiff")
    rng = np.random.default_rng(3)
    for label in ("a", "b"):
        (root / "tiles" / label).mkdir(parents=True)
        for i in range(10):
            tifffile.imwrite(root / "tiles" / label / f"{i}.tif", rng.integers(0, 4096, (5, 8, 8), dtype=np.uint16))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REPRLEARN_CACHE", str(root / "cache"))
        run = reprlearn.train("simclr", data=str(root / "tiles"), out=root / "run", **TINY)
    return run, root / "tiles"


def test_five_band_tiffs_train_and_embed(tiff_run, one_thread):
    run, tiles = tiff_run
    encoder = reprlearn.load(run)
    assert encoder.mean.shape == (1, 5, 1, 1)
    features = reprlearn.embed(run, str(tiles))
    assert features.shape == (20, encoder.feature_dim) and np.isfinite(features).all()


def test_five_band_export_loads_to_the_same_features(tiff_run, tmp_path, one_thread):
    from reprlearn.api import export
    from reprlearn.export import load_safetensors

    run, tiles = tiff_run
    export(run, "safetensors", tmp_path / "enc.safetensors")
    loaded = load_safetensors(tmp_path / "enc.safetensors")
    assert loaded.export_info["in_channels"] == 5 and len(loaded.export_info["mean"]) == 5
    x = load_source(str(tiles)).tensor()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reprlearn.load(run)(x), rtol=1e-5, atol=1e-5)


def test_a_folder_of_float_npy_arrays_trains_and_embeds(tmp_path, one_thread):
    rng = np.random.default_rng(4)
    (tmp_path / "arrays").mkdir()
    for i in range(16):
        shape = (4, 9, 9) if i % 2 else (9, 9, 4)  # channels first or last, one folder
        np.save(tmp_path / "arrays" / f"{i:02d}.npy", rng.random(shape, dtype=np.float32))
    run = reprlearn.train("simclr", data=str(tmp_path / "arrays"), out=tmp_path / "run", **TINY)
    features = reprlearn.load(run)(load_source(str(tmp_path / "arrays")).tensor())
    assert features.shape == (16, reprlearn.load(run).feature_dim) and torch.isfinite(features).all()


def test_methods_that_need_colour_or_8_bit_levels_refuse_bands(tiff_run):
    from reprlearn.data.pixels import require_8bit

    run, tiles = tiff_run
    one_line_error(lambda: reprlearn.train("colorization", data=str(tiles), out=tiles.parent / "c", **TINY),
                   "colorization needs colour images", "5 channels")
    one_line_error(lambda: require_8bit(torch.zeros(1, 1, 2, 2), "flow"), "flow", "8-bit", "float32")


def test_the_stream_refuses_16_bit_members_with_the_fix(tmp_path):
    from reprlearn.data.stream import open_stream, read_subset

    for i in range(3):
        Image.fromarray(np.full((6, 6), 1000 + i, np.uint16)).save(tmp_path / f"{i}.png")
    stream = open_stream([tmp_path], None, False, str(tmp_path))
    one_line_error(lambda: read_subset(stream, 2, 0), "uint16", "--loader memory")


def test_shards_of_deep_members_load_deep_and_deep_sets_are_not_written_as_shards(tmp_path):
    from reprlearn.data.shards import write_shards

    tile = np.arange(2 * 4 * 4, dtype=np.uint16).reshape(2, 4, 4) * 2000 + 1  # two bands, low bits set
    grey = np.full((4, 4), 513, np.uint16)
    write_shard(tmp_path / "deep.tar", [("a.npy", _npy(tile)), ("a.cls", b"0"), ("b.npy", _npy(tile + 1)),
                                        ("b.cls", b"1")])
    write_shard(tmp_path / "grey.tar", [("a.png", _png(Image.fromarray(grey)))])
    deep = load_source(str(tmp_path / "deep.tar"))
    assert deep.images.dtype == np.uint16 and deep.images.shape == (2, 4, 4, 2)
    np.testing.assert_array_equal(deep.images[1], np.moveaxis(tile + 1, 0, -1))
    np.testing.assert_array_equal(load_source(str(tmp_path / "grey.tar")).images[0, ..., 0], grey)
    one_line_error(lambda: write_shards(str(tmp_path / "deep.tar"), tmp_path / "out", progress=False),
                   "uint16", "2 channel(s)", "--loader memory")
    assert not list((tmp_path / "out").glob("*.tar"))


# ------------------------------------------------------------------ the 8-bit path as it was


def test_the_8_bit_path_is_unchanged_byte_for_byte(tmp_path):
    from reprlearn.data.pixels import unit_float

    digits = load_source("digits")
    assert digits.images.dtype == np.uint8 and digits.max_value == 255
    x = digits.tensor()
    assert x.dtype == torch.uint8
    assert torch.equal(x, torch.from_numpy(digits.images).permute(0, 3, 1, 2))
    assert torch.equal(unit_float(x), x.float() / 255)  # the division every call site made before
    rgb = np.random.default_rng(5).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(_png(Image.fromarray(rgb)), "a.png", None), rgb)
    spec = preset("simclr", 8, 1)
    a = augment(x[:16], spec, torch.Generator().manual_seed(0))
    b = augment(x[:16].float() / 255, spec, torch.Generator().manual_seed(0))
    assert torch.equal(a, b)


def test_pictures_show_deep_and_many_band_images_at_their_own_scale():
    """Sheets and contact sheets draw a 16-bit or float image scaled to 0..255, not wrapped or clipped,
    and the first three bands of a many-band one."""
    from reprlearn.data.pixels import display_rgb

    deep = np.array([[[0], [32768], [65535]]], np.uint16)  # (1, 3, 1)
    assert display_rgb(deep).tolist() == [[[0] * 3, [128] * 3, [255] * 3]]
    bands = np.arange(5, dtype=np.float32).reshape(1, 1, 5) / 4  # 0, .25, .5, .75, 1
    assert display_rgb(bands).tolist() == [[[0, 64, 128]]]
    assert display_rgb(np.full((2, 2, 3), 7, np.uint8)).tolist() == np.full((2, 2, 3), 7).tolist()
