"""REPA-style alignment of the latent to the teacher (docs/models.md §1.4, the ``repa`` cluster).

A 3-layer MLP with SiLU (C → hidden → hidden → F, applied per latent position as 1×1 convs)
maps the posterior sample to the teacher width; the loss is the negative cosine similarity to the
teacher features on the latent grid, averaged over positions and batch, times ``weight``.
[CHOICE] weight 0.1 (the tokenizer-side precedent), hidden 2048 (REPA), no margin, no adaptive weight
unless ``adaptive`` is set.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import require
from ..losses import adaptive_weight
from .base import Regularizer, RegularizerContext


class RepaAlignment(Regularizer):
    name = "repa"
    needs_teacher = True
    defaults = {"weight": 0.1, "hidden": 2048, "adaptive": False}

    def __init__(self, latent_channels: int, teacher_dim: int | None, weight: float, hidden: int,
                 adaptive: bool):
        super().__init__()
        require(teacher_dim is not None and teacher_dim >= 1,
                f"regularizer 'repa' needs a teacher (pass --teacher); got teacher width {teacher_dim}")
        require(int(hidden) >= 1, f"regularizer 'repa': hidden must be ≥ 1, got {hidden}")
        self.weight, self.adaptive = weight, adaptive
        self.projector = nn.Sequential(nn.Conv2d(latent_channels, hidden, 1), nn.SiLU(),
                                       nn.Conv2d(hidden, hidden, 1), nn.SiLU(),
                                       nn.Conv2d(hidden, teacher_dim, 1))

    def raw_loss(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """−mean cos(MLP(z)_p, f_p) over (N, positions); inputs (N,C,h,w), (N,F,h,w)."""
        require(features.shape[-2:] == latents.shape[-2:],
                f"repa: teacher features grid {tuple(features.shape[-2:])} != latent grid {tuple(latents.shape[-2:])}")
        return -F.cosine_similarity(self.projector(latents), features, dim=1).mean()

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        require(context.teacher_features is not None, "repa: no teacher features in the context")
        raw = self.raw_loss(context.latents, context.teacher_features)
        factor = torch.ones((), device=raw.device)
        if self.adaptive and context.nll is not None:
            factor = adaptive_weight(context.nll, raw, context.model.encoder_last_layer(), max_value=1e8)
        self.last_logs = {"repa_raw": float(raw.detach()), "repa_adaptive_weight": float(factor)}
        return self.weight * factor * raw
