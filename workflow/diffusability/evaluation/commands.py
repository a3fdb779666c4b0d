"""Commands of the evaluation stage: ``generation-metrics``, ``reference-stats``, ``trajectory-metrics``.

``generation-metrics`` has two feature networks: a domain network directory (the embedded default,
no downloaded weights) or ``inception`` — the FID Inception-v3 of the ADM evaluator, whose rows are
``fd`` (gFID on pool3), ``sfid``, ``is`` (only when the weights include the softmax layer; otherwise
the row is left out and the params say why), ``precision`` and ``recall``. The reference is either
images (``--reference``) or cached statistics (``--reference-stats``: a ``reference-stats`` output or
ADM's ``VIRTUAL_imagenet256_labeled.npz``). ``trajectory-metrics`` measures the transport efficiency
of a sample set's recorded trajectories (rows: :func:`diffusability.evaluation.trajectory.trajectory_rows`).

File formats follow CONTRIBUTING.md: image splits are ``.safetensors`` with ``images`` uint8
(N, H, W, 3) and ``labels``; samples are ADM-layout ``.npz`` (``arr_0``, ``labels``); result
rows are tidy Parquet. Torch is imported inside the command functions.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..devices import resolve_device
from .reference_statistics import check_reference_statistics, read_reference_statistics


def register(subparsers) -> None:
    """Add the evaluation stage's subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument

    parser = subparsers.add_parser(
        "generation-metrics", help="fd / sfid / is / class_accuracy / precision / recall rows of a sample set",
        description="Generation metrics of a sample set. With a domain network directory: Fréchet distance, "
                    "inception-style score and class accuracy under the domain network. With "
                    "'--feature-net inception': the ADM suite on the FID Inception-v3 — fd (gFID, pool3), "
                    "sfid (when the reference has mu_s/sigma_s), is (when the weights include the softmax "
                    "layer; otherwise the row is left out and the params say so), precision and recall "
                    "(when reference features are at hand).")
    parser.add_argument("--samples", required=True, help="samples (.npz with arr_0 uint8 NHWC and labels)")
    parser.add_argument("--reference", default=None,
                        help="reference split (.safetensors/.npz with images); needed unless --reference-stats")
    parser.add_argument("--feature-net", required=True,
                        help="domain network directory (from train-teacher), or 'inception' (then --inception-weights)")
    parser.add_argument("--inception-weights", default=None,
                        help="FID Inception state dict (.safetensors/.pt) when --feature-net inception")
    parser.add_argument("--inception-sha256", default=None, help="expected SHA-256 of --inception-weights")
    add_device_argument(parser)
    parser.add_argument("--spec", type=json_spec, default={}, help='JSON: {"batch_size": 256, "is_splits": 10, "pr_k": 3}')
    parser.add_argument("--reference-stats", default=None,
                        help="cached reference statistics (.npz: mu, sigma[, mu_s, sigma_s, features]) from "
                             "reference-stats, or ADM's VIRTUAL_imagenet256_labeled.npz")
    parser.add_argument("--out", required=True, help="result rows (.parquet)")
    parser.set_defaults(func=run_generation_metrics)

    parser = subparsers.add_parser(
        "reference-stats", help="feature mean/covariance of an image set (cached FD reference)",
        description="Compute mu and sigma of the feature net's features over an image split (with the "
                    "Inception also mu_s, sigma_s of the spatial features); optionally keep the pool "
                    "features for precision/recall, or copy the statistics of an ADM reference batch.")
    parser.add_argument("--images", required=True, help="image split (.safetensors 'images' or .npz 'arr_0')")
    parser.add_argument("--feature-net", required=True,
                        help="domain network directory, or 'inception' (then --inception-weights)")
    parser.add_argument("--inception-weights", default=None,
                        help="FID Inception state dict (.safetensors/.pt) when --feature-net inception")
    parser.add_argument("--inception-sha256", default=None, help="expected SHA-256 of --inception-weights")
    add_device_argument(parser)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--keep-features", action="store_true",
                        help="also store the pool features of the images as 'features' (float32), for precision/recall")
    parser.add_argument("--statistics-from", default=None,
                        help="take mu, sigma (and mu_s, sigma_s) from this .npz (e.g. ADM's "
                             "VIRTUAL_imagenet256_labeled.npz) instead of computing them")
    parser.add_argument("--out", required=True, help="statistics (.npz: mu, sigma[, mu_s, sigma_s, features], n)")
    parser.set_defaults(func=run_reference_stats)

    parser = subparsers.add_parser("trajectory-metrics",
                                   help="local straightness, global efficiency, per-segment length ratio")
    parser.add_argument("--trajectories", type=Path, required=True,
                        help=".safetensors with `trajectory` (K+1, N, C, H, W) and `times` (K+1,)")
    parser.add_argument("--out", type=Path, required=True)
    parser.set_defaults(func=run_trajectory_metrics)


