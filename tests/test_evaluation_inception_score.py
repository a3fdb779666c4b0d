"""Inception Score against closed forms."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from diffusability.errors import DiffusabilityError
from diffusability.evaluation import inception_score


def brute_force_is(logits, splits):
    """Direct transcription of the definition with explicit loops."""
    scores = []
    for chunk in np.array_split(logits, splits):
        probs = [np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in chunk]
        marginal = sum(probs) / len(probs)
        kls = [sum(p[k] * np.log(p[k] / marginal[k]) for k in range(len(p)) if p[k] > 0) for p in probs]
        scores.append(np.exp(np.mean(kls)))
    return float(np.mean(scores))


def test_uniform_logits_give_one():
    assert inception_score(np.zeros((100, 7)), splits=10) == pytest.approx(1.0, abs=1e-12)


def test_confident_distinct_classes_give_k():
    # Each chunk holds every class once with a (numerically) one-hot prediction: IS = K.
    k = 8
    logits = np.tile(np.eye(k) * 200.0, (5, 1))
    assert inception_score(logits, splits=5) == pytest.approx(k, rel=1e-9)


def test_same_confident_class_everywhere_gives_one():
    logits = np.zeros((20, 5))
    logits[:, 2] = 300.0
    assert inception_score(logits, splits=2) == pytest.approx(1.0, abs=1e-9)


def test_mean_over_splits_not_pooled():
    # First chunk: 4 distinct one-hot classes (IS 4); second chunk: all the same class (IS 1).
    logits = np.concatenate([np.eye(4) * 100.0, np.tile(np.eye(4)[:1] * 100.0, (4, 1))])
    assert inception_score(logits, splits=2) == pytest.approx(2.5, rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), splits=st.sampled_from([1, 2, 4]), k=st.integers(2, 9))
def test_matches_brute_force_and_stays_in_range(seed, splits, k):
    logits = np.random.default_rng(seed).standard_normal((8 * splits, k)) * 3.0
    value = inception_score(logits, splits=splits)
    assert value == pytest.approx(brute_force_is(logits, splits), rel=1e-9)
    assert 1.0 - 1e-9 <= value <= k + 1e-9


def test_rejects_unequal_splits_and_bad_shapes():
    with pytest.raises(DiffusabilityError, match="equal size"):
        inception_score(np.zeros((11, 3)), splits=10)
    with pytest.raises(DiffusabilityError, match=r"\(N, K\)"):
        inception_score(np.zeros(10), splits=1)


def test_lazy_exports_stay_functions_after_every_submodule_is_imported():
    # A submodule named like its export shadows the lazy name once it is imported
    # (the import system sets the package attribute to the module): the CI run failed on that.
    import importlib
    import pkgutil
    import types

    import diffusability.evaluation as evaluation
    import diffusability.metrics as metrics

    for package in (evaluation, metrics):
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        for name in package._EXPORTS:
            assert not isinstance(getattr(package, name), types.ModuleType), (package.__name__, name)
