"""One configurable diffusion transformer: SiT-B/1, SiT-XL/1, LightningDiT-B/1, LightningDiT-XL/1.

The four backbones of the study differ only in a handful of switches, so they share this file
(written in the style of DiT/SiT ``models.py``):

=============  ==========================  =================================
switch         SiT                         LightningDiT
=============  ==========================  =================================
positions      fixed 2D sin-cos            fixed 2D sin-cos + 2D axial RoPE
norm           LayerNorm (no affine)       RMSNorm (learnable gain)
MLP            GELU(tanh), hidden 4d       SwiGLU, hidden ⌊2/3·4d⌋, fused in
QK-norm        per-head LayerNorm          per-head RMSNorm
=============  ==========================  =================================

Conventions: flow matching with t = 0 noise, t = 1 data; the network predicts the velocity
v = x1 − x0 from (x_t, t, y). The timestep passed is the continuous t ∈ [0, 1] (no ×1000).
The label table has ``num_classes + 1`` rows; the last row (index ``num_classes``) is the null
label used for classifier-free guidance and label dropout.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import DiffusabilityError, require
from .spec import FAMILY_DEFAULTS, MLPS, NORMS, POS_EMBEDS

#: the architecture switches of each family, read from the one table of family defaults (spec.py)
_FAMILY_ARCH = {family: {key: values[key] for key in ("pos_embed", "norm", "mlp")}
                for family, values in FAMILY_DEFAULTS.items()}


@dataclass(frozen=True)
class TransformerConfig:
    """Everything that fixes the architecture (and hence the state dict) of the transformer."""

    in_channels: int
    grid_size: int
    num_classes: int
    depth: int = 12
    width: int = 768
    heads: int = 12
    patch_size: int = 1
    # SiT's switches (spec.FAMILY_DEFAULTS["sit"]); the factories below set the family's
    pos_embed: str = _FAMILY_ARCH["sit"]["pos_embed"]
    norm: str = _FAMILY_ARCH["sit"]["norm"]
    mlp: str = _FAMILY_ARCH["sit"]["mlp"]
    qk_norm: bool = True
    use_checkpoint: bool = False

    def __post_init__(self) -> None:
        require(self.pos_embed in POS_EMBEDS, f"pos_embed must be one of {POS_EMBEDS}, got {self.pos_embed!r}")
        require(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        require(self.mlp in MLPS, f"mlp must be one of {MLPS}, got {self.mlp!r}")
        for name in ("in_channels", "grid_size", "num_classes", "depth", "width", "heads", "patch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"{name} must be a positive integer, got {value!r}")
        require(self.width % self.heads == 0, f"width {self.width} is not divisible by heads {self.heads}")
        require(self.grid_size % self.patch_size == 0,
                f"grid_size {self.grid_size} is not divisible by patch_size {self.patch_size}")
        require(self.width % 4 == 0, f"width {self.width} must be divisible by 4 (2D sin-cos embedding)")
        if self.pos_embed == "rope+sincos":
            require(self.head_dim % 4 == 0,
                    f"head dimension {self.head_dim} must be divisible by 4 for 2D RoPE")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def num_tokens(self) -> int:
        return (self.grid_size // self.patch_size) ** 2


# --------------------------------------------------------------------------------------------
# Config factories (Table 2 of the target paper)
# --------------------------------------------------------------------------------------------

_SIT = dict(**_FAMILY_ARCH["sit"], qk_norm=True)
_LIGHTNINGDIT = dict(**_FAMILY_ARCH["lightningdit"], qk_norm=True)
_B = dict(depth=12, width=768, heads=12)
_XL = dict(depth=28, width=1152, heads=16)


def sit_b(in_channels: int, grid_size: int = 16, num_classes: int = 1000) -> TransformerConfig:
    """SiT-B/1: depth 12, width 768, 12 heads, LayerNorm, sin-cos, GELU, QK-LayerNorm (≈130M)."""
    return TransformerConfig(in_channels, grid_size, num_classes, **_B, **_SIT)


def sit_xl(in_channels: int, grid_size: int = 16, num_classes: int = 1000) -> TransformerConfig:
    """SiT-XL/1: depth 28, width 1152, 16 heads (≈675M)."""
    return TransformerConfig(in_channels, grid_size, num_classes, **_XL, **_SIT)


def lightningdit_b(in_channels: int, grid_size: int = 16, num_classes: int = 1000) -> TransformerConfig:
    """LightningDiT-B/1: RMSNorm, RoPE + sin-cos, SwiGLU, QK-RMSNorm (≈130M)."""
    return TransformerConfig(in_channels, grid_size, num_classes, **_B, **_LIGHTNINGDIT)


def lightningdit_xl(in_channels: int, grid_size: int = 16, num_classes: int = 1000) -> TransformerConfig:
    """LightningDiT-XL/1 (≈675M)."""
    return TransformerConfig(in_channels, grid_size, num_classes, **_XL, **_LIGHTNINGDIT)


_ARCH_KEYS = ("depth", "width", "heads", "patch_size", "pos_embed", "norm", "mlp", "qk_norm", "use_checkpoint")


def build_backbone(spec: Any, in_channels: int, grid_size: int, num_classes: int) -> "DiffusionTransformer":
    """The transformer described by ``spec`` (a mapping or dataclass with the architecture keys).

    Keys read: depth, width, heads, pos_embed, norm, mlp, qk_norm and optionally patch_size and
    use_checkpoint; anything else in ``spec`` (optimiser settings …) is ignored here.
    """
    if dataclasses.is_dataclass(spec):
        spec = dataclasses.asdict(spec)
    require(isinstance(spec, Mapping), f"backbone spec must be a mapping, got {type(spec).__name__}")
    missing = [k for k in ("depth", "width", "heads") if spec.get(k) is None]
    require(not missing, f"backbone spec is missing {missing}")
    arch = {k: spec[k] for k in _ARCH_KEYS if spec.get(k) is not None}
    config = TransformerConfig(in_channels=in_channels, grid_size=grid_size, num_classes=num_classes, **arch)
    return DiffusionTransformer(config)


# --------------------------------------------------------------------------------------------
# Fixed position encodings
# --------------------------------------------------------------------------------------------

def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """MAE 1D sin-cos embedding: positions (P,) → (P, dim) = [sin(p·ω), cos(p·ω)], ω_k = 10000^(−2k/dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """MAE 2D sin-cos embedding (grid_size², dim): first half encodes the column, second half the row.

    Token p = row·grid_size + col (row-major), matching the patch embedding's flatten order.
    """
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    # MAE builds meshgrid(w, h) and encodes grid[0] (the column coordinate) first.
    return torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1).float()


