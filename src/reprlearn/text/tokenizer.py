"""A byte-level BPE text tokenizer for image-text models (CLIP, SigLIP).

Built on Hugging Face ``tokenizers``: training and encoding run in its Rust code, and the
saved file is an ordinary ``tokenizer.json`` that other tools can read. Text is normalised
before encoding (Unicode NFC, lowercase, runs of whitespace -> one space, stripped), so
``decode(encode([t], L)[0]) == normalize_text(t)`` for every text that fits in ``L``.

Every tokenizer has three special tokens, ``<|pad|>`` (id 0), ``<|startoftext|>`` and
``<|endoftext|>``. A user's tokenizer.json that lacks some of them gets them added; if its
id 0 is a real token, that token and ``<|pad|>`` swap ids inside this class, so padding is
always id 0 (a model can mask ``ids == 0``, or take the EOT position as ``argmax(ids == eot_id)``).
A masked language model (``mlm``) also needs ``<|mask|>``: ``train(..., mask_token=True)`` adds it
as a fourth special token and ``with_mask()`` adds it to a loaded tokenizer; ``mask_id`` is None
for tokenizers without it (CLIP's and SigLIP's own).
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..errors import fail
from ..files import atomic_write

PAD, SOT, EOT = "<|pad|>", "<|startoftext|>", "<|endoftext|>"
SPECIAL_TOKENS = (PAD, SOT, EOT)  # ids 0, 1, 2 in tokenizers trained here
MASK = "<|mask|>"  # masked language models only (id 3 in tokenizers trained with mask_token=True)


def normalize_text(text: str) -> str:
    """NFC, lowercase, whitespace runs -> one space, stripped: what encode() actually encodes."""
    return " ".join(unicodedata.normalize("NFC", str(text)).lower().split())


class TextTokenizer:
    """Byte-level BPE: ``encode(texts, L) -> (B, L) int64`` as ``[SOT] tokens [EOT] pad...``."""

    def __init__(self, tokenizer) -> None:
        # ``tokenizer`` is a ``tokenizers.Tokenizer``; use train() or load() rather than this
        self._tok = tokenizer
        missing = [t for t in SPECIAL_TOKENS if tokenizer.token_to_id(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)
        raw_pad = tokenizer.token_to_id(PAD)
        self._swap = raw_pad  # raw ids 0 and raw_pad trade places, so pad is id 0 here (0: no swap)
        self.pad_id = 0
        self.sot_id = self._to_ours(tokenizer.token_to_id(SOT))
        self.eot_id = self._to_ours(tokenizer.token_to_id(EOT))
        raw_mask = tokenizer.token_to_id(MASK)
        self.mask_id = None if raw_mask is None else self._to_ours(raw_mask)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))

    # ids: the swap is its own inverse
    def _to_ours(self, i: int) -> int:
        return 0 if i == self._swap else self._swap if i == 0 else i

    _to_raw = _to_ours

    # ------------------------------------------------------------ building

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2,
              mask_token: bool = False) -> "TextTokenizer":
        """Learn a byte-level BPE vocabulary (at most ``vocab_size`` ids, specials included);
        ``mask_token``: also reserve ``<|mask|>`` (id 3), for masked language modelling."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 256 + len(SPECIAL_TOKENS):
            raise fail(f"vocab_size {vocab_size} is too small for a byte-level BPE; "
                       f"use at least {256 + len(SPECIAL_TOKENS)} (256 bytes + 3 special tokens)")
        corpus = [t for t in (normalize_text(x) for x in texts) if t]
        if not corpus:
            raise fail("no text to train the tokenizer on; give it the training captions")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=list(SPECIAL_TOKENS) + ([MASK] if mask_token else []),
                                      show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
        return cls(tok)

    @classmethod
    def from_json(cls, text: str, where: str = "tokenizer JSON") -> "TextTokenizer":
        """From the text of a tokenizer.json (e.g. ``to_json()`` kept in a checkpoint)."""
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_str(text)
        except Exception as e:  # tokenizers raises plain Exception for a malformed file
            raise fail(f"{where} is not a valid Hugging Face tokenizer.json ({' '.join(str(e).split())[:80]})") from None
        model = json.loads(tok.to_str()).get("model", {}).get("type")
        if model != "BPE":
            raise fail(f"{where} holds a {model} tokenizer; expected a (byte-level) BPE tokenizer.json")
        return cls(tok)

    def with_mask(self) -> "TextTokenizer":
        """This tokenizer with ``<|mask|>`` added (itself when it has one already)."""
        if self.mask_id is not None:
            return self
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(self._tok.to_str())
        tok.add_special_tokens([MASK])
        return TextTokenizer(tok)

    def to_json(self) -> str:
        """The tokenizer.json text (what save() writes); ``from_json`` reads it back."""
        return self._tok.to_str()

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TextTokenizer":
        """Read a tokenizer.json: one saved here, or a user's Hugging Face (byte-level BPE) file."""
        path = Path(path).expanduser()
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise fail(f"tokenizer file {str(path)!r} does not exist; give a tokenizer.json "
                       "(saved by TextTokenizer.save or a Hugging Face tokenizer)")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise fail(f"cannot read tokenizer file {path} ({' '.join(str(e).split())[:80]})") from None
        return cls.from_json(text, str(path))

    def save(self, path: str | os.PathLike) -> None:
        """Write tokenizer.json atomically (temporary file, then rename)."""
        with atomic_write(Path(path).expanduser(), "w") as f:
            f.write(self.to_json())

    # ------------------------------------------------------------ using

    def tokens(self, text: str) -> list[int]:
        """The ids of one normalised text, without SOT/EOT."""
        return [self._to_ours(i) for i in self._tok.encode(normalize_text(text), add_special_tokens=False).ids]

    def encode(self, texts: Sequence[str] | str, context_length: int) -> torch.Tensor:
        """(B, context_length) int64: ``[SOT] tokens [EOT] 0 0 ...``; a long text is cut so EOT stays last."""
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise fail(f"context_length {context_length} leaves no room for the start and end tokens; use at least 2")
        out = torch.full((len(texts), context_length), self.pad_id, dtype=torch.long)
        if not len(texts):
            return out
        encodings = self._tok.encode_batch([normalize_text(t) for t in texts], add_special_tokens=False)
        room = context_length - 2
        for row, enc in enumerate(encodings):
            ids = [self._to_ours(i) for i in enc.ids[:room]]
            out[row, : len(ids) + 2] = torch.tensor([self.sot_id, *ids, self.eot_id], dtype=torch.long)
        return out

    def decode(self, ids) -> str:
        """Text of one id sequence (list or 1-D tensor); stops at EOT, drops special tokens."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if self.eot_id in ids:
            ids = ids[: ids.index(self.eot_id)]
        specials = {self.pad_id, self.sot_id, self.eot_id, self.mask_id}
        raw = [self._to_raw(i) for i in ids if i not in specials]
        return self._tok.decode(raw, skip_special_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"TextTokenizer(vocab_size={self.vocab_size}, sot_id={self.sot_id}, eot_id={self.eot_id}, pad_id=0)"
