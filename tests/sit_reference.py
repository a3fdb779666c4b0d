"""Test oracle of the SiT converter: SiT-keyed state dicts and SiT's forward pass, written from its published design.

Not part of the package: tests/test_diffusion_external.py and tests/test_bad_input.py use it. Nothing here
imports the package's transformer: the forward is plain tensor algebra in float64 on the SiT-keyed state
dict, from SiT's paper (Ma et al. 2024, arXiv 2401.08740) and its published code (docs/models.md §2.7 lists
what was read): timm PatchEmbed conv, MAE 2-D sin-cos positions, GLIDE [cos, sin] timestep features with
max period 10000 on the continuous t, label table with the null label in its last row, adaLN-Zero blocks
with non-affine LayerNorm ε 1e-6, qkv-biased attention, tanh-GELU MLP, final adaLN → LayerNorm → Linear,
unpatchify in (p, q, c) order, and with ``learn_sigma`` the first C output channels kept.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def mae_sincos(width: int, side: int) -> torch.Tensor:
    """MAE's 2-D sin-cos table (1, side², width): numpy meshgrid(w, h), the first half of each row encodes
    the first grid (the column index), the second half the row index; each half is [sin, cos]."""
    def one_axis(dim: int, positions: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    grid = np.stack(np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32)), axis=0)
    table = np.concatenate([one_axis(width // 2, grid[0]), one_axis(width // 2, grid[1])], axis=1)
    return torch.from_numpy(table).float()[None]


def sit_state_dict(depth: int = 2, width: int = 64, patch: int = 2, channels: int = 4, grid: int = 8,
                   num_classes: int = 10, learn_sigma: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random SiT state dict with SiT's key names and shapes (float32).

    Every weight is random and non-zero (adaLN and final layer included, unlike SiT's zero initialisation),
    scaled by 1/√fan_in so activations stay of order one.
    """
    g = torch.Generator().manual_seed(seed)

    def linear(prefix: str, out: int, inp: int, state: dict) -> None:
        state[f"{prefix}.weight"] = torch.randn(out, inp, generator=g) / math.sqrt(inp)
        state[f"{prefix}.bias"] = 0.1 * torch.randn(out, generator=g)

    out_channels = 2 * channels if learn_sigma else channels
    state: dict[str, torch.Tensor] = {
        "x_embedder.proj.weight": (torch.randn(width, channels, patch, patch, generator=g)
                                   / math.sqrt(channels * patch ** 2)),
        "x_embedder.proj.bias": 0.1 * torch.randn(width, generator=g),
        "pos_embed": mae_sincos(width, grid // patch),
        "y_embedder.embedding_table.weight": torch.randn(num_classes + 1, width, generator=g),
    }
    linear("t_embedder.mlp.0", width, 256, state)
    linear("t_embedder.mlp.2", width, width, state)
    for i in range(depth):
        linear(f"blocks.{i}.attn.qkv", 3 * width, width, state)
        linear(f"blocks.{i}.attn.proj", width, width, state)
        linear(f"blocks.{i}.mlp.fc1", 4 * width, width, state)
        linear(f"blocks.{i}.mlp.fc2", width, 4 * width, state)
        linear(f"blocks.{i}.adaLN_modulation.1", 6 * width, width, state)
    linear("final_layer.linear", patch * patch * out_channels, width, state)
    linear("final_layer.adaLN_modulation.1", 2 * width, width, state)
    return state


def _layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def sit_forward(state: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                heads: int) -> torch.Tensor:
    """SiT's ``forward(x, t, y)`` in eval mode, float64: x (N, C, H, W), t (N,) ∈ [0, 1], y (N,) (``num_classes``
    = null) → velocity (N, C, H, W)."""
    w = {k: v.double() for k, v in state.items()}

    def lin(prefix: str, h: torch.Tensor) -> torch.Tensor:
        return h @ w[f"{prefix}.weight"].T + w[f"{prefix}.bias"]

    n, c, side_in, _ = x.shape
    kernel = w["x_embedder.proj.weight"]
    p, width = kernel.shape[-1], kernel.shape[0]
    side = side_in // p
    # patch embedding as a matrix product over (c, p, q) patches, row-major token order
    patches = x.double().reshape(n, c, side, p, side, p).permute(0, 2, 4, 1, 3, 5).reshape(n, side * side, c * p * p)
    tokens = patches @ kernel.reshape(width, -1).T + w["x_embedder.proj.bias"] + w["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / half)
    angles = t.double()[:, None] * freqs[None]
    t_emb = lin("t_embedder.mlp.2", _silu(lin("t_embedder.mlp.0", torch.cat([angles.cos(), angles.sin()], -1))))
    cond = t_emb + w["y_embedder.embedding_table.weight"][y]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    head_dim = width // heads
    for i in range(depth):
        b = f"blocks.{i}"
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = lin(f"{b}.adaLN_modulation.1", _silu(cond)).chunk(6, -1)
        h = _layer_norm(tokens) * (1 + scale_a[:, None]) + shift_a[:, None]
        q, k, v = lin(f"{b}.attn.qkv", h).reshape(n, -1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        attended = (weights @ v).transpose(1, 2).reshape(n, -1, width)
        tokens = tokens + gate_a[:, None] * lin(f"{b}.attn.proj", attended)
        h = _layer_norm(tokens) * (1 + scale_m[:, None]) + shift_m[:, None]
        tokens = tokens + gate_m[:, None] * lin(f"{b}.mlp.fc2", _gelu_tanh(lin(f"{b}.mlp.fc1", h)))
    shift, scale = lin("final_layer.adaLN_modulation.1", _silu(cond)).chunk(2, -1)
    out = lin("final_layer.linear", _layer_norm(tokens) * (1 + scale[:, None]) + shift[:, None])
    out_channels = out.shape[-1] // (p * p)
    image = torch.einsum("nhwpqc->nchpwq", out.reshape(n, side, side, p, p, out_channels))
    return image.reshape(n, out_channels, side * p, side * p)[:, :c]
