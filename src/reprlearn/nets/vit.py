"""Vision Transformers (ViT-Tiny / ViT-Small) with hooks for masked methods.

MAE and iBOT need to run the encoder on a subset of patch tokens, so besides
``forward`` the model exposes ``patch_embed_tokens`` (patch tokens with their
positional embedding), ``forward_tokens`` (cls + kept patches -> normed tokens) and
``forward_masked`` (all patches, masked ones swapped for a mask token -> normed tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import fail
from .registry import register_backbone


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (N, heads, L, head_dim)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def sincos_pos_embed(dim: int, grid: int) -> Tensor:
    """Fixed 2D sin-cos embedding (as in MAE), shape (grid*grid, dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (xs.flatten(), ys.flatten()):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def init_linears(module: nn.Module) -> None:
    """Every Linear of ``module``: Xavier-uniform weights, zero biases (the ViT/MAE initialisation)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class VisionTransformer(nn.Module):
    """Patch-embedding conv + cls token + positional embedding + pre-norm blocks + final LN."""

    def __init__(self, in_channels: int, image_size: int, patch_size: int, dim: int, depth: int,
                 num_heads: int, mlp_ratio: float = 4.0, pool: str = "cls", pos_embed: str = "learned"):
        super().__init__()
        self.grid = image_size // patch_size
        self.num_patches = self.grid * self.grid
        self.patch_size, self.dim, self.feature_dim, self.pool = patch_size, dim, dim, pool
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_patches, dim))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:  # fixed sin-cos; the cls slot gets zeros
            table = torch.cat([torch.zeros(1, dim), sincos_pos_embed(dim, self.grid)])
            self.register_buffer("pos_embed", table[None], persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.cls_token, std=0.02)
        w = self.patch_embed.weight  # init like a Linear (MAE does the same)
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        init_linears(self)

    def patch_pos_embed(self, rows: int, cols: int) -> Tensor:
        """(1, rows*cols, dim) positional embedding of the patch tokens: the table itself on the
        training grid; for other image sizes (e.g. DINOv2's small local crops) the table resized
        bicubically to rows x cols, as DINOv2 interpolates its positions."""
        pos = self.pos_embed[:, 1:]
        if (rows, cols) == (self.grid, self.grid):
            return pos
        table = pos.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(rows, cols), mode="bicubic", align_corners=False)
        return table.permute(0, 2, 3, 1).reshape(1, rows * cols, self.dim)

    def _patch_embed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(patch embeddings (N, L, dim) without positions, their positional embedding (1, L, dim))."""
        tokens = self.patch_embed(x)
        return tokens.flatten(2).transpose(1, 2), self.patch_pos_embed(*tokens.shape[2:])

    def patch_embed_tokens(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, L, dim) patch tokens plus their positional embedding (L = num_patches
        at the training size; other sizes get the table resized, see :meth:`patch_pos_embed`)."""
        tokens, pos = self._patch_embed(x)
        return tokens + pos

    def encode_patch_tokens(self, tokens: Tensor) -> Tensor:
        """Prepend the cls token to already-embedded patch tokens (N, K, dim); run blocks + norm.

        Lets iBOT-style methods edit tokens (e.g. swap in a mask token) before encoding.
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_tokens(self, x: Tensor, keep_idx: Tensor | None = None) -> Tensor:
        """Encode the cls token plus the patches in ``keep_idx`` (N, K); returns (N, 1+K, dim)."""
        tokens = self.patch_embed_tokens(x)
        if keep_idx is not None:
            index = keep_idx.long().unsqueeze(-1).expand(-1, -1, self.dim)
            tokens = torch.gather(tokens, 1, index)
        return self.encode_patch_tokens(tokens)

    def forward_masked(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> Tensor:
        """Encode every patch of x, the embeddings where ``mask`` (N, num_patches) is True replaced
        by ``mask_token`` (dim,) before the positional embedding is added (as in BEiT / iBOT);
        returns (N, 1+num_patches, dim): cls then patch tokens. No mask: the plain forward's tokens.
        """
        tokens, pos = self._patch_embed(x)
        if mask is not None:
            if mask_token is None:
                raise ValueError("forward_masked: a mask needs a mask_token")
            if mask.shape != tokens.shape[:2]:
                raise ValueError(f"forward_masked: mask {tuple(mask.shape)} does not match the patch grid "
                                 f"{tuple(tokens.shape[:2])}")
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype).view(1, 1, -1), tokens)
        return self.encode_patch_tokens(tokens + pos)

    def forward(self, x: Tensor) -> Tensor:
        out = self.forward_tokens(x)
        return out[:, 0] if self.pool == "cls" else out[:, 1:].mean(dim=1)


def _build(name: str, in_channels: int, image_size: int, patch_size: int | None, dim: int, depth: int,
           num_heads: int, mlp_ratio: float, pool: str, pos_embed: str) -> VisionTransformer:
    if patch_size is None:
        patch_size = 4 if image_size <= 32 else 16
    if patch_size < 1 or image_size % patch_size:
        raise fail(f"{name}: image_size {image_size} is not divisible by patch_size {patch_size}; "
                   f"pass a patch_size that divides it")
    if pool not in ("cls", "mean"):
        raise fail(f"{name}: pool must be 'cls' or 'mean', got {pool!r}")
    if pos_embed not in ("learned", "sincos"):
        raise fail(f"{name}: pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
    if num_heads < 1 or dim % num_heads:
        raise fail(f"{name}: dim {dim} must be divisible by num_heads {num_heads}")
    if pos_embed == "sincos" and dim % 4:
        raise fail(f"{name}: sincos positional embedding needs dim divisible by 4, got {dim}")
    if depth < 1:
        raise fail(f"{name}: depth must be >= 1, got {depth}")
    return VisionTransformer(in_channels, image_size, patch_size, dim, depth, num_heads,
                             mlp_ratio, pool, pos_embed)


@register_backbone("vit-tiny")
def vit_tiny(in_channels: int, image_size: int, patch_size: int | None = None, pool: str = "cls",
             dim: int = 192, depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0,
             pos_embed: str = "learned") -> VisionTransformer:
    return _build("vit-tiny", in_channels, image_size, patch_size, dim, depth, num_heads,
                  mlp_ratio, pool, pos_embed)


@register_backbone("vit-small")
def vit_small(in_channels: int, image_size: int, patch_size: int | None = None, pool: str = "cls",
              dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: float = 4.0,
              pos_embed: str = "learned") -> VisionTransformer:
    return _build("vit-small", in_channels, image_size, patch_size, dim, depth, num_heads,
                  mlp_ratio, pool, pos_embed)


@register_backbone("vit-micro")
def vit_micro(in_channels: int, image_size: int, patch_size: int | None = None, pool: str = "cls",
              dim: int = 128, depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
              pos_embed: str = "learned") -> VisionTransformer:
    """A small ViT for tiny images (e.g. 8x8 digits): patch 2 up to 16 px, 4 up to 32 px, else 16."""
    if patch_size is None:
        patch_size = 2 if image_size <= 16 else 4 if image_size <= 32 else 16
    return _build("vit-micro", in_channels, image_size, patch_size, dim, depth, num_heads,
                  mlp_ratio, pool, pos_embed)
