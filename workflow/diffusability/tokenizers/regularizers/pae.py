"""PAE's three latent objectives (Yue et al. 2026, "What Matters for Diffusion-Friendly Latent Manifold?",
docs/models.md §1.9) as a regularizer of the study's VAE.

Only the abstract and the project page are public (the code could not be read), so the formulas below
fill in what they leave open; every such choice is marked [ASSUMED] and is a parameter.

- **SSR**, spatial-structure regularization: the token-similarity (cosine) matrix of the latent matches
  that of the *refined* teacher features,
      ssr = mean_{p,q} |cos(z_p, z_q) − cos(f̃_p, f̃_q)|,
  with f̃ = refine(f): bilinear ×2 upsampling, a 3×3 binomial low-pass, 2×2 average pooling back to the
  latent grid. [ASSUMED: factor 2, binomial kernel, L1 without margin (mdms' form); on the raw latent —
  a similarity matrix needs no channel match, so no projector.]
- **MCR**, manifold-continuity regularization: a cascade of perturbations
  z_k = z_{k−1} + σ·rms(z)·ε_k (k = 1..K) must decode consistently,
      mcr = mean_k mean|D(z_k) − sg(D(z_{k−1}))|.
  [ASSUMED: relative Gaussian noise σ = 0.1 of the latent RMS per level, K = 2, L1, the less perturbed
  decoding as a stop-gradient target so that the clean reconstruction is not pulled towards the noisy ones.]
- **SCR**, semantic-consistency regularization: a per-token MLP projector g (C → hidden → F, SiLU) aligns
  the latent with the teacher globally and per patch,
      scr = (1 − cos(mean_p g(z)_p, mean_p f_p)) + mean_p (1 − cos(g(z)_p, f_p)).
  [ASSUMED: REPA's projector form, hidden 512, equal weights of the two terms.]

loss = weight · (ssr_weight·ssr + mcr_weight·mcr + scr_weight·scr) [ASSUMED: weight 0.1 as VA-VAE's VF
loss, unit inner weights]. Not reproduced: PAE's architecture (a frozen VFM encoder with a "detail-aware
modulator" and a spherical latent) — the study compares regularizers on its own tokenizer architectures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import require
from .base import Regularizer, RegularizerContext
from .vf import token_cosine_matrix


def refine_features(features: torch.Tensor) -> torch.Tensor:
    """SSR's refined teacher features: (N,F,h,w) → ×2 bilinear → 3×3 binomial low-pass → 2×2 mean → (N,F,h,w)."""
    n, f, h, w = features.shape
    up = F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
    taps = torch.tensor([1.0, 2.0, 1.0], dtype=features.dtype, device=features.device)
    kernel = (taps[:, None] * taps[None, :] / 16.0).expand(f, 1, 3, 3)
    smooth = F.conv2d(F.pad(up, (1, 1, 1, 1), mode="replicate"), kernel, groups=f)
    return F.avg_pool2d(smooth, 2)


def spatial_structure_loss(latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """SSR: mean |cos-matrix(z) − cos-matrix(refine(f))| over (N, P, P); inputs (N,C,h,w), (N,F,h,w)."""
    return (token_cosine_matrix(latents) - token_cosine_matrix(refine_features(features))).abs().mean()


def cascaded_latents(latents: torch.Tensor, sigma: float, levels: int,
                     generator: torch.Generator | None) -> list[torch.Tensor]:
    """[z_0 = z, z_1, …, z_K]: each level adds N(0, (σ·rms(z))²) noise to the previous (rms per image)."""
    rms = latents.detach().pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
    cascade = [latents]
    for _ in range(levels):
        noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
        cascade.append(cascade[-1] + sigma * rms * noise)
    return cascade


def manifold_continuity_loss(decode, latents: torch.Tensor, sigma: float, levels: int,
                             generator: torch.Generator | None = None) -> torch.Tensor:
    """MCR: mean over levels of mean|D(z_k) − sg(D(z_{k−1}))| along the perturbation cascade."""
    decoded = [decode(z) for z in cascaded_latents(latents, sigma, levels, generator)]
    terms = [(decoded[k] - decoded[k - 1].detach()).abs().mean() for k in range(1, len(decoded))]
    return torch.stack(terms).mean()


def semantic_consistency_loss(projected: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """SCR: (1 − cos of the pooled vectors) + mean over tokens of (1 − cos); inputs (N,F,h,w) × 2."""
    pooled = 1.0 - F.cosine_similarity(projected.mean(dim=(2, 3)), features.mean(dim=(2, 3)), dim=1).mean()
    patches = 1.0 - F.cosine_similarity(projected, features, dim=1).mean()
    return pooled + patches


class PriorAlignedRegularizer(Regularizer):
    """``pae``: SSR + MCR + SCR on the posterior sample, with the teacher's features; see the module docstring."""

    name = "pae"
    needs_teacher = True
    defaults = {"weight": 0.1, "ssr_weight": 1.0, "mcr_weight": 1.0, "scr_weight": 1.0, "sigma": 0.1,
                "levels": 2, "hidden": 512}

    def __init__(self, latent_channels: int, teacher_dim: int | None, weight: float, ssr_weight: float,
                 mcr_weight: float, scr_weight: float, sigma: float, levels: int, hidden: int):
        super().__init__()
        require(teacher_dim is not None and teacher_dim >= 1,
                f"regularizer 'pae' needs a teacher (pass --teacher); got teacher width {teacher_dim}")
        require(sigma >= 0 and int(levels) >= 1 and int(hidden) >= 1,
                f"regularizer 'pae': sigma ≥ 0, levels ≥ 1 and hidden ≥ 1 expected, got {sigma}, {levels}, {hidden}")
        self.weight, self.sigma, self.levels = weight, float(sigma), int(levels)
        self.term_weights = {"ssr": ssr_weight, "mcr": mcr_weight, "scr": scr_weight}
        self.projector = nn.Sequential(nn.Conv2d(latent_channels, hidden, 1), nn.SiLU(),
                                       nn.Conv2d(hidden, teacher_dim, 1))

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        features = context.teacher_features
        require(features is not None, "pae: no teacher features in the context")
        require(features.shape[-2:] == context.latents.shape[-2:],
                f"pae: teacher features grid {tuple(features.shape[-2:])} != latent grid "
                f"{tuple(context.latents.shape[-2:])}")
        terms = {}
        if self.term_weights["ssr"]:
            terms["ssr"] = spatial_structure_loss(context.latents, features)
        if self.term_weights["mcr"]:
            terms["mcr"] = manifold_continuity_loss(context.model.decode, context.latents, self.sigma, self.levels,
                                                    context.generator)
        if self.term_weights["scr"]:
            terms["scr"] = semantic_consistency_loss(self.projector(context.latents), features)
        total = sum((self.term_weights[k] * v for k, v in terms.items()), torch.zeros((), device=features.device))
        self.last_logs = {f"pae_{k}": float(v.detach()) for k, v in terms.items()}
        return self.weight * total
