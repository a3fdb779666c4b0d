"""Velocity Irreducible Variance (VIV) — docs/metrics.md §1.

Flow matching with t = 0 noise, t = 1 data: x_t = (1−t)·x0 + t·x1, target v = x1 − x0. For a Gaussian class
x1 ~ N(μ, Σ) with eigenvalues λ_i the part of the loss no network can remove is (eq. 4)

    σ²_irr(t) = Σ_i λ_i / (t²λ_i + (1−t)²),

whose uniform-time average is (π/2)·Σ_i √λ_i (eq. 5). Class covariances are estimated as Kronecker products
Σ_S ⊗ Σ_C (spatial P×P ⊗ channel C×C) with the flip-flop estimator + Ledoit–Wolf shrinkage (§1.4); the eigenvalues
of the product are all products a_j·b_k of the factor eigenvalues. The marginal (unconditional) VIV over the class
mixture is a Rao–Blackwellised Monte Carlo estimate (§1.5).

Pure functions on tensors; nothing here opens a file. Work happens on the latents' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from diffusability.errors import DiffusabilityError, require
from diffusability.metrics._linalg import (
    batched_trace, clamped_eigh, floored_cholesky, gram, inverse_lower_triangular, ledoit_wolf_shrink,
    ledoit_wolf_shrink_, lower_triangular_matmul, single_thread, symmetric_eigenvalues, threads,
)
from diffusability.metrics.normalization import require_two_classes
from diffusability.progress import progress as progress_iter

SHRINKAGES = ("ledoit_wolf", "none")
TIME_LAWS = ("uniform", "logit_normal")


@dataclass
class KroneckerSpectra:
    """Per-class Kronecker covariance spectra, Σ_c ≈ Σ_S,c ⊗ Σ_C,c (scale fixed by tr Σ_S,c = P).

    Attributes:
        classes: (K,) int64 class labels, ascending.
        counts: (K,) int64 number of latents per class.
        channel_eigs: (K, C) float64 eigenvalues b of Σ_C (ascending, ≥ 0).
        spatial_eigs: (K, P) float64 eigenvalues a of Σ_S (ascending, ≥ 0).
        iterations: (K,) int64 flip-flop iterations used.
        converged: (K,) bool, relative change fell below ``tol`` before ``max_iter``.
        latent_shape: (C, H, W).
        channel_factors / spatial_factors: (K, C, C) / (K, P, P) float64 Σ_C, Σ_S (only with return_factors).
        class_means: (K, C, P) float64 class mean matrices (only with return_factors).
        workspace_bytes: bytes of working memory the fit allocated (None when not fitted from latents).
    """

    classes: torch.Tensor
    counts: torch.Tensor
    channel_eigs: torch.Tensor
    spatial_eigs: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    latent_shape: tuple[int, int, int]
    channel_factors: torch.Tensor | None = None
    spatial_factors: torch.Tensor | None = None
    class_means: torch.Tensor | None = None
    workspace_bytes: int | None = None

    @property
    def dim(self) -> int:
        """D = C·H·W."""
        c, h, w = self.latent_shape
        return c * h * w

    def eigenvalue_products(self) -> torch.Tensor:
        """All eigenvalues of Σ_S ⊗ Σ_C: (K, C·P) float64 products b_k·a_j."""
        return (self.channel_eigs[:, :, None] * self.spatial_eigs[:, None, :]).reshape(len(self.classes), -1)


# ----------------------------------------------------------------------------------------------- input checks

def _check_latents_and_labels(latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate shapes/dtypes/finiteness; returns labels as int64 on the latents' device."""
    require(isinstance(latents, torch.Tensor) and latents.ndim == 4,
            f"latents: expected a 4-D tensor (N, C, H, W), got "
            f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
    require(latents.is_floating_point(), f"latents: expected a floating-point tensor, got {latents.dtype}")
    labels = torch.as_tensor(labels)
    require(labels.ndim == 1 and labels.shape[0] == latents.shape[0],
            f"labels: expected shape ({latents.shape[0]},) to match latents, got {tuple(labels.shape)}")
    require(not labels.is_floating_point() and not labels.is_complex() and labels.dtype != torch.bool,
            f"labels: expected an integer tensor, got {labels.dtype}")
    # A finite sum proves every value finite (NaN/Inf propagate); only otherwise is the per-sample check run
    # (it allocates an N·D boolean mask: 410 MB at ImageNet-val scale).
    if bool(torch.isfinite(latents.sum())):
        return labels.to(device=latents.device, dtype=torch.int64)
    finite = torch.isfinite(latents).flatten(1).all(1)
    if not bool(finite.all()):
        bad = int(torch.nonzero(~finite)[0])
        raise DiffusabilityError(
            f"latents: sample {bad} (class {int(labels[bad])}) contains NaN or Inf; "
            f"{int((~finite).sum())} of {latents.shape[0]} samples are non-finite")
    return labels.to(device=latents.device, dtype=torch.int64)


def _check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
    require(value in allowed, f"{name}: expected one of {list(allowed)}, got {value!r}")


# ----------------------------------------------------------------------------------------------- flip-flop

#: the eigenvalue floor of :func:`~diffusability.metrics._linalg.floored_cholesky` (relative to the mean eigenvalue)
CHOLESKY_FLOOR = 1e-6

#: default bound on the flip-flop's working memory (every buffer, :class:`_Workspace`), whatever N and K
WORKSPACE_BYTES = 2 ** 29


def workspace_bytes_per_class(n: int, c: int, p: int, product_dtype: torch.dtype = torch.float64) -> int:
    """Bytes of flip-flop workspace one class of ``n`` latents occupies in a batch (see :class:`_Workspace`).

    2·n·C·P product-dtype numbers (residuals, whitened copies), five float64 P×P stacks (Σ_S, the new Σ_S, the
    Cholesky factor and its inverse, the final Σ_S of classes that stopped; two more product-dtype ones when
    products are not float64), the n per-latent C×C Grams R_n R_nᵀ and a scratch copy, n·max(P, C)
    pseudo-sample norms, the P·C class mean and a few C×C matrices. The P×P stacks do not shrink with n,
    which is why a budget counting only the residuals let memory grow as N shrank.
    """
    item = torch.empty((), dtype=product_dtype).element_size()
    squares = 5 * p * p * 8 + (2 * p * p * item if product_dtype != torch.float64 else 0)
    return (2 * n * c * p * item + squares + 2 * n * c * c * 8 + n * max(p, c) * item + p * c * item
            + 8 * c * c * 8)


class _Workspace:
    """Every buffer of the flip-flop, allocated once per fit and reused by every batch and every iteration.

    Per class slot: residuals R and a work buffer W as (P, n·C) row-major matrices — in that layout each of the
    four products is one batched GEMM on contiguous memory, with no permuted copy: the channel pseudo-samples
    are the rows of W = L_S⁻¹R viewed as (P·n, C), the spatial ones the columns of V viewed as (P, n·C), and
    V = L_C⁻¹R is R viewed as (P·n, C) times L_C⁻ᵀ. Plus Σ_S, the new Σ_S, L_S (column-major, the layout
    LAPACK writes, so ``cholesky_ex(out=)`` needs no temporary), L_S⁻¹, the final Σ_S (P×P), the per-latent
    Grams R_n R_nᵀ (n, C, C), norms and means. One gather buffer of n·C·P latents (the input dtype) is shared.
    """

    def __init__(self, slots: int, max_n: int, max_slot_n: int, c: int, p: int, latent_dtype: torch.dtype,
                 product_dtype: torch.dtype, device: torch.device):
        big = max_slot_n * c * p                               # max over batches of (classes · n) · C · P
        self.c, self.p, self.product_dtype, self.device = c, p, product_dtype, device
        pd = dict(dtype=product_dtype, device=device)
        f64 = dict(dtype=torch.float64, device=device)
        self._residual = torch.empty(big, **pd)
        self._work = torch.empty(big, **pd)
        self._squares = [torch.empty(slots * p * p, **f64) for _ in range(5)]
        self._squares_pd = ([torch.empty(slots * p * p, **pd) for _ in range(2)]
                            if product_dtype != torch.float64 else None)
        self._norms = torch.empty(max_slot_n * max(p, c), **pd)
        self._grams = torch.empty(2 * max_slot_n * c * c, **f64)       # the Grams and a scratch copy
        self._mean = torch.empty(slots * p * c, **pd)
        self._info = torch.empty(slots, dtype=torch.int32, device=device)
        self._gather = torch.empty(max_n * c * p, dtype=latent_dtype, device=device)
        self.nbytes = sum(t.numel() * t.element_size() for t in (
            self._residual, self._work, *self._squares, *(self._squares_pd or []), self._norms, self._grams,
            self._mean, self._info, self._gather))

    def batch(self, m: int, n: int) -> dict:
        c, p = self.c, self.p
        views = {"residual": self._residual[:m * p * n * c].view(m, p, n * c),
                 "work": self._work[:m * p * n * c].view(m, p, n * c),
                 "norms": self._norms[:m * n * max(p, c)], "grams": self._grams[:m * n * c * c].view(m, n, c, c),
                 "grams_scratch": self._grams[m * n * c * c:2 * m * n * c * c].view(m, n * c, c),
                 "mean": self._mean[:m * p * c].view(m, p, 1, c), "info": self._info[:m], "gather": self._gather,
                 "squares": [s[:m * p * p].view(m, p, p) for s in self._squares]}
        views["squares"][2] = views["squares"][2].mT                  # L_S: batched column-major
        if self._squares_pd is not None:
            views["squares_pd"] = [s[:m * p * p].view(m, p, p) for s in self._squares_pd]
        return views


def _floored_cholesky_inverse(matrix: torch.Tensor, scratch: torch.Tensor, chol: torch.Tensor,
                              chol_inv: torch.Tensor, info: torch.Tensor) -> torch.Tensor:
    """L⁻¹ of :func:`floored_cholesky` (same floor and retry) into ``chol_inv``, with no allocation of P×P size.

    ``scratch`` receives the shifted matrix and then the identity; ``chol`` the factor. Only the lower triangle
    is read, so the symmetrisation of :func:`floored_cholesky` is not needed (it changes the factor by round-off).
    """
    p = matrix.shape[-1]
    scale = (batched_trace(matrix) / p).clamp_min(torch.finfo(matrix.dtype).tiny)
    scratch.copy_(matrix)
    diagonal = torch.diagonal(scratch, dim1=-2, dim2=-1)
    diagonal.add_((CHOLESKY_FLOOR * scale)[:, None])
    with single_thread(matrix.device):
        torch.linalg.cholesky_ex(scratch, out=(chol, info))
        if bool((info != 0).any()):
            diagonal.add_((1e3 * CHOLESKY_FLOOR * scale)[:, None])
            torch.linalg.cholesky(scratch, out=chol)
        scratch.zero_()
        diagonal.fill_(1.0)
        torch.linalg.solve_triangular(chol, scratch, upper=False, out=chol_inv)
    return chol_inv


def _fourth_power_sum(rows: torch.Tensor, dim: int, out: torch.Tensor) -> torch.Tensor:
    """Σ_k ‖x_k‖⁴ over the pseudo-samples x_k laid along ``dim`` of (m, ·, ·) ``rows``, float64 (m,)."""
    norms = torch.linalg.vector_norm(rows, dim=dim, out=out)  # no squared copy of rows
    return norms.square_().square_().sum(-1, dtype=torch.float64)


def _flip_flop_batch(
    buffers: dict, m: int, n: int, *, shrinkage: str, tol: float, max_iter: int, finish,
) -> None:
    """Batched flip-flop MLE of Σ_C, Σ_S for the ``m`` classes of ``n`` latents whose residuals fill the batch.

    Args:
        buffers: :meth:`_Workspace.batch` views; ``buffers["residual"]`` holds the (m, P, n·C) residuals.
        finish: called as ``finish(slots, sigma_c, iterations, converged)`` for the classes that stop (their
            slot indices in the batch); their Σ_S is copied to ``buffers["squares"][4][slot]``.

    Whitening uses the Cholesky factor (W_n = R_n L_S^{-T}, V_n = L_C^{-1} R_n): any square root gives the same
    Σ_n W_n W_nᵀ = Σ_n R_n Σ_S⁻¹ R_nᵀ, and under the model the pseudo-samples are i.i.d. for every root, so the
    Ledoit–Wolf intensity computed from them is equally valid (the reference loop uses the same root, so the
    values agree to round-off). L_S⁻¹ is formed explicitly (P³/3 per class and iteration, single-threaded) and
    applied as a GEMM on its lower-triangular blocks; Σ_S starts at I, so the first channel step needs no
    product at all (L_S⁻¹ = I/√(1 + floor)).

    Converged classes leave the active set after every iteration (their slots are compacted in place), so a
    batch never iterates on behalf of its slowest class: each class gets exactly the iterations (and result) a
    per-class loop would give it.

    Memory: nothing of n·C·P or P×P size is allocated in the loop; every product, factorisation and shrinkage
    writes into the workspace (``out=`` and in-place ops). CPU threads: the four matrix products run with the
    caller's thread count, everything else (small factorisations, elementwise passes) single-threaded — see
    :mod:`~diffusability.metrics._linalg` for why.
    """
    device = buffers["residual"].device
    gemm = threads(torch.get_num_threads(), device)     # the products get the caller's threads, the rest one
    with single_thread(device):
        _flip_flop_loop(buffers, m, n, shrinkage=shrinkage, tol=tol, max_iter=max_iter, finish=finish, gemm=gemm)


def _flip_flop_loop(buffers: dict, m: int, n: int, *, shrinkage: str, tol: float, max_iter: int, finish,
                    gemm) -> None:
    """The body of :func:`_flip_flop_batch`: single-threaded, the matrix products under ``gemm`` threads."""
    residual, work, (sigma_s, scatter_s, chol, chol_inv, final) = (buffers["residual"], buffers["work"],
                                                                   buffers["squares"])
    squares_pd, grams = buffers.get("squares_pd"), buffers["grams"]
    device, pd = residual.device, residual.dtype
    c = residual.shape[2] // n
    p = residual.shape[1]
    dof = n - 1
    shrink = shrinkage == "ledoit_wolf"
    if shrink:
        # G_n = R_n R_nᵀ, fixed over the iterations: the spatial pseudo-samples (rows of L_C⁻¹R_n) then have
        # squared norms diag(L_C⁻¹ G_n L_C⁻ᵀ), n·C³ work instead of a pass over the n·C·P whitened residuals.
        for slot in range(m):
            samples = residual[slot].view(p, n, c).permute(1, 2, 0)                  # (n, C, P), no copy
            if pd == torch.float64:
                torch.bmm(samples, samples.mT, out=grams[slot])
            else:
                grams[slot].copy_(torch.bmm(samples, samples.mT))
    sigma_s.zero_()
    torch.diagonal(sigma_s, dim1=-2, dim2=-1).fill_(1.0)
    sigma_c = torch.eye(c, dtype=torch.float64, device=device).expand(m, c, c).clone()
    active = torch.arange(m, device=device)        # batch slots still iterating, in slot order
    first_scale = 1.0 / (1.0 + CHOLESKY_FLOOR)      # L_S⁻¹ L_S⁻ᵀ for Σ_S = I
    for iteration in range(max_iter):
        k = len(active)
        r, w = residual[:k], work[:k]
        old_s, new_s = sigma_s[:k], scatter_s[:k]
        # Channel step: whiten over space; the n·P rows of W viewed as (P·n, C) are channel pseudo-samples.
        if iteration == 0:
            pseudo = r
        else:
            inverse = _floored_cholesky_inverse(old_s, new_s, chol[:k], chol_inv[:k], buffers["info"][:k])
            if squares_pd is not None:
                inverse = squares_pd[0][:k].copy_(inverse)
            with gemm:
                pseudo = lower_triangular_matmul(inverse, r, out=w)
        rows = pseudo.view(k, p * n, c)
        with gemm:
            scatter_c = torch.bmm(rows.mT, rows).to(torch.float64)                 # (k, C, C)
        fourth_c = _fourth_power_sum(rows, -1, buffers["norms"][:k * p * n].view(k, p * n)) if shrink else None
        if iteration == 0:
            scatter_c *= first_scale
            fourth_c = None if fourth_c is None else fourth_c * first_scale ** 2
        new_c = scatter_c / (dof * p)
        if fourth_c is not None:
            new_c, _ = ledoit_wolf_shrink(new_c, fourth_c, (new_c * scatter_c).sum((-2, -1)), n * p)
        # Spatial step: whiten over channels; V = L_C⁻¹R in the same layout, its n·C columns are pseudo-samples.
        whiten_c = inverse_lower_triangular(floored_cholesky(new_c, CHOLESKY_FLOOR))  # L_C⁻¹ (k, C, C)
        if shrink:
            # ‖row c of L_C⁻¹R_n‖² = Σ_a L_C⁻¹[c, a]·(G_n L_C⁻ᵀ)[a, c]
            half = torch.bmm(grams[:k].view(k, n * c, c), whiten_c.mT, out=buffers["grams_scratch"][:k])
            squared = half.view(k, n, c, c).mul_(whiten_c.mT[:, None]).sum(-2)     # (k, n, C)
            fourth_s = squared.square_().sum((1, 2))
        with gemm:
            v = torch.bmm(r.view(k, p * n, c), whiten_c.to(pd).mT, out=w.view(k, p * n, c)).view(k, p, n * c)
            if squares_pd is not None:
                new_s.copy_(gram(v, out=squares_pd[1][:k]))
            else:
                gram(v, out=new_s)
        new_s.div_(dof * c)
        if shrink:
            norm2 = torch.linalg.vector_norm(new_s, dim=(-2, -1)).square()
            ledoit_wolf_shrink_(new_s, fourth_s, norm2, n * c, dof * c)
        # a·Σ_C ⊗ Σ_S/a is the same model: pin tr Σ_S = P.
        scale = batched_trace(new_s) / p
        new_s.div_(scale[:, None, None])
        new_c = new_c * scale[:, None, None]
        change = torch.maximum(
            torch.linalg.matrix_norm(new_c - sigma_c) / torch.linalg.matrix_norm(new_c),
            torch.linalg.matrix_norm(old_s.sub_(new_s)) / torch.linalg.matrix_norm(new_s))
        sigma_s, scatter_s = scatter_s, sigma_s                      # the new Σ_S becomes the current one
        sigma_c = new_c
        # Each class stops exactly where a per-class loop would; the rest continue in a smaller batch.
        keep = ~(change < tol)
        last = iteration == max_iter - 1
        stop = torch.ones_like(keep) if last else ~keep
        if bool(stop.any()):
            index = torch.nonzero(stop).flatten()
            slots = active[index]
            for i, slot in zip(index.tolist(), slots.tolist()):
                final[slot].copy_(sigma_s[i])
            finish(slots, sigma_c[index], iteration + 1, ~keep[index])
        if last or not bool(keep.any()):
            return
        if not bool(keep.all()):
            kept = torch.nonzero(keep).flatten().tolist()
            for slot, old in enumerate(kept):                        # compact in place, slot ≤ old
                if slot != old:
                    residual[slot].copy_(residual[old])
                    sigma_s[slot].copy_(sigma_s[old])
                    grams[slot].copy_(grams[old])
            active, sigma_c = active[keep], sigma_c[keep]


def fit_class_covariances(
    latents: torch.Tensor, labels: torch.Tensor, *, shrinkage: str = "ledoit_wolf", tol: float = 1e-7,
    max_iter: int = 100, classes_per_batch: int | None = None, min_per_class: int = 2,
    return_factors: bool = False, product_dtype: torch.dtype | None = None, progress: bool = True,
    workspace_bytes: int | None = None,
) -> KroneckerSpectra:
    """Kronecker flip-flop class covariances (docs/metrics.md §1.4), batched over classes.

    Args:
        latents: (N, C, H, W) normalised latents (as the diffusion model sees them).
        labels: (N,) integer class labels.
        shrinkage: "ledoit_wolf" (default) or "none".
        tol: stop a class when the relative Frobenius change of both factors is below tol.
        max_iter: iteration cap.
        classes_per_batch: classes processed together; None → as many as ``workspace_bytes`` allows.
        min_per_class: a class with fewer latents is an error (≥ 2 so dof = n − 1 ≥ 1).
        return_factors: also keep Σ_C, Σ_S and class means (needed by :func:`marginal_viv`).
        product_dtype: dtype of the residuals and the big whitening/scatter products. None → float64 everywhere.
            float32 products are faster per iteration but leave a round-off floor near 1e-7 in the relative
            change: on the benchmark data 6 of 100 classes never met tol = 1e-7 and ran all max_iter = 100
            iterations (float64: 3–6), which cost more than float32 saved. Values agree with float64 to ~1e-5
            relative (tested). Accumulation into Σ and every decomposition stay float64.
        workspace_bytes: bound on the working memory (every buffer of :class:`_Workspace`: residuals, whitened
            copies, P×P stacks, norms, the gather buffer); None → :data:`WORKSPACE_BYTES` (512 MiB). One class
            is always admitted. The outputs (eigenvalues; factors with ``return_factors``) come on top.
    Returns:
        :class:`KroneckerSpectra`.
    """
    _check_choice("shrinkage", shrinkage, SHRINKAGES)
    require(min_per_class >= 2, f"min_per_class: expected ≥ 2 (dof = n − 1 must be ≥ 1), got {min_per_class}")
    require(tol > 0 and max_iter >= 1, f"tol/max_iter: expected tol > 0 and max_iter ≥ 1, got {tol}, {max_iter}")
    labels = _check_latents_and_labels(latents, labels)
    product_dtype = torch.float64 if product_dtype is None else product_dtype
    budget = WORKSPACE_BYTES if workspace_bytes is None else int(workspace_bytes)
    device = latents.device
    n_total, c, h, w = latents.shape
    p = h * w
    classes, counts = torch.unique(labels, sorted=True, return_counts=True)
    too_small = counts < min_per_class
    if bool(too_small.any()):
        bad = [(int(k), int(m)) for k, m in zip(classes[too_small][:10], counts[too_small][:10])]
        raise DiffusabilityError(
            f"labels: {int(too_small.sum())} class(es) have fewer than min_per_class={min_per_class} latents "
            f"(class, count): {bad}")
    order = torch.argsort(labels, stable=True)
    starts = (torch.cumsum(counts, 0) - counts).tolist()
    k_total = len(classes)
    out_c = torch.empty(k_total, c, c, dtype=torch.float64, device=device)
    # The P×P factors are kept only when asked for (1000 classes × 256² float64 = 0.5 GB); else eigenvalues.
    out_s = torch.empty(k_total, p, p, dtype=torch.float64, device=device) if return_factors else None
    spatial_eigs = torch.empty(k_total, p, dtype=torch.float64, device=device)
    out_mean = torch.empty(k_total, c, p, dtype=torch.float64, device=device) if return_factors else None
    iterations = torch.empty(k_total, dtype=torch.int64, device=device)
    converged = torch.empty(k_total, dtype=torch.bool, device=device)

    # Classes with equal counts share a batch: a few big batched products instead of K small ones. On the CPU
    # with T torch threads, T batches run at once in T Python threads (torch releases the GIL), each
    # single-threaded with its own workspace of budget/T: classes are independent, so there is no
    # synchronisation at all (threaded GEMMs of these sizes wait on each other at every call, and lost to one
    # thread on the shared 2-core machine). The batch size comes from the budget minus the gather buffer.
    item = latents.element_size()
    counts_list = counts.tolist()
    groups = [(n, [k for k, m in enumerate(counts_list) if m == n]) for n in sorted(set(counts_list))]
    workers = 1 if device.type != "cpu" else max(1, min(torch.get_num_threads(), len(classes)))
    share = budget // workers
    chunks = []
    for n, members in groups:
        per_class = workspace_bytes_per_class(n, c, p, product_dtype)
        per_batch = classes_per_batch or max(1, (share - max(counts_list) * c * p * item) // per_class)
        chunks += [(n, members[i:i + per_batch]) for i in range(0, len(members), per_batch)]
    workers = min(workers, len(chunks))
    slots = max(len(members) for _, members in chunks)
    workspaces = [_Workspace(slots, max(counts_list), max(len(members) * n for n, members in chunks), c, p,
                             latents.dtype, product_dtype, device) for _ in range(workers)]
    flat = latents.reshape(n_total, c * p)          # a view for contiguous latents

    def fit_batch(workspace: _Workspace, n: int, members: list[int]) -> None:
        m = len(members)
        buffers = workspace.batch(m, n)
        residual, gather = buffers["residual"], buffers["gather"][:n * c * p].view(n, c * p)
        with single_thread(device):                 # memory-bound copies: threads only add barriers
            for slot, k in enumerate(members):      # gather one class at a time into the (P, n·C) layout
                torch.index_select(flat, 0, order[starts[k]:starts[k] + n], out=gather)
                residual[slot].view(p, n, c).copy_(gather.view(n, c, p).permute(2, 0, 1))
            mean = torch.mean(residual.view(m, p, n, c), dim=2, keepdim=True, out=buffers["mean"])
            residual.view(m, p, n, c).sub_(mean)
            energy = torch.linalg.vector_norm(residual.view(m, -1), dim=1)
        if bool((energy == 0).any()):
            bad = [int(classes[members[i]]) for i in torch.nonzero(energy == 0).flatten()[:10].tolist()]
            raise DiffusabilityError(
                f"latents: class(es) {bad} have all-constant latents (zero within-class variance); "
                "the class covariance and VIV are undefined — check the encoder output")
        index = torch.as_tensor(members, device=device)
        if out_mean is not None:
            out_mean[index] = mean[:, :, 0, :].mT.to(torch.float64)

        def finish(slots_done, sigma_c, its, conv):
            done = index[slots_done]
            out_c[done] = sigma_c
            iterations[done] = its
            converged[done] = conv

        _flip_flop_batch(buffers, m, n, shrinkage=shrinkage, tol=tol, max_iter=max_iter, finish=finish)
        final = buffers["squares"][4]
        with single_thread(device):
            # Σ_S is symmetric up to round-off in its two diagonal Gram blocks; eigvalsh reads the lower half.
            # In blocks of 16 classes: eigvalsh copies its input, and copies above glibc's largest mmap
            # threshold (32 MiB) would be fresh pages (page faults) every batch
            for start in range(0, m, 16):
                block = index[start:start + 16]
                spatial_eigs[block] = torch.linalg.eigvalsh(final[start:start + 16]).clamp_min_(0.0)
        if out_s is not None:
            out_s[index] = final

    if workers == 1:
        for n, members in progress_bar(chunks, enabled=progress):
            fit_batch(workspaces[0], n, members)
    else:
        _in_threads(fit_batch, chunks, workspaces, progress)
    channel_eigs = symmetric_eigenvalues(out_c)
    return KroneckerSpectra(
        classes=classes, counts=counts, channel_eigs=channel_eigs, spatial_eigs=spatial_eigs,
        iterations=iterations, converged=converged, latent_shape=(c, h, w),
        channel_factors=out_c if return_factors else None, spatial_factors=out_s, class_means=out_mean,
        workspace_bytes=sum(workspace.nbytes for workspace in workspaces))


def _in_threads(fit_batch, chunks: list, workspaces: list, progress: bool) -> None:
    """Run ``fit_batch(workspace, n, members)`` for every chunk, one Python thread per workspace, torch at one
    intra-op thread; the first error stops the other threads after their current batch and is raised here."""
    import queue
    import threading

    todo, done = queue.SimpleQueue(), queue.SimpleQueue()
    for chunk in chunks:
        todo.put(chunk)
    stop = threading.Event()

    def work(workspace):
        while not stop.is_set():
            try:
                n, members = todo.get_nowait()
            except queue.Empty:
                return
            try:
                fit_batch(workspace, n, members)
            except BaseException as exc:             # handed to the caller's thread
                stop.set()
                done.put(exc)
                return
            done.put(None)

    with threads(1):
        pool = [threading.Thread(target=work, args=(workspace,), daemon=True) for workspace in workspaces]
        for thread in pool:
            thread.start()
        try:
            for _ in progress_bar(list(range(len(chunks))), enabled=progress):
                error = done.get()
                if error is not None:
                    raise error
        finally:
            stop.set()
            for thread in pool:
                thread.join()


def progress_bar(items: list, *, enabled: bool):
    """Progress over class batches (shown only when ``enabled``)."""
    return progress_iter(items, total=len(items), desc="VIV flip-flop", unit="batch", disable=not enabled)


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
        _check_choice("time_laws", law, TIME_LAWS)
    require_two_classes(torch.as_tensor(labels), "VIV")
    spectra = fit_class_covariances(
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


# ----------------------------------------------------------------------------------------------- reference

def reference_viv_loop(
    latents: torch.Tensor, labels: torch.Tensor, *, shrinkage: str = "ledoit_wolf", tol: float = 1e-7,
    max_iter: int = 100, logit_normal_mean: float = 0.0, logit_normal_std: float = 1.0, nodes: int = 64,
) -> dict:
    """REFERENCE implementation for benchmarks/tests: a plain per-class Python loop, float64 throughout.

    Same maths as :func:`class_conditional_viv` (flip-flop with Cholesky whitening, Ledoit–Wolf after each
    update, tr Σ_S = P, same stopping rule), written sample by sample without batching over classes.
    Returns {"viv_uniform", "viv_logit_normal", "per_class": {"uniform", "logit_normal"}, "classes"}.
    """
    _check_choice("shrinkage", shrinkage, SHRINKAGES)
    labels = _check_latents_and_labels(latents, labels)
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
                new_c = _reference_ledoit_wolf(new_c, samples_c)
            whiten_c = inverse_lower_triangular(floored_cholesky(new_c))
            samples_s = torch.cat([whiten_c @ r[i] for i in range(n)], dim=0)             # (n·C, P)
            new_s = samples_s.T @ samples_s / ((n - 1) * c)
            if shrinkage == "ledoit_wolf":
                new_s = _reference_ledoit_wolf(new_s, samples_s)
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


def _reference_ledoit_wolf(estimate: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Ledoit–Wolf for one class from its (n, p) pseudo-samples (reference only, unbatched).

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


# ----------------------------------------------------------------------------------------------- marginal VIV

def kronecker_spectra_from_factors(
    class_means: torch.Tensor, channel_factors: torch.Tensor, spatial_factors: torch.Tensor,
    latent_shape: tuple[int, int, int], counts: torch.Tensor | None = None,
    classes: torch.Tensor | None = None,
) -> KroneckerSpectra:
    """Build :class:`KroneckerSpectra` (with factors) from known class Gaussians N(M_k, Σ_S,k ⊗ Σ_C,k).

    Args:
        class_means: (K, C, P); channel_factors: (K, C, C); spatial_factors: (K, P, P) (symmetric PSD).
        counts: (K,) mixture weights up to normalisation (default: equal).
    """
    k, c, p = class_means.shape
    require(channel_factors.shape == (k, c, c) and spatial_factors.shape == (k, p, p),
            f"factors: expected ({k},{c},{c}) and ({k},{p},{p}), got {tuple(channel_factors.shape)} and "
            f"{tuple(spatial_factors.shape)}")
    require(latent_shape[0] == c and latent_shape[1] * latent_shape[2] == p,
            f"latent_shape: expected (C={c}, H, W) with H·W = {p}, got {latent_shape}")
    device = class_means.device
    counts = torch.ones(k, dtype=torch.int64, device=device) if counts is None else torch.as_tensor(counts)
    classes = torch.arange(k, device=device) if classes is None else torch.as_tensor(classes)
    sigma_c, sigma_s = channel_factors.to(torch.float64), spatial_factors.to(torch.float64)
    return KroneckerSpectra(
        classes=classes, counts=counts, channel_eigs=symmetric_eigenvalues(sigma_c).to(device),
        spatial_eigs=symmetric_eigenvalues(sigma_s).to(device), iterations=torch.zeros(k, dtype=torch.int64, device=device),
        converged=torch.ones(k, dtype=torch.bool, device=device), latent_shape=tuple(latent_shape),
        channel_factors=sigma_c, spatial_factors=sigma_s, class_means=class_means.to(torch.float64))


@dataclass
class KroneckerMixture:
    """Eigen-decomposed class mixture p(x1) = Σ_k π_k N(M_k, Σ_S,k ⊗ Σ_C,k) on C×P matrices (float64).

    Shapes: log_weights (K,), means (K, C, P), channel_vectors (K, C, C), channel_eigs (K, C),
    spatial_vectors (K, P, P), spatial_eigs (K, P). Eigenvectors are columns.
    """

    log_weights: torch.Tensor
    means: torch.Tensor
    channel_vectors: torch.Tensor
    channel_eigs: torch.Tensor
    spatial_vectors: torch.Tensor
    spatial_eigs: torch.Tensor

    @classmethod
    def from_spectra(cls, spectra: KroneckerSpectra) -> "KroneckerMixture":
        require(spectra.channel_factors is not None and spectra.class_means is not None,
                "spectra: the marginal needs the Kronecker factors and class means; "
                "fit with fit_class_covariances(..., return_factors=True)")
        b, u_c = clamped_eigh(spectra.channel_factors)
        a, u_s = clamped_eigh(spectra.spatial_factors)
        weights = spectra.counts.to(torch.float64)
        return cls(log_weights=(weights / weights.sum()).log(), means=spectra.class_means, channel_vectors=u_c,
                   channel_eigs=b, spatial_vectors=u_s, spatial_eigs=a)

    def eigenvalues(self, index: torch.Tensor) -> torch.Tensor:
        """(B, C, P) eigenvalue grid b_k·a_j of the components ``index`` (B,)."""
        return self.channel_eigs[index][:, :, None] * self.spatial_eigs[index][:, None, :]

    def to_eigenbasis(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """U_C,kᵀ X U_S,k for X (B, C, P) and components index (B,)."""
        return self.channel_vectors[index].mT @ x @ self.spatial_vectors[index]

    def from_eigenbasis(self, y: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """U_C,k Y U_S,kᵀ (inverse of :meth:`to_eigenbasis`)."""
        return self.channel_vectors[index] @ y @ self.spatial_vectors[index].mT

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw (components (count,), x1 (count, C, P)) from the mixture."""
        k = torch.multinomial(self.log_weights.exp(), count, replacement=True, generator=generator)
        c, p = self.means.shape[1:]
        z = torch.randn(count, c, p, dtype=torch.float64, device=self.means.device, generator=generator)
        return k, self.means[k] + self.from_eigenbasis(z * self.eigenvalues(k).sqrt(), k)

    def isotropic_terms(self, x_t: torch.Tensor, t: torch.Tensor) -> dict:
        """Cheap per-component terms with each covariance replaced by (tr Σ_k / D)·I, for all K components.

        Args: x_t (B, C, P), t (B,). Returns dict of (B, K) tensors: ``log_joint`` (log π_k + log density),
        ``gain`` γ_k with posterior mean m_k = (1 − tγ_k)·M_k + γ_k·x_t, ``mean_dot_x`` ⟨M_k, x_t⟩; and
        ``mean_sq`` ‖M_k‖² (K,).
        """
        n_comp, dim = self.means.shape[0], x_t[0].numel()
        iso = (self.channel_eigs.sum(-1) * self.spatial_eigs.sum(-1)) / dim                   # (K,)
        tt = t[:, None]
        var = (tt ** 2 * iso[None] + (1 - tt) ** 2).clamp_min(1e-300)                        # (B, K)
        flat_means = self.means.reshape(n_comp, -1)
        flat_x = x_t.reshape(len(x_t), -1)
        mean_dot_x = flat_x @ flat_means.T                                                   # (B, K)
        mean_sq = flat_means.square().sum(1)
        dist2 = (flat_x.square().sum(1, keepdim=True) - 2 * tt * mean_dot_x + tt ** 2 * mean_sq).clamp_min(0)
        log_joint = self.log_weights[None] - 0.5 * (dist2 / var + dim * var.log() + dim * math.log(2 * math.pi))
        return {"log_joint": log_joint, "gain": (tt * iso[None] - (1 - tt)) / var, "mean_dot_x": mean_dot_x,
                "mean_sq": mean_sq}


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
        latents, labels: as for :func:`fit_class_covariances` (ignored when ``spectra`` with factors is given).
        top_components: exact posterior terms for the top-k pre-ranked components per draw (None: all K).
        spectra: reuse a fit made with ``return_factors=True``.
        fit_kwargs: passed to :func:`fit_class_covariances`.
    Returns:
        {"value": float, "stderr": float, "value_per_dim": float, "t_draws": (draws,), "estimates": (draws,)}
        — the per-draw pairs let a caller bin a time-resolved curve.
    """
    _check_choice("time_law", time_law, TIME_LAWS)
    if spectra is None:
        require(latents is not None and labels is not None, "marginal_viv: give latents and labels, or spectra")
        require_two_classes(torch.as_tensor(labels), "marginal VIV")
        spectra = fit_class_covariances(latents, labels, return_factors=True, progress=progress, **fit_kwargs)
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
