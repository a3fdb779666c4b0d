"""VA-VAE's vision-foundation (VF) loss: mcos, mdms and their sum (docs/models.md §1.3).

A 1×1 conv without bias projects the latent (N,C,h,w) to the teacher width F; with f the teacher
features on the same grid:
    mcos = mean_p ReLU(1 − m1 − cos(z′_p, f_p))
    mdms = mean_{p,q} ReLU(|cos(z′_p, z′_q) − cos(f_p, f_q)| − m2)
The VF loss cos_weight·mcos + distmat_weight·mdms is multiplied by the adaptive weight
‖∇nll‖/(‖∇vf‖ + 1e-4) at the encoder's last conv (clamped to [0, 1e8], detached) and by ``weight``.
[CHOICE] mdms acts on the projected latent, as the released code does (the paper writes it on z).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import require
from ..losses import adaptive_weight
from .base import Regularizer, RegularizerContext


def marginal_cosine_loss(projected: torch.Tensor, features: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over (N, positions) of ReLU(1 − margin − cos) along channels; inputs (N,F,h,w)."""
    cosine = F.cosine_similarity(projected, features, dim=1)
    return F.relu(1.0 - margin - cosine).mean()


def token_cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(N,F,h,w) → (N,P,P) cosine similarities between the P = h·w position vectors."""
    tokens = F.normalize(x.flatten(2).transpose(1, 2), dim=-1)
    return tokens @ tokens.transpose(1, 2)


def marginal_distance_matrix_loss(projected: torch.Tensor, features: torch.Tensor, margin: float) -> torch.Tensor:
    """mean over (N,P,P) of ReLU(|cos_z − cos_f| − margin); inputs (N,F,h,w)."""
    difference = (token_cosine_matrix(projected) - token_cosine_matrix(features)).abs()
    return F.relu(difference - margin).mean()


class VisionFoundationLoss(Regularizer):
    """mcos / mdms / mcos+mdms depending on ``cos_weight`` and ``distmat_weight``."""

    needs_teacher = True
    defaults = {"weight": 0.1, "cos_margin": 0.5, "distmat_margin": 0.25, "adaptive": True}

    def __init__(self, name: str, latent_channels: int, teacher_dim: int | None, weight: float,
                 cos_margin: float, distmat_margin: float, adaptive: bool):
        super().__init__()
        require(teacher_dim is not None and teacher_dim >= 1,
                f"regularizer {name!r} needs a teacher (pass --teacher); got teacher width {teacher_dim}")
        self.name = name
        self.cos_weight = 1.0 if "mcos" in name else 0.0
        self.distmat_weight = 1.0 if "mdms" in name else 0.0
        self.weight, self.cos_margin, self.distmat_margin = weight, cos_margin, distmat_margin
        self.adaptive = adaptive
        self.projector = nn.Conv2d(latent_channels, teacher_dim, 1, bias=False)

    def raw_loss(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """The unweighted VF loss for latents (N,C,h,w) and teacher features (N,F,h,w)."""
        require(features.shape[-2:] == latents.shape[-2:],
                f"{self.name}: teacher features grid {tuple(features.shape[-2:])} != latent grid "
                f"{tuple(latents.shape[-2:])}")
        projected = self.projector(latents)
        total = torch.zeros((), device=latents.device)
        if self.cos_weight:
            total = total + self.cos_weight * marginal_cosine_loss(projected, features, self.cos_margin)
        if self.distmat_weight:
            total = total + self.distmat_weight * marginal_distance_matrix_loss(projected, features,
                                                                                self.distmat_margin)
        return total

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        require(context.teacher_features is not None, f"{self.name}: no teacher features in the context")
        vf = self.raw_loss(context.latents, context.teacher_features)
        factor = torch.ones((), device=vf.device)
        if self.adaptive and context.nll is not None:
            factor = adaptive_weight(context.nll, vf, context.model.encoder_last_layer(), max_value=1e8)
        self.last_logs = {"vf_raw": float(vf.detach()), "vf_adaptive_weight": float(factor)}
        return self.weight * factor * vf
