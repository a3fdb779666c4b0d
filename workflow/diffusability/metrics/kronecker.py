"""Kronecker class covariances: the flip-flop fit shared by VIV and the analytic FI/FIR — docs/metrics.md §1.4.

Each class's covariance is modelled as a Kronecker product Σ_S ⊗ Σ_C (spatial P×P ⊗ channel C×C),
fitted by the flip-flop maximum-likelihood iterations with Ledoit–Wolf shrinkage after each update; the
eigenvalues of the product are all products a_j·b_k of the factor eigenvalues. :class:`KroneckerSpectra`
holds the per-class fit, :class:`KroneckerMixture` the eigen-decomposed class mixture (the marginal VIV,
docs/metrics.md §1.5, and the mixture FI/FIR, §8). Users: :mod:`~diffusability.metrics.viv`,
:mod:`~diffusability.metrics.fisher` and :mod:`~diffusability.metrics.fisher_geometry`.

Pure functions on tensors; nothing here opens a file. Work happens on the latents' device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from diffusability.errors import DiffusabilityError, require
from diffusability.metrics._linalg import (
    batched_trace, clamped_eigh, floored_cholesky, gram, inverse_lower_triangular, ledoit_wolf_shrink,
    ledoit_wolf_shrink_, lower_triangular_matmul, single_thread, symmetric_eigenvalues, threads,
)
from diffusability.progress import progress as progress_iter

SHRINKAGES = ("ledoit_wolf", "none")

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

def check_latents_and_labels(latents: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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


def check_choice(name: str, value: str, allowed: Sequence[str]) -> None:
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
    Ledoit–Wolf intensity computed from them is equally valid (the reference loop of tests/viv_reference.py uses
    the same root, so the values agree to round-off). L_S⁻¹ is formed explicitly (P³/3 per class and iteration,
    single-threaded) and applied as a GEMM on its lower-triangular blocks; Σ_S starts at I, so the first channel
    step needs no product at all (L_S⁻¹ = I/√(1 + floor)).

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
        return_factors: also keep Σ_C, Σ_S and class means (needed by the marginal VIV and the mixture FI/FIR).
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
    check_choice("shrinkage", shrinkage, SHRINKAGES)
    require(min_per_class >= 2, f"min_per_class: expected ≥ 2 (dof = n − 1 must be ≥ 1), got {min_per_class}")
    require(tol > 0 and max_iter >= 1, f"tol/max_iter: expected tol > 0 and max_iter ≥ 1, got {tol}, {max_iter}")
    labels = check_latents_and_labels(latents, labels)
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


# ----------------------------------------------------------------------------------------------- known factors and the class mixture

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
