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
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import ViewSpec, augment
from ..config import option
from ..data.pixels import unit_float
from ..distributed import is_distributed
from ..errors import fail
from ..nets.text import TextTransformer
from .base import EmbedsText, Method


@dataclass
class TextTowerConfig:
    """The text transformer and its tokenizer, as the image-text methods and ``mlm`` build them
    (the same names, so an ``mlm`` run's tower loads into ``clip --text-init``)."""

    context_length: int = option(32, "text tokens per caption (SOT + text + EOT); longer captions are truncated",
                                 min=4, max=4096)
    vocab_size: int = option(4096, "byte-level BPE vocabulary trained on the training captions", min=300, max=1 << 20)
    tokenizer: str | None = option(None, "a Hugging Face tokenizer.json to use instead of training one")
    text_width: int = option(64, "text transformer width (small by default: scenes' captions use ~400 tokens; "
                             "real captions such as Flickr8k's want 128 or more)", min=8, max=65536)
    text_layers: int = option(2, "text transformer layers", min=1, max=256)
    text_heads: int = option(4, "text transformer attention heads", min=1, max=256)


def text_tower(config: TextTowerConfig, text: dict, causal: bool = True, pool: str = "eot") -> TextTransformer:
    """The text transformer of ``config`` for the tokenizer sizes ``text`` (DataInfo.text)."""
    return TextTransformer(text["vocab_size"], config.context_length, text["eot_id"], config.text_width,
                           config.text_layers, config.text_heads, causal=causal, pool=pool)


def prepare_tokenizer(config: TextTowerConfig, texts, info, mask_token: bool = False, tokenizer=None):
    """``tokenizer``, else the user's tokenizer.json, else a byte-level BPE trained on ``texts``; its sizes
    go into ``info.text`` and its file into the artifacts returned (the run alone must be enough to
    embed new text). ``mask_token``: with ``<|mask|>`` (masked language models)."""
    from ..text import TextTokenizer

    if tokenizer is None and config.tokenizer:
        tokenizer = TextTokenizer.load(config.tokenizer)
    if tokenizer is None:
        tokenizer = TextTokenizer.train(texts, vocab_size=config.vocab_size, mask_token=mask_token)
    if mask_token:
        tokenizer = tokenizer.with_mask()
    info.text = {"vocab_size": tokenizer.vocab_size, "sot_id": tokenizer.sot_id, "eot_id": tokenizer.eot_id,
                 "pad_id": tokenizer.pad_id}
    if tokenizer.mask_id is not None:
        info.text["mask_id"] = tokenizer.mask_id
    return {"tokenizer.json": tokenizer.to_json()}


@dataclass
class ImageTextConfig(TextTowerConfig):
    embed_dim: int = option(128, "dimension of the shared image-text embedding space", min=2, max=65536)
    text_init: str | None = option(None, "start the text tower from an mlm run's (RUN_DIR; its tokenizer too): "
                                   "same --text-width/--text-layers/--text-heads/--context-length")
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
        self.text = text_tower(c, text)
        self.text_proj = nn.Linear(c.text_width, c.embed_dim, bias=False)
        for proj in (self.image_proj, self.text_proj):
            nn.init.normal_(proj.weight, std=proj.in_features ** -0.5)
        self.tokenizer = None  # set by restore() (needed for prompts at evaluation)

    # ------------------------------------------------------------------ data
    @classmethod
    def prepare(cls, config, data, info):
        """The user's tokenizer.json, the --text-init run's, or a byte-level BPE trained on the training captions."""
        captions = data.captions()
        if captions is None:
            raise fail(f"{cls.__name__.lower()} trains on (image, caption) pairs; give --data with captions")
        tokenizer = None
        if config.text_init:
            from ..text import TextTokenizer

            if config.tokenizer:
                raise fail("--text-init brings its run's tokenizer; drop --tokenizer")
            init_run = Path(config.text_init).expanduser()
            if not (init_run / "tokenizer.json").is_file():
                raise fail(f"--text-init {config.text_init} is not an mlm run directory (no tokenizer.json); "
                           "give the folder `reprlearn train mlm` wrote")
            tokenizer = TextTokenizer.load(init_run / "tokenizer.json")
        return prepare_tokenizer(config, captions, info, tokenizer=tokenizer)

    def warm_start(self):
        """--text-init RUN: the text tower's weights from an mlm run (shapes must agree exactly)."""
        if self.config.text_init:
            load_text_tower(self.text, self.config.text_init)

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
            x = unit_float(images)
        return x, text

    def loss(self, views):
        images, text = views
        return self.image_text_loss(self.encode_image(images), self.encode_text(text), is_distributed())

    def image_text_loss(self, image: Tensor, text: Tensor, distributed: bool) -> dict[str, Tensor]:
        raise NotImplementedError


def load_text_tower(text: TextTransformer, run_dir: str) -> None:
    """Copy an ``mlm`` run's text transformer (its ``encoder``) into ``text``; one line when the run is
    not an mlm run or a shape differs (vocabulary, width, layers, context length)."""
    path = Path(run_dir).expanduser() / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise fail(f"--text-init {run_dir} has no checkpoint ({path}); give a trained mlm run directory")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise fail(f"--text-init: checkpoint {path} cannot be loaded safely ({type(e).__name__})") from None
    method = ((ckpt.get("reprlearn") or {}).get("config") or {}).get("method")
    if method != "mlm":
        raise fail(f"--text-init {run_dir} is a {method or 'non-reprlearn'} run; give an mlm run "
                   "(`reprlearn train mlm`)")
    prefix = "method.encoder."
    theirs = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    ours = text.state_dict()
    if set(theirs) != set(ours):
        extra = sorted(set(theirs) ^ set(ours))[0]
        raise fail(f"--text-init {run_dir}: its text tower has different layers ({extra} is in only one); "
                   "give the same --text-layers as the mlm run")
    for name, value in ours.items():
        if theirs[name].shape != value.shape:
            raise fail(f"--text-init {run_dir}: {name} is {tuple(theirs[name].shape)} there but "
                       f"{tuple(value.shape)} here; give the mlm run's --text-width, --context-length "
                       "(and its tokenizer, which --text-init brings)")
    text.load_state_dict(theirs)