def load_inception(args):
    """The FID Inception of --inception-weights, SHA-256-checked when --inception-sha256 is given."""
    from ..errors import require
    from .inception import load_fid_inception

    require(args.inception_weights is not None, "--feature-net inception needs --inception-weights PATH")
    return load_fid_inception(args.inception_weights, args.inception_sha256)


def run_generation_metrics(args) -> None:
    import torch

    from ..errors import require
    from .generation import GenerationSpec

    spec = GenerationSpec.from_dict(args.spec)
    require(args.reference or args.reference_stats,
            "generation-metrics: give the reference as --reference (images) or --reference-stats (.npz)")
    start = time.perf_counter()
    torch.set_flush_denormal(True)
    if args.feature_net == "inception":
        rows, description = _inception_generation_rows(args, spec, start)
    else:
        rows, description = _domain_generation_rows(args, spec, start)
    _write_rows(rows, args, spec, description)


def _domain_generation_rows(args, spec, start):
    import numpy as np

    from ..data.splits import load_images
    from ..errors import require
    from ..io import load_arrays
    from ..teacher.domain_net import load_domain_classifier
    from ..metrics.frechet import feature_statistics
    from .generation import extract_features_and_logits, generation_rows

    samples, labels = load_images(args.samples, keys=("arr_0",))
    require(labels is not None, f"{args.samples}: needs a 'labels' array (the conditioning class of each sample)")
    net = load_domain_classifier(args.feature_net)
    require(tuple(samples.shape[1:3]) == (net.image_size, net.image_size),
            f"{args.samples}: images are {samples.shape[1]}×{samples.shape[2]}, the feature net expects "
            f"{net.image_size}×{net.image_size}")
    features, logits = extract_features_and_logits(net, samples, spec.batch_size, desc="sample features")
    if args.reference_stats:
        stats = load_arrays(args.reference_stats)
        require({"mu", "sigma"} <= set(stats), f"{args.reference_stats}: expected arrays mu and sigma")
        check_reference_statistics(stats, args.reference_stats, features.shape[1])
        reference_mu, reference_sigma, n_reference = stats["mu"], stats["sigma"], int(stats.get("n", np.array(-1)))
        # precision/recall need the features themselves (reference-stats --keep-features stores them)
        reference_features = stats.get("features")
    else:
        reference, _ = load_images(args.reference, keys=("images", "arr_0"))
        reference_features, _ = extract_features_and_logits(net, reference, spec.batch_size, desc="reference features")
        reference_mu, reference_sigma = feature_statistics(reference_features)
        n_reference = len(reference)
    params = {"feature_net": "domain", "feature_dim": int(features.shape[1]), "n_reference": n_reference}
    rows = generation_rows(features, logits, labels, reference_mu, reference_sigma, spec.is_splits, params,
                           seconds=time.perf_counter() - start, reference_features=reference_features,
                           pr_k=spec.pr_k)
    return rows, str(args.feature_net)


def _inception_generation_rows(args, spec, start):
    """The ADM suite on the FID Inception: fd (gFID), sfid, is (if the softmax layer is loaded), P/R."""
    from ..data.splits import load_images
    from ..metrics.frechet import feature_statistics
    from ..progress import log
    from .generation import IS_UNAVAILABLE, extract_inception_outputs, inception_generation_rows, inception_has_softmax

    net = load_inception(args)
    device = resolve_device(args.device)
    samples, _ = load_images(args.samples, keys=("arr_0",))  # labels are not used: no class accuracy on 1008 classes
    outputs = extract_inception_outputs(net, samples, spec.batch_size, device, desc="sample inception features")
    if args.reference_stats:
        stats = read_reference_statistics(args.reference_stats)
        check_reference_statistics(stats, args.reference_stats, outputs["pool3"].shape[1])
        reference = {k: stats[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in stats}
        reference_features = stats.get("features")
        n_reference = int(stats["n"]) if "n" in stats else -1
        reference_name = Path(args.reference_stats).name
        if "image_size" in stats and int(stats["image_size"]) != samples.shape[1]:
            log.warning("samples are %d px but the reference statistics were computed on %d px images: the "
                        "Fréchet distances mix resolutions", samples.shape[1], int(stats["image_size"]))
    else:
        images, _ = load_images(args.reference, keys=("images", "arr_0"))
        computed = extract_inception_outputs(net, images, spec.batch_size, device, desc="reference inception features")
        mu, sigma = feature_statistics(computed["pool3"])
        mu_s, sigma_s = feature_statistics(computed["spatial"])
        reference = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
        reference_features, n_reference, reference_name = computed["pool3"], len(images), Path(args.reference).name
    softmax = inception_has_softmax(net)
    params = {"feature_net": "inception", "feature_dim": int(outputs["pool3"].shape[1]),
              "n_reference": n_reference, "reference": reference_name}
    if not softmax:
        params["is"] = IS_UNAVAILABLE
    if reference_features is None:
        params["precision_recall"] = "not computed: the reference statistics carry no features"
    rows = inception_generation_rows(outputs["pool3"], reference, spatial=outputs["spatial"],
                                     logits=outputs["logits"] if softmax else None,
                                     reference_features=reference_features, is_splits=spec.is_splits,
                                     pr_k=spec.pr_k, params=params, seconds=time.perf_counter() - start)
    return rows, f"inception:{args.inception_weights}"


def _write_rows(rows, args, spec, feature_net: str) -> None:
    import pandas as pd

    from ..io import provenance, write_parquet
    from ..progress import log

    write_parquet(pd.DataFrame(rows), args.out,
                  provenance(vars(spec), samples=str(args.samples), feature_net=feature_net))
    log.info("generation metrics of %s: %s", args.samples,
             ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))


