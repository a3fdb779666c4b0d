"""The LDM "AutoencoderKL" convolutional VAE with a configurable channel plan.

One code path serves both the paper's f16d32 tokenizer (base 128, mult (1,1,2,2,4), 2 res blocks,
attention at 16 px and in the mid block) and the small embedded default (base 16, mult (1,2,2),
1 res block, no attention). Layout and conventions follow docs/models.md §1.1:

    x (N,3,H,W) in [-1,1] → Encoder → (N,2C,h,w) → quant_conv → DiagonalGaussian over (N,C,h,w)
    z (N,C,h,w) → post_quant_conv → Decoder → (N,3,H,W)  (no tanh)

with h = H / 2**(len(channel_mult) - 1).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import require

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def group_count(channels: int, max_groups: int = 32) -> int:
    """The largest group count ≤ ``max_groups`` that divides ``channels`` (32 for LDM widths)."""
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def normalization(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(group_count(channels), channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm → swish → conv3×3, twice, plus a 1×1 shortcut when the width changes. (N,Cin,h,w)→(N,Cout,h,w)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = normalization(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = normalization(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                         else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.shortcut(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h·w positions, residual. (N,C,h,w)→(N,C,h,w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalization(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        normed = self.norm(x)
        # (N, 1 head, h·w, C) for scaled_dot_product_attention
        q, k, v = (proj(normed).reshape(n, 1, c, h * w).transpose(-1, -2)
                   for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(-1, -2).reshape(n, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3×3 conv with LDM's asymmetric (right/bottom) zero padding. (N,C,h,w)→(N,C,h/2,w/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 conv. (N,C,h,w)→(N,C,2h,2w)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class MidBlock(nn.Sequential):
    """ResBlock → (attention) → ResBlock at the bottleneck width."""

    def __init__(self, channels: int, attention: bool, dropout: float):
        super().__init__(ResnetBlock(channels, channels, dropout),
                         AttentionBlock(channels) if attention else nn.Identity(),
                         ResnetBlock(channels, channels, dropout))


class Encoder(nn.Module):
    """(N,3,H,W) → (N, 2·latent_channels, H/f, W/f): the moments of the posterior."""

    def __init__(self, image_size: int, base_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attn_resolutions: Sequence[int], mid_attention: bool,
                 latent_channels: int, dropout: float = 0.0):
        super().__init__()
        self.conv_in = nn.Conv2d(3, base_channels, 3, padding=1)
        self.levels = nn.ModuleList()
        resolution = image_size
        width = base_channels
        for index, mult in enumerate(channel_mult):
            level = nn.Module()
            blocks, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(width, base_channels * mult, dropout))
                width = base_channels * mult
                attentions.append(AttentionBlock(width) if resolution in attn_resolutions else nn.Identity())
            level.blocks, level.attentions = blocks, attentions
            if index != len(channel_mult) - 1:
                level.downsample = Downsample(width)
                resolution //= 2
            else:
                level.downsample = nn.Identity()
            self.levels.append(level)
        self.mid = MidBlock(width, mid_attention, dropout)
        self.norm_out = normalization(width)
        self.conv_out = nn.Conv2d(width, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.levels:
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(h))
            h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(N, latent_channels, h, w) → (N,3,h·f,w·f); ``num_res_blocks + 1`` blocks per level as in LDM."""

    def __init__(self, image_size: int, base_channels: int, channel_mult: Sequence[int],
                 num_res_blocks: int, attn_resolutions: Sequence[int], mid_attention: bool,
                 latent_channels: int, dropout: float = 0.0):
        super().__init__()
        width = base_channels * channel_mult[-1]
        resolution = image_size // 2 ** (len(channel_mult) - 1)
        self.conv_in = nn.Conv2d(latent_channels, width, 3, padding=1)
        self.mid = MidBlock(width, mid_attention, dropout)
        levels = []
        for index in reversed(range(len(channel_mult))):
            level = nn.Module()
            blocks, attentions = nn.ModuleList(), nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(width, base_channels * channel_mult[index], dropout))
                width = base_channels * channel_mult[index]
                attentions.append(AttentionBlock(width) if resolution in attn_resolutions else nn.Identity())
            level.blocks, level.attentions = blocks, attentions
            if index != 0:
                level.upsample = Upsample(width)
                resolution *= 2
            else:
                level.upsample = nn.Identity()
            levels.append(level)
        self.levels = nn.ModuleList(levels)
        self.norm_out = normalization(width)
        self.conv_out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.levels:
            for block, attention in zip(level.blocks, level.attentions):
                h = attention(block(h))
            h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class DiagonalGaussian:
    """Posterior N(mean, exp(logvar)) over latents (N,C,h,w), logvar clamped to [-30, 20].

    ``moments`` is (N, 2C, h, w): the first C channels are the mean, the last C the log-variance.
    """

    def __init__(self, moments: torch.Tensor):
        require(moments.dim() == 4 and moments.shape[1] % 2 == 0,
                f"posterior moments: expected (N, 2C, h, w), got {tuple(moments.shape)}")
        self.mean, logvar = moments.chunk(2, dim=1)
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        self.std = torch.exp(0.5 * self.logvar)
        self.var = torch.exp(self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """mean + std·ε with ε ~ N(0, I) drawn from ``generator`` (global RNG when None)."""
        noise = torch.randn(self.mean.shape, generator=generator, dtype=self.mean.dtype,
                            device=self.mean.device)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q ‖ N(0, I)) per image, summed over C·h·w: shape (N,)."""
        return 0.5 * (self.mean.pow(2) + self.var - 1.0 - self.logvar).sum(dim=(1, 2, 3))


class ConvVAE(nn.Module):
    """AutoencoderKL: encoder + quant convs + decoder. See the module docstring for shapes."""

    def __init__(self, image_size: int = 32, base_channels: int = 32, channel_mult: Sequence[int] = (1, 2, 2),
                 num_res_blocks: int = 1, attn_resolutions: Sequence[int] = (), mid_attention: bool = False,
                 latent_channels: int = 4, dropout: float = 0.0):
        super().__init__()
        levels = len(channel_mult)
        require(levels >= 1 and all(int(m) >= 1 for m in channel_mult),
                f"channel_mult: expected positive integers, got {list(channel_mult)}")
        require(image_size % 2 ** (levels - 1) == 0,
                f"image_size {image_size} is not divisible by the downsample factor {2 ** (levels - 1)}")
        require(base_channels >= 1 and latent_channels >= 1 and num_res_blocks >= 1,
                "base_channels, latent_channels and num_res_blocks must be ≥ 1")
        plan = dict(image_size=image_size, base_channels=base_channels, channel_mult=tuple(channel_mult),
                    num_res_blocks=num_res_blocks, attn_resolutions=tuple(attn_resolutions),
                    mid_attention=mid_attention, latent_channels=latent_channels, dropout=dropout)
        self.image_size = image_size
        self.encoder = Encoder(**plan)
        self.decoder = Decoder(**plan)
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self._latent_channels = latent_channels
        self._downsample_factor = 2 ** (levels - 1)

    @property
    def latent_channels(self) -> int:
        return self._latent_channels

    @property
    def downsample_factor(self) -> int:
        return self._downsample_factor

    def latent_grid(self, image_size: int | None = None) -> tuple[int, int]:
        side = (image_size or self.image_size) // self._downsample_factor
        return side, side

    def encoder_last_layer(self) -> torch.Tensor:
        """The encoder's final conv weight: where VA-VAE/SSVAE take adaptive-weight gradient norms."""
        return self.encoder.conv_out.weight

    def decoder_last_layer(self) -> torch.Tensor:
        """The decoder's final conv weight: where the GAN adaptive weight is taken."""
        return self.decoder.conv_out.weight

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """x (N,3,H,W) in [-1,1] → posterior over (N,C,H/f,W/f)."""
        require(x.dim() == 4 and x.shape[1] == 3, f"encode: expected images (N,3,H,W), got {tuple(x.shape)}")
        require(x.shape[-1] % self._downsample_factor == 0 and x.shape[-2] % self._downsample_factor == 0,
                f"encode: image size {tuple(x.shape[-2:])} not divisible by {self._downsample_factor}")
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (N,C,h,w) → images (N,3,h·f,w·f) (unbounded; clamp when converting to uint8)."""
        require(z.dim() == 4 and z.shape[1] == self._latent_channels,
                f"decode: expected latents (N,{self._latent_channels},h,w), got {tuple(z.shape)}")
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior
