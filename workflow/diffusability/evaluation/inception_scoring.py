"""Inception Score (Salimans et al. 2016) in the ADM evaluator's convention.

    IS = mean over splits s of exp( E_{x∈s} KL( p(y|x) ‖ p_s(y) ) ),   p_s(y) = E_{x∈s} p(y|x)

ADM splits the N samples into ``splits`` consecutive chunks of equal size (5 000 each for 50 k
samples), reports the mean over chunks and no standard deviation. Works for any classifier's
logits (the Inception-v3 1008-way head, or the domain network on the embedded default).
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ..errors import require


def inception_score(logits, splits: int = 10) -> float:
    """Inception Score of a set of class logits.

    Args:
        logits: (N, K) torch tensor or numpy array of unnormalised class scores.
        splits: number of equal consecutive chunks; N must be divisible by ``splits`` so every
            chunk has the same size (as with 50 000 / 10 in ADM).

    Returns:
        The mean over chunks of exp(mean KL(p(y|x) ‖ p(y))), a float in [1, K].
    """
    if hasattr(logits, "detach"):
        logits = logits.detach().cpu().double().numpy()
    logits = np.asarray(logits, dtype=np.float64)
    require(logits.ndim == 2, f"logits: expected (N, K), got shape {logits.shape}")
    require(isinstance(splits, (int, np.integer)) and splits >= 1, f"splits: expected an integer ≥ 1, got {splits!r}")
    n = logits.shape[0]
    require(n >= splits and n % splits == 0,
            f"logits: N={n} samples cannot be split into {splits} chunks of equal size "
            f"(choose is_splits dividing N)")
    require(bool(np.isfinite(logits).all()), "logits: contain NaN or Inf")
    # Log-softmax in float64 keeps log p exact even for very confident (near one-hot) predictions.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    scores = []
    for chunk in np.split(log_p, splits):
        p = np.exp(chunk)
        # log p(y) via log-sum-exp: finite even when every p(y|x) of a class underflows to 0,
        # so the 0·(finite) terms of the KL vanish instead of becoming 0·∞ = NaN.
        log_marginal = logsumexp(chunk, axis=0) - np.log(chunk.shape[0])
        kl = (p * (chunk - log_marginal)).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return float(np.mean(scores))
