"""SSVAE's Latent Masked Reconstruction (docs/models.md §1.6, the ``lmr p<a>-<b>-<c>`` cluster).

Each training step draws a mask ratio from (0.25, 0.5, 0.75) with probabilities (a, b, c), and no
mask with probability 1 − a − b − c. ⌊P·ratio⌋ (at least 1) random positions of the P = h·w latent
grid — the same positions for every image of the batch — are replaced by one learnable
C-dimensional mask token before decoding; the usual reconstruction loss does the rest. The mask is
applied only while training (``self.training``), never when encoding for diffusion.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...errors import require
from .base import Regularizer

RATIOS = (0.25, 0.5, 0.75)


class LatentMaskedReconstruction(Regularizer):
    name = "lmr"
    defaults = {"mask_probabilities": [0.1, 0.1, 0.1], "ratios": list(RATIOS)}

    def __init__(self, latent_channels: int, mask_probabilities, ratios):
        probabilities = mask_probabilities
        super().__init__()
        require(len(probabilities) == len(ratios),
                f"regularizer 'lmr': {len(probabilities)} probabilities for {len(ratios)} ratios")
        require(all(p >= 0 for p in probabilities) and sum(probabilities) <= 1 + 1e-9,
                f"regularizer 'lmr': probabilities must be ≥ 0 and sum to ≤ 1, got {probabilities}")
        require(all(0 < r < 1 for r in ratios), f"regularizer 'lmr': ratios must be in (0, 1), got {ratios}")
        self.probabilities = tuple(float(p) for p in probabilities)
        self.ratios = tuple(float(r) for r in ratios)
        self.mask_token = nn.Parameter(torch.randn(latent_channels))
        self.last_mask: torch.Tensor | None = None

    def draw_ratio(self, generator: torch.Generator | None) -> float:
        """0.0 (no mask) or one of ``ratios`` with the configured probabilities."""
        u = float(torch.rand((), generator=generator))
        cumulative = 0.0
        for probability, ratio in zip(self.probabilities, self.ratios):
            cumulative += probability
            if u < cumulative:
                return ratio
        return 0.0

    def latents_for_decoding(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """latents (N,C,h,w) with the drawn positions replaced by the mask token (training only)."""
        self.last_mask = None
        if not self.training:
            return latents
        ratio = self.draw_ratio(generator)
        self.last_logs = {"lmr_ratio": ratio}
        if ratio == 0.0:
            return latents
        n, c, h, w = latents.shape
        count = max(1, math.floor(h * w * ratio))
        positions = torch.randperm(h * w, generator=generator)[:count]
        mask = torch.zeros(h * w, dtype=torch.bool)
        mask[positions] = True
        mask = mask.view(1, 1, h, w).to(latents.device)
        self.last_mask = mask[0, 0]
        token = self.mask_token.view(1, c, 1, 1).to(latents.dtype)
        return torch.where(mask, token, latents)