def rope_2d_angles(head_dim: int, grid_size: int, base: float = 10000.0) -> torch.Tensor:
    """EVA-02 2D axial RoPE angles (grid_size², head_dim): first half rotates by row, second by column.

    Within each half, channel pairs (2k, 2k+1) share the frequency base^(−2k/(head_dim/2)), so the
    rotation acts on interleaved pairs.
    """
    axis_dim = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    coords = torch.arange(grid_size, dtype=torch.float64)
    per_axis = torch.repeat_interleave(coords[:, None] * freqs[None, :], 2, dim=1)  # (G, axis_dim)
    rows = per_axis[:, None, :].expand(grid_size, grid_size, axis_dim)
    cols = per_axis[None, :, :].expand(grid_size, grid_size, axis_dim)
    return torch.cat([rows, cols], dim=-1).reshape(grid_size * grid_size, head_dim).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of x (N, heads, T, head_dim) by the angles behind cos/sin (T, head_dim)."""
    pairs = x.unflatten(-1, (-1, 2))
    rotated_half = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return x * cos.to(x.dtype) + rotated_half * sin.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

def make_norm(kind: str, dim: int, affine_layernorm: bool = False) -> nn.Module:
    """LayerNorm (affine only where asked, e.g. the timm QK-norm) or RMSNorm with a learnable gain."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=affine_layernorm, eps=1e-6)
    return nn.RMSNorm(dim, eps=1e-6, elementwise_affine=True)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x·(1 + scale) + shift; x (N, T, d), shift/scale (N, d)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Continuous t (N,) ∈ [0, 1] → 256-d sinusoidal features → 2-layer SiLU MLP → (N, d)."""

    def __init__(self, width: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, width), nn.SiLU(), nn.Linear(width, width))

    @staticmethod
    def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
        """DiT's [cos(t·f_k), sin(t·f_k)], f_k = max_period^(−k/half); t (N,) → (N, dim)."""
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = self.sinusoidal(t, self.frequency_dim)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels (N,) int64 in [0, num_classes] → (N, d); row ``num_classes`` is the null label."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def drop_labels(self, labels: torch.Tensor, prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Replace each label by the null label with probability ``prob`` (drawn on the CPU from ``generator``)."""
        if prob <= 0:
            return labels
        drop = torch.rand(labels.shape, generator=generator) < prob
        return torch.where(drop.to(labels.device), torch.full_like(labels, self.null_label), labels)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with qkv bias, optional per-head QK-norm and 2D RoPE, via SDPA."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=True)
        self.proj = nn.Linear(config.width, config.width, bias=True)
        if config.qk_norm:
            # REPA's SiT passes qk_norm to timm's Attention: an affine LayerNorm per head.
            self.q_norm = make_norm(config.norm, config.head_dim, affine_layernorm=True)
            self.k_norm = make_norm(config.norm, config.head_dim, affine_layernorm=True)
        else:
            self.q_norm = self.k_norm = nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """x (N, T, d) → (N, T, d)."""
        n, tokens, width = x.shape
        q, k, v = self.qkv(x).reshape(n, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # LightningDiT rotates after the QK-norm
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))


