"""Small float64 linear-algebra helpers shared by the VIV and Fisher metrics.

Everything here is batched over leading dimensions: a "matrix" argument has shape (..., p, p).

Threads: on this project's 2-core CPUs MKL's *threaded* LAPACK is pathological for small matrices. A batch of
40 Cholesky factorisations of 256×256 took 0.66–1.0 s with 2 threads and 0.04–0.09 s with 1; 40 ``eigvalsh``
4.8–6.2 s against 0.37–0.54 s (torch 2.13 + MKL 2024.2, the same run, other jobs sharing the cores). The OpenMP
synchronisation inside each small factorisation is the likely cost (it waits on a descheduled partner
thread). :func:`single_thread` runs
such calls single-threaded; big matrix products keep every thread (they have few barriers).
"""

from __future__ import annotations

import torch


class threads:
    """Context manager: the enclosed torch CPU calls run with ``count`` threads (None: unchanged); a no-op for
    other devices. Reusable; restores the previous count on exit (a call costs ~0.3 µs).
    ``torch.set_num_threads`` is process-wide, so this is not meant for code that runs torch in several
    Python threads at once.
    """

    def __init__(self, count: int | None, device: torch.device | str | None = None):
        self.count = None if device is not None and torch.device(device).type != "cpu" else count
        self._previous: list[int] = []

    def __enter__(self):
        previous = torch.get_num_threads()
        self._previous.append(previous)
        if self.count is not None and self.count != previous:
            torch.set_num_threads(self.count)
        return self

    def __exit__(self, *exc):
        previous = self._previous.pop()
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
        return False


def single_thread(device: torch.device | str | None = None):
    """:func:`threads` (1): for small, latency-bound LAPACK calls and elementwise passes."""
    return threads(1, device)


def symmetrize(matrix: torch.Tensor) -> torch.Tensor:
    """(M + Mᵀ)/2 over the last two dimensions; removes round-off asymmetry before eigh/Cholesky."""
    return 0.5 * (matrix + matrix.mT)


def batched_trace(matrix: torch.Tensor) -> torch.Tensor:
    """Trace of (..., p, p) → (...)."""
    return torch.diagonal(matrix, dim1=-2, dim2=-1).sum(-1)


def floored_cholesky(matrix: torch.Tensor, relative_floor: float = 1e-6) -> torch.Tensor:
    """Lower Cholesky factor of ``matrix + relative_floor·(tr/p)·I``, shape (..., p, p).

    The shift by a tiny fraction of the mean eigenvalue plays the role of an eigenvalue floor: a dead
    (zero-variance) latent channel would otherwise make the factor singular and the whitening explode.
    It moves every eigenvalue by at most ``relative_floor`` of the mean, far below estimation error.
    Cholesky is used instead of eigh because it is about ten times cheaper for 256×256 on a CPU.
    """
    p = matrix.shape[-1]
    scale = (batched_trace(matrix) / p).clamp_min(torch.finfo(matrix.dtype).tiny)
    eye = torch.eye(p, dtype=matrix.dtype, device=matrix.device)
    shifted = symmetrize(matrix) + (relative_floor * scale)[..., None, None] * eye
    with single_thread(matrix.device):
        factor, info = torch.linalg.cholesky_ex(shifted)
        if bool((info != 0).any()):
            # Round-off can still leave a tiny negative eigenvalue; retry with a larger floor.
            shifted = shifted + (1e3 * relative_floor * scale)[..., None, None] * eye
            factor = torch.linalg.cholesky(shifted)
    return factor


def inverse_lower_triangular(lower: torch.Tensor) -> torch.Tensor:
    """L⁻¹ for lower-triangular L (..., p, p); used so whitening is a plain (fast) batched matmul."""
    eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device).expand_as(lower)
    with single_thread(lower.device):
        return torch.linalg.solve_triangular(lower, eye, upper=False)


#: below this size the block split of :func:`lower_triangular_matmul` / :func:`gram` is not worth two calls
_BLOCK_MIN = 64


