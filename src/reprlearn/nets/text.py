"""The text tower of image–text models: a causal transformer pooled at the end-of-text token.

As in CLIP, each token attends only to itself and the tokens before it, so the
end-of-text (EOT) token is the first position that has seen the whole caption; its
final state is the caption's feature. Tokens after EOT (padding) cannot influence
it, so no padding mask is needed. The layers are PyTorch's own
``nn.TransformerEncoderLayer`` (pre-norm, GELU), which has fused CPU/GPU paths.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import fail


class TextTransformer(nn.Module):
    """Token ids (B, L) -> features (B, width), read at each row's EOT token."""

    def __init__(self, vocab_size: int, context_length: int, eot_id: int, width: int = 128, layers: int = 3,
                 heads: int = 4, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise fail(f"text width {width} is not divisible by {heads} heads; choose --text-heads dividing it")
        self.context_length, self.eot_id, self.feature_dim = context_length, eot_id, width
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

    def forward(self, tokens: Tensor) -> Tensor:
        n, length = tokens.shape
        if length > self.context_length:
            raise fail(f"text of {length} tokens is longer than the context length {self.context_length}")
        x = self.token_embed(tokens) + self.pos_embed[:, :length]
        x = self.blocks(x, mask=self.causal_mask[:length, :length].to(x.dtype), is_causal=True)
        x = self.norm(x)
        # the EOT position of each row (the last token if a row was truncated without one)
        is_eot = tokens == self.eot_id
        last = torch.where(is_eot.any(1), is_eot.int().argmax(1), torch.full_like(tokens[:, 0], length - 1))
        return x[torch.arange(n, device=x.device), last]
