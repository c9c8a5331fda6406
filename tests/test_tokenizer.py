"""The byte-level BPE text tokenizer: layout of encoded rows, round trips, save/load, user files."""

import pytest
import torch

from reprlearn.errors import ReprlearnError
from reprlearn.text import EOT, TextTokenizer, normalize_text

CORPUS = ["a small red circle to the left of a blue square.", "two shapes: a green triangle and a yellow ring.",
          "A large purple cross on a grey background.", "a dog runs across the grass ."] * 20


@pytest.fixture(scope="module")
def tok():
    return TextTokenizer.train(CORPUS, vocab_size=400, min_frequency=2)


def test_special_ids_and_row_layout(tok):
    assert (tok.pad_id, tok.sot_id, tok.eot_id) == (0, 1, 2)
    assert 259 < tok.vocab_size <= 400 and len(tok) == tok.vocab_size
    ids = tok.encode(["a red circle", "A  RED\tcircle "], context_length=16)
    assert ids.dtype == torch.long and ids.shape == (2, 16)
    assert torch.equal(ids[0], ids[1]), "lowercased and whitespace-normalised before encoding"
    n = int((ids[0] != 0).sum())
    assert ids[0, 0] == tok.sot_id and ids[0, n - 1] == tok.eot_id and (ids[0, n:] == 0).all()
    assert int((ids[0] == tok.eot_id).nonzero()[0]) == n - 1
    assert tok.encode([], 8).shape == (0, 8)
    assert tok.encode("a red circle", 16).shape == (1, 16)
    with pytest.raises(ReprlearnError):
        tok.encode(["x"], context_length=1)


def test_round_trip_and_truncation_keeps_eot(tok):
    texts = ["A small RED circle.", "  naïve café, über 😀 ", "something never seen: zebra 42!", ""]
    ids = tok.encode(texts, context_length=64)
    for row, text in zip(ids, texts):
        assert tok.decode(row) == normalize_text(text)
    assert normalize_text("  A  b\nC ") == "a b c"
    long = tok.encode(["a small red circle to the left of a blue square"] * 2, context_length=6)
    assert long.shape == (2, 6) and (long[:, 0] == tok.sot_id).all() and (long[:, -1] == tok.eot_id).all()
    assert (long != 0).all()
    assert 0 < len(tok.decode(long[0])) and "a small red circle to the left".startswith(tok.decode(long[0]))
    assert tok.decode([tok.sot_id, *tok.tokens("red"), tok.eot_id, 5, 6]) == "red", "stops at EOT"


def test_save_and_load(tok, tmp_path):
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert path.is_file() and not list(path.parent.glob("*.tmp"))
    again = TextTokenizer.load(path)
    assert torch.equal(again.encode(CORPUS[:4], 32), tok.encode(CORPUS[:4], 32))
    assert TextTokenizer.load(path.parent).vocab_size == tok.vocab_size  # a folder holding tokenizer.json
    restored = TextTokenizer.from_json(tok.to_json())  # e.g. kept in a checkpoint
    assert torch.equal(restored.encode(CORPUS[:2], 16), tok.encode(CORPUS[:2], 16))


def test_user_tokenizer_json_gets_pad_zero(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    user = Tokenizer(models.BPE())
    user.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    user.decoder = decoders.ByteLevel()
    user.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT], show_progress=False,
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert user.token_to_id(EOT) == 0  # its id 0 is a real token of the user's file
    user.save(str(tmp_path / "user.json"))
    tok = TextTokenizer.load(tmp_path / "user.json")
    assert tok.pad_id == 0 and len({tok.pad_id, tok.sot_id, tok.eot_id}) == 3
    ids = tok.encode(["a green triangle"], 12)
    assert ids[0, 0] == tok.sot_id and (ids[0] == tok.eot_id).sum() == 1 and ids[0, -1] == 0
    assert tok.decode(ids[0]) == "a green triangle"
    assert tok.vocab_size == user.get_vocab_size() + 2  # SOT and PAD added
    assert int(ids.max()) < tok.vocab_size


def test_load_errors(tmp_path):
    with pytest.raises(ReprlearnError, match="does not exist"):
        TextTokenizer.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ReprlearnError, match="not a valid"):
        TextTokenizer.load(tmp_path / "bad.json")
    from tokenizers import Tokenizer, models

    Tokenizer(models.WordLevel({"a": 0}, unk_token="a")).save(str(tmp_path / "word.json"))
    with pytest.raises(ReprlearnError, match="WordLevel"):
        TextTokenizer.load(tmp_path / "word.json")
    with pytest.raises(ReprlearnError, match="no text"):
        TextTokenizer.train(["", "   "])
    with pytest.raises(ReprlearnError, match="too small"):
        TextTokenizer.train(CORPUS, vocab_size=100)
