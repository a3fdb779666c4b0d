"""Fréchet distance: ours (symmetric eigh) vs the ADM formula (scipy.linalg.sqrtm), same run.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_frechet.py [--dims 512 2048] [--repeats 1]``
Prints one row per feature dimension: seconds of each method, speed ratio, relative difference.
Covariances come from random features (N = 2·dims rows, correlated), like real FID statistics.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg

from diffusability.evaluation import feature_statistics, frechet_distance


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'dims':>6} {'ours_s':>9} {'scipy_sqrtm_s':>14} {'speedup':>8} {'rel_diff':>10} {'fd':>12}")
    for dims in args.dims:
        mixing = rng.standard_normal((dims, dims)) / np.sqrt(dims)
        a = rng.standard_normal((2 * dims, dims)) @ mixing
        b = rng.standard_normal((2 * dims, dims)) @ (mixing + 0.1 * np.eye(dims)) + 0.05
        (mu1, s1), (mu2, s2) = feature_statistics(a), feature_statistics(b)
        ours_s, ours = best_time(lambda: frechet_distance(mu1, s1, mu2, s2), args.repeats)
        ref_s, ref = best_time(lambda: adm_frechet_distance(mu1, s1, mu2, s2), args.repeats)
        print(f"{dims:>6} {ours_s:>9.3f} {ref_s:>14.3f} {ref_s / ours_s:>7.1f}x "
              f"{abs(ours - ref) / abs(ref):>10.2e} {ours:>12.6f}", flush=True)


if __name__ == "__main__":
    main()
