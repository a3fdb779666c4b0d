"""EQ-VAE equivariance regularizer (docs/models.md §1.5, the ``eq scale`` / ``eq flip`` clusters).

With probability ``probability`` per step, one transform T is drawn and applied identically to the
sampled latent z (N,C,h,w) and to the image x (N,3,H,W); the decoder must reproduce T(x) from T(z):
    loss = weight · nll(decode(T(z)), T(x))   (the same objective as the main reconstruction term)
``scale``: bilinear resize of both by s ∈ {8/32, 9/32, …, 31/32} (the latent to round(s·h), the
image to round(s·h)·f so the pair stays consistent). ``flip``: horizontal, vertical or both.
[CHOICE] the term is added to the ordinary reconstruction (EQ-VAE replaces it on those steps);
``flip`` reads the paper's variant as random h/v flips (an assumption, see docs/models.md §1.5).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ...errors import require
from .base import Regularizer, RegularizerContext, bernoulli

VARIANTS = ("scale", "flip")
FLIPS = ("horizontal", "vertical", "both")
EQVAE_SCALES = tuple(k / 32 for k in range(8, 32))


def scale_pair(latents: torch.Tensor, images: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resize of latents (N,C,h,w) and images (N,3,H,W) by the same factor.

    The latent side becomes max(1, round(scale·h)); the image side that times H/h, so the decoder's
    output size matches the transformed image exactly.
    """
    factor = images.shape[-1] // latents.shape[-1]
    new_h = max(1, round(scale * latents.shape[-2]))
    new_w = max(1, round(scale * latents.shape[-1]))
    small_latents = F.interpolate(latents, size=(new_h, new_w), mode="bilinear", align_corners=False)
    small_images = F.interpolate(images, size=(new_h * factor, new_w * factor), mode="bilinear",
                                 align_corners=False)
    return small_latents, small_images


def flip_pair(latents: torch.Tensor, images: torch.Tensor, flip: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The same flip (horizontal = last axis, vertical = second to last, or both) of latents and images."""
    require(flip in FLIPS, f"eq flip: expected one of {FLIPS}, got {flip!r}")
    dims = {"horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}[flip]
    return latents.flip(dims), images.flip(dims)


class EquivarianceRegularizer(Regularizer):
    name = "eq"
    defaults = {"variant": "scale", "probability": 0.5, "weight": 1.0, "scales": list(EQVAE_SCALES)}

    def __init__(self, variant: str, probability: float, weight: float, scales):
        super().__init__()
        require(variant in VARIANTS, f"regularizer 'eq': variant must be one of {VARIANTS}, got {variant!r}")
        require(0.0 <= probability <= 1.0, f"regularizer 'eq': probability must be in [0, 1], got {probability}")
        require(len(scales) >= 1 and all(0 < s <= 1 for s in scales),
                f"regularizer 'eq': scales must be in (0, 1], got {scales}")
        self.variant, self.probability, self.weight = variant, probability, weight
        self.scales = tuple(float(s) for s in scales)

    def draw_transform(self, generator: torch.Generator | None) -> float | str:
        """A scale from ``scales`` or a flip kind, drawn from ``generator``."""
        options = self.scales if self.variant == "scale" else FLIPS
        return options[int(torch.randint(len(options), (), generator=generator))]

    def transform_pair(self, latents: torch.Tensor, images: torch.Tensor,
                       transform: float | str) -> tuple[torch.Tensor, torch.Tensor]:
        if self.variant == "scale":
            return scale_pair(latents, images, float(transform))
        return flip_pair(latents, images, str(transform))

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        zero = torch.zeros((), device=context.latents.device)
        self.last_logs = {"eq_active": 0.0}
        if not bernoulli(self.probability, context.generator):
            return zero
        require(context.reconstruction_nll is not None, "eq: the context has no reconstruction objective")
        transform = self.draw_transform(context.generator)
        latents, images = self.transform_pair(context.latents, context.images, transform)
        nll = context.reconstruction_nll(context.model.decode(latents), images)
        self.last_logs = {"eq_active": 1.0, "eq_nll": float(nll.detach())}
        return self.weight * nll
