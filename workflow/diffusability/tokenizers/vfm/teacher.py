"""A frozen transformers-style ViT behind the domain net's teacher interface.

    x in [-1,1] → [0,1] → resize (Preprocessing) → (x − mean) / std → ViT
      → drop the prefix (CLS/register/summary) tokens → (N, D, g, g) patch grid → latent grid
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import require


class VisionFoundationTeacher(nn.Module):
    """Frozen VFM teacher: ``feature_map(x, grid)`` and ``feature_pyramid(x)``.

    Args:
        model: callable ``model(pixel_values=(N,3,S,S), output_hidden_states=bool, **model_kwargs)``
            returning ``last_hidden_state`` (N, T, D) and, when asked, ``hidden_states``
            (tuple of (N, T, D)), with T = prefix_tokens + g² in row-major patch order.
        patch_size: the ViT's patch side p; the patch grid is g = S / p.
        input_size: side S the image is resized to (None: keep the image's own size).
        interpolation, antialias: resize mode (``F.interpolate``).
        mean, std: per-channel normalisation applied after the resize, on [0, 1] pixels.
        prefix_tokens: tokens before the patches (CLS, registers); None = whatever precedes the
            last g² tokens.
        pyramid_layers: indices into ``hidden_states`` used by ``feature_pyramid``.
        model_kwargs: fixed extra keyword arguments of every model call.
    """

    def __init__(self, model: nn.Module, patch_size: int, input_size: int | None, interpolation: str,
                 mean: Sequence[float], std: Sequence[float], pyramid_layers: Sequence[int] = (-1,),
                 antialias: bool = False, prefix_tokens: int | None = None,
                 model_kwargs: Mapping[str, Any] | None = None):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.patch_size, self.input_size = int(patch_size), input_size
        self.interpolation, self.antialias = interpolation, bool(antialias)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.pyramid_layers = tuple(pyramid_layers)
        self.prefix_tokens = prefix_tokens
        self.model_kwargs = dict(model_kwargs or {})

    def train(self, mode: bool = True) -> "VisionFoundationTeacher":
        """Stay in eval mode: a teacher never uses dropout or training-time position jitter."""
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) in [-1,1] → the model's normalised input (N,3,S,S)."""
        require(x.dim() == 4 and x.shape[1] == 3, f"teacher input: expected (N,3,H,W), got {tuple(x.shape)}")
        x = (x + 1.0) / 2.0
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              align_corners=False, antialias=self.antialias)
        return (x - self.mean) / self.std

    def _grid_tokens(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """(N, prefix + g², D) → (N, D, g, g), dropping the prefix tokens."""
        count = side * side
        if self.prefix_tokens is None:
            require(tokens.shape[1] >= count, f"teacher: {tokens.shape[1]} tokens for a {side}×{side} patch grid")
        else:
            require(tokens.shape[1] == self.prefix_tokens + count,
                    f"teacher: {tokens.shape[1]} tokens, expected {self.prefix_tokens} prefix tokens + "
                    f"{side}×{side} patches")
        patches = tokens[:, tokens.shape[1] - count:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def _run(self, x: torch.Tensor, hidden_states: bool):
        pixels = self.preprocess(x)
        height, width = pixels.shape[-2:]
        require(height == width and height % self.patch_size == 0,
                f"teacher: input {height}×{width} is not a square multiple of the patch size {self.patch_size}")
        output = self.model(pixel_values=pixels, output_hidden_states=hidden_states, **self.model_kwargs)
        return output, height // self.patch_size

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch-token maps (N, D, g, g) of the chosen hidden layers (0 = the embeddings)."""
        output, side = self._run(x, hidden_states=True)
        return [self._grid_tokens(output.hidden_states[i], side) for i in self.pyramid_layers]

    def feature_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Last-layer patch tokens on the latent grid: (N, D, h, w) (area-averaged or bilinear)."""
        output, side = self._run(x, hidden_states=False)
        tokens = self._grid_tokens(output.last_hidden_state, side)
        if tuple(grid) == (side, side):
            return tokens
        if side % grid[0] == 0 and side % grid[1] == 0:
            return F.adaptive_avg_pool2d(tokens, tuple(grid))
        return F.interpolate(tokens, size=tuple(grid), mode="bilinear", align_corners=False)
