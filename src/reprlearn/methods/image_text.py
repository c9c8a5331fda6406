"""What CLIP and SigLIP share: two towers into one embedding space.

An image tower (any registered backbone, ``self.encoder``, evaluated like every other
method's) and a text tower (:class:`~reprlearn.nets.text.TextTransformer`) each end in a
linear projection to ``embed_dim``; both embeddings are L2-normalised. The two methods
differ only in the loss on the B×B similarities and in how the learned scale (and
bias) start, so each is a few lines in its own file (clip.py, siglip.py).

The engine hands a batch's captions over as token ids: ``tokens`` (B, M, L) holds up
to M tokenised captions per image and ``caption_counts`` (B,) how many are real; each
step picks one of them per image with the step's generator, so every epoch sees one
caption of each image, drawn afresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import ViewSpec, augment
from ..config import option
from ..distributed import is_distributed
from ..errors import fail
from ..nets.text import TextTransformer
from .base import EmbedsText, Method


@dataclass
class ImageTextConfig:
    embed_dim: int = option(128, "dimension of the shared image-text embedding space", min=2, max=65536)
    context_length: int = option(32, "text tokens per caption (SOT + text + EOT); longer captions are truncated",
                                 min=4, max=4096)
    vocab_size: int = option(4096, "byte-level BPE vocabulary trained on the training captions", min=300, max=1 << 20)
    tokenizer: str | None = option(None, "a Hugging Face tokenizer.json to use instead of training one")
    text_width: int = option(64, "text transformer width (small by default: scenes' captions use ~400 tokens; "
                             "real captions such as Flickr8k's want 128 or more)", min=8, max=65536)
    text_layers: int = option(2, "text transformer layers", min=1, max=256)
    text_heads: int = option(4, "text transformer attention heads", min=1, max=256)
    image_aug: str = option("none", "image views: none, or crop (random resized crop of 60-100% of the area; no flips "
                            "or colour changes, which would contradict captions such as 'red' or 'left of')",
                            choices=("none", "crop"))


CROP = ViewSpec(crop_scale=(0.6, 1.0), hflip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)


class _UnitNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1)


class _TextTower(nn.Module):
    def __init__(self, text: nn.Module, proj: nn.Module):
        super().__init__()
        self.text, self.proj = text, proj

    def forward(self, tokens: Tensor) -> Tensor:
        return F.normalize(self.proj(self.text(tokens)), dim=-1)


class ImageTextMethod(Method, EmbedsText):
    """Base of the image-text methods; subclasses define ``image_text_loss`` and the scale's start."""

    trains_on_captions: ClassVar[bool] = True  # (image, caption) pairs, not images alone
    # sized for scenes on a CPU: both methods train and evaluate in under 3 minutes on 2 cores
    run_defaults: ClassVar[dict] = {"data": "scenes", "epochs": 20, "batch_size": 256, "lr": 2e-3,
                                    "warmup_epochs": 2, "weight_decay": 0.1, "eval_max_train": 2000}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, encoder, info, view_spec)
        text = info.text or {}
        if not text.get("vocab_size"):
            raise fail(f"{type(self).__name__.lower()} needs captions; the data info has no tokenizer "
                       "(train it on paired data: scenes, a CSV/TSV of image,caption, or shards with .txt/.json)")
        c = config
        self.image_proj = nn.Linear(encoder.feature_dim, c.embed_dim, bias=False)
        self.text = TextTransformer(text["vocab_size"], c.context_length, text["eot_id"], c.text_width,
                                    c.text_layers, c.text_heads)
        self.text_proj = nn.Linear(c.text_width, c.embed_dim, bias=False)
        for proj in (self.image_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        self.tokenizer = None  # set by restore() (needed for prompts at evaluation)

    # ------------------------------------------------------------------ data
    @classmethod
    def prepare(cls, config, data, info):
        """The user's tokenizer.json, or a byte-level BPE trained on the training captions."""
        from ..text import TextTokenizer

        captions = data.captions()
        if captions is None:
            raise fail(f"{cls.__name__.lower()} trains on (image, caption) pairs; give --data with captions")
        if config.tokenizer:
            tokenizer = TextTokenizer.load(config.tokenizer)
        else:
            tokenizer = TextTokenizer.train(captions, vocab_size=config.vocab_size)
        info.text = {"vocab_size": tokenizer.vocab_size, "sot_id": tokenizer.sot_id, "eot_id": tokenizer.eot_id,
                     "pad_id": tokenizer.pad_id}
        return {"tokenizer.json": tokenizer.to_json()}  # the run alone must be enough to embed new captions

    def restore(self, artifacts):
        from ..text import TextTokenizer

        self.tokenizer = TextTokenizer.from_json(artifacts["tokenizer.json"])

    def training_fields(self, data):
        """``tokens`` (N, M, L): every image's captions tokenised (rows past its count are padding);
        ``caption_counts`` (N,): how many captions each image has."""
        return self._caption_tokens(data.train_pairs.captions)

    def stream_fields(self, batch):
        """The same ``tokens`` and ``caption_counts`` for one streamed batch's captions."""
        return {name: value.to(batch["images"].device) for name, value in
                self._caption_tokens(batch["captions"]).items()}

    def _caption_tokens(self, captions: list[list[str]]) -> dict[str, Tensor]:
        counts = torch.tensor([len(c) for c in captions])
        flat = self.tokenize([c for caps in captions for c in caps])
        tokens = torch.zeros(len(captions), int(counts.max()), self.config.context_length, dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(len(captions)), counts)
        cols = torch.cat([torch.arange(int(n)) for n in counts])
        tokens[rows, cols] = flat
        return {"tokens": tokens, "caption_counts": counts}

    # ------------------------------------------------------------------ towers
    def encode_image(self, images: Tensor) -> Tensor:
        """Float images in [0, 1] (N, C, H, W) -> unit embeddings (N, embed_dim)."""
        return F.normalize(self.image_proj(self.encoder(images)), dim=-1)

    def image_tower(self) -> nn.Module:
        """The image path as one module (shared weights): float images -> unit embeddings."""
        return nn.Sequential(self.encoder, self.image_proj, _UnitNorm())

    def text_tower(self) -> nn.Module:
        """The text path as one module (shared weights): token ids (N, L) -> unit embeddings, every
        column kept (the padding after EOT cannot reach it under the causal mask); for export."""
        return _TextTower(self.text, self.text_proj)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Token ids (N, L) -> unit embeddings (N, embed_dim)."""
        # drop the padding columns every caption of the batch has: under the causal mask they
        # cannot reach any EOT, and short captions (scenes: ~15 of 32 tokens) halve the work
        length = int((tokens != self.info.text.get("pad_id", 0)).sum(1).max().clamp(min=1))
        return F.normalize(self.text_proj(self.text(tokens[:, :length])), dim=-1)

    def tokenize(self, texts: list[str]) -> Tensor:
        if self.tokenizer is None:
            raise fail("this model has no tokenizer attached; load it with reprlearn.api.load_method(run_dir)")
        return self.tokenizer.encode(list(texts), self.config.context_length)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 1024) -> Tensor:
        """Unit embeddings of raw strings, (len(texts), embed_dim), on the model's device."""
        device = self.text_proj.weight.device
        tokens = self.tokenize(texts)
        return torch.cat([self.encode_text(tokens[i:i + batch_size].to(device))
                          for i in range(0, len(tokens), batch_size)])

    # ------------------------------------------------------------------ training
    def views(self, images: Tensor, generator: torch.Generator, tokens: Tensor, caption_counts: Tensor):
        pick = (torch.rand(len(images), generator=generator, device=images.device) * caption_counts).long()
        text = tokens[torch.arange(len(images), device=tokens.device), pick.clamp(max=tokens.shape[1] - 1)]
        if self.config.image_aug == "crop":
            x = augment(images, CROP, generator)
        else:
            x = images.float() / 255
        return x, text

    def loss(self, views):
        images, text = views
        return self.image_text_loss(self.encode_image(images), self.encode_text(text), is_distributed())

    def image_text_loss(self, image: Tensor, text: Tensor, distributed: bool) -> dict[str, Tensor]:
        raise NotImplementedError
