"""Benchmark of the class-conditional latent metric suite at ImageNet-val scale.

Synthetic data: 50,000 latents of 32×16×16 with spatial correlation (smooth class means plus
smooth per-image noise), 1,000 classes × 50 images, and random ellipse foreground masks for
12,000 of them (the ImageNet-S919 val size). Latents are standardised per channel, as in the
workflow. For each metric the vectorised implementation is timed on the full set, and a
straightforward per-image (per-class, per-query) Python loop reference — what a user writes first
from the docs/metrics.md definitions: plain torch ops on one image at a time in the latents' own dtype
(float32; iREPA's per-image Gram + distance masks for LDS/CDS/SRSS/RMSC, ``scipy.fft.dctn`` per
image for SEC, one similarity row per query for LNC; VIV's per-class flip-flop in float64 as
§1.4 prescribes) — is timed on a subset and extrapolated linearly to the full set (marked "~").
The difference column is max |ours − reference| / mean |reference| over the subset's per-image
(per-class, per-query) values. Uniformity is timed for each t-SNE backend on one subset; the
paper protocol (10 subsets) is extrapolated.

    python benchmarks/bench_metrics.py [--small] [--device cuda] [--uniformity-repeats 1]
        [--uniformity-backends sklearn,opentsne]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft
import torch

from diffusability.metrics import spatial, spectral
from diffusability.metrics.normalization import channel_stats, normalize_latents
from diffusability.metrics.semantic import knn_label_agreement, pool_foreground


# ---------------------------------------------------------------------------------------- data


def smooth(x: torch.Tensor, passes: int = 2) -> torch.Tensor:
    """Spatially correlated fields: repeated 3×3 box blurs (replicate padding)."""
    for _ in range(passes):
        x = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return x


def synthetic_latents(n_classes: int, per_class: int, channels: int, size: int, n_masked: int, seed: int = 0):
    """latents (N, C, S, S) float32 standardised per channel, labels (N,), masks (n_masked, S, S) bool."""
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * smooth(torch.randn(n_classes, channels, size, size, generator=g))
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    latents = torch.empty(len(labels), channels, size, size)
    for start in range(0, len(labels), 5000):
        y = labels[start:start + 5000]
        noise = smooth(torch.randn(len(y), channels, size, size, generator=g), 1)
        latents[start:start + 5000] = means[y] + noise + 0.3 * torch.randn(len(y), channels, size, size, generator=g)
    latents = normalize_latents(latents, *channel_stats(latents))
    rows = torch.arange(size).view(1, size, 1).float()
    cols = torch.arange(size).view(1, 1, size).float()
    centre = size / 4 + torch.rand(n_masked, 2, generator=g) * size / 2
    radii = size * (0.22 + 0.18 * torch.rand(n_masked, 2, generator=g))
    masks = (((rows - centre[:, 0, None, None]) / radii[:, 0, None, None]) ** 2
             + ((cols - centre[:, 1, None, None]) / radii[:, 1, None, None]) ** 2) <= 1.0
    return latents, labels, masks


# ---------------------------------------------------------------------------------------- loop references


def reference_unit_gram(image: torch.Tensor) -> torch.Tensor:
    """(C, H, W) → (P, P) cosine matrix of one image's tokens (in the image's dtype)."""
    tokens = image.reshape(image.shape[0], -1).T
    tokens = tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-8)
    return tokens @ tokens.T


def reference_lds_loop(latents, far_dist=6):
    dist = spatial.manhattan_distances(latents.shape[2], latents.shape[3])
    out = []
    for image in latents:
        gram = reference_unit_gram(image)
        out.append(float(gram[dist == 1].mean() - gram[dist >= far_dist].mean()))
    return np.array(out)


def reference_cds_loop(latents, dmax=8):
    dist = spatial.manhattan_distances(latents.shape[2], latents.shape[3])
    ds = np.arange(1, dmax + 1)
    out = []
    for image in latents:
        gram = reference_unit_gram(image)
        s = [float(gram[dist == d].mean()) for d in ds]
        out.append(-np.polyfit(ds, s, 1)[0])
    return np.array(out)


def reference_srss_loop(latents, masks, d_pos=1, d_neg=6, min_fg=64, min_bg=64):
    dist = spatial.manhattan_distances(latents.shape[2], latents.shape[3])
    out = []
    for image, mask in zip(latents, masks):
        fg = mask.reshape(-1)
        if int(fg.sum()) < min_fg or int((~fg).sum()) < min_bg:
            out.append(math.nan)
            continue
        gram = reference_unit_gram(image)
        diffs = []
        for p in torch.nonzero(fg).flatten().tolist():
            pos = fg & (dist[p] >= 1) & (dist[p] <= d_pos)
            neg = ~fg & (dist[p] >= d_neg)
            if pos.any() and neg.any():
                diffs.append(float(gram[p, pos].mean() - gram[p, neg].mean()))
        out.append(float(np.mean(diffs)) if diffs else math.nan)
    return np.array(out)


def reference_rmsc_loop(latents):
    out = []
    for image in latents:
        tokens = image.reshape(image.shape[0], -1).T
        tokens = tokens / tokens.norm(dim=1, keepdim=True).clamp_min(1e-8)
        out.append(float((tokens - tokens.mean(0)).pow(2).sum(1).mean().sqrt()))
    return np.array(out)


def reference_sec_loop(latents, ratio=0.5):
    h, w = latents.shape[2], latents.shape[3]
    energy = np.zeros((h, w))
    for image in latents:
        energy += (scipy.fft.dctn(image.numpy(), axes=(1, 2), norm="ortho") ** 2).sum(0)
    u, v = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return energy[u + v > ratio * (h + w - 2)].sum() / energy.sum()


def reference_lnc_loop(features, labels, queries, k=5):
    feats = features / features.norm(dim=1, keepdim=True).clamp_min(1e-8)
    out = []
    for i in queries.tolist():
        sims = feats @ feats[i]
        sims[i] = -math.inf
        out.append(float((labels[sims.topk(k).indices] == labels[i]).double().mean()))
    return np.array(out)


# ---------------------------------------------------------------------------------------- harness


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def relative_difference(ours, reference) -> float:
    ours, reference = np.asarray(ours, float), np.asarray(reference, float)
    keep = ~np.isnan(reference)
    assert np.array_equal(keep, ~np.isnan(ours)), "NaN pattern differs"
    return float(np.abs(ours[keep] - reference[keep]).max() / np.abs(reference[keep]).mean())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="quick run: 100 classes × 20, 8 channels")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ref-images", type=int, default=1000, help="images timed by the per-image loops")
    parser.add_argument("--ref-srss-images", type=int, default=300)
    parser.add_argument("--ref-queries", type=int, default=2000)
    parser.add_argument("--ref-classes", type=int, default=10)
    parser.add_argument("--uniformity-n", type=int, default=10_000)
    parser.add_argument("--uniformity-repeats", type=int, default=1)
    parser.add_argument("--uniformity-backends", default="sklearn,opentsne",
                        help="comma-separated t-SNE backends to time (sklearn = VA-VAE protocol)")
    parser.add_argument("--skip-uniformity", action="store_true")
    parser.add_argument("--skip-viv", action="store_true")
    args = parser.parse_args(argv)
    if args.small:
        n_classes, per_class, channels, n_masked = 100, 20, 8, 600
        args.ref_images, args.ref_srss_images = min(args.ref_images, 300), min(args.ref_srss_images, 100)
        args.ref_queries, args.ref_classes = min(args.ref_queries, 300), min(args.ref_classes, 5)
        args.uniformity_n = min(args.uniformity_n, 1000)
    else:
        n_classes, per_class, channels, n_masked = 1000, 50, 32, 12_000
    wall_start = time.perf_counter()
    latents, labels, masks = synthetic_latents(n_classes, per_class, channels, 16, n_masked)
    n = latents.shape[0]
    print(f"data: {n} latents {tuple(latents.shape[1:])}, {n_classes} classes, {n_masked} masked, "
          f"built in {time.perf_counter() - wall_start:.1f} s; torch threads {torch.get_num_threads()}", flush=True)
    device = torch.device(args.device)
    z = latents.to(device)
    masked_z, masked_labels, masks_d = z[:n_masked], labels[:n_masked].to(device), masks.to(device)
    # iREPA's filter (64/64) is kept: the synthetic ellipses are sized so that most images pass
    rows = []

    def add(name, ours_s, ref_s, scale, diff, note=""):
        rows.append((name, ours_s, ref_s * scale if ref_s is not None else None, scale != 1, diff, note))
        print(f"  done {name}: ours {ours_s:.2f} s", flush=True)

    # VIV (class-conditional, both time laws)
    try:
        from diffusability.metrics import viv

        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))   # the test oracle
        from viv_reference import reference_viv_loop
    except ImportError:
        viv = None
    if args.skip_viv:
        viv = None
    if viv is not None:
        result, ours_s = timed(viv.class_conditional_viv, z, labels.to(device), progress=False)
        subset = labels < args.ref_classes
        reference, ref_s = timed(reference_viv_loop, latents[subset], labels[subset])
        ours_per_class = np.concatenate([result["per_class"]["uniform"][:args.ref_classes].cpu().numpy(),
                                         result["per_class"]["logit_normal"][:args.ref_classes].cpu().numpy()])
        ref_per_class = np.concatenate([reference["per_class"]["uniform"].numpy(),
                                        reference["per_class"]["logit_normal"].numpy()])
        its = result["spectra"].iterations.double()
        add("viv (uniform + logit-normal)", ours_s, ref_s, n_classes / args.ref_classes,
            relative_difference(ours_per_class, ref_per_class),
            f"loop: {args.ref_classes} classes; flip-flop iterations mean {float(its.mean()):.1f} "
            f"max {int(its.max())}, {int((~result['spectra'].converged).sum())} not converged")

    # LNC on the masked subset
    (pooled, has_fg), pool_s = timed(pool_foreground, masked_z, masks_d)
    ours_values, ours_s = timed(knn_label_agreement, pooled[has_fg], masked_labels[has_fg], 5)
    ours_s += pool_s
    queries = torch.arange(min(args.ref_queries, int(has_fg.sum())))
    reference, ref_s = timed(reference_lnc_loop, pooled[has_fg].cpu(), masked_labels[has_fg].cpu(), queries)
    add("lnc (k=5, FG-pooled)", ours_s, ref_s, int(has_fg.sum()) / len(queries),
        relative_difference(ours_values[queries].cpu().numpy(), reference), f"loop: {len(queries)} queries")

    sub = latents[:args.ref_images]
    for name, fn, ref_fn in (("lds", spatial.local_distant_similarity, reference_lds_loop),
                             ("cds", spatial.correlation_decay_slope, reference_cds_loop),
                             ("rmsc", spatial.rms_spatial_contrast, reference_rmsc_loop)):
        result, ours_s = timed(fn, z)
        reference, ref_s = timed(ref_fn, sub)
        add(name, ours_s, ref_s, n / len(sub),
            relative_difference(result["per_image"][:len(sub)].cpu().numpy(), reference),
            f"loop: {len(sub)} images")

    result, ours_s = timed(spatial.semantic_region_self_similarity, masked_z, masks_d)
    n_ref = args.ref_srss_images
    reference, ref_s = timed(reference_srss_loop, latents[:n_ref], masks[:n_ref])
    add("srss", ours_s, ref_s, n_masked / n_ref,
        relative_difference(result["per_image"][:n_ref].cpu().numpy(), reference),
        f"loop: {n_ref} images; {result['n_used']} of {n_masked} pass 64/64")

    result, ours_s = timed(spectral.spectral_energy_concentration, z)
    on_subset = spectral.spectral_energy_concentration(sub.to(device))["value"]
    reference, ref_s = timed(reference_sec_loop, sub)
    add("sec (r=0.5 + sweep)", ours_s, ref_s, n / len(sub), abs(on_subset - reference) / abs(reference),
        f"loop: {len(sub)} images (scipy dctn)")

    if not args.skip_uniformity:
        from diffusability.metrics.uniformity import latent_uniformity

        for backend in [b.strip() for b in args.uniformity_backends.split(",") if b.strip()]:
            try:
                result, ours_s = timed(latent_uniformity, latents, n=args.uniformity_n,
                                       repeats=args.uniformity_repeats, backend=backend,
                                       n_jobs=torch.get_num_threads())
            except Exception as exc:  # e.g. openTSNE not installed: say so in the table
                print(f"  uniformity[{backend}] skipped: {exc}", flush=True)
                continue
            add(f"uniformity[{backend}]", ours_s, None, 1, math.nan,
                f"n={args.uniformity_n}, repeats={args.uniformity_repeats}, cv={result['cv']:.4f} "
                f"gini={result['gini']:.4f}; 10 repeats ≈ {ours_s / args.uniformity_repeats * 10:.0f} s")

    total = time.perf_counter() - wall_start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print()
    print(f"{'metric':<30} {'ours s':>9} {'loop s':>10} {'ratio':>8} {'max|Δ|/mean|ref|':>17}  note")
    for name, ours_s, ref_s, extrapolated, diff, note in rows:
        ref_text = "—" if ref_s is None else ("~" if extrapolated else "") + f"{ref_s:.1f}"
        ratio = "—" if ref_s is None else f"{ref_s / ours_s:.1f}×"
        diff_text = "—" if math.isnan(diff) else f"{diff:.1e}"
        print(f"{name:<30} {ours_s:>9.2f} {ref_text:>10} {ratio:>8} {diff_text:>17}  {note}")
    print(f"\ntotal wall time {total:.1f} s (goal ≤ 300 s; includes the timed loop subsets); peak RSS {peak_gib:.2f} GiB (goal ≤ 8 GiB); "
          f"device {args.device}; '~' = loop time extrapolated linearly from the subset in the note")
    return 0


if __name__ == "__main__":
    sys.exit(main())
