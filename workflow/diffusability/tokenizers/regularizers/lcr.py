"""SSVAE's Local Correlation Regularization (docs/models.md §1.6, the ``lcr w…-th…`` cluster).

Statistic (avg_localcorr): standardise the posterior mode per channel with detached batch mean/std;
cut the h×w grid into non-overlapping 2×2 windows; inside a window the 4 latent vectors are 4
variables observed over the C channel values — centre each across channels, L2-normalise, take the
6 pairwise correlations; average over pairs, windows and images.
Loss: ReLU(threshold − avg_localcorr) · 0.1 · weight · ‖∇nll‖/(‖∇lcr‖ + 1e-4) (adaptive ratio at
the encoder's last conv, clamped to [0, 1e8], detached).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ...errors import require
from ..losses import adaptive_weight
from .base import Regularizer, RegularizerContext

WINDOW = 2


def average_local_correlation(mode: torch.Tensor, window: int = WINDOW, eps: float = 1e-6) -> torch.Tensor:
    """Mean pairwise Pearson correlation of latent vectors inside non-overlapping windows: scalar.

    mode: (N,C,h,w); grid rows/columns beyond a multiple of ``window`` are dropped.
    """
    n, c, h, w = mode.shape
    require(h >= window and w >= window, f"lcr: latent grid {h}×{w} smaller than the {window}×{window} window")
    mean = mode.mean(dim=(0, 2, 3), keepdim=True).detach()
    std = mode.std(dim=(0, 2, 3), keepdim=True).detach()
    standardised = (mode - mean) / (std + eps)
    hh, ww = h // window * window, w // window * window
    grid = standardised[:, :, :hh, :ww].reshape(n, c, hh // window, window, ww // window, window)
    # (N, rows, cols, window², C): the window's vectors, each observed over the C channels
    vectors = grid.permute(0, 2, 4, 3, 5, 1).reshape(n, hh // window, ww // window, window * window, c)
    vectors = F.normalize(vectors - vectors.mean(dim=-1, keepdim=True), dim=-1, eps=eps)
    correlation = vectors @ vectors.transpose(-1, -2)
    rows, cols = torch.triu_indices(window * window, window * window, offset=1)
    return correlation[..., rows, cols].mean()


class LocalCorrelationRegularizer(Regularizer):
    name = "lcr"
    defaults = {"weight": 0.02, "threshold": 0.75, "adaptive": True}

    def __init__(self, weight: float, threshold: float, adaptive: bool):
        super().__init__()
        self.weight, self.threshold, self.adaptive = weight, threshold, adaptive

    def raw_loss(self, mode: torch.Tensor) -> torch.Tensor:
        return F.relu(self.threshold - average_local_correlation(mode))

    def loss(self, context: RegularizerContext) -> torch.Tensor:
        raw = self.raw_loss(context.posterior.mode())
        factor = torch.ones((), device=raw.device)
        if self.adaptive and context.nll is not None:
            factor = adaptive_weight(context.nll, raw, context.model.encoder_last_layer(), max_value=1e8)
        self.last_logs = {"lcr_raw": float(raw.detach()), "lcr_adaptive_weight": float(factor)}
        return 0.1 * self.weight * factor * raw