class GeluMlp(nn.Module):
    """d → 4d → GELU(tanh) → d."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SwiGluMlp(nn.Module):
    """d → fused Linear to 2h → SiLU(a)·b → d, h = ⌊2/3·4d⌋ (same parameters as a 4d MLP)."""

    def __init__(self, width: int):
        super().__init__()
        hidden = int(2 * (4 * width) / 3)
        self.fc_in = nn.Linear(width, 2 * hidden)
        self.fc_out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.fc_in(x).chunk(2, dim=-1)
        return self.fc_out(F.silu(a) * b)


class Block(nn.Module):
    """Transformer block with adaLN-Zero conditioning: x (N, T, d), c (N, d) → (N, T, d)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = make_norm(config.norm, config.width)
        self.attn = Attention(config)
        self.norm2 = make_norm(config.norm, config.width)
        self.mlp = GeluMlp(config.width) if config.mlp == "gelu" else SwiGluMlp(config.width)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 6 * config.width))

    def forward(self, x: torch.Tensor, c: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a), rope)
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale) → norm → Linear to patch²·C: (N, T, d), (N, d) → (N, T, p²·C)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm = make_norm(config.norm, config.width)
        self.linear = nn.Linear(config.width, config.patch_size ** 2 * config.in_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 2 * config.width))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class DiffusionTransformer(nn.Module):
    """Velocity model v̂(x_t, t, y) for latents (N, C, H, W) on a square grid H = W = grid_size."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        p, d = config.patch_size, config.width
        self.x_embedder = nn.Conv2d(config.in_channels, d, kernel_size=p, stride=p, bias=True)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(config.num_classes, d)
        tokens_per_side = config.grid_size // p
        # Fixed encodings are recomputed from the config, so they are not part of the state dict.
        self.register_buffer("pos_embed", sincos_2d(d, tokens_per_side)[None], persistent=False)
        if config.pos_embed == "rope+sincos":
            angles = rope_2d_angles(config.head_dim, tokens_per_side)
            self.register_buffer("rope_cos", torch.cos(angles), persistent=False)
            self.register_buffer("rope_sin", torch.sin(angles), persistent=False)
        else:
            self.rope_cos = self.rope_sin = None
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self.initialize_weights()

    @property
    def null_label(self) -> int:
        return self.y_embedder.null_label

    def initialize_weights(self) -> None:
        """Xavier for Linears (patch conv as a Linear), N(0, 0.02) for label table and t-MLP, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for layer in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, p²·C) → (N, C, H, W), the inverse of the conv patch embedding's flatten order."""
        c, p = self.config.in_channels, self.config.patch_size
        side = self.config.grid_size // p
        n = tokens.shape[0]
        x = tokens.reshape(n, side, side, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(n, c, side * p, side * p)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.grid_size, cfg.grid_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise DiffusabilityError(f"diffusion model input x has shape {tuple(x.shape)}, expected (N, {expected[0]}, "
                                     f"{expected[1]}, {expected[2]})")
        if t.shape != (x.shape[0],) or y.shape != (x.shape[0],):
            raise DiffusabilityError(f"t {tuple(t.shape)} and y {tuple(y.shape)} must both have shape ({x.shape[0]},)")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x (N, C, H, W), t (N,) in [0, 1], y (N,) int64 (``num_classes`` = null) → velocity (N, C, H, W)."""
        self.check_inputs(x, t, y)
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        c = self.t_embedder(t) + self.y_embedder(y)
        rope = (self.rope_cos, self.rope_sin) if self.rope_cos is not None else None
        for block in self.blocks:
            if self.config.use_checkpoint and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, c, rope, use_reentrant=False)
            else:
                tokens = block(tokens, c, rope)
        return self.unpatchify(self.final_layer(tokens, c))

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float,
                         guidance_channels: int | None = None) -> torch.Tensor:
        """Classifier-free guided velocity u + w·(c − u), conditional and null passes in ONE forward.

        x (N, C, H, W), t (N,), y (N,) → (N, C, H, W). ``guidance_channels=None`` guides every
        channel (the correct choice for 32/64-channel latents); an integer k guides only the first k
        channels and returns the conditional output for the rest (DiT's legacy k = 3 behaviour).
        """
        n = x.shape[0]
        null = torch.full_like(y, self.null_label)
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out[:n], out[n:]
        guided = uncond + cfg_scale * (cond - uncond)
        if guidance_channels is None:
            return guided
        return torch.cat([guided[:, :guidance_channels], cond[:, guidance_channels:]], dim=1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (the fixed position encodings are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
