"""Commands of the evaluation stage: ``train-teacher``, ``generation-metrics``, ``reference-stats``.

File formats follow CONTRIBUTING.md: image splits are ``.safetensors`` with ``images`` uint8
(N, H, W, 3) and ``labels``; samples are ADM-layout ``.npz`` (``arr_0``, ``labels``); result
rows are tidy Parquet. Torch is imported inside the command functions.
"""

from __future__ import annotations

import time
from pathlib import Path


def register(subparsers) -> None:
    """Add the evaluation stage's subcommands to the ``diffusability`` parser."""
    from ..cli import json_spec

    parser = subparsers.add_parser(
        "train-teacher", help="train the domain classifier (feature net / stand-in teacher)",
        description="Train the small domain CNN on the train split; report accuracy on the val split.")
    parser.add_argument("--spec", type=json_spec, required=True,
                        help='JSON: {"seed", "width", "steps", "batch_size", "lr", "weight_decay", ...}')
    parser.add_argument("--train", required=True, help="train split (.safetensors)")
    parser.add_argument("--val", required=True, help="val split (.safetensors)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.set_defaults(func=run_train_teacher)

    parser = subparsers.add_parser(
        "generation-metrics", help="fd / is / class_accuracy / precision / recall rows of a sample set",
        description="Fréchet distance, inception-style score and class accuracy of samples "
                    "under the domain network, against the reference (val) images.")
    parser.add_argument("--samples", required=True, help="samples (.npz with arr_0 uint8 NHWC and labels)")
    parser.add_argument("--reference", required=True, help="reference split (.safetensors/.npz with images)")
    parser.add_argument("--feature-net", required=True, help="domain network directory (from train-teacher)")
    parser.add_argument("--spec", type=json_spec, default={}, help='JSON: {"batch_size": 256, "is_splits": 10, "pr_k": 3}')
    parser.add_argument("--reference-stats", default=None,
                        help="optional cached reference statistics (.npz with mu, sigma) from reference-stats")
    parser.add_argument("--out", required=True, help="result rows (.parquet)")
    parser.set_defaults(func=run_generation_metrics)

    parser = subparsers.add_parser(
        "reference-stats", help="feature mean/covariance of an image set (cached FD reference)",
        description="Compute mu and sigma of the feature net's features over an image split.")
    parser.add_argument("--images", required=True, help="image split (.safetensors 'images' or .npz 'arr_0')")
    parser.add_argument("--feature-net", required=True,
                        help="domain network directory, or 'inception' (then --inception-weights)")
    parser.add_argument("--inception-weights", default=None,
                        help="FID Inception state dict (.safetensors/.pt) when --feature-net inception")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", required=True, help="statistics (.npz: mu, sigma[, mu_s, sigma_s])")
    parser.set_defaults(func=run_reference_stats)


def read_split_metadata(path) -> dict:
    """String metadata of a ``.safetensors`` split (``n_classes``, ``image_size``, …); {} for .npz."""
    from safetensors import safe_open

    if Path(path).suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_images(path, keys=("images", "arr_0")):
    """uint8 (N, H, W, 3) images of a split or sample file, plus its labels (or None)."""
    from ..errors import require
    from ..io import load_arrays
    from .generation import check_uint8_images

    arrays = load_arrays(path)
    key = next((k for k in keys if k in arrays), None)
    require(key is not None, f"{path}: has no image array (expected one of {list(keys)}, found {sorted(arrays)})")
    images = check_uint8_images(arrays[key], f"{path}: {key}")
    labels = arrays.get("labels")
    if labels is not None:
        require(labels.shape == (len(images),), f"{path}: labels shape {labels.shape} does not match {len(images)} images")
    return images, labels


def run_train_teacher(args) -> None:
    from ..errors import require
    from ..progress import log
    from .domain_net import train_domain_classifier

    train_images, train_labels = load_images(args.train, keys=("images",))
    val_images, val_labels = load_images(args.val, keys=("images",))
    require(train_labels is not None and val_labels is not None, f"{args.train} / {args.val}: need 'labels'")
    metadata = read_split_metadata(args.train)
    num_classes = int(metadata["n_classes"]) if "n_classes" in metadata else None
    config = train_domain_classifier(train_images, train_labels, args.spec, args.out,
                                     val_images=val_images, val_labels=val_labels, num_classes=num_classes)
    log.info("domain net: val accuracy %.3f (chance %.3f), train accuracy %.3f, %.1f s",
             config["val_accuracy"], config["chance_accuracy"], config["train_accuracy"], config["seconds"])


def run_generation_metrics(args) -> None:
    import numpy as np
    import pandas as pd
    import torch

    from ..errors import require
    from ..io import load_arrays, provenance, write_parquet
    from ..progress import log
    from .domain_net import load_domain_classifier
    from .frechet import feature_statistics
    from .generation import GenerationSpec, extract_features_and_logits, generation_rows

    spec = GenerationSpec.from_dict(args.spec)
    start = time.perf_counter()
    torch.set_flush_denormal(True)
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
        reference_mu, reference_sigma, n_reference = stats["mu"], stats["sigma"], int(stats.get("n", np.array(-1)))
        reference_features = None  # precision/recall need the features themselves
    else:
        reference, _ = load_images(args.reference, keys=("images", "arr_0"))
        reference_features, _ = extract_features_and_logits(net, reference, spec.batch_size, desc="reference features")
        reference_mu, reference_sigma = feature_statistics(reference_features)
        n_reference = len(reference)
    params = {"feature_net": "domain", "feature_dim": int(features.shape[1]), "n_reference": n_reference}
    rows = generation_rows(features, logits, labels, reference_mu, reference_sigma, spec.is_splits, params,
                           seconds=time.perf_counter() - start, reference_features=reference_features,
                           pr_k=spec.pr_k)
    table = pd.DataFrame(rows)
    write_parquet(table, args.out, provenance(vars(spec), samples=str(args.samples), feature_net=str(args.feature_net)))
    log.info("generation metrics of %s: %s", args.samples,
             ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))


def run_reference_stats(args) -> None:
    import numpy as np
    import torch

    from ..errors import require
    from ..io import save_npz
    from .frechet import feature_statistics
    from .generation import extract_features_and_logits

    torch.set_flush_denormal(True)
    images, _ = load_images(args.images)
    if args.feature_net == "inception":
        from .inception import extract_inception_features, load_fid_inception

        require(args.inception_weights is not None, "--feature-net inception needs --inception-weights PATH")
        net = load_fid_inception(args.inception_weights)
        outputs = extract_inception_features(net, images, args.batch_size)
        mu, sigma = feature_statistics(outputs["pool3"])
        mu_s, sigma_s = feature_statistics(outputs["spatial"])
        save_npz(args.out, mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, n=np.array(len(images)))
        return
    from .domain_net import load_domain_classifier

    net = load_domain_classifier(args.feature_net)
    features, _ = extract_features_and_logits(net, images, args.batch_size, desc="reference features")
    mu, sigma = feature_statistics(features)
    save_npz(args.out, mu=mu, sigma=sigma, n=np.array(len(images)))
