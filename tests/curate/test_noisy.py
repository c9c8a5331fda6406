"""A noisy pool from a clean caption source: the share swapped, nobody keeping its own captions,
the corrupted keys recorded and read back by the scorer, a clean seed set held apart."""

import numpy as np

from reprlearn.curate.noisy import make_noisy_pool, swap_captions
from reprlearn.curate.scoring import open_pool
from reprlearn.data.pairs import load_pairs
from reprlearn.data.shards import write_shard


def test_swap_gives_exactly_the_share_another_images_captions():
    for n, f in [(10, 0.5), (101, 0.3), (7, 1.0), (5, 0.0)]:
        source = swap_captions(n, f, seed=3)
        assert (source != np.arange(n)).sum() == round(f * n)
        assert sorted(source.tolist()) == list(range(n))  # every caption list used once
    assert swap_captions(10, 0.5, 1).tolist() == swap_captions(10, 0.5, 1).tolist()


def nearest(images, image):
    return int(np.argmin(np.abs(images.astype(int) - image.astype(int)).mean(axis=(1, 2, 3))))


def test_noisy_pool_records_its_corrupted_keys_and_holds_a_clean_seed_apart(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (30, 16, 16, 3), dtype=np.uint8)
    captions = [[f"caption of image {i}", f"another of {i}"] for i in range(30)]
    write_shard(tmp_path / "src" / "train-000000.tar", 0, images, None, captions, "png")
    pool, seed = make_noisy_pool(str(tmp_path / "src"), 0.5, tmp_path / "out", seed_size=6, shard_size=10)
    seed_pairs, pool_pairs = load_pairs(seed), load_pairs(pool)
    assert len(seed_pairs) == 6 and len(pool_pairs) == 24
    own = {c[0]: i for i, c in enumerate(captions)}
    seed_ids = {nearest(images, im) for im in seed_pairs.images.images}  # jpg: matched by pixels
    assert all(own[c[0]] == nearest(images, im) for c, im in zip(seed_pairs.captions, seed_pairs.images.images))
    p = open_pool(pool, 16)
    flags = []
    for i in range(len(p.parts)):
        for b in p.batches(i, 8):
            flags += b["corrupted"].tolist()
    assert sum(flags) == 12 and len(flags) == 24
    # a pair is flagged exactly when its captions describe another image
    for flag, image, caps in zip(flags, pool_pairs.images.images, pool_pairs.captions):
        assert nearest(images, image) not in seed_ids
        assert (own[caps[0]] != nearest(images, image)) == flag
