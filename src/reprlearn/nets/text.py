"""The text tower of image–text models: a causal transformer pooled at the end-of-text token.

As in CLIP, each token attends only to itself and the tokens before it, so the
end-of-text (EOT) token is the first position that has seen the whole caption; its
final state is the caption's feature. Tokens after EOT (padding) cannot influence
it, so no padding mask is needed. The layers are PyTorch's own
``nn.TransformerEncoderLayer`` (pre-norm, GELU), which has fused CPU/GPU paths.

``causal=False`` gives the bidirectional encoder of a masked language model (BERT-style,
``mlm``): every token attends to every non-padding token (padding, id 0, is masked as a
key), and ``pool="mean"`` averages the states of the non-padding tokens instead of reading
EOT. Both variants hold the same parameters under the same names, so one's weights load
into the other (``clip --text-init``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import fail


class TextTransformer(nn.Module):
    """Token ids (B, L) -> features (B, width), read at each row's EOT token."""

    def __init__(self, vocab_size: int, context_length: int, eot_id: int, width: int = 128, layers: int = 3,
                 heads: int = 4, mlp_ratio: float = 4.0, causal: bool = True, pool: str = "eot"):
        super().__init__()
        if width % heads:
            raise fail(f"text width {width} is not divisible by {heads} heads; choose --text-heads dividing it")
        if pool not in ("eot", "mean"):
            raise ValueError(f"pool must be 'eot' or 'mean', not {pool!r}")
        self.context_length, self.eot_id, self.feature_dim = context_length, eot_id, width
        self.causal, self.pool = causal, pool
        self.token_embed = nn.Embedding(vocab_size, width)
        self.pos_embed = nn.Parameter(torch.zeros(1, context_length, width))
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.register_buffer("causal_mask", nn.Transformer.generate_square_subsequent_mask(context_length),
                             persistent=False)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)

    def states(self, tokens: Tensor) -> Tensor:
        """Token ids (B, L) -> the final (normalised) state of every position (B, L, width)."""
        n, length = tokens.shape
        if length > self.context_length:
            raise fail(f"text of {length} tokens is longer than the context length {self.context_length}")
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        if self.causal:
            x = self.blocks(x, mask=self.causal_mask[:length, :length].to(x.dtype), is_causal=True)
        else:  # padding (id 0) is hidden as a key; a float mask keeps an all-padding row finite
            pad = torch.zeros(tokens.shape, dtype=x.dtype, device=x.device).masked_fill(tokens == 0, float("-inf"))
            pad[:, 0] = 0.0  # every row keeps one key (its first position: SOT)
            x = self.blocks(x, src_key_padding_mask=pad)
        return self.norm(x)

    def forward(self, tokens: Tensor) -> Tensor:
        n, length = tokens.shape
        x = self.states(tokens)
        if self.pool == "mean":  # the mean state of the non-padding tokens (SOT and EOT included)
            keep = (tokens != 0).unsqueeze(-1).to(x.dtype)
            return (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        # the EOT position of each row (the last token if a row was truncated without one)
        is_eot = tokens == self.eot_id
        last = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(tokens[:, 0], length - 1))
        return x[torch.arange(n, device=x.device), last]
