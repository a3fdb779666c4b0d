"""Fisher information (FI) and Fisher information rate (FIR) of a latent space — docs/metrics.md §8 (arXiv 2604.02751).

Variance-exploding channel y_s = z + √s·ε, ε ~ N(0, I), z ∈ R^D the (normalised) latent:
    J(s)  = E‖∇ log p_s(y_s)‖²          (FI, trace Fisher information)
    J'(s) = dJ/ds = −E‖∇² log p_s‖²_F    (FIR, ≤ 0)
    mmse(s) = s·D − s²·J(s),  d mmse/ds = D − 2sJ − s²J'.
Dimensionless summaries [CHOICE]: φ = sJ/D ∈ [0, 1], ψ = −s²J'/D ≥ 0, normalised MMSE rate 1 − 2φ + ψ.

Three estimators: closed forms for a Gaussian (:func:`gaussian_fisher_curves`), Monte Carlo for the class mixture
with the mixture score (:func:`mixture_fisher_curves`), and a trained velocity network through the denoiser with
Hutchinson + forward-mode JVP (:func:`model_fisher`). Pure functions on tensors.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from diffusability.errors import require
from diffusability.metrics.kronecker import KroneckerMixture, KroneckerSpectra


def _check_s_grid(s_grid: torch.Tensor, device) -> torch.Tensor:
    s = torch.as_tensor(s_grid, dtype=torch.float64, device=device).reshape(-1)
    require(s.numel() >= 1 and bool((s > 0).all()) and bool(torch.isfinite(s).all()),
            "s_grid: expected a non-empty 1-D tensor of finite noise variances s > 0")
    return s


def _summaries(j: torch.Tensor, j_prime: torch.Tensor, s: torch.Tensor, dim: int) -> dict:
    """mmse, φ, ψ and normalised MMSE rate from J, J' (…, S) on the grid s (S,)."""
    phi = s * j / dim
    psi = -(s ** 2) * j_prime / dim
    return {"J": j, "J_prime": j_prime, "mmse": s * dim - s ** 2 * j, "phi": phi, "psi": psi,
            "mmse_rate": 1 - 2 * phi + psi, "s": s}


def gaussian_fisher_curves(eigenvalues: torch.Tensor, s_grid: torch.Tensor) -> dict:
    """Closed-form FI/FIR curves of a Gaussian with covariance eigenvalues λ (…, D).

    J = Σ 1/(λ+s), J' = −Σ 1/(λ+s)², mmse = Σ λs/(λ+s) (= sD − s²J).
    Returns J, J_prime, mmse, phi, psi, mmse_rate of shape (…, S) float64, and s (S,).
    """
    lam = torch.as_tensor(eigenvalues).to(torch.float64)
    require(lam.ndim >= 1 and lam.shape[-1] >= 1, "eigenvalues: expected a tensor (…, D) with D ≥ 1")
    require(bool((lam >= 0).all()) and bool(torch.isfinite(lam).all()),
            "eigenvalues: expected finite covariance eigenvalues ≥ 0")
    s = _check_s_grid(s_grid, lam.device)
    # Loop over the (short) s grid so no (…, S, D) tensor is formed for 1000 classes × 8192 dims.
    j = torch.stack([(1.0 / (lam + v)).sum(-1) for v in s.tolist()], -1)
    j_prime = torch.stack([-(1.0 / (lam + v)).square().sum(-1) for v in s.tolist()], -1)
    return _summaries(j, j_prime, s, lam.shape[-1])


def kronecker_fisher_curves(spectra: KroneckerSpectra, s_grid: torch.Tensor) -> dict:
    """:func:`gaussian_fisher_curves` for every class Gaussian Σ_S ⊗ Σ_C of a VIV fit, shapes (K, S)."""
    return gaussian_fisher_curves(spectra.eigenvalue_products(), s_grid)