def lower_triangular_matmul(lower: torch.Tensor, right: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = lower @ right`` for lower-triangular (m, p, p) ``lower`` and (m, p, k) ``right``, skipping the zero
    upper-right block: two GEMMs, [L11; 0]·R and [L21 L22]·R, 3/4 of a full product's multiply-adds.

    A GEMM with the explicit L⁻¹ instead of a triangular solve: torch's CPU ``solve_triangular`` ran at half
    GEMM speed or less on these shapes and copies a row-major right-hand side. ``out`` must not alias the inputs.
    """
    p = lower.shape[-1]
    if p < _BLOCK_MIN:
        return torch.bmm(lower, right, out=out)
    h = p // 2
    torch.bmm(lower[:, :h, :h], right[:, :h], out=out[:, :h])
    torch.bmm(lower[:, h:], right, out=out[:, h:])
    return out


def gram(rows: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = rows @ rowsᵀ`` for (m, p, k) ``rows``, (m, p, p) ``out``: the symmetric product from the diagonal
    block and the lower block row (3/4 of the multiply-adds; torch has no SYRK), the upper block mirrored.
    """
    p = rows.shape[-2]
    if p < _BLOCK_MIN:
        return torch.bmm(rows, rows.mT, out=out)
    h = p // 2
    torch.bmm(rows[:, :h], rows[:, :h].mT, out=out[:, :h, :h])
    torch.bmm(rows[:, h:], rows.mT, out=out[:, h:])
    out[:, :h, h:].copy_(out[:, h:, :h].mT)
    return out


def ledoit_wolf_shrink_(
    estimate: torch.Tensor, sum_fourth_powers: torch.Tensor, estimate_norm2: torch.Tensor, n_samples: int,
    normalisation: float,
) -> torch.Tensor:
    """In-place :func:`ledoit_wolf_shrink` of (m, p, p) ``estimate`` = scatter / ``normalisation``; returns α (m,).

    ``estimate_norm2`` = ‖S‖²_F; then ⟨S, scatter⟩ = normalisation·‖S‖²_F, so no second pass over the matrix
    is needed. The deviation S − μI is formed in place, and (1−α)(S − μI) + μI = (1−α)S + αμI.
    """
    p = estimate.shape[-1]
    diagonal = torch.diagonal(estimate, dim1=-2, dim2=-1)
    mu = diagonal.sum(-1) / p
    diagonal.sub_(mu[:, None])
    d2 = torch.linalg.vector_norm(estimate, dim=(-2, -1)).square()
    scatter_inner = normalisation * estimate_norm2
    b2 = (sum_fourth_powers - 2.0 * scatter_inner + n_samples * estimate_norm2) / float(n_samples) ** 2
    b2 = torch.minimum(b2.clamp_min(0.0), d2)
    alpha = torch.where(d2 > 0, b2 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.zeros_like(d2))
    estimate.mul_((1.0 - alpha)[:, None, None])
    diagonal.add_(mu[:, None])
    return alpha


def ledoit_wolf_shrink(
    estimate: torch.Tensor, sum_fourth_powers: torch.Tensor, scatter_inner: torch.Tensor,
    n_samples: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ledoit–Wolf shrinkage of a covariance estimate towards (tr S / p)·I.

    Args:
        estimate: S, (..., p, p) — the covariance estimate (any normalisation).
        sum_fourth_powers: Σ_k ‖x_k‖⁴ over the n pseudo-samples x_k, shape (...).
        scatter_inner: ⟨S, Σ_k x_k x_kᵀ⟩_F, shape (...).
        n_samples: n, the number of pseudo-samples.

    Returns:
        (shrunk (..., p, p), alpha (...)) with shrunk = (1−α)·S + α·μ·I, μ = tr S / p,
        α = min(b², d²)/d², d² = ‖S − μI‖²_F, b² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖²_F, where the sum is
        expanded as Σ‖x_k‖⁴ − 2⟨S, Σ x_k x_kᵀ⟩ + n‖S‖²_F so no p×p matrix per sample is formed.
    """
    p = estimate.shape[-1]
    mu = batched_trace(estimate) / p
    eye = torch.eye(p, dtype=estimate.dtype, device=estimate.device)
    deviation = estimate - mu[..., None, None] * eye
    d2 = deviation.square().sum((-2, -1))
    s_norm2 = estimate.square().sum((-2, -1))
    b2 = (sum_fourth_powers - 2.0 * scatter_inner + n_samples * s_norm2) / float(n_samples) ** 2
    b2 = torch.minimum(b2.clamp_min(0.0), d2)
    # d² = 0 means S is already a multiple of I: shrinking changes nothing, take α = 0.
    alpha = torch.where(d2 > 0, b2 / torch.where(d2 > 0, d2, torch.ones_like(d2)), torch.zeros_like(d2))
    shrunk = (1.0 - alpha)[..., None, None] * estimate + (alpha * mu)[..., None, None] * eye
    return shrunk, alpha


def clamped_eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 eigh of a symmetric PSD matrix with negative round-off eigenvalues clamped to 0.

    Returns eigenvalues (..., p) ascending and eigenvectors (..., p, p) (columns).
    """
    matrix = symmetrize(matrix.to(torch.float64))
    with single_thread(matrix.device):
        values, vectors = torch.linalg.eigh(matrix)
    return values.clamp_min(0.0), vectors


def symmetric_eigenvalues(matrix: torch.Tensor) -> torch.Tensor:
    """Ascending float64 eigenvalues of symmetric (..., p, p) matrices, negative round-off clamped to 0.

    torch's ``eigvalsh`` on every device; on the CPU single-threaded (:func:`single_thread`): the "60× slower
    than numpy" this function used to route around was MKL's threading, not its algorithm.
    """
    matrix = symmetrize(matrix.to(torch.float64))
    with single_thread(matrix.device):
        values = torch.linalg.eigvalsh(matrix)
    return values.clamp_min(0.0)
