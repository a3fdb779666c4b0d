"""Test oracles of VIV: the per-class reference loop the batched flip-flop is checked (and benchmarked) against.

Not part of the package: only tests/test_metrics_viv.py and benchmarks/bench_viv.py, bench_metrics.py use it
(the benchmarks put tests/ on ``sys.path``). The maths is docs/metrics.md §1.4, written sample by sample.
"""

from __future__ import annotations

import math

import torch

from diffusability.errors import require
from diffusability.metrics._linalg import floored_cholesky, inverse_lower_triangular
from diffusability.metrics.kronecker import SHRINKAGES, check_choice, check_latents_and_labels
from diffusability.metrics.viv import gauss_hermite_logit_normal, irreducible_variance


def reference_viv_loop(
    latents: torch.Tensor, labels: torch.Tensor, *, shrinkage: str = "ledoit_wolf", tol: float = 1e-7,
    max_iter: int = 100, logit_normal_mean: float = 0.0, logit_normal_std: float = 1.0, nodes: int = 64,
) -> dict:
    """The reference VIV: a plain per-class Python loop, float64 throughout.

    Same maths as :func:`diffusability.metrics.viv.class_conditional_viv` (flip-flop with Cholesky
    whitening, Ledoit–Wolf after each update, tr Σ_S = P, same stopping rule), written sample by sample
    without batching over classes.
    Returns {"viv_uniform", "viv_logit_normal", "per_class": {"uniform", "logit_normal"}, "classes"}.
    """
    check_choice("shrinkage", shrinkage, SHRINKAGES)
    labels = check_latents_and_labels(latents, labels)
    _, c, h, w = latents.shape
    p = h * w
    t_nodes, weights = gauss_hermite_logit_normal(nodes, logit_normal_mean, logit_normal_std,
                                                  device=latents.device)
    classes = torch.unique(labels, sorted=True)
    uniform, logit_normal = [], []
    for label in classes.tolist():
        x = latents[labels == label].reshape(-1, c, p).to(torch.float64)
        n = x.shape[0]
        require(n >= 2, f"labels: class {label} has {n} latent(s); need ≥ 2")
        r = x - x.mean(0)
        sigma_c, sigma_s = torch.eye(c, dtype=torch.float64), torch.eye(p, dtype=torch.float64)
        for _ in range(max_iter):
            whiten_s = inverse_lower_triangular(floored_cholesky(sigma_s))
            samples_c = torch.cat([r[i] @ whiten_s.T for i in range(n)], dim=1).T         # (n·P, C)
            new_c = samples_c.T @ samples_c / ((n - 1) * p)
            if shrinkage == "ledoit_wolf":
                new_c = reference_ledoit_wolf(new_c, samples_c)
            whiten_c = inverse_lower_triangular(floored_cholesky(new_c))
            samples_s = torch.cat([whiten_c @ r[i] for i in range(n)], dim=0)             # (n·C, P)
            new_s = samples_s.T @ samples_s / ((n - 1) * c)
            if shrinkage == "ledoit_wolf":
                new_s = reference_ledoit_wolf(new_s, samples_s)
            scale = torch.trace(new_s) / p
            new_s, new_c = new_s / scale, new_c * scale
            change = max(float(torch.linalg.norm(new_c - sigma_c) / torch.linalg.norm(new_c)),
                         float(torch.linalg.norm(new_s - sigma_s) / torch.linalg.norm(new_s)))
            sigma_c, sigma_s = new_c, new_s
            if change < tol:
                break
        b = torch.linalg.eigvalsh(sigma_c).clamp_min(0.0)
        a = torch.linalg.eigvalsh(sigma_s).clamp_min(0.0)
        uniform.append((math.pi / 2) * float(a.sqrt().sum() * b.sqrt().sum()))
        lam = torch.outer(b, a).reshape(1, -1)
        logit_normal.append(float(irreducible_variance(lam, t_nodes)[0] @ weights))
    per_class = {"uniform": torch.tensor(uniform, dtype=torch.float64),
                 "logit_normal": torch.tensor(logit_normal, dtype=torch.float64)}
    return {"viv_uniform": float(per_class["uniform"].mean()),
            "viv_logit_normal": float(per_class["logit_normal"].mean()),
            "per_class": per_class, "classes": classes}


def reference_ledoit_wolf(estimate: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Ledoit–Wolf for one class from its (n, p) pseudo-samples (unbatched).

    b² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖²_F is expanded as (Σ‖x_k‖⁴ − 2 Σ x_kᵀ S x_k + n‖S‖²)/n² so the reference
    stays usable at ImageNet scale (12 800 pseudo-samples per step).
    """
    n, dim = samples.shape
    mu = torch.trace(estimate) / dim
    target = mu * torch.eye(dim, dtype=estimate.dtype)
    d2 = float((estimate - target).square().sum())
    quadratic = float(((samples @ estimate) * samples).sum())
    b2 = (float(samples.square().sum(1).square().sum()) - 2 * quadratic
          + n * float(estimate.square().sum())) / n ** 2
    alpha = min(max(b2, 0.0), d2) / d2 if d2 > 0 else 0.0
    return (1 - alpha) * estimate + alpha * target
