"""Flow-matching transport on the linear path (t = 0 noise, t = 1 data).

x_t = (1 − t)·x0 + t·x1 with x0 ~ N(0, I) and x1 a data latent; the regression target is the
velocity v = x1 − x0 (SiT / LightningDiT ``ICPlan``). All random draws take an explicit CPU
``torch.Generator`` so a training step is a pure function of (seed, step).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import require
from .spec import LOSSES, TIME_LAWS


def sample_time(n: int, law: str = "uniform", generator: torch.Generator | None = None,
                mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Training times (n,) float32 in [0, 1] on the CPU.

    ``uniform``: t ~ U[0, 1] (SiT). ``logit_normal``: t = sigmoid(u), u ~ N(mean, std²)
    (LightningDiT, mean 0, std 1) — more weight on intermediate times.
    """
    require(law in TIME_LAWS, f"time_sampling must be one of {TIME_LAWS}, got {law!r}")
    if law == "uniform":
        return torch.rand(n, generator=generator)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast times (N,) against a batch (N, …)."""
    return t.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x0 + t·x1; x0, x1 (N, …), t (N,) → (N, …)."""
    tt = _per_sample(t, x1)
    return (1 - tt) * x0 + tt * x1


def target_velocity(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """d x_t / dt = x1 − x0 along the linear path."""
    return x1 - x0


def cosine_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean(1 − cos(pred, target)) with the cosine taken along channels (dim 1) at every position."""
    return (1 - F.cosine_similarity(pred, target, dim=1, eps=1e-8)).mean()


def flow_matching_loss(model, x1: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None,
                       time_law: str = "uniform", loss: str = "mse", *, time_mean: float = 0.0,
                       time_std: float = 1.0, noise: torch.Tensor | None = None, t: torch.Tensor | None = None,
                       return_terms: bool = False):
    """Flow-matching loss of ``model(x_t, t, y)`` for data x1 (N, C, H, W) and labels y (N,).

    ``loss="mse"``: mean squared velocity error over all elements (SiT). ``"mse+cosine"``:
    that plus mean(1 − cos) along channels per position (LightningDiT, weight 1). ``noise`` and
    ``t`` may be supplied (the trainer draws them for a whole global batch and slices); otherwise
    they are drawn from ``generator`` on the CPU. Returns the scalar objective, or with
    ``return_terms`` a dict {"loss", "mse", "cosine"} (cosine is 0 for plain MSE).
    """
    require(loss in LOSSES, f"loss must be one of {LOSSES}, got {loss!r}")
    n = x1.shape[0]
    if noise is None:
        noise = torch.randn(x1.shape, generator=generator, dtype=torch.float32)
    if t is None:
        t = sample_time(n, time_law, generator, time_mean, time_std)
    noise = noise.to(device=x1.device, dtype=x1.dtype)
    t = t.to(device=x1.device, dtype=torch.float32)
    x_t = interpolate(noise, x1, t)
    target = target_velocity(noise, x1)
    pred = model(x_t, t, y).float()
    mse = (pred - target.float()).pow(2).mean()
    cosine = cosine_loss(pred, target.float()) if loss == "mse+cosine" else torch.zeros((), device=mse.device)
    total = mse + cosine
    if return_terms:
        return {"loss": total, "mse": mse, "cosine": cosine}
    return total
