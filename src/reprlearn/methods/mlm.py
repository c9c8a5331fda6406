"""Masked language modelling (Devlin et al. 2019, BERT's pre-training objective), on text alone.

A bidirectional text transformer (the image-text text tower, :class:`~reprlearn.nets.text.TextTransformer`,
without the causal mask) reads a caption whose tokens were corrupted: 15% of the text's own
tokens are chosen, of which 80% become ``<|mask|>``, 10% a random token and 10% stay
(:func:`~reprlearn.augment.masks.mask_tokens`). A head predicts the original token at every
position, and the loss is the cross-entropy at the chosen positions only
(:func:`~reprlearn.losses.masked_token_loss`)::

    L = -(1/|C|) Σ_{i∈C} log p(x_i | x̃),   p(· | x̃) = softmax(E · LN(GELU(W h_i + b)) + c)

with the output embedding tied to the input embedding E, as BERT. ``self.encoder`` is the
transformer pooled by the mean of its non-padding states: what the text probe scores, what
``reprlearn search`` indexes, and what ``clip --text-init RUN`` starts CLIP's text tower from.

Evaluation (:mod:`reprlearn.evaluate.text`): masked-token accuracy and pseudo-perplexity over every
chosen position (the 10% left unchanged included, where the input shows the answer), and the
perplexity over the replaced positions only, each beside a context-free baseline.

Deviations from BERT: no next-sentence prediction (one caption per sample); positions are chosen
independently per token (a binomial count per text, not exactly 15%); random replacements are drawn
from every id but padding (BERT: the whole vocabulary); SOT/EOT are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment.masks import mask_tokens
from ..config import option
from ..errors import fail
from ..losses import masked_token_loss
from .base import METHODS, Method, ModelsText
from .image_text import TextTowerConfig, prepare_tokenizer, text_tower


@dataclass
class MLMConfig(TextTowerConfig):
    mask_rate: float = option(0.15, "share of each text's tokens chosen for prediction", above=0.0, max=1.0)
    mask_token_rate: float = option(0.8, "of the chosen tokens, the share replaced by <|mask|>", min=0.0, max=1.0)
    random_token_rate: float = option(0.1, "of the chosen tokens, the share replaced by a random token "
                                      "(the rest stay as they are)", min=0.0, max=1.0)


@METHODS.register("mlm")
class MLM(Method, ModelsText):
    Config = MLMConfig
    trains_on_text: ClassVar[bool] = True
    # sized for scenes' 12,000 captions on a CPU: ~1 min on 2 cores
    run_defaults: ClassVar[dict] = {"data": "scenes", "epochs": 10, "batch_size": 256, "lr": 2e-3,
                                    "warmup_epochs": 1, "weight_decay": 0.01, "eval_max_train": 5000}

    def __init__(self, config, encoder, info, view_spec):
        super().__init__(config, None, info, view_spec)
        text = info.text or {}
        if text.get("mask_id") is None:
            raise fail("mlm needs a tokenizer with a <|mask|> token; the data info has none (train it on text)")
        if config.mask_token_rate + config.random_token_rate > 1.0:
            raise fail(f"--mask-token-rate {config.mask_token_rate} + --random-token-rate {config.random_token_rate} "
                       "exceed 1; they split the chosen tokens")
        self.encoder = text_tower(config, text, causal=False, pool="mean")  # first: the random-init baseline
        width = config.text_width
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.output_bias = nn.Parameter(torch.zeros(text["vocab_size"]))
        self.tokenizer = None  # set by restore()

    # ------------------------------------------------------------------ data
    @classmethod
    def prepare(cls, config, data, info):
        """The user's tokenizer.json (with <|mask|> added) or a byte-level BPE trained on the training texts."""
        return prepare_tokenizer(config, data.captions(), info, mask_token=True)

    def restore(self, artifacts):
        from ..text import TextTokenizer

        self.tokenizer = TextTokenizer.from_json(artifacts["tokenizer.json"]).with_mask()

    def training_samples(self, data) -> Tensor:
        return self.tokenize(data.fit.texts)

    def tokenize(self, texts: list[str]) -> Tensor:
        if self.tokenizer is None:
            raise fail("this model has no tokenizer attached; load it with reprlearn.api.load_method(run_dir)")
        return self.tokenizer.encode(list(texts), self.config.context_length)

    # ------------------------------------------------------------------ the model
    def corrupt(self, tokens: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(corrupted ids, chosen (N, L) bool): BERT's 80/10/10 corruption of the text's own tokens."""
        text = self.info.text
        maskable = (tokens != text["pad_id"]) & (tokens != text["sot_id"]) & (tokens != text["eot_id"])
        c = self.config
        return mask_tokens(tokens, generator, mask_id=text["mask_id"], vocab_size=text["vocab_size"],
                           maskable=maskable, p=c.mask_rate, p_mask=c.mask_token_rate, p_random=c.random_token_rate,
                           random_low=1)

    def token_logits(self, tokens: Tensor) -> Tensor:
        """Ids (N, L) -> logits (N, L, V) of each position's original token."""
        return self.predict(self.encoder.states(tokens))

    def predict(self, states: Tensor) -> Tensor:
        """Final states (..., width) -> token logits (..., V), the output tied to the input embedding."""
        return F.linear(self.transform(states), self.encoder.token_embed.weight, self.output_bias)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 1024) -> Tensor:
        """Unit mean-pooled embeddings of raw strings, (len(texts), text_width), on the model's device."""
        device = self.output_bias.device
        tokens = self.tokenize(texts)
        return torch.cat([F.normalize(self.encoder(_trim(tokens[i:i + batch_size]).to(device)), dim=-1)
                          for i in range(0, len(tokens), batch_size)])

    # ------------------------------------------------------------------ training
    def views(self, tokens: Tensor, generator: torch.Generator):
        tokens = _trim(tokens)
        corrupted, chosen = self.corrupt(tokens, generator)
        return corrupted, tokens, chosen

    def loss(self, views):
        corrupted, targets, chosen = views
        # the head runs on the chosen positions only (~15%: the V-way output is most of the work);
        # the loss of those rows, all chosen, is the loss of the full (N, L, V) logits at ``chosen``
        picked = self.predict(self.encoder.states(corrupted)[chosen])[None]  # (1, |C|, V)
        value = masked_token_loss(picked, targets[chosen][None], torch.ones_like(picked[..., 0], dtype=torch.bool))
        return {"loss": value, "mlm": value.detach()}


def _trim(tokens: Tensor) -> Tensor:
    """Drop the padding columns every row of the batch has (exact: padding is hidden as a key)."""
    length = int((tokens != 0).sum(1).max().clamp(min=1))
    return tokens[:, :length]
