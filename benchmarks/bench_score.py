"""Time to score one tokenizer: the workflow's latent metrics at ImageNet-val scale.

    .venv/bin/python benchmarks/bench_score.py [--threads 2] [--uniformity-repeats 1] [--small] [--names …]

The synthetic latents of ``bench_metrics.py`` (50,000 × 32×16×16, 1,000 classes × 50, foreground masks for
all of them) go through ``compute_metrics`` with the metrics of ``config/config.yaml``'s ``latent_metrics``
(without ``linear_probe``, which needs training latents) plus the paper's ``uniformity`` — what
``latent-metrics`` runs for a tokenizer, with the defaults. ``viv_marginal`` (opt-in, docs/metrics.md §1.5;
a Monte Carlo over the class mixture) is not in it: 246 s already on ``--small``. The table gives the seconds of each computation (what the registry logs
as "metrics: <computation> took <s> s"). Uniformity's paper protocol is 10 t-SNE subsets; with ``--uniformity-repeats`` r < 10 it runs r
and its time is scaled by 10/r in the total (marked "~").
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time

import torch

from bench_metrics import synthetic_latents
from diffusability.metrics.registry import compute_metrics


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--uniformity-repeats", type=int, default=1, help="t-SNE subsets run (paper: 10)")
    parser.add_argument("--small", action="store_true", help="100 classes × 20, 8 channels")
    parser.add_argument("--names", default="viv,viv_curve,lnc,lds,cds,srss,rmsc,sec,fisher,uniformity")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    classes, per_class, channels = (100, 20, 8) if args.small else (1000, 50, 32)
    latents, labels, masks = synthetic_latents(classes, per_class, channels, 16, classes * per_class)
    print(f"{len(labels)} latents {tuple(latents.shape[1:])}, {classes} classes; torch {torch.get_num_threads()} "
          f"thread(s), load average {os.getloadavg()[0]:.1f}", flush=True)
    repeats = args.uniformity_repeats
    timings: list[tuple[str, float]] = []

    class Timings(logging.Handler):
        def emit(self, record):
            if record.msg == "metrics: %s took %.2f s":
                timings.append(record.args)

    logger = logging.getLogger("diffusability")
    logger.addHandler(Timings())
    logger.setLevel(logging.INFO)
    start = time.perf_counter()
    table = compute_metrics(latents, labels, masks, names=args.names, params={"uniformity": {"repeats": repeats}})
    wall = time.perf_counter() - start
    print(f"\n{'seconds':>8}  computation: metrics")
    total = 0.0
    for computation, value in timings:
        scaled = value * 10 / repeats if computation == "uniformity" and repeats < 10 else value
        total += scaled
        note = f"  (~{scaled:.0f} s for the paper's 10 subsets)" if scaled != value else ""
        print(f"{value:>8.1f}  {computation}{note}")
    skipped = table.attrs.get("skipped") or {}
    if skipped:
        print(f"skipped: {skipped}")
    print(f"\nwall {wall:.1f} s; total with 10 t-SNE subsets {'~' if repeats < 10 else ''}{total:.0f} s "
          f"({total / 60:.1f} min); peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
