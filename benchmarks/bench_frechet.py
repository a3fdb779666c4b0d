"""Fréchet distance and feature statistics: ours against the ADM formula (scipy.linalg.sqrtm) and np.cov, same run.

Usage: ``.venv/bin/python benchmarks/bench_frechet.py [--dims 512 2048] [--repeats 2] [--no-sqrtm]``

Table 1, one row per feature dimension F and covariance kind (both Gaussians of a row are of that kind):

- ``regular``: N = 2F correlated features, full rank;
- ``dead``: the same through a ReLU with 10 % of the features always zero (exactly singular covariances,
  what made the old Cholesky fail and fall back to a full ``eigh``);
- ``n<f``: N = F/2 samples, rank N − 1 (fewer samples than features).

Columns: the seconds of ``frechet_distance`` (ours) and of the ADM formula (scipy ``sqrtm`` of the
non-symmetric product, with ADM's ε·I retry when it is not finite), the speed ratio, the relative difference
of the two distances, and ``vs regular`` = ours on this kind / ours on ``regular`` at the same F (the goal:
≤ ~1, a singular covariance no slower than a regular one).

Table 2: ``feature_statistics`` against ``np.cov`` on N float32 features (the dtype the feature nets emit):
seconds, ratio np.cov / ours (goal ≥ 1), max |Δσ| / max |σ|, and the peak memory each adds.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import scipy.linalg

from diffusability.metrics.frechet import feature_statistics, frechet_distance


def adm_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """ADM's ``evaluator.py`` formula: scipy sqrtm of the non-symmetric product."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(np.real(covmean)))


def best_time(fn, repeats):
    times, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def features(rng, n, dims, mixing, shift=0.0, dead=0.0):
    x = rng.standard_normal((n, dims)) @ mixing + shift
    if dead:
        x = np.maximum(x, 0.0)
        x[:, : int(dead * dims)] = 0.0
    return x


def peak_bytes(fn):
    """(result, peak RSS increase in bytes) of fn(): VmHWM is reset first (Linux ≥ 4.0)."""
    def status(key):
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith(key))

    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS:")
    result = fn()
    return result, status("VmHWM:") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-sqrtm", action="store_true", help="skip the (slow) scipy sqrtm reference")
    parser.add_argument("--stats-n", type=int, default=20_000, help="rows for the feature_statistics table")
    parser.add_argument("--stats-dims", type=int, default=2048)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'dims':>6} {'kind':>8} {'rank':>6} {'ours_s':>8} {'sqrtm_s':>8} {'speedup':>8} {'rel_diff':>9} "
          f"{'vs regular':>10} {'fd':>12}")
    for dims in args.dims:
        mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims)
        regular_s = None
        for kind, n, dead in (("regular", 2 * dims, 0.0), ("dead", 2 * dims, 0.1), ("n<f", dims // 2, 0.0)):
            a = features(rng, n, dims, mixing, dead=dead)
            b = features(rng, n, dims, mixing + 0.1 * np.eye(dims), shift=0.05, dead=dead)
            (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
            rank = np.linalg.matrix_rank(s1)
            ours_s, ours = best_time(lambda: frechet_distance(mu1, s1, mu2, s2), args.repeats)
            regular_s = ours_s if kind == "regular" else regular_s
            if args.no_sqrtm:
                ref_text = f"{'—':>8} {'—':>8} {'—':>9}"
            else:
                ref_s, ref = best_time(lambda: adm_frechet_distance(mu1, s1, mu2, s2), 1)
                ref_text = f"{ref_s:>8.3f} {ref_s / ours_s:>7.1f}x {abs(ours - ref) / abs(ref):>9.1e}"
            print(f"{dims:>6} {kind:>8} {rank:>6} {ours_s:>8.3f} {ref_text} {ours_s / regular_s:>10.2f} "
                  f"{ours:>12.6f}", flush=True)

    n, dims = args.stats_n, args.stats_dims
    mixing = rng.standard_normal((dims, dims)).astype(np.float32) / np.float32(np.sqrt(dims))
    x = (rng.standard_normal((n, dims), dtype=np.float32) @ mixing + np.float32(0.3))
    ours_s, (mu, sigma) = best_time(lambda: feature_statistics(x), args.repeats)
    cov_s, reference = best_time(lambda: np.cov(x, rowvar=False), args.repeats)
    _, ours_peak = peak_bytes(lambda: feature_statistics(x))
    _, cov_peak = peak_bytes(lambda: np.cov(x, rowvar=False))
    diff = np.abs(sigma - reference).max() / np.abs(reference).max()
    print(f"\nfeature_statistics on {n} × {dims} float32 features")
    print(f"{'method':>20} {'seconds':>8} {'peak MiB':>9}")
    print(f"{'feature_statistics':>20} {ours_s:>8.3f} {ours_peak / 2**20:>9.0f}")
    print(f"{'np.cov':>20} {cov_s:>8.3f} {cov_peak / 2**20:>9.0f}")
    print(f"ratio np.cov / ours = {cov_s / ours_s:.2f}×; max|Δσ|/max|σ| = {diff:.1e}; "
          f"process peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