def run_reference_stats(args) -> None:
    import numpy as np
    import torch

    from ..data.splits import load_images
    from ..errors import require
    from ..io import save_npz
    from ..metrics.frechet import feature_statistics
    from .generation import extract_features_and_logits

    require(args.batch_size >= 1, f"--batch-size {args.batch_size}: expected an integer >= 1")
    torch.set_flush_denormal(True)
    images, _ = load_images(args.images)
    arrays = {"n": np.array(len(images)), "image_size": np.array(images.shape[1])}
    adopted = read_reference_statistics(args.statistics_from) if args.statistics_from else None
    if adopted is not None:
        check_reference_statistics(adopted, args.statistics_from)
        arrays.update({k: adopted[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in adopted})
        if "n" in adopted:
            arrays["n"] = adopted["n"]
        if not args.keep_features:
            save_npz(args.out, **arrays)  # nothing to compute: the statistics are copied
            return
    if args.feature_net == "inception":
        from .generation import extract_inception_outputs

        net = load_inception(args)
        outputs = extract_inception_outputs(net, images, args.batch_size, resolve_device(args.device),
                                            desc="reference inception features")
        features = outputs["pool3"]
        if adopted is None:
            arrays["mu_s"], arrays["sigma_s"] = feature_statistics(outputs["spatial"])
    else:
        from ..teacher.domain_net import load_domain_classifier

        net = load_domain_classifier(args.feature_net)
        features, _ = extract_features_and_logits(net, images, args.batch_size, desc="reference features")
    if adopted is None:
        arrays["mu"], arrays["sigma"] = feature_statistics(features)
    else:
        require(features.shape[1] == adopted["mu"].shape[0],
                f"{args.statistics_from}: mu has {adopted['mu'].shape[0]} dimensions, the feature net gives "
                f"{features.shape[1]}")
    if args.keep_features:
        arrays["features"] = features.astype(np.float32)
    save_npz(args.out, **arrays)


def run_trajectory_metrics(args) -> None:
    """Transport-efficiency rows of a sample set's recorded trajectories (docs/metrics.md §10)."""
    from ..errors import about, require
    from ..io import load_tensors, provenance, write_parquet
    from ..progress import log
    from ..rows import rows_frame
    from .trajectory import trajectory_rows

    start = time.perf_counter()
    data = load_tensors(args.trajectories, ["trajectory", "times"])
    with about(args.trajectories):  # the checks of trajectory_rows know the tensors, the user knows the file
        trajectory, times = data["trajectory"], data["times"]
        require(trajectory.is_floating_point() and times.is_floating_point(),
                f"'trajectory' and 'times' must be float, got {trajectory.dtype} and {times.dtype}")
        require(trajectory.dim() >= 3 and trajectory.shape[1] >= 1,
                f"'trajectory' must be (K+1, N, ...) with N >= 1 samples, got {tuple(trajectory.shape)}")
        require(bool(times.isfinite().all()), "'times' contains NaN or Inf")
        rows = trajectory_rows(trajectory, times)
    steps, samples = data["trajectory"].shape[0] - 1, data["trajectory"].shape[1]
    if steps < 2:
        log.warning("trajectory metrics of %s: one sampler step, local straightness is undefined (NaN)",
                    args.trajectories)
    log.info("trajectory metrics of %s: %d samples, %d segments, %.2f s", args.trajectories, samples, steps,
             time.perf_counter() - start)
    # NaN only for local straightness with one step (undefined, see trajectory_rows); inputs are checked finite
    write_parquet(rows_frame(rows, require_finite=False), args.out, provenance())
