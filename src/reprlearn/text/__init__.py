"""Text for image-text models: a byte-level BPE tokenizer."""

from .tokenizer import EOT, PAD, SOT, TextTokenizer, normalize_text

__all__ = ["EOT", "PAD", "SOT", "TextTokenizer", "normalize_text"]
