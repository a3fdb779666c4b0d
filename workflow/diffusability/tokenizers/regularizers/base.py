"""The one interface every latent regularizer implements, and the context it reads.

The trainer calls, each step:
    z_dec = regularizer.latents_for_decoding(z, generator)   # identity except lmr (training only)
    ...decode, reconstruction nll...
    loss += regularizer.loss(context)                          # already weighted (scalar)
``loss`` may store diagnostics (adaptive weight, raw value) in ``self.last_logs`` for the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ...errors import require


@dataclass
class RegularizerContext:
    """Everything a regularizer may need for one training step.

    images: (N,3,H,W) in [-1,1]; latents: the sampled z (N,C,h,w) before any masking;
    teacher_features: frozen teacher features on the latent grid (N,F,h,w) or None;
    nll: the scalar reconstruction nll (for adaptive weights);
    reconstruction_nll: (reconstruction, target) → scalar, the same objective as the main term;
    generator: the trainer's torch.Generator for any random draw (saved in checkpoints).
    """

    images: torch.Tensor
    posterior: Any
    latents: torch.Tensor
    model: nn.Module
    step: int
    nll: torch.Tensor | None = None
    teacher_features: torch.Tensor | None = None
    reconstruction_nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    generator: torch.Generator | None = None


class Regularizer(nn.Module):
    """Base class: no loss, no latent change. Subclasses override ``loss`` and/or ``latents_for_decoding``."""

    name = "none"
    needs_teacher = False
    #: parameter names and defaults accepted in the spec's ``regularizer`` object (besides ``name``)
    defaults: Mapping[str, Any] = {}

    def __init__(self):
        super().__init__()
        self.last_logs: dict[str, float] = {}

    @classmethod
    def resolve_params(cls, params: Mapping[str, Any], name: str | None = None) -> dict[str, Any]:
        """Defaults updated with ``params``; an unknown key is an error naming it."""
        unknown = sorted(set(params) - set(cls.defaults))
        require(not unknown, f"regularizer {name or cls.name!r}: unknown parameter(s) {unknown}; "
                             f"accepted: {sorted(cls.defaults)}")
        return {**cls.defaults, **params}

    def encode(self, model: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None):
        """The training-time posterior of images (N,3,H,W); only ``mae`` changes the encoder input."""
        return model.encode(images)

    def latents_for_decoding(self, latents: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """The latents the decoder sees during training (N,C,h,w); never used at encode time."""
        return latents

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        """The weighted regularization loss (scalar tensor)."""
        return torch.zeros((), device=context.latents.device)


def bernoulli(probability: float, generator: torch.Generator | None) -> bool:
    """One coin flip from ``generator`` (so checkpoints capture it)."""
    return bool(torch.rand((), generator=generator).item() < probability)
