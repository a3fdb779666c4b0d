"""A ViT VAE tokenizer (docs/models.md §1.8, the trans-f16d32 family) with MAETok-style token masking.

    x (N,3,H,W) → patchify (p×p) → linear → + 2D sin-cos positions → [mask tokens] → ViT encoder
      → LayerNorm → linear to 2C → DiagonalGaussian over the (N,C,H/p,W/p) patch grid
    z (N,C,h,w) → linear C→width → + positions → ViT decoder → LayerNorm → linear to p·p·3 → fold

The latent keeps the 2-D patch grid (no 1-D latent tokens) so SiT with patch size 1 applies.
``encode(x, token_mask=...)`` replaces the chosen patch tokens by a learnable mask token before the
position embedding is added (MAETok / continuous_tokenizer); the ``mae`` regularizer drives it
during training only, so encoding for diffusion never masks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import require
from .conv_vae import DiagonalGaussian


def sincos_positions(grid: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (grid·grid, width); half the width per axis."""
    require(width % 4 == 0, f"ViT tokenizer: width must be divisible by 4 for 2-D sin-cos positions, got {width}")
    quarter = width // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(axis: torch.Tensor) -> torch.Tensor:
        angles = axis.reshape(-1, 1) * frequencies.reshape(1, -1)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


class TransformerBlock(nn.Module):
    """Pre-norm block: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU, 4× hidden. (N,T,D)→(N,T,D)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        require(width % heads == 0, f"ViT tokenizer: width {width} not divisible by heads {heads}")
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d)
        x = x + self.proj(attended)
        return x + self.mlp(self.norm2(x))


class VitVAE(nn.Module):
    """ViT encoder/decoder VAE over a (H/p)×(W/p) token grid; the same API as ConvVAE."""

    def __init__(self, image_size: int = 32, patch_size: int = 4, width: int = 128, depth: int = 2,
                 heads: int = 4, latent_channels: int = 4):
        super().__init__()
        require(image_size % patch_size == 0,
                f"ViT tokenizer: image_size {image_size} not divisible by patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self._latent_channels = latent_channels
        patch_values = 3 * patch_size * patch_size
        self.patch_embed = nn.Linear(patch_values, width)
        self.mask_token = nn.Parameter(torch.zeros(width).normal_(0.0, 0.02))
        self.register_buffer("positions", sincos_positions(self.grid, width), persistent=False)
        self.encoder_blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(depth))
        self.encoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.to_moments = nn.Linear(width, 2 * latent_channels)
        self.from_latent = nn.Linear(latent_channels, width)
        self.decoder_blocks = nn.ModuleList(TransformerBlock(width, heads) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(width, eps=1e-6)
        self.to_pixels = nn.Linear(width, patch_values)

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    @property
    def downsample_factor(self) -> int:
        return self.patch_size

    def latent_grid(self, image_size: int | None = None) -> tuple[int, int]:
        side = (image_size or self.image_size) // self.patch_size
        return side, side

    def encoder_last_layer(self) -> torch.Tensor:
        return self.to_moments.weight

    def decoder_last_layer(self) -> torch.Tensor:
        return self.to_pixels.weight

    def encode(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> DiagonalGaussian:
        """x (N,3,H,W) → posterior over (N,C,H/p,W/p); ``token_mask`` bool (T,) marks masked patches."""
        require(x.dim() == 4 and x.shape[1] == 3 and tuple(x.shape[-2:]) == (self.image_size, self.image_size),
                f"encode: expected images (N,3,{self.image_size},{self.image_size}), got {tuple(x.shape)}")
        n, p = x.shape[0], self.patch_size
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # (N, T, 3·p·p)
        tokens = self.patch_embed(patches)
        if token_mask is not None:
            tokens = torch.where(token_mask.view(1, -1, 1), self.mask_token.view(1, 1, -1), tokens)
        tokens = tokens + self.positions
        for block in self.encoder_blocks:
            tokens = block(tokens)
        moments = self.to_moments(self.encoder_norm(tokens))  # (N, T, 2C)
        return DiagonalGaussian(moments.transpose(1, 2).reshape(n, -1, self.grid, self.grid))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N,C,h,w) → images (N,3,h·p,w·p); any grid size (positions are recomputed when it differs)."""
        require(z.dim() == 4 and z.shape[1] == self._latent_channels,
                f"decode: expected latents (N,{self._latent_channels},h,w), got {tuple(z.shape)}")
        n, _, h, w = z.shape
        tokens = self.from_latent(z.flatten(2).transpose(1, 2))
        if (h, w) == (self.grid, self.grid):
            positions = self.positions
        else:  # EQ's rescaled latents: interpolate the fixed grid embedding
            grid = self.positions.T.reshape(1, -1, self.grid, self.grid)
            positions = F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=False).flatten(2)[0].T
        tokens = tokens + positions
        for block in self.decoder_blocks:
            tokens = block(tokens)
        pixels = self.to_pixels(self.decoder_norm(tokens)).transpose(1, 2)  # (N, 3·p·p, T)
        p = self.patch_size
        return F.fold(pixels, output_size=(h * p, w * p), kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior


def random_token_mask(tokens: int, ratio: float, generator: torch.Generator | None) -> torch.Tensor:
    """bool (tokens,) with ⌊tokens·ratio⌋ (at least 1 when ratio > 0) True entries at random places."""
    count = max(1, math.floor(tokens * ratio)) if ratio > 0 else 0
    mask = torch.zeros(tokens, dtype=torch.bool)
    mask[torch.randperm(tokens, generator=generator)[:count]] = True
    return mask
