"""Velocity Irreducible Variance (VIV) — docs/metrics.md §1.

Flow matching with t = 0 noise, t = 1 data: x_t = (1−t)·x0 + t·x1, target v = x1 − x0. For a Gaussian class
x1 ~ N(μ, Σ) with eigenvalues λ_i the part of the loss no network can remove is (eq. 4)

    σ²_irr(t) = Σ_i λ_i / (t²λ_i + (1−t)²),

whose uniform-time average is (π/2)·Σ_i √λ_i (eq. 5). Class covariances are the Kronecker fits of
:mod:`~diffusability.metrics.kronecker` (Σ_S ⊗ Σ_C by the flip-flop estimator + Ledoit–Wolf shrinkage, §1.4); the
eigenvalues of the product are all products a_j·b_k of the factor eigenvalues. The marginal (unconditional) VIV
over the class mixture is a Rao–Blackwellised Monte Carlo estimate (§1.5).

Pure functions on tensors; nothing here opens a file. Work happens on the latents' device.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from diffusability.errors import require
from diffusability.metrics import kronecker
from diffusability.metrics._linalg import single_thread
from diffusability.metrics.kronecker import KroneckerMixture, KroneckerSpectra, check_choice
from diffusability.metrics.normalization import require_two_classes
from diffusability.progress import progress as progress_iter

TIME_LAWS = ("uniform", "logit_normal")


# ----------------------------------------------------------------------------------------------- time laws

def irreducible_variance(eigenvalues: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Irreducible velocity variance of a Gaussian class at time t: ``Σ_i λ_i / (t²λ_i + (1−t)²)``.

    Eq. (4) of docs/metrics.md §1.2: on the path ``x_t = (1−t)·x0 + t·x1`` from N(0, I) noise to a
    class Gaussian with covariance eigenvalues λ_i, this is ``tr Var(x1 − x0 | x_t)``. It equals
    Σ λ_i at t = 0 and D at t = 1.

    Parameters
    ----------
    eigenvalues : torch.Tensor, shape (K, D)
        Non-negative covariance eigenvalues of K classes.
    t : array-like, shape (T,)
        Times in [0, 1].

    Returns
    -------
    torch.Tensor, shape (K, T), float64
        A zero eigenvalue contributes 0 for t < 1 and 1 at t = 1 (the limit).

    Examples
    --------
    >>> import torch
    >>> from diffusability.metrics import irreducible_variance
    >>> irreducible_variance(torch.tensor([[1.0, 4.0]]), torch.tensor([0.0, 0.5, 1.0]))
    tensor([[5.0000, 5.2000, 2.0000]], dtype=torch.float64)
    """
    lam = eigenvalues.to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=lam.device).reshape(-1)
    require(bool(((t >= 0) & (t <= 1)).all()), "t: expected times in [0, 1]")
    out = torch.empty(lam.shape[0], t.shape[0], dtype=torch.float64, device=lam.device)
    # Chunk over classes so the (k, T, D) intermediate stays ≤ ~2^24 elements.
    step = max(1, 2 ** 24 // max(1, t.shape[0] * lam.shape[1]))
    tt, one_minus = t[None, :, None], (1 - t)[None, :, None]
    for i in range(0, lam.shape[0], step):
        block = lam[i:i + step, None, :]
        denominator = tt.square() * block + one_minus.square()
        safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
        out[i:i + step] = torch.where(denominator > 0, block / safe, torch.ones_like(block)).sum(-1)
    return out


def gauss_hermite_logit_normal(nodes: int = 64, mean: float = 0.0, std: float = 1.0,
                               device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature for E[f(t)], t = sigmoid(mean + std·z), z ~ N(0, 1) (LightningDiT's logit-normal time law).

    Probabilists' Gauss–Hermite nodes in logit space; weights normalised to sum to 1.
    Returns (t_nodes (nodes,), weights (nodes,)) float64.
    """
    require(int(nodes) >= 1, f"nodes: expected ≥ 1, got {nodes}")
    require(std > 0, f"std: expected > 0 for the logit-normal law, got {std}")
    z, w = np.polynomial.hermite_e.hermegauss(int(nodes))
    t = torch.sigmoid(torch.as_tensor(mean + std * z, dtype=torch.float64, device=device))
    weights = torch.as_tensor(w / w.sum(), dtype=torch.float64, device=device)
    return t, weights


def viv_uniform(spectra: KroneckerSpectra) -> torch.Tensor:
    """Eq. (5) with the Kronecker trace identity: (π/2)·(Σ_j √a_j)(Σ_k √b_k), shape (K,) float64."""
    return (math.pi / 2) * spectra.spatial_eigs.sqrt().sum(-1) * spectra.channel_eigs.sqrt().sum(-1)


def viv_curve(spectra: KroneckerSpectra, t: torch.Tensor) -> torch.Tensor:
    """σ²_irr,c(t) of eq. (4) for every class, shape (K, T) float64.

    Same values as ``irreducible_variance(spectra.eigenvalue_products(), t)`` (to round-off) through
    :func:`time_averaged_irreducible_variance` for t < 1; at t = 1 every term is 1 (the limit for λ = 0), so
    σ² = D.
    """
    device = spectra.channel_eigs.device
    t = torch.as_tensor(t, dtype=torch.float64, device=device).reshape(-1)
    require(bool(((t >= 0) & (t <= 1)).all()), "t: expected times in [0, 1]")
    out = torch.full((len(spectra.classes), t.shape[0]), float(spectra.dim), dtype=torch.float64, device=device)
    inside = t < 1
    if bool(inside.any()):
        out[:, inside] = time_averaged_irreducible_variance(spectra.channel_eigs, spectra.spatial_eigs, t[inside])
    return out


def viv_logit_normal(spectra: KroneckerSpectra, mean: float = 0.0, std: float = 1.0,
                     nodes: int = 64) -> torch.Tensor:
    """E_t σ²_irr,c(t) for t ~ logit-normal(mean, std) by Gauss–Hermite over the C·P products, (K,) float64."""
    t, weights = gauss_hermite_logit_normal(nodes, mean, std, device=spectra.channel_eigs.device)
    return time_averaged_irreducible_variance(spectra.channel_eigs, spectra.spatial_eigs, t, weights)


def time_averaged_irreducible_variance(channel_eigs: torch.Tensor, spatial_eigs: torch.Tensor, t: torch.Tensor,
                                       weights: torch.Tensor | None = None, chunk: int = 8192) -> torch.Tensor:
    """Σ_i w_i σ²_irr(t_i) of eq. (4) for Kronecker spectra λ = a_j·b_k, nodes t_i strictly inside (0, 1); (K,).
    Without ``weights``: σ²_irr(t_i) itself for times in [0, 1), shape (K, T).

    The same sum as ``irreducible_variance(products, t) @ weights`` (to round-off), evaluated without the
    (K, C·P, T) intermediate, with one fused multiply-add, one reciprocal and one matrix-vector product per
    (product, node), in blocks of about ``chunk`` products so the (block, T) array stays in cache:

    - each term is λ/(t²λ + s²) = 1/(t² + μs²) with s = 1 − t, μ = 1/λ (λ = 0 gives μ = ∞ and exactly 0);
    - when the nodes are symmetric (t_i + t_{T−1−i} = 1 with equal weights, e.g. the logit-normal law with
      mean 0) each pair is one fraction, f(λ, t) + f(λ, s) = (1 + λ)(t² + s²) / (t⁴ + s⁴ + (λ + μ)t²s²),
      half the work (all terms positive: no cancellation; λ or μ = ∞ give the limit 0).
    """
    b = channel_eigs.to(torch.float64)
    a = spatial_eigs.to(torch.float64)
    t = torch.as_tensor(t, dtype=torch.float64, device=b.device).reshape(-1)
    per_time = weights is None
    if per_time:
        require(bool(((t >= 0) & (t < 1)).all()), "t: expected times in [0, 1) (σ² = D at t = 1)")
        weights = torch.ones_like(t)
    else:
        require(bool(((t > 0) & (t < 1)).all()), "t: expected quadrature nodes strictly inside (0, 1)")
    weights = torch.as_tensor(weights, dtype=torch.float64, device=b.device).reshape(-1)
    count = t.shape[0]
    symmetric = not per_time and count > 1 and bool(torch.allclose(t + t.flip(0), torch.ones_like(t), rtol=0, atol=1e-14)
                                   and torch.allclose(weights, weights.flip(0), rtol=1e-12, atol=0))
    if symmetric:
        half = (count + 1) // 2
        tt2, ss2 = t[:half].square(), (1 - t[:half]).square()
        numerator = weights[:half].clone()
        if count % 2:
            numerator[-1] /= 2                          # the middle node t = 1/2 pairs with itself
        numerator *= tt2 + ss2
        constant, slope = tt2.square() + ss2.square(), tt2 * ss2     # denominator = constant + (λ + μ)·slope
    else:
        numerator, constant, slope = weights, t.square(), (1 - t).square()   # denominator = t² + μ·s²
    k_total, c = b.shape
    per_class = c * a.shape[1]
    per_block = max(1, chunk // per_class)
    out = torch.empty((k_total, count) if per_time else k_total, dtype=torch.float64, device=b.device)
    block = torch.empty(min(per_block, k_total) * per_class, constant.shape[0], dtype=torch.float64,
                        device=b.device)
    with single_thread(b.device):                       # memory-bound small ops: threads only add barriers
        for start in range(0, k_total, per_block):
            stop = min(start + per_block, k_total)
            lam = (b[start:stop, :, None] * a[start:stop, None, :]).reshape(-1)
            inverse = lam.reciprocal()
            rows = block[:lam.shape[0]]
            torch.addcmul(constant[None], (lam + inverse if symmetric else inverse)[:, None], slope[None],
                          out=rows)
            if per_time:
                out[start:stop] = rows.reciprocal_().view(stop - start, per_class, count).sum(1)
                continue
            values = rows.reciprocal_() @ numerator
            if symmetric:
                values *= 1 + lam
            out[start:stop] = values.view(stop - start, per_class).sum(1)
    return out


def class_conditional_viv(
    latents: torch.Tensor, labels: torch.Tensor, *, time_laws: Sequence[str] = TIME_LAWS,
    shrinkage: str = "ledoit_wolf", logit_normal_mean: float = 0.0, logit_normal_std: float = 1.0,
    nodes: int = 64, tol: float = 1e-7, max_iter: int = 100, classes_per_batch: int | None = None,
    min_per_class: int = 2, product_dtype: torch.dtype | None = None, progress: bool = True,
    curve_times: Sequence[float] | torch.Tensor | None = None,
) -> dict:
    """Class-conditional Velocity Irreducible Variance (VIV): the call the metric registry makes.

    Fits a Kronecker (spatial ⊗ channel) covariance to each class by the flip-flop estimator with
    Ledoit–Wolf shrinkage, then averages the irreducible velocity variance over time — in closed
    form ``(π/2)·tr Σ_S^{1/2}·tr Σ_C^{1/2}`` for uniform t, by Gauss–Hermite quadrature for the
    logit-normal law — and over classes with equal weight (docs/metrics.md §1). Lower is better.

    Parameters
    ----------
    latents : torch.Tensor, shape (N, C, H, W)
        Normalised latents (VIV is not scale invariant).
    labels : torch.Tensor of int, shape (N,)
    time_laws : sequence of {"uniform", "logit_normal"}, default both
    shrinkage : str, default "ledoit_wolf"
    logit_normal_mean, logit_normal_std : float, default 0.0 and 1.0
        The logit-normal law (LightningDiT: 0, 1).
    nodes : int, default 64
        Gauss–Hermite nodes.
    tol, max_iter : float, int
        Convergence of the flip-flop iterations.
    classes_per_batch : int, optional
        Classes fitted together (default: sized to a memory budget).
    min_per_class : int, default 2
    product_dtype : torch.dtype, optional
    progress : bool, default True
        Show a progress bar over class batches.
    curve_times : array-like, shape (T,), optional
        Also return the class-averaged σ²_irr(t) at these times (the curve the trajectory figure
        overlays); it reuses the fitted spectra.

    Returns
    -------
    dict
        For each time law: ``viv_<law>`` (float, the mean over classes), ``viv_<law>_per_dim``
        (divided by D = C·H·W) and ``per_class[<law>]`` ((K,) float64); ``n_per_class``,
        ``classes``, ``dim``, ``spectra``; with ``curve_times`` also ``curve = {"t", "value"}``.

    Examples
    --------
    Isotropic classes of standard deviation 0.5 in D = 8 dimensions: uniform-time VIV is close to
    ``(π/2)·D·0.5`` (each eigenvalue λ contributes (π/2)·√λ).

    >>> import math
    >>> import torch
    >>> from diffusability.metrics import class_conditional_viv
    >>> latents = 0.5 * torch.randn(200, 2, 2, 2, generator=torch.Generator().manual_seed(0))
    >>> labels = torch.arange(200) % 4
    >>> result = class_conditional_viv(latents, labels, progress=False)
    >>> result["dim"], round(result["viv_uniform"] / (math.pi / 2 * 8 * 0.5), 1)
    (8, 1.0)
    """
    for law in time_laws:
        check_choice("time_laws", law, TIME_LAWS)
    require_two_classes(torch.as_tensor(labels), "VIV")
    spectra = kronecker.fit_class_covariances(
        latents, labels, shrinkage=shrinkage, tol=tol, max_iter=max_iter, classes_per_batch=classes_per_batch,
        min_per_class=min_per_class, product_dtype=product_dtype, progress=progress)
    result: dict = {"per_class": {}, "n_per_class": spectra.counts, "classes": spectra.classes,
                    "dim": spectra.dim, "spectra": spectra}
    for law in time_laws:
        values = viv_uniform(spectra) if law == "uniform" else viv_logit_normal(
            spectra, logit_normal_mean, logit_normal_std, nodes)
        result["per_class"][law] = values
        result[f"viv_{law}"] = float(values.mean())
        result[f"viv_{law}_per_dim"] = float(values.mean()) / spectra.dim
    if curve_times is not None:
        times = torch.as_tensor(curve_times, dtype=torch.float64, device=spectra.channel_eigs.device).reshape(-1)
        require(times.numel() >= 1, "curve_times: expected at least one time in [0, 1]")
        result["curve"] = {"t": times, "value": viv_curve(spectra, times).mean(0)}
    return result


# ----------------------------------------------------------------------------------------------- marginal VIV


def _rao_blackwell_batch(mixture: KroneckerMixture, t: torch.Tensor, generator: torch.Generator,
                         top_components: int | None) -> torch.Tensor:
    """One Rao–Blackwellised estimate of tr Var(v | x_t) per draw (B,) for draw times t (B,), §1.5.

    Per draw: k ~ π, x1 ~ N(M_k, Σ_k), x0 ~ N(0, I), x_t = (1−t)x0 + t·x1; then
    Σ_j r_j τ_j(t) + Σ_j r_j ‖m_j(x_t) − m̄(x_t)‖² with the Gaussian posterior terms of every component j.
    With ``top_components`` = k < K the components are pre-ranked by an isotropic approximation; the top k get
    exact log-densities and posterior means (rotations into their Kronecker eigenbases), the rest keep the
    isotropic ones. Simply dropping the rest would bias small t, where responsibilities are close to the
    prior π and the between-class term needs every class mean. τ_j(t) is exact for all j (eigenvalues only).
    """
    _, x1 = mixture.sample(len(t), generator)
    x0 = torch.randn(x1.shape, dtype=torch.float64, device=x1.device, generator=generator)
    tt = t[:, None, None]
    x_t = (1 - tt) * x0 + tt * x1
    n_comp, dim = mixture.means.shape[0], x1[0].numel()
    exact_all = top_components is None or top_components >= n_comp
    if exact_all:
        candidates = torch.arange(n_comp, device=x_t.device).expand(len(t), n_comp)
    else:
        iso = mixture.isotropic_terms(x_t, t)
        candidates = iso["log_joint"].topk(top_components, dim=1).indices                 # (B, k)
    log_exact, exact_means = [], []
    for rank in range(candidates.shape[1]):
        j = candidates[:, rank]
        lam = mixture.eigenvalues(j)
        var = (tt ** 2 * lam + (1 - tt) ** 2).clamp_min(1e-300)
        y = mixture.to_eigenbasis(x_t - tt * mixture.means[j], j)
        log_exact.append(mixture.log_weights[j]
                         - 0.5 * ((y.square() / var).sum((1, 2)) + var.log().sum((1, 2)) + dim * math.log(2 * math.pi)))
        exact_means.append(mixture.means[j] + mixture.from_eigenbasis((tt * lam - (1 - tt)) / var * y, j))
    log_exact = torch.stack(log_exact, 1)                                                  # (B, k)
    exact_means = torch.stack(exact_means, 1)                                              # (B, k, C, P)
    products = (mixture.channel_eigs[:, :, None] * mixture.spatial_eigs[:, None, :]).reshape(n_comp, -1)
    tau = irreducible_variance(products, t).T                                              # (B, K)
    if exact_all:
        resp = torch.softmax(log_exact, dim=1)
        mean_bar = (resp[:, :, None, None] * exact_means).sum(1, keepdim=True)
        between = (resp * (exact_means - mean_bar).square().sum((2, 3))).sum(1)
        return (resp * tau).sum(1) + between
    log_joint = iso["log_joint"].scatter(1, candidates, log_exact)
    resp = torch.softmax(log_joint, dim=1)                                                 # (B, K)
    is_exact = torch.zeros_like(resp, dtype=torch.bool).scatter(1, candidates, True)
    # Between-class term Σ_j r_j‖m_j − c‖² − ‖m̄ − c‖² about c = the best exact posterior mean (less cancellation).
    # Isotropic components: m_j − c = a_j M_j + γ_j x_t − c with a_j = 1 − tγ_j, expanded via inner products.
    center = exact_means[:, 0]
    flat_c, flat_x = center.reshape(len(t), -1), x_t.reshape(len(t), -1)
    flat_means = mixture.means.reshape(n_comp, -1)
    gain = iso["gain"]
    a = 1 - t[:, None] * gain
    r_iso = torch.where(is_exact, torch.zeros_like(resp), resp)
    mean_dot_c = flat_c @ flat_means.T
    x_dot_c = (flat_x * flat_c).sum(1, keepdim=True)
    sq_iso = (a ** 2 * iso["mean_sq"][None] + gain ** 2 * flat_x.square().sum(1, keepdim=True)
              + flat_c.square().sum(1, keepdim=True) + 2 * a * gain * iso["mean_dot_x"]
              - 2 * a * mean_dot_c - 2 * gain * x_dot_c)
    r_exact = resp.gather(1, candidates)                                                   # (B, k)
    diff_exact = (exact_means - center[:, None]).reshape(len(t), candidates.shape[1], -1)
    weighted_sq = (r_iso * sq_iso).sum(1) + (r_exact * diff_exact.square().sum(2)).sum(1)
    mean_offset = ((r_iso * a) @ flat_means + (r_iso * gain).sum(1, keepdim=True) * flat_x
                   - r_iso.sum(1, keepdim=True) * flat_c + (r_exact[:, :, None] * diff_exact).sum(1))
    between = (weighted_sq - mean_offset.square().sum(1)).clamp_min(0)
    return (resp * tau).sum(1) + between


def marginal_irreducible_variance(
    spectra: KroneckerSpectra, t: torch.Tensor, *, draws: int = 1000, seed: int = 0,
    top_components: int | None = 32, batch_size: int | None = None,
) -> dict:
    """Marginal σ²_irr(t) over the class mixture at fixed times t (T,) (the §1.5 curve).

    Returns {"t": (T,), "value": (T,), "stderr": (T,)} float64, ``draws`` Rao–Blackwellised draws per time.
    """
    mixture = KroneckerMixture.from_spectra(spectra)
    t = torch.as_tensor(t, dtype=torch.float64, device=mixture.means.device).reshape(-1)
    require(bool(((t >= 0) & (t <= 1)).all()), "t: expected times in [0, 1]")
    generator = torch.Generator(device=mixture.means.device).manual_seed(int(seed))
    values, errors = [], []
    for time in t.tolist():
        estimates = _run_draws(mixture, lambda m: torch.full((m,), time, dtype=torch.float64,
                                                             device=mixture.means.device),
                               draws, generator, top_components, batch_size)
        values.append(estimates.mean())
        errors.append(estimates.std() / math.sqrt(draws) if draws > 1 else torch.tensor(float("nan")))
    return {"t": t, "value": torch.stack(values), "stderr": torch.stack(errors)}


def _run_draws(mixture: KroneckerMixture, draw_times, draws: int, generator: torch.Generator,
               top_components: int | None, batch_size: int | None, show: bool = False) -> torch.Tensor:
    """All per-draw estimates (draws,) in batches that keep the stored posterior means ≤ ~2^24 numbers."""
    require(draws >= 1, f"draws: expected ≥ 1, got {draws}")
    k = mixture.means.shape[0] if top_components is None else min(top_components, mixture.means.shape[0])
    per_draw = k * mixture.means[0].numel()
    batch = batch_size or max(1, min(draws, 2 ** 24 // per_draw))
    chunks = list(range(0, draws, batch))
    out = []
    for start in progress_iter(chunks, total=len(chunks), desc="marginal VIV", unit="batch", disable=not show):
        m = min(batch, draws - start)
        out.append(_rao_blackwell_batch(mixture, draw_times(m), generator, top_components))
    return torch.cat(out)


def marginal_viv(
    latents: torch.Tensor | None, labels: torch.Tensor | None, *, time_law: str = "uniform",
    draws: int = 10000, seed: int = 0, top_components: int | None = 32, logit_normal_mean: float = 0.0,
    logit_normal_std: float = 1.0, spectra: KroneckerSpectra | None = None, batch_size: int | None = None,
    progress: bool = True, **fit_kwargs,
) -> dict:
    """Marginal (unconditional) VIV over the class mixture by Rao–Blackwellised Monte Carlo (§1.5).

    t is drawn per draw from the time law (uniform or logit-normal) rather than fixed nodes, since for small
    λ the integrand is sharply peaked near t = 1.

    Args:
        latents, labels: as for :func:`~diffusability.metrics.kronecker.fit_class_covariances` (ignored when
            ``spectra`` with factors is given).
        top_components: exact posterior terms for the top-k pre-ranked components per draw (None: all K).
        spectra: reuse a fit made with ``return_factors=True``.
        fit_kwargs: passed to :func:`~diffusability.metrics.kronecker.fit_class_covariances`.
    Returns:
        {"value": float, "stderr": float, "value_per_dim": float, "t_draws": (draws,), "estimates": (draws,)}
        — the per-draw pairs let a caller bin a time-resolved curve.
    """
    check_choice("time_law", time_law, TIME_LAWS)
    if spectra is None:
        require(latents is not None and labels is not None, "marginal_viv: give latents and labels, or spectra")
        require_two_classes(torch.as_tensor(labels), "marginal VIV")
        spectra = kronecker.fit_class_covariances(latents, labels, return_factors=True, progress=progress, **fit_kwargs)
    mixture = KroneckerMixture.from_spectra(spectra)
    device = mixture.means.device
    generator = torch.Generator(device=device).manual_seed(int(seed))
    drawn: list[torch.Tensor] = []

    def draw_times(m: int) -> torch.Tensor:
        if time_law == "uniform":
            t = torch.rand(m, dtype=torch.float64, device=device, generator=generator)
        else:
            z = torch.randn(m, dtype=torch.float64, device=device, generator=generator)
            t = torch.sigmoid(logit_normal_mean + logit_normal_std * z)
        drawn.append(t)
        return t

    estimates = _run_draws(mixture, draw_times, draws, generator, top_components, batch_size, show=progress)
    value = float(estimates.mean())
    stderr = float(estimates.std() / math.sqrt(draws)) if draws > 1 else float("nan")
    return {"value": value, "stderr": stderr, "value_per_dim": value / spectra.dim,
            "t_draws": torch.cat(drawn), "estimates": estimates}
