"""Every latent metric through ``compute_metrics(..., device=...)``, the path ``latent-metrics --device`` takes.

The metric functions are written once, on torch tensors, and run where the latents are. What a CPU-only
machine can check:

- the computation never leaves the torch device: ``Tensor.numpy()`` (the host round-trip a CUDA tensor
  would refuse) is never called, except by the t-SNE of ``uniformity`` (scikit-learn / openTSNE run on the
  CPU by construction: it moves its 10,000 sampled pixels, not the latents);
- float32 and float64 latents give the same values within the tolerances below (measured: identical, since
  the token statistics compute in float32 and VIV/FI/FIR in float64 whatever the input dtype; a GPU runs
  the same kernels in those dtypes, with differently ordered reductions: round-off of that size);
- with a CUDA device (skipped here: this project's CPU machines have none) the values equal the CPU ones
  within the same tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusability.metrics.registry import compute_metrics

#: metrics exercised, with small-data parameters; "all" with labels and masks, plus the opt-in VIV curve
NAMES = ["all", "viv_curve"]
PARAMS = {"viv_marginal": {"draws": 256}, "uniformity": {"n": 200, "repeats": 1, "max_iter": 250},
          "srss": {"min_fg": 8, "min_bg": 8}}

#: relative tolerance per metric between float32 and float64 latents (and CUDA vs CPU); the float64 metrics
#: (VIV, FI/FIR: float64 fits) agree to ~1e-7, the float32 token statistics to ~1e-6, t-SNE to its optimiser
TOLERANCE = {"default": 1e-4, "uniformity_cv": 0.05, "uniformity_gini": 0.05, "uniformity_entropy": 0.05}


def data(n=40, c=4, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.nn.functional.avg_pool2d(torch.randn(n, c, hw + 2, hw + 2, generator=g), 3, 1)
    latents = latents + 0.5 * torch.arange(4).repeat(n // 4)[:, None, None, None]
    labels = torch.arange(n) % 4
    masks = torch.zeros(n, hw, hw, dtype=torch.bool)
    masks[:, 2:7, 1:6] = True
    return latents.double(), labels, masks


def values(latents, labels, masks, device):
    table = compute_metrics(latents, labels, masks, names=NAMES, params=PARAMS, device=device)
    # viv_curve has one row per t: key rows by metric and params
    return {(row.metric, row.params): row.value for row in table.itertuples()}


def assert_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for key in a:
        tolerance = TOLERANCE.get(key[0], TOLERANCE["default"])
        assert math.isclose(a[key], b[key], rel_tol=tolerance, abs_tol=1e-9), (key, a[key], b[key])


def test_no_host_round_trip_outside_tsne(monkeypatch):
    latents, labels, masks = data()
    original = torch.Tensor.numpy
    callers = []

    def guarded(self, *args, **kwargs):
        import traceback

        callers.append(traceback.extract_stack()[-2].filename)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "numpy", guarded)
    rows = values(latents, labels, masks, "cpu")
    assert {"srss", "lnc", "viv_uniform", "fi", "sec", "uniformity_cv"} <= {metric for metric, _ in rows}
    assert callers and all(name.endswith("uniformity.py") for name in callers), sorted(set(callers))


def test_float32_and_float64_latents_agree():
    latents, labels, masks = data()
    assert_close(values(latents, labels, masks, "cpu"), values(latents.float(), labels, masks, "cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_matches_cpu():
    latents, labels, masks = data()
    assert_close(values(latents, labels, masks, "cpu"), values(latents, labels, masks, "cuda"))
    assert_close(values(latents.float(), labels, masks, "cpu"), values(latents.float(), labels, masks, "cuda"))
