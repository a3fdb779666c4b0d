"""MAETok-style masked encoding (docs/models.md §1.7, the ``mae r0.3 / r0.7`` cluster, ViT tokenizers only).

At every training step a fixed fraction ``ratio`` of the encoder's patch tokens — ⌊T·ratio⌋ random
positions, the same for the whole batch — is replaced by the encoder's learnable mask token; the
decoder reconstructs the full image with the usual objective. No loss of its own; encoding outside
training (``self.training`` False) never masks. [CHOICE] no auxiliary feature heads, no decoder
fine-tuning stage.
"""

from __future__ import annotations

import torch
from torch import nn

from ...errors import require
from .base import Regularizer


class MaskedEncoding(Regularizer):
    name = "mae"
    needs_token_masking = True
    defaults = {"ratio": 0.3}

    def __init__(self, ratio: float):
        super().__init__()
        require(0.0 <= ratio < 1.0, f"regularizer 'mae': ratio must be in [0, 1), got {ratio}")
        self.ratio = float(ratio)
        self.last_mask: torch.Tensor | None = None

    def encode(self, model: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None):
        from ..vit_vae import random_token_mask

        self.last_mask = None
        if not self.training or self.ratio == 0.0:
            return model.encode(images)
        side_h, side_w = model.latent_grid(images.shape[-1])
        self.last_mask = random_token_mask(side_h * side_w, self.ratio, generator).to(images.device)
        self.last_logs = {"mae_masked": float(self.last_mask.sum())}
        return model.encode(images, token_mask=self.last_mask)
