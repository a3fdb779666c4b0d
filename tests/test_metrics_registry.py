"""The metric registry: names, groups, required inputs, shared computations, tidy rows."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.metrics import registry
from diffusability.metrics.registry import GROUPS, METRICS, compute_metrics, expand_names
from diffusability.metrics.spatial import local_distant_similarity
from diffusability.metrics.spectral import spectral_energy_concentration

EXPECTED_NAMES = ["viv_uniform", "viv_logit_normal", "viv_uniform_per_dim", "viv_logit_normal_per_dim",
                  "viv_curve", "viv_marginal", "lnc", "lds", "cds", "srss", "rmsc", "sec", "fi", "fir",
                  "fi_curve", "fir_curve", "fi_mixture", "fir_mixture", "linear_probe", "uniformity_cv",
                  "uniformity_gini", "uniformity_entropy"]


def data(n=24, c=4, hw=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.nn.functional.avg_pool2d(torch.randn(n, c, hw + 2, hw + 2, generator=g), 3, 1)
    labels = torch.arange(n) % 4
    masks = torch.zeros(n, hw, hw, dtype=torch.bool)
    masks[:, 2:6, 1:5] = True
    return latents, labels, masks


def test_names_directions_and_groups():
    assert list(METRICS) == EXPECTED_NAMES
    lower = {"viv_uniform", "viv_logit_normal", "viv_uniform_per_dim", "viv_logit_normal_per_dim",
             "viv_curve", "viv_marginal", "sec", "uniformity_cv", "uniformity_gini"}
    # FI/FIR magnitudes are diagnostics without a better side (their data-vs-latent gap has one)
    none = {"fi", "fir", "fi_curve", "fir_curve", "fi_mixture", "fir_mixture"}
    for name, spec in METRICS.items():
        assert spec.direction == ("lower" if name in lower else "none" if name in none else "higher"), name
    assert GROUPS["viv"] == tuple(EXPECTED_NAMES[:4])
    assert GROUPS["uniformity"] == ("uniformity_cv", "uniformity_gini", "uniformity_entropy")
    assert GROUPS["fisher"] == ("fi", "fir")
    # the rows of the tokenizer-metrics and model-metrics commands have directions too
    assert registry.metric_direction("rotate_error") == "lower"
    assert registry.metric_direction("scale_consistency") == "higher"
    assert registry.metric_direction("ifid") == "lower"
    assert registry.metric_direction("fi_model") == registry.metric_direction("fir_model") == "none"   # diagnostics
    for name in ("fi_gap", "fir_gap", "compression_penalty", "distortion_penalty", "curvature_penalty"):
        assert registry.metric_direction(name) == "lower", name
    for name in ("data_curvature", "fi_data_curve", "fir_data_curve", "fi_latent_curve", "fir_latent_curve"):
        assert registry.metric_direction(name) == "none", name


def test_expand_names_respects_inputs():
    assert expand_names("all", False, False) == ["lds", "cds", "rmsc", "sec", "uniformity_cv",
                                                 "uniformity_gini", "uniformity_entropy"]
    assert "srss" in expand_names(["all"], True, True) and "lnc" in expand_names(["all"], True, False)
    # fi/fir are cheap (one flip-flop fit, like VIV) and in `all`; curves, mixture and probe are opt-in
    everything = expand_names(["all"], True, True, have_train=True)
    assert {"fi", "fir"} <= set(everything)
    assert not {"fi_curve", "fir_curve", "fi_mixture", "fir_mixture", "linear_probe"} & set(everything)
    with pytest.raises(DiffusabilityError, match="training latents"):
        expand_names(["linear_probe"], True, True)
    assert expand_names("viv,lds", True, False) == EXPECTED_NAMES[:4] + ["lds"]
    with pytest.raises(DiffusabilityError, match="masks"):
        expand_names(["srss"], True, False)
    with pytest.raises(DiffusabilityError, match="labels"):
        expand_names(["viv"], False, True)
    with pytest.raises(DiffusabilityError, match="unknown"):
        expand_names(["nope"], True, True)


def test_rows_match_direct_calls_and_schema():
    latents, labels, masks = data()
    table = compute_metrics(latents, labels, masks, names=["lds", "sec", "srss"],
                            params={"srss": {"min_fg": 4, "min_bg": 4, "d_neg": 4}, "lds": {"far_dist": 4}})
    assert list(table.columns) == ["metric", "value", "direction", "params", "n"]  # wall times go to the log
    assert table["value"].dtype == np.float64 and table["n"].dtype == np.int64
    assert list(table["metric"]) == ["lds", "srss", "sec", "sec_r0.25", "sec_r0.5", "sec_r0.75"]
    row = table.set_index("metric")
    assert row.loc["lds", "value"] == local_distant_similarity(latents, far_dist=4)["value"]
    sec = spectral_energy_concentration(latents)
    assert row.loc["sec", "value"] == sec["value"] == row.loc["sec_r0.5", "value"]
    assert row.loc["sec_r0.25", "value"] == sec["sweep"][0.25]
    assert json.loads(row.loc["lds", "params"]) == {"far_dist": 4}
    assert json.loads(row.loc["srss", "params"]) == {"d_neg": 4, "d_pos": 1, "min_bg": 4, "min_fg": 4}
    assert set(row["direction"]) <= {"lower", "higher"} and row.loc["sec_r0.75", "direction"] == "lower"
    assert row.loc["lds", "n"] == 24


def test_shared_computation_runs_once(monkeypatch):
    calls = []
    original = registry.COMPUTATIONS["uniformity"].run

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setitem(registry.COMPUTATIONS, "uniformity", registry.Computation(
        "uniformity", counting, registry.COMPUTATIONS["uniformity"].signature_of, frozenset(),
        registry.COMPUTATIONS["uniformity"].defaults))
    latents, _, _ = data(n=40)
    table = compute_metrics(latents, names="uniformity",
                            params={"uniformity": {"n": 60, "repeats": 1, "perplexity": 5, "max_iter": 250}})
    assert len(calls) == 1 and list(table["metric"]) == list(GROUPS["uniformity"])
    assert (table["n"] == 60).all()


def test_refuses_degenerate_inputs():
    latents, labels, masks = data()
    with pytest.raises(DiffusabilityError, match="constant"):
        compute_metrics(torch.ones(4, 2, 4, 4), names=["lds"], params={"lds": {"far_dist": 3}})
    bad = latents.clone()
    bad[0, 0, 0, 0] = math.nan
    with pytest.raises(DiffusabilityError, match="NaN"):
        compute_metrics(bad, names=["sec"])
    lonely = labels.clone()
    lonely[0] = 99
    with pytest.raises(DiffusabilityError, match="single sample"):
        compute_metrics(latents, lonely, names=["viv"])
    with pytest.raises(DiffusabilityError, match="no parameter"):
        compute_metrics(latents, names=["lds"], params={"lds": {"bogus": 1}})
    with pytest.raises(DiffusabilityError, match="not a metric"):
        compute_metrics(latents, names=["lds"], params={"ldz": {"far_dist": 3}})
    with pytest.raises(DiffusabilityError, match="min_fg"):  # default 64/64 impossible on 8×8
        compute_metrics(latents, labels, masks, names=["srss"])


def test_viv_group_gives_four_rows():
    pytest.importorskip("diffusability.metrics.viv")
    latents, labels, _ = data(n=32, c=3, hw=4)
    table = compute_metrics(latents, labels, names="viv")
    assert list(table["metric"]) == list(GROUPS["viv"])
    row = table.set_index("metric")["value"]
    assert row["viv_uniform_per_dim"] == pytest.approx(row["viv_uniform"] / (3 * 16))
    assert (table["n"] == 32).all()
    json.loads(table["params"].iloc[0])  # JSON even with a torch dtype default


def test_lnc_records_pooling():
    latents, labels, masks = data()
    with_masks = compute_metrics(latents, labels, masks, names=["lnc"])
    without = compute_metrics(latents, labels, None, names=["lnc"])
    assert json.loads(with_masks["params"][0])["pooling"] == "foreground"
    assert json.loads(without["params"][0])["pooling"] == "all tokens"
    assert isinstance(with_masks, pd.DataFrame)


def test_viv_marginal_row():
    pytest.importorskip("diffusability.metrics.viv")
    latents, labels, _ = data(n=32, c=3, hw=4)
    table = compute_metrics(latents, labels, names=["viv_marginal"], params={"viv_marginal": {"draws": 256}})
    assert list(table["metric"]) == ["viv_marginal"] and table["direction"][0] == "lower"
    assert math.isfinite(table["value"][0]) and table["value"][0] > 0
    assert json.loads(table["params"][0])["draws"] == 256


# --------------------------------------------------------------------------- viv_curve rows


def exact_diagonal_kronecker_classes(channel_variances, hw=2, per_class=17, n_classes=2, seed=0):
    """Latents whose per-class sample covariance is exactly diag(channel_variances) ⊗ I_P.

    Each class's n centred samples are √dof times orthonormal columns orthogonal to the all-ones
    vector (needs n − 1 ≥ D), scaled per channel; the flip-flop (without shrinkage) then sits at its
    fixed point from the first step, so σ²_irr(t) has the closed form P·Σ_k d_k / (t²d_k + (1−t)²).
    """
    d = torch.as_tensor(channel_variances, dtype=torch.float64)
    c, p = len(d), hw * hw
    g = torch.Generator().manual_seed(seed)
    blocks, labels = [], []
    for k in range(n_classes):
        design = torch.cat([torch.ones(per_class, 1, dtype=torch.float64),
                            torch.randn(per_class, c * p, generator=g, dtype=torch.float64)], 1)
        q = torch.linalg.qr(design).Q[:, 1:]                           # (n, D), orthogonal to ones
        x = (q * (per_class - 1) ** 0.5).reshape(per_class, c, hw, hw) * d.sqrt()[None, :, None, None]
        blocks.append(x + 3.0 * k)                                     # class means differ
        labels.append(torch.full((per_class,), k))
    return torch.cat(blocks), torch.cat(labels)


def test_viv_curve_rows_match_the_closed_form_of_a_diagonal_gaussian():
    d = [0.25, 1.0, 4.0]
    latents, labels = exact_diagonal_kronecker_classes(d)
    frame = compute_metrics(latents, labels, names=["viv_curve"],
                            params={"viv_class_conditional": {"shrinkage": "none"}})
    assert set(frame.metric) == {"viv_curve"}
    assert len(frame) == len(registry.VIV_CURVE_TIMES) == 21
    times = [json.loads(p)["t"] for p in frame.params]
    assert times == pytest.approx(np.linspace(0.0, 1.0, 21), abs=1e-12)
    p = 4
    # 1e-5: the whitening's Cholesky floor (1e-6 of the mean eigenvalue) moves the fixed point by ~1e-6
    for t, value in zip(times, frame.value):
        expected = p * sum(dk / (t ** 2 * dk + (1 - t) ** 2) for dk in d)
        assert value == pytest.approx(expected, rel=1e-5), t
    assert frame.value.iloc[0] == pytest.approx(p * sum(d), rel=1e-5)    # t = 0: Σλ
    assert frame.value.iloc[-1] == pytest.approx(p * len(d), rel=1e-12)  # t = 1: D
    assert (frame.direction == "lower").all() and (frame.n == len(labels)).all()
    assert all(json.loads(q)["shrinkage"] == "none" for q in frame.params)


def test_viv_curve_is_opt_in_and_leaves_other_viv_rows_unchanged():
    latents, labels, masks = data()
    assert "viv_curve" not in expand_names("all", True, True)
    plain = compute_metrics(latents, labels, names=["viv_uniform"])
    both = compute_metrics(latents, labels, names=["viv_uniform", "viv_curve"],
                           params={"viv_curve": {"curve_times": [0.5, 1.0]}})
    uniform = both[both.metric == "viv_uniform"]
    assert uniform.value.iloc[0] == plain.value.iloc[0]
    assert uniform.params.iloc[0] == plain.params.iloc[0]            # the curve grid is not a VIV parameter
    curve = both[both.metric == "viv_curve"]
    assert [json.loads(q)["t"] for q in curve.params] == [0.5, 1.0]
    assert curve.value.iloc[1] == pytest.approx(latents[0].numel(), rel=1e-12)   # σ²_irr(1) = D


def test_fisher_rows_match_the_closed_form_of_a_diagonal_gaussian():
    """Class covariance exactly diag(d) ⊗ I_P: φ(s) = (1/C)Σ_k s/(d_k+s), ψ(s) = (1/C)Σ_k s²/(d_k+s)²."""
    d = np.array([0.25, 1.0, 4.0])
    latents, labels = exact_diagonal_kronecker_classes(d.tolist())
    grid = {"s_min": 0.01, "s_max": 100.0, "s_points": 5}
    frame = compute_metrics(latents, labels, names=["fisher", "fi_curve", "fir_curve"],
                            params={"fisher_class_conditional": {"shrinkage": "none", **grid}})
    s = np.logspace(-2, 2, 5)
    phi = (s[:, None] / (d[None] + s[:, None])).mean(1)
    psi = (s[:, None] ** 2 / (d[None] + s[:, None]) ** 2).mean(1)
    value = frame.set_index("metric")["value"]
    assert value["fi"] == pytest.approx(phi.mean(), rel=1e-5)
    assert value["fir"] == pytest.approx(psi.mean(), rel=1e-5)
    for name, expected in (("fi_curve", phi), ("fir_curve", psi)):
        curve = frame[frame.metric == name]
        assert [json.loads(p)["s"] for p in curve.params] == pytest.approx(s, rel=1e-12)
        assert curve.value.to_numpy() == pytest.approx(expected, rel=1e-5)
    assert (frame.direction == "none").all()          # diagnostics: the alignment gap has the direction
    assert json.loads(frame.params.iloc[0])["s_points"] == 5


def test_fisher_rows_are_scale_ordered():
    """Shrinking the within-class spread raises fi and fir (larger score, larger score Jacobian)."""
    latents, labels, _ = data(n=48)
    wide = compute_metrics(latents, labels, names=["fisher"]).set_index("metric")["value"]
    narrow = compute_metrics(0.1 * latents, labels, names=["fisher"]).set_index("metric")["value"]
    assert narrow["fi"] > wide["fi"] and narrow["fir"] > wide["fir"]
    assert 0 <= wide["fi"] <= 1 and wide["fir"] >= 0


def test_mixture_fisher_of_one_class_agrees_with_the_gaussian_closed_form():
    d = [0.25, 1.0, 4.0]
    latents, labels = exact_diagonal_kronecker_classes(d, n_classes=1, per_class=17)
    grid = {"s_min": 0.1, "s_max": 10.0, "s_points": 3, "shrinkage": "none"}
    frame = compute_metrics(latents, labels, names=["fi", "fi_mixture", "fir", "fir_mixture"],
                            params={"fisher_class_conditional": grid,
                                    "fisher_mixture": {**grid, "draws": 4000, "probes": 2}})
    value = frame.set_index("metric")["value"]
    # one component: the mixture score is the Gaussian score, so Monte Carlo meets the closed form
    assert value["fi_mixture"] == pytest.approx(value["fi"], rel=0.02)
    assert value["fir_mixture"] == pytest.approx(value["fir"], rel=0.03)


def test_linear_probe_needs_and_uses_train_latents():
    g = torch.Generator().manual_seed(0)

    def separable(n):
        labels = torch.arange(n) % 2
        latents = 0.2 * torch.randn(n, 2, 3, 3, generator=g)
        latents[:, 0] += (2.0 * labels - 1.0)[:, None, None]
        return latents, labels

    val, val_labels = separable(20)
    train, train_labels = separable(60)
    frame = compute_metrics(val, val_labels, names=["linear_probe"], train_latents=train, train_labels=train_labels,
                            params={"linear_probe": {"max_iter": 100, "batch_size": 16}})
    row = frame.iloc[0]
    assert (row.metric, row.value, row.direction, row.n) == ("linear_probe", 1.0, "higher", 20)
    assert json.loads(row.params)["batch_size"] == 16
    # a probe trained on labels unrelated to the latents cannot beat chance by much on fresh val latents
    shuffled = train_labels[torch.randperm(60, generator=g)]
    chance = compute_metrics(val, val_labels, names=["linear_probe"], train_latents=train, train_labels=shuffled)
    assert chance.value.iloc[0] < 1.0
    with pytest.raises(DiffusabilityError, match="shape"):
        compute_metrics(val, val_labels, names=["linear_probe"], train_latents=train[:, :1], train_labels=train_labels)


def test_viv_and_fisher_share_one_covariance_fit(monkeypatch):
    """With VIV and the analytic FI/FIR requested together the class covariances are fitted once, and the
    FI/FIR values equal those of a run that fits them on its own."""
    from diffusability.metrics import kronecker

    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(24, 2, 3, 3, generator=generator)
    labels = torch.arange(3).repeat_interleave(8)
    alone = compute_metrics(latents, labels, names=["fi", "fir"]).set_index("metric")["value"]
    calls = []
    original = kronecker.fit_class_covariances

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(kronecker, "fit_class_covariances", counting)
    together = compute_metrics(latents, labels, names=["viv_uniform", "fi", "fir"]).set_index("metric")["value"]
    assert len(calls) == 1
    np.testing.assert_allclose(together[["fi", "fir"]].to_numpy(), alone[["fi", "fir"]].to_numpy(), rtol=1e-12)
    # different fit parameters are not shared
    calls.clear()
    compute_metrics(latents, labels, names=["viv_uniform", "fi"], params={"fi": {"tol": 1e-5}})
    assert len(calls) == 2


def _enums(node, path=""):
    """Every ``enum`` of the schema as (path, values)."""
    if isinstance(node, dict):
        if "enum" in node:
            yield path, node["enum"]
        for key, value in node.items():
            yield from _enums(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _enums(value, f"{path}[{index}]")


def test_the_schema_enums_of_metric_names_are_the_registry():
    """The config's metric names come from the registry: a metric (or group) added to one and not the other
    fails here. The network-metric families are the commands' own lists."""
    from diffusability.latent_metrics.spec import MODEL_METRICS_DEFAULTS as MODEL_DEFAULTS, TOKENIZER_FAMILIES
    from diffusability.metrics.kronecker import SHRINKAGES
    from diffusability.workflow.config import load_schema

    schema = load_schema()
    metrics = schema["properties"]["metrics"]["properties"]
    enabled = metrics["enabled"]["items"]["enum"]
    assert len(enabled) == len(set(enabled))
    assert set(enabled) == set(METRICS) | set(GROUPS)
    assert set(metrics["enabled"]["default"]) <= set(enabled)
    assert set(metrics["tokenizer"]["properties"]["enabled"]["items"]["enum"]) == set(TOKENIZER_FAMILIES)
    assert set(metrics["model"]["properties"]["enabled"]["items"]["enum"]) == set(MODEL_DEFAULTS) - {"enabled", "seed"}
    assert metrics["tokenizer"]["properties"]["fisher_geometry"]["properties"]["shrinkage"]["enum"] == list(SHRINKAGES)
    # no other enum of the schema lists metric or group names (one that did would need its own check here)
    names = set(METRICS) | set(GROUPS) | set(registry.TOKENIZER_METRICS) | set(registry.MODEL_METRICS)
    checked = {"/properties/metrics/properties/enabled/items",                   # the three checked above
               "/properties/metrics/properties/tokenizer/properties/enabled/items",  # the family `ifid`
               "/properties/metrics/properties/model/properties/enabled/items"}      # the family `fisher`
    stray = {path: sorted(names & set(map(str, values))) for path, values in _enums(schema)
             if path not in checked and names & set(map(str, values))}
    assert stray == {}