def mixture_fisher_curves(
    spectra: KroneckerSpectra, s_grid: torch.Tensor, *, draws: int = 2000, probes: int = 1, seed: int = 0,
    batch_size: int | None = None,
) -> dict:
    """FI/FIR of the class mixture Σ_k π_k N(M_k, Σ_S,k ⊗ Σ_C,k) by Monte Carlo with the mixture score (§8.2 b).

    Per draw y = z + √s ε (z from the mixture): score g = Σ_j r_j g_j with g_j = −(Σ_j + sI)⁻¹(y − M_j);
    Hessian H = −Σ_j r_j A_j + Σ_j r_j g_j g_jᵀ − g gᵀ (A_j = (Σ_j + sI)⁻¹; the outer-product terms are the
    between-component covariance of the component scores); ‖H‖²_F by Hutchinson, E_u‖H u‖², u ~ N(0, I).
    All components are evaluated exactly (intended for the registry's small K or a subset of classes).

    Returns J, J_prime, mmse, phi, psi, mmse_rate (S,), J_stderr, J_prime_stderr (S,), s (S,).
    """
    require(draws >= 2 and probes >= 1, f"draws/probes: expected draws ≥ 2 and probes ≥ 1, got {draws}, {probes}")
    mixture = KroneckerMixture.from_spectra(spectra)
    device = mixture.means.device
    s = _check_s_grid(s_grid, device)
    generator = torch.Generator(device=device).manual_seed(int(seed))
    n_comp, dim = mixture.means.shape[0], spectra.dim
    batch = batch_size or max(1, min(draws, 2 ** 23 // (n_comp * dim)))
    j_mean, j_err, jp_mean, jp_err = [], [], [], []
    for noise in s.tolist():
        fisher, rate = [], []
        for start in range(0, draws, batch):
            m = min(batch, draws - start)
            _, z = mixture.sample(m, generator)
            y = z + math.sqrt(noise) * torch.randn(z.shape, dtype=torch.float64, device=device, generator=generator)
            f, h2 = _mixture_score_terms(mixture, y, noise, probes, generator)
            fisher.append(f)
            rate.append(h2)
        fisher, rate = torch.cat(fisher), torch.cat(rate)
        j_mean.append(fisher.mean())
        j_err.append(fisher.std() / math.sqrt(draws))
        jp_mean.append(-rate.mean())
        jp_err.append(rate.std() / math.sqrt(draws))
    out = _summaries(torch.stack(j_mean), torch.stack(jp_mean), s, dim)
    out["J_stderr"], out["J_prime_stderr"] = torch.stack(j_err), torch.stack(jp_err)
    return out


def _mixture_score_terms(mixture: KroneckerMixture, y: torch.Tensor, noise: float, probes: int,
                         generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Per draw (B,): ‖g(y)‖² and a Hutchinson estimate of ‖H(y)‖²_F (mean over ``probes``)."""
    b, n_comp = y.shape[0], mixture.means.shape[0]
    dim = y[0].numel()
    probe = torch.randn((probes,) + tuple(y.shape), dtype=torch.float64, device=y.device, generator=generator)
    log_joint, scores, precision_probe = [], [], []
    for k in range(n_comp):
        index = torch.full((b,), k, dtype=torch.int64, device=y.device)
        var = mixture.eigenvalues(index) + noise                                          # (B, C, P)
        e = mixture.to_eigenbasis(y - mixture.means[k], index)
        log_joint.append(mixture.log_weights[k] - 0.5 * ((e.square() / var).sum((1, 2))
                                                         + var.log().sum((1, 2)) + dim * math.log(2 * math.pi)))
        scores.append(-mixture.from_eigenbasis(e / var, index))
        precision_probe.append(torch.stack([
            mixture.from_eigenbasis(mixture.to_eigenbasis(u, index) / var, index) for u in probe]))
    resp = torch.softmax(torch.stack(log_joint, 1), 1)                                      # (B, K)
    g_k = torch.stack(scores, 1)                                                           # (B, K, C, P)
    g = (resp[:, :, None, None] * g_k).sum(1)
    a_u = torch.stack(precision_probe, 2)                                                  # (probes, B, K, C, P)
    r = resp[None, :, :, None, None]
    g_k_dot_u = (g_k[None] * probe[:, :, None]).sum((3, 4))                                # (probes, B, K)
    g_dot_u = (g[None] * probe).sum((2, 3))                                                # (probes, B)
    h_u = (-(r * a_u).sum(2) + (r * g_k[None] * g_k_dot_u[..., None, None]).sum(2)
           - g[None] * g_dot_u[..., None, None])
    return g.square().sum((1, 2)), h_u.square().sum((2, 3)).mean(0)


def model_fisher(
    velocity_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor],
    latents: torch.Tensor, labels: torch.Tensor | None, s_grid: torch.Tensor, probes: int = 2,
    generator: torch.Generator | None = None, batch_size: int = 256,
) -> dict:
    """FI/FIR of a trained velocity model (§8.2 a): score from the denoiser, FIR by Hutchinson + forward-mode JVP.

    For each s: t = 1/(1+√s) (so s = ((1−t)/t)²), y = z + √s ε, x_t = t·y,
    D_θ(y) = x_t + (1−t)·v_θ(x_t, t, labels), score ŝ(y) = (D_θ(y) − y)/s,
    ∇_y ŝ · u = (J_D(y) u − u)/s with J_D u from one ``torch.func.jvp`` (J_D includes the t factor of x_t = t·y).

    Args:
        velocity_fn: v(x_t (B, …), t (B,), labels (B,) or None) → (B, …) in the t = 0 noise / t = 1 data
            convention (wrap CFG or a REPA-convention network before passing it in).
        latents: (N, …) normalised latents z; labels: (N,) or None.
        s_grid: (S,) noise variances s > 0.
        probes: Hutchinson probes u ~ N(0, I) per sample.
    Returns:
        J, J_prime, mmse, phi, psi, mmse_rate, J_stderr, J_prime_stderr (S,) float64, s (S,), t (S,).
    """
    require(isinstance(latents, torch.Tensor) and latents.ndim >= 2 and latents.is_floating_point(),
            "latents: expected a floating-point tensor (N, …)")
    require(bool(torch.isfinite(latents).all()), "latents: contains NaN or Inf")
    require(labels is None or torch.as_tensor(labels).shape == (latents.shape[0],),
            f"labels: expected shape ({latents.shape[0]},) or None")
    require(probes >= 1, f"probes: expected ≥ 1, got {probes}")
    s = _check_s_grid(s_grid, latents.device)
    n, dim = latents.shape[0], latents[0].numel()
    if generator is None:
        generator = torch.Generator(device=latents.device).manual_seed(0)
    j_mean, j_err, jp_mean, jp_err = [], [], [], []
    for noise in s.tolist():
        t_value = 1.0 / (1.0 + math.sqrt(noise))
        fisher, rate = [], []
        for start in range(0, n, batch_size):
            z = latents[start:start + batch_size]
            lab = None if labels is None else labels[start:start + batch_size]
            t = torch.full((z.shape[0],), t_value, dtype=z.dtype, device=z.device)
            y = z + math.sqrt(noise) * torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)

            def denoise(y_in: torch.Tensor) -> torch.Tensor:
                x_t = t_value * y_in
                return x_t + (1.0 - t_value) * velocity_fn(x_t, t, lab)

            hutchinson = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
            for _ in range(probes):
                u = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
                denoised, tangent = torch.func.jvp(denoise, (y,), (u,))
                hutchinson += ((tangent - u).to(torch.float64) / noise).flatten(1).square().sum(1)
            score = (denoised.to(torch.float64) - y.to(torch.float64)) / noise
            fisher.append(score.flatten(1).square().sum(1))
            rate.append(hutchinson / probes)
        fisher, rate = torch.cat(fisher), torch.cat(rate)
        j_mean.append(fisher.mean())
        j_err.append(fisher.std() / math.sqrt(n) if n > 1 else torch.tensor(float("nan")))
        jp_mean.append(-rate.mean())
        jp_err.append(rate.std() / math.sqrt(n) if n > 1 else torch.tensor(float("nan")))
    out = _summaries(torch.stack(j_mean), torch.stack(jp_mean), s, dim)
    out["J_stderr"], out["J_prime_stderr"] = torch.stack(j_err), torch.stack(jp_err)
    out["t"] = 1.0 / (1.0 + s.sqrt())
    return out


# --------------------------------------------------------------------------- scalar summaries for the registry

#: default noise-variance grid of the scalar summaries (docs/metrics.md §8.1: log grid s ∈ [1e-3, 1e2], 32 points)
S_MIN, S_MAX, S_POINTS = 1e-3, 1e2, 32


def log_s_grid(s_min: float = S_MIN, s_max: float = S_MAX, s_points: int = S_POINTS) -> torch.Tensor:
    """(s_points,) float64 noise variances, log-uniform from ``s_min`` to ``s_max`` (both included)."""
    require(0 < s_min < s_max and math.isfinite(s_max), f"s grid: expected 0 < s_min < s_max, got {s_min}, {s_max}")
    require(int(s_points) >= 2, f"s grid: expected s_points ≥ 2, got {s_points}")
    return torch.logspace(math.log10(s_min), math.log10(s_max), int(s_points), dtype=torch.float64)


def fisher_scalars(curves: dict) -> dict:
    """The two scalar proxies of a set of FI/FIR curves on a log-uniform s grid [CHOICE].

    ``fi``  = mean over the grid of φ(s) = s·J(s)/D ∈ [0, 1]   (FI in units of its pure-noise limit D/s);
    ``fir`` = mean over the grid of ψ(s) = −s²·J'(s)/D ≥ 0     (|FIR| in the same units).
    A mean over a log-uniform grid is the average over log s, so every decade of noise counts equally.
    Both are dimensionless, so latents of different size D compare; lower is better (docs/metrics.md §8.2).
    Curves of shape (…, S) give scalars of shape (…); a (K, S) stack of classes is averaged over K first.
    """
    phi, psi = curves["phi"], curves["psi"]
    if phi.ndim > 1:
        phi, psi = phi.reshape(-1, phi.shape[-1]).mean(0), psi.reshape(-1, psi.shape[-1]).mean(0)
    return {"fi": float(phi.mean()), "fir": float(psi.mean()), "s": curves["s"], "phi": phi, "psi": psi}


def class_conditional_fisher(latents: torch.Tensor, labels: torch.Tensor, *, s_min: float = S_MIN,
                             s_max: float = S_MAX, s_points: int = S_POINTS, shrinkage: str = "ledoit_wolf",
                             tol: float = 1e-7, max_iter: int = 100, min_per_class: int = 2,
                             classes_per_batch: int | None = None, progress: bool = True,
                             spectra=None) -> dict:
    """Analytic FI/FIR of the class Gaussians N(M_c, Σ_S,c ⊗ Σ_C,c) fitted as for VIV (§8.2 b, §1.4).

    Args:
        latents: (N, C, H, W) normalised latents; labels: (N,) int (≥ ``min_per_class`` per class).
        spectra: the :class:`~diffusability.metrics.kronecker.KroneckerSpectra` of these latents when VIV has
            already fitted them with the same fit parameters (the registry shares one fit); else fitted here.
    Returns:
        ``dict(fi, fir, s (S,), phi (S,), psi (S,), n_classes)``: φ, ψ are the equal-weight class means
        of each class's closed-form curves; fi, fir their means over the log-uniform s grid.
    """
    from diffusability.metrics.kronecker import fit_class_covariances

    if spectra is None:
        spectra = fit_class_covariances(latents, labels, shrinkage=shrinkage, tol=tol, max_iter=max_iter,
                                        min_per_class=min_per_class, classes_per_batch=classes_per_batch,
                                        progress=progress)
    out = fisher_scalars(kronecker_fisher_curves(spectra, log_s_grid(s_min, s_max, s_points)))
    out["n_classes"] = len(spectra.classes)
    return out


def mixture_fisher(latents: torch.Tensor, labels: torch.Tensor, *, s_min: float = S_MIN, s_max: float = S_MAX,
                   s_points: int = S_POINTS, draws: int = 2000, probes: int = 1, seed: int = 0,
                   shrinkage: str = "ledoit_wolf", tol: float = 1e-7, max_iter: int = 100,
                   min_per_class: int = 2, batch_size: int | None = None, progress: bool = True) -> dict:
    """FI/FIR of the fitted class mixture (the marginal law of the latents) by Monte Carlo (§8.2 b).

    Every draw evaluates all K components, so the cost is draws·S·K·(C²P + CP²): meant for small K
    (the embedded default) or a subset of classes. Returns ``dict(fi, fir, s, phi, psi, n_classes)``.
    """
    from diffusability.metrics.kronecker import fit_class_covariances

    spectra = fit_class_covariances(latents, labels, shrinkage=shrinkage, tol=tol, max_iter=max_iter,
                                    min_per_class=min_per_class, return_factors=True, progress=progress)
    curves = mixture_fisher_curves(spectra, log_s_grid(s_min, s_max, s_points), draws=draws, probes=probes,
                                   seed=seed, batch_size=batch_size)
    out = fisher_scalars(curves)
    out["n_classes"] = len(spectra.classes)
    return out
