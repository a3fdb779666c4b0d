"""Generation metrics of a sample set from a classifier's features and logits (pure, no file I/O).

Given a feature network ``net`` with ``features_and_logits(x)`` (the domain network, or the
Inception port), this module turns uint8 image batches into features/logits and the three
tidy result rows the workflow aggregates: ``fd`` (lower), ``is`` (higher), ``class_accuracy``
(higher) and, when the reference features themselves are at hand, ``precision`` and ``recall``
(higher; k-NN manifolds, k = 3 as in ADM).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..errors import require
from .frechet import feature_statistics, frechet_distance
from .inception_score import inception_score


@dataclasses.dataclass(frozen=True)
class GenerationSpec:
    """``generation`` slice of the config: feature-extraction batch size, IS splits (ADM: 10) and
    the k of improved precision/recall (ADM: 3)."""

    batch_size: int = 256
    is_splits: int = 10
    pr_k: int = 3

    @classmethod
    def from_dict(cls, spec: dict | None) -> "GenerationSpec":
        spec = dict(spec or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - known)
        require(not unknown, f"generation spec: unknown key(s) {unknown}; known keys are {sorted(known)}")
        result = cls(**spec)
        for name in known:
            value = getattr(result, name)
            require(isinstance(value, int) and value >= 1, f"generation spec {name}={value!r}: expected an integer >= 1")
        return result


def check_uint8_images(images, name: str) -> np.ndarray:
    """Validate a uint8 (N, H, W, 3) image batch and return it as a numpy array."""
    images = np.asarray(images)
    require(images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3,
            f"{name}: expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    require(images.shape[0] >= 1, f"{name}: no images")
    return images


def extract_features_and_logits(net, images, batch_size: int = 256, desc: str = "features"):
    """Run a feature network over uint8 images in batches.

    Args:
        net: module with ``features_and_logits(x)`` taking float (B, 3, H, W) in [-1, 1].
        images: uint8 (N, H, W, 3).

    Returns:
        (features float64 (N, F), logits float64 (N, K)) numpy arrays.
    """
    import torch

    from ..imaging import to_model_input
    from ..progress import progress

    images = check_uint8_images(images, desc)
    features, logits = [], []
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
            f, l = net.features_and_logits(to_model_input(images[start:start + batch_size]))
            features.append(f.double().numpy())
            logits.append(l.double().numpy())
    return np.concatenate(features), np.concatenate(logits)


def generation_rows(sample_features, sample_logits, sample_labels, reference_mu, reference_sigma,
                    is_splits: int = 10, params: dict | None = None, seconds: float = 0.0,
                    reference_features=None, pr_k: int = 3) -> list[dict]:
    """The tidy rows ``fd``, ``is`` and ``class_accuracy`` of one sample set.

    Args:
        sample_features: (N, F) features of the samples; sample_logits: (N, K);
        sample_labels: (N,) conditioning labels of the samples.
        reference_mu (F,), reference_sigma (F, F): statistics of the reference images.
        params: JSON-able dict stored in every row's ``params`` column.
        reference_features: optional (N_r, F) reference features; adds precision/recall rows.

    Returns:
        Dicts with keys metric, value, direction, params (JSON str), n, seconds: fd, is,
        class_accuracy (and precision, recall).
    """
    import json

    sample_labels = np.asarray(sample_labels)
    n = len(sample_features)
    require(len(sample_logits) == n and sample_labels.shape == (n,),
            f"samples: {n} feature rows but {len(sample_logits)} logit rows and labels of shape {sample_labels.shape}")
    params_json = json.dumps(dict(params or {}, is_splits=is_splits), sort_keys=True)
    timings = {}

    start = time.perf_counter()
    mu, sigma = feature_statistics(sample_features)
    fd = frechet_distance(mu, sigma, reference_mu, reference_sigma)
    timings["fd"] = time.perf_counter() - start
    start = time.perf_counter()
    score = inception_score(sample_logits, splits=is_splits)
    timings["is"] = time.perf_counter() - start
    require(int(sample_labels.min()) >= 0 and int(sample_labels.max()) < sample_logits.shape[1],
            f"samples labels: expected values in [0, {sample_logits.shape[1]}) (the feature net's classes), "
            f"got [{int(sample_labels.min())}, {int(sample_labels.max())}]")
    accuracy = float((np.asarray(sample_logits).argmax(axis=1) == sample_labels).mean())

    def row(metric, value, direction, extra_seconds=0.0):
        return {"metric": metric, "value": float(value), "direction": direction, "params": params_json,
                "n": int(n), "seconds": float(seconds + extra_seconds)}

    rows = [row("fd", fd, "lower", timings["fd"]), row("is", score, "higher", timings["is"]),
            row("class_accuracy", accuracy, "higher")]
    if reference_features is not None:
        from .precision_recall import precision_recall

        start = time.perf_counter()
        precision, recall = precision_recall(reference_features, sample_features, k=pr_k)
        elapsed = time.perf_counter() - start
        params_json = json.dumps(dict(json.loads(params_json), pr_k=pr_k), sort_keys=True)
        rows += [row("precision", precision, "higher", elapsed), row("recall", recall, "higher", elapsed)]
    return rows
