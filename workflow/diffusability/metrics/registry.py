"""One table of every latent proxy metric: how to compute it, which way is better, what it needs.

A *computation* is one call of a metric function (e.g. the class-conditional VIV spectra, or one
t-SNE per subset) that may yield several metric values; each *metric* names one value of one
computation. ``compute_metrics`` runs every needed computation once and returns the tidy rows of
:mod:`diffusability.rows`: ``metric, value (float64), direction, params (JSON), n`` (wall times go to the log).

The linear probe also needs the training latents (``train_latents``/``train_labels``). The rows of
the ``tokenizer-metrics`` and ``model-metrics`` commands (which need networks, not only latents)
and of ``trajectory-metrics`` (sampler trajectories) are listed in ``TOKENIZER_METRICS`` /
``MODEL_METRICS`` / ``TRAJECTORY_METRICS`` for their directions.

Parameters are given per metric name, per group name (``viv``, ``uniformity``, ``fisher``) or per
computation name; the recorded ``params`` JSON is the full effective set (defaults included,
execution-only knobs such as batch sizes left out) so rows of different runs can be compared.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import DiffusabilityError, require
from ..progress import log, progress
from ..rows import result_row, rows_frame
from .normalization import as_label_tensor, as_latent_tensor, as_mask_tensor

#: keyword arguments that change speed or memory, never the value (kept out of ``params``); the VIV curve
#: grid is recorded per row as ``{"t": ...}`` instead, so it never changes the params of the other VIV rows
EXECUTION_ONLY = frozenset({"batch_size", "chunk", "classes_per_batch", "progress", "curve_times", "n_jobs"})

#: the default time grid of ``viv_curve`` rows: 21 times 0.0, 0.05, …, 1.0 (t = 0 noise, t = 1 data)
VIV_CURVE_TIMES = tuple(round(i / 20, 10) for i in range(21))

#: metrics computed only when named: curves (one row per t or s) would otherwise enter every correlation
#: table; the mixture FI/FIR evaluates every class component per Monte-Carlo draw (minutes at K = 1000);
#: the linear probe needs the training latents and trains a classifier
OPT_IN = frozenset({"viv_curve", "fi_curve", "fir_curve", "fi_mixture", "fir_mixture", "linear_probe"})


@dataclass(frozen=True)
class Computation:
    """One metric function call; ``run(latents, labels, masks, **params)`` → {metric: (value, n)}.

    A computation that requires ``"train"`` is also given ``train=(train_latents, train_labels)``.
    """

    name: str
    run: Callable[..., dict]
    signature_of: Callable[[], Callable]   # the underlying public function (for its defaults)
    requires: frozenset                    # subset of {"labels", "masks", "train"}
    defaults: dict = field(default_factory=dict)


#: the study's seven perspectives of a latent space, in the order of its Fig. 1 (docs/analysis.md §2)
PAPER_PERSPECTIVES = ("velocity ambiguity", "semantic separability", "spatial structure", "latent smoothness",
                      "manifold continuity", "latent uniformity", "affine equivariance")
#: the groups of the metrics that are none of the seven: reconstruction proxies, the Fisher-information
#: diagnostics and alignment/penalty metrics (docs/fisher-geometry.md), the post-hoc transport efficiency of a
#: trained model's trajectories (measured after training, like gFID), and anything unplaced
OTHER_PERSPECTIVES = ("reconstruction", "fisher geometry", "transport (post hoc)", "other")


@dataclass(frozen=True)
class MetricSpec:
    """One reported value: its computation, the perspective it measures, which direction is better, a description.

    ``perspective`` is one of :data:`PAPER_PERSPECTIVES` or :data:`OTHER_PERSPECTIVES`; the analysis groups
    the correlation table by it (the study's Fig. 4), so a new metric is placed when it is registered.
    """

    name: str
    computation: str
    perspective: str
    direction: str  # "lower", "higher" or "none" (a diagnostic: no side is better, e.g. fi/fir)
    description: str

    def __post_init__(self):
        require(self.perspective in PAPER_PERSPECTIVES + OTHER_PERSPECTIVES,
                f"metric {self.name!r}: perspective {self.perspective!r} is none of "
                f"{PAPER_PERSPECTIVES + OTHER_PERSPECTIVES}")
        require(self.direction in ("lower", "higher", "none"),
                f"metric {self.name!r}: direction {self.direction!r} is none of lower, higher, none")


# --------------------------------------------------------------------------- computations


def _require_two_per_class(labels: torch.Tensor, metric: str) -> None:
    counts = torch.bincount(labels - labels.min())
    present = counts[counts > 0]
    lonely = int((present < 2).sum())
    require(lonely == 0, f"labels: {lonely} classes have a single sample; {metric} needs at least 2 "
                         "samples per class to estimate a within-class covariance")


#: keyword arguments that decide the class-covariance fit shared by VIV and the analytic FI/FIR
FIT_KEYS = ("shrinkage", "tol", "max_iter", "min_per_class")


def _fit_key(params: dict, function: Callable) -> tuple:
    """The fit's parameters as a hashable key (the function's defaults filled in)."""
    defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
    return tuple(params.get(key, defaults.get(key)) for key in FIT_KEYS)


def _run_viv_class_conditional(latents, labels, masks, fits=None, **params):
    from . import viv

    _require_two_per_class(labels, "VIV")
    result = viv.class_conditional_viv(latents, labels, **params)
    if fits is not None and "spectra" in result:
        fits[_fit_key(params, viv.class_conditional_viv)] = result["spectra"]
    n = latents.shape[0]
    keys = ("viv_uniform", "viv_logit_normal", "viv_uniform_per_dim", "viv_logit_normal_per_dim")
    rows = {key: (result[key], n) for key in keys if key in result}
    if "curve" in result:
        # one row per time: (value, n, extra params merged into the row's params JSON)
        rows["viv_curve"] = [(float(v), n, {"t": float(t)})
                             for t, v in zip(result["curve"]["t"].tolist(), result["curve"]["value"].tolist())]
    return rows


def _run_viv_marginal(latents, labels, masks, **params):
    from . import viv

    _require_two_per_class(labels, "VIV")
    result = viv.marginal_viv(latents, labels, **params)
    return {"viv_marginal": (result["value"], latents.shape[0])}


def _run_lnc(latents, labels, masks, **params):
    from .semantic import latent_neighbor_consistency

    result = latent_neighbor_consistency(latents, labels, masks, **params)
    return {"lnc": (result["value"], result["n_used"])}


def _run_lds(latents, labels, masks, **params):
    from .spatial import local_distant_similarity

    result = local_distant_similarity(latents, **params)
    return {"lds": (result["value"], result["n_used"])}


def _run_cds(latents, labels, masks, **params):
    from .spatial import correlation_decay_slope

    result = correlation_decay_slope(latents, **params)
    return {"cds": (result["value"], result["n_used"])}


def _run_srss(latents, labels, masks, **params):
    from .spatial import semantic_region_self_similarity

    result = semantic_region_self_similarity(latents, masks, **params)
    return {"srss": (result["value"], result["n_used"])}


def _run_rmsc(latents, labels, masks, **params):
    from .spatial import rms_spatial_contrast

    result = rms_spatial_contrast(latents, **params)
    return {"rmsc": (result["value"], result["n_used"])}


def sec_sweep_name(ratio: float) -> str:
    """Row name of one SEC sweep value, e.g. ``sec_r0.25``."""
    return f"sec_r{float(ratio):g}"


def _run_sec(latents, labels, masks, **params):
    from .spectral import spectral_energy_concentration

    result = spectral_energy_concentration(latents, **params)
    n = latents.shape[0]
    rows = {"sec": (result["value"], n)}
    rows.update({sec_sweep_name(r): (v, n) for r, v in result["sweep"].items()})
    return rows


def _run_uniformity(latents, labels, masks, **params):
    from .uniformity import latent_uniformity

    result = latent_uniformity(latents, **params)
    n = result["n_points"] * len(result["per_repeat"])
    return {f"uniformity_{key}": (result[key], n) for key in ("cv", "gini", "entropy")}


def _fisher_rows(result: dict, n: int, scalar_names: tuple[str, str], curve_names: tuple[str, str] | None) -> dict:
    """fi/fir rows (value, n) of a :mod:`.fisher` summary, plus φ(s)/ψ(s) curve rows with params {"s": …}."""
    rows = {scalar_names[0]: (result["fi"], n), scalar_names[1]: (result["fir"], n)}
    if curve_names:
        grid = result["s"].tolist()
        for name, values in zip(curve_names, (result["phi"], result["psi"])):
            rows[name] = [(float(v), n, {"s": float(s)}) for s, v in zip(grid, values.tolist())]
    return rows


def _run_fisher_class_conditional(latents, labels, masks, fits=None, **params):
    from .fisher import class_conditional_fisher

    _require_two_per_class(labels, "FI/FIR")
    # VIV's fit of the same latents with the same fit parameters is reused: the fit dominates the cost.
    spectra = (fits or {}).get(_fit_key(params, class_conditional_fisher))
    result = class_conditional_fisher(latents, labels, spectra=spectra, **params)
    return _fisher_rows(result, latents.shape[0], ("fi", "fir"), ("fi_curve", "fir_curve"))


def _run_fisher_mixture(latents, labels, masks, **params):
    from .fisher import mixture_fisher

    _require_two_per_class(labels, "FI/FIR")
    result = mixture_fisher(latents, labels, **params)
    return _fisher_rows(result, latents.shape[0], ("fi_mixture", "fir_mixture"), None)


def _run_linear_probe(latents, labels, masks, train=None, **params):
    from .semantic import linear_probe

    train_latents, train_labels = train
    result = linear_probe(train_latents, train_labels, latents, labels, **params)
    return {"linear_probe": (result["top1"], result["n_val"])}


def _function(module: str, name: str) -> Callable[[], Callable]:
    def resolve():
        import importlib

        return getattr(importlib.import_module(f"diffusability.metrics.{module}"), name)
    return resolve


COMPUTATIONS: dict[str, Computation] = {c.name: c for c in (
    Computation("viv_class_conditional", _run_viv_class_conditional, _function("viv", "class_conditional_viv"),
                frozenset({"labels"})),
    Computation("viv_marginal", _run_viv_marginal, _function("viv", "marginal_viv"), frozenset({"labels"})),
    Computation("lnc", _run_lnc, _function("semantic", "latent_neighbor_consistency"), frozenset({"labels"}),
                {"k": 5, "similarity": "cosine", "level": "image"}),
    Computation("lds", _run_lds, _function("spatial", "local_distant_similarity"), frozenset(), {"far_dist": 6}),
    Computation("cds", _run_cds, _function("spatial", "correlation_decay_slope"), frozenset(), {"dmax": 8}),
    Computation("srss", _run_srss, _function("spatial", "semantic_region_self_similarity"), frozenset({"masks"}),
                {"d_pos": 1, "d_neg": 6, "min_fg": 64, "min_bg": 64}),
    Computation("rmsc", _run_rmsc, _function("spatial", "rms_spatial_contrast"), frozenset()),
    Computation("fisher_class_conditional", _run_fisher_class_conditional,
                _function("fisher", "class_conditional_fisher"), frozenset({"labels"})),
    Computation("fisher_mixture", _run_fisher_mixture, _function("fisher", "mixture_fisher"), frozenset({"labels"})),
    # docs/metrics.md §2.1's equivalent on cached latents: standardised features + linear head, L-BFGS to convergence
    Computation("linear_probe", _run_linear_probe, _function("semantic", "linear_probe"),
                frozenset({"labels", "train"})),
    Computation("sec", _run_sec, _function("spectral", "spectral_energy_concentration"), frozenset(),
                {"ratios": [0.25, 0.5, 0.75], "ratio": 0.5, "strict": True}),
    # the paper protocol (10 000 pixels, 10 subsets); about 1-2 min of CPU t-SNE per subset
    Computation("uniformity", _run_uniformity, _function("uniformity", "latent_uniformity"), frozenset(),
                {"n": 10_000, "repeats": 10, "seed": 42, "perplexity": 30.0, "max_iter": 1000,
                 "backend": "sklearn"}),
)}

METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("viv_uniform", "viv_class_conditional", "velocity ambiguity", "lower",
               "class-conditional VIV, t ~ U[0, 1]"),
    MetricSpec("viv_logit_normal", "viv_class_conditional", "velocity ambiguity", "lower",
               "class-conditional VIV, t ~ LN(0, 1)"),
    MetricSpec("viv_uniform_per_dim", "viv_class_conditional", "velocity ambiguity", "lower", "viv_uniform / D"),
    MetricSpec("viv_logit_normal_per_dim", "viv_class_conditional", "velocity ambiguity", "lower",
               "viv_logit_normal / D"),
    MetricSpec("viv_curve", "viv_class_conditional", "velocity ambiguity", "lower",
               "class-averaged σ²_irr(t) of eq. 4, one row per time (params t); only when named"),
    MetricSpec("viv_marginal", "viv_marginal", "velocity ambiguity", "lower", "marginal (GMM Monte Carlo) VIV"),
    MetricSpec("lnc", "lnc", "semantic separability", "higher",
               "latent neighbour consistency (FG-pooled kNN label agreement)"),
    MetricSpec("lds", "lds", "spatial structure", "higher", "local-vs-distant token cosine similarity"),
    MetricSpec("cds", "cds", "spatial structure", "higher", "negative slope of token cosine vs grid distance"),
    MetricSpec("srss", "srss", "spatial structure", "higher", "semantic-region self-similarity (FG vs BG)"),
    MetricSpec("rmsc", "rmsc", "spatial structure", "higher", "RMS spatial contrast of unit tokens"),
    MetricSpec("sec", "sec", "latent smoothness", "lower",
               "spectral energy above r = 0.5 of the DCT Manhattan frequency"),
    # FI/FIR magnitudes are diagnostics (direction "none"): what matters is their alignment with the data's
    # curves (fi_gap/fir_gap of the tokenizer-metrics command, docs/fisher-geometry.md), not their size
    MetricSpec("fi", "fisher_class_conditional", "fisher geometry", "none",
               "Fisher information of the class Gaussians: mean over log s of φ(s) = s·J(s)/D (diagnostic)"),
    MetricSpec("fir", "fisher_class_conditional", "fisher geometry", "none",
               "Fisher information rate of the class Gaussians: mean over log s of ψ(s) = −s²·J'(s)/D (diagnostic)"),
    MetricSpec("fi_curve", "fisher_class_conditional", "fisher geometry", "none",
               "class-averaged φ(s), one row per noise variance (params s); only when named"),
    MetricSpec("fir_curve", "fisher_class_conditional", "fisher geometry", "none",
               "class-averaged ψ(s), one row per noise variance (params s); only when named"),
    MetricSpec("fi_mixture", "fisher_mixture", "fisher geometry", "none",
               "fi of the class mixture (Monte Carlo); only when named"),
    MetricSpec("fir_mixture", "fisher_mixture", "fisher geometry", "none",
               "fir of the class mixture (Monte Carlo); only when named"),
    MetricSpec("linear_probe", "linear_probe", "semantic separability", "higher",
               "val top-1 of a BN + linear probe trained on the flattened train latents; only when named"),
    MetricSpec("uniformity_cv", "uniformity", "latent uniformity", "lower", "CV of t-SNE KDE density"),
    MetricSpec("uniformity_gini", "uniformity", "latent uniformity", "lower", "Gini of t-SNE KDE density"),
    MetricSpec("uniformity_entropy", "uniformity", "latent uniformity", "higher",
               "normalised entropy of t-SNE KDE density"),
)}

GROUPS: dict[str, tuple[str, ...]] = {
    "viv": ("viv_uniform", "viv_logit_normal", "viv_uniform_per_dim", "viv_logit_normal_per_dim"),
    "uniformity": ("uniformity_cv", "uniformity_gini", "uniformity_entropy"),
    "fisher": ("fi", "fir"),
}

#: rows of the ``tokenizer-metrics`` command (they need the encoder/decoder, not only latents)
TOKENIZER_METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("rotate_error", "equivariance", "affine equivariance", "lower",
               "‖E(rot90 x) − rot90 E(x)‖²/‖rot90 E(x)‖², k = 1, 2, 3"),
    MetricSpec("rotate_consistency", "equivariance", "affine equivariance", "higher",
               "token cosine of E(rot90 x) and rot90 E(x)"),
    MetricSpec("scale_error", "equivariance", "affine equivariance", "lower",
               "relative error of E(down-scaled x) vs down-scaled E(x)"),
    MetricSpec("scale_consistency", "equivariance", "affine equivariance", "higher",
               "token cosine of E(scaled x) and scaled E(x)"),
    MetricSpec("ifid", "ifid", "manifold continuity", "lower",
               "Fréchet distance of real images vs decoded slerps to a cosine neighbour (iFID protocol)"),
    # Fisher geometry (docs/fisher-geometry.md): alignment of the data's and the latents' FI/FIR curves on the
    # normalised noise axis σ = s / v̄, and the encoder's penalties from JVPs along data tangents
    MetricSpec("fi_gap", "fisher_alignment", "fisher geometry", "lower",
               "mean over log σ of |log φ_latent(σ) − log φ_data(σ)| (class-Gaussian FI curves)"),
    MetricSpec("fir_gap", "fisher_alignment", "fisher geometry", "lower",
               "mean over log σ of |log ψ_latent(σ) − log ψ_data(σ)| (class-Gaussian |FIR| curves)"),
    MetricSpec("fi_data_curve", "fisher_alignment", "fisher geometry", "none",
               "φ(σ) of the block-averaged images, one row per σ"),
    MetricSpec("fir_data_curve", "fisher_alignment", "fisher geometry", "none",
               "ψ(σ) of the block-averaged images, one row per σ"),
    MetricSpec("fi_latent_curve", "fisher_alignment", "fisher geometry", "none",
               "φ(σ) of the normalised latents, one row per σ"),
    MetricSpec("fir_latent_curve", "fisher_alignment", "fisher geometry", "none",
               "ψ(σ) of the normalised latents, one row per σ"),
    MetricSpec("compression_penalty", "fisher_penalties", "fisher geometry", "lower",
               "log-scaled fraction of data tangent directions the encoder discards"),
    MetricSpec("distortion_penalty", "fisher_penalties", "fisher geometry", "lower",
               "isometry defect ‖G/c² − I‖²_F / r of the encoder on data tangents"),
    MetricSpec("curvature_penalty", "fisher_penalties", "fisher geometry", "lower",
               "normal bending of data tangent lines by the encoder over one neighbour step"),
    MetricSpec("data_curvature", "fisher_penalties", "fisher geometry", "none",
               "secant energy off the data tangent frame (a property of the data, not the tokenizer)"),
)}

#: rows of the ``model-metrics`` command (one trained diffusion model per row set)
MODEL_METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    # diagnostics like the analytic fi/fir (see the note in METRICS): a lower FI rewards compression
    MetricSpec("fi_model", "model_fisher", "fisher geometry", "none",
               "fi from the trained model's score (denoiser; diagnostic)"),
    MetricSpec("fir_model", "model_fisher", "fisher geometry", "none",
               "fir from the model's score Jacobian (Hutchinson + JVP; diagnostic)"),
)}


#: rows of the ``trajectory-metrics`` command (the sampler's recorded trajectories, docs/metrics.md §10): the
#: means over samples of eqs. (10), (11) and, one row per segment, ρ_k — a profile whose straight constant-speed
#: value is 1 with no better side (above 1 aggressive, below conservative), so a diagnostic
TRAJECTORY_METRICS: dict[str, MetricSpec] = {m.name: m for m in (
    MetricSpec("local_straightness", "trajectory", "transport (post hoc)", "higher",
               "mean cosine of consecutive segments, eq. (10)"),
    MetricSpec("global_efficiency", "trajectory", "transport (post hoc)", "higher",
               "displacement over path length, eq. (11)"),
    MetricSpec("length_ratio", "trajectory", "transport (post hoc)", "none",
               "per-segment length ratio ρ_k, one row per segment (params segment, t_start, t_end); 1 = straight"),
)}


#: every row name of the registry: the latent metrics and the tokenizer-, model- and trajectory-metrics rows
ALL_METRICS: dict[str, MetricSpec] = {**METRICS, **TOKENIZER_METRICS, **MODEL_METRICS, **TRAJECTORY_METRICS}


def metric_direction(name: str) -> str:
    """"lower", "higher" or "none" (diagnostic) for a metric, SEC sweep, tokenizer-, model- or trajectory row name."""
    if name.startswith("sec_r"):
        return METRICS["sec"].direction
    require(name in ALL_METRICS, f"metric {name!r} is unknown (known: {sorted(ALL_METRICS)})")
    return ALL_METRICS[name].direction


def metric_perspective(name: str) -> str:
    """The perspective of a registry metric (a SEC sweep row ``sec_r…`` is SEC's); unknown names are ``other``.

    >>> metric_perspective("viv_uniform"), metric_perspective("sec_r0.25"), metric_perspective("new_metric")
    ('velocity ambiguity', 'latent smoothness', 'other')
    """
    if name.startswith("sec_r"):
        name = "sec"
    return ALL_METRICS[name].perspective if name in ALL_METRICS else "other"


def requirements(name: str) -> frozenset:
    """Inputs a registry metric needs beyond the validation latents: a subset of {labels, masks, train}."""
    require(name in METRICS, f"metric {name!r} is unknown (known: {sorted(METRICS)})")
    return _requirements(name)


def _requirements(name: str) -> frozenset:
    return COMPUTATIONS[METRICS[name].computation].requires


_INPUT_DESCRIPTIONS = {"masks": "FG masks (N, H, W) bool", "labels": "labels (N,) int",
                       "train": "training latents (M, C, H, W) with labels (M,)"}


def expand_names(names, have_labels: bool, have_masks: bool, have_train: bool = False) -> list[str]:
    """Metric names (in table order) for a list of names, groups and ``all``.

    ``all`` keeps only the metrics the given inputs allow; a metric named explicitly (or through
    a group) whose inputs are missing raises :class:`DiffusabilityError` naming the input.
    """
    if isinstance(names, str):
        names = [part for part in names.split(",")]
    names = [n.strip() for n in names if n.strip()]
    require(bool(names), "metrics: no metric names given")
    wanted: set[str] = set()
    available = {"labels": have_labels, "masks": have_masks, "train": have_train}
    for name in names:
        if name == "all":
            wanted.update(m for m in METRICS
                          if m not in OPT_IN and all(available[r] for r in _requirements(m)))
            continue
        members = GROUPS.get(name, (name,))
        for member in members:
            require(member in METRICS, f"metric {name!r} is unknown (known: {sorted(METRICS)}, groups "
                                       f"{sorted(GROUPS)} and 'all')")
            for needed in sorted(_requirements(member)):
                require(available[needed], f"metric {member!r} needs {needed} (none were given: "
                                           f"{_INPUT_DESCRIPTIONS[needed]})")
            wanted.add(member)
    return [m for m in METRICS if m in wanted]


def _parameter_names(function: Callable) -> tuple[set[str], dict, bool]:
    signature = inspect.signature(function)
    # data the registry hands over itself, never user parameters (spectra: a fit shared with VIV)
    inputs = {"latents", "labels", "masks", "train_feats", "train_labels", "val_feats", "val_labels", "spectra"}
    names, defaults, open_ended = set(), {}, False
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
        elif parameter.name not in inputs and parameter.kind is not inspect.Parameter.VAR_POSITIONAL:
            names.add(parameter.name)
            if parameter.default is not inspect.Parameter.empty:
                defaults[parameter.name] = parameter.default
    return names, defaults, open_ended


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)  # e.g. a torch.dtype


def resolve_params(computation: str, metrics: list[str], params: dict | None) -> tuple[dict, dict]:
    """Effective keyword arguments of one computation and the JSON-able record of them.

    Order of precedence: function defaults < registry defaults < ``params[computation]`` <
    ``params[group]`` < ``params[metric]`` (metrics of one computation must agree).
    """
    params = params or {}
    known_keys = set(METRICS) | set(GROUPS) | set(COMPUTATIONS)
    for key in params:
        require(key in known_keys, f"params: {key!r} is not a metric, group or computation "
                                   f"(known: {sorted(known_keys)})")
        require(isinstance(params[key], dict), f"params[{key!r}]: expected an object of keyword arguments")
    spec = COMPUTATIONS[computation]
    accepted, function_defaults, open_ended = _parameter_names(spec.signature_of())
    merged = {**function_defaults, **spec.defaults, **params.get(computation, {})}
    for group, members in GROUPS.items():
        if any(METRICS[m].computation == computation for m in members) and group in params:
            merged.update(params[group])
    per_metric = [params[m] for m in metrics if m in params]
    for a in per_metric:
        for b in per_metric:
            clash = {k for k in a.keys() & b.keys() if a[k] != b[k]}
            require(not clash, f"params: metrics of the computation {computation!r} disagree on {sorted(clash)}")
        merged.update(a)
    if not open_ended:
        unknown = sorted(set(merged) - accepted)
        require(not unknown, f"params: {computation!r} has no parameter(s) {unknown} "
                             f"(accepted: {sorted(accepted)})")
    record = {k: _jsonable(v) for k, v in sorted(merged.items()) if k not in EXECUTION_ONLY}
    return merged, record


def compute_metrics(latents, labels=None, masks=None, names=("all",), params: dict | None = None,
                    device: str | None = None, train_latents=None, train_labels=None):
    """Compute named metrics on (already normalised) latents and return tidy rows.

    Every computation that the named metrics need runs once (e.g. one flip-flop fit for all VIV rows
    and, with the same fit parameters, for ``fi``/``fir``); its wall time goes to the log, not the rows.

    Parameters
    ----------
    latents : torch.Tensor or array-like, shape (N, C, H, W)
        Float, finite, not constant; normalised as the diffusion model sees them (docs/metrics.md §0.3).
    labels : array-like of int, shape (N,), optional
        Class labels (VIV, LNC, FI/FIR, the linear probe).
    masks : array-like of bool, shape (N, H, W), optional
        Foreground at latent resolution (SRSS; LNC's foreground pooling).
    names : sequence of str or str, default ("all",)
        Metric names, groups (``viv``, ``uniformity``, ``fisher``) and/or ``all``; or a comma string.
    params : dict, optional
        ``{metric | group | computation: {keyword: value}}``.
    device : str, optional
        Where to compute (default: the latents' device).
    train_latents, train_labels : optional
        (M, C, H, W) float and (M,) int training latents, normalised like ``latents`` — needed only
        by ``linear_probe``.

    Returns
    -------
    pandas.DataFrame
        The rows of :mod:`diffusability.rows`: ``metric`` (str), ``value`` (float64), ``direction``
        ("lower"/"higher"/"none"), ``params`` (key-sorted JSON of the effective parameters), ``n``
        (int64). Metrics that ``all`` selected but the inputs cannot support (e.g. SRSS's foreground
        threshold on a small grid) are left out, with the reason in ``frame.attrs["skipped"]``
        ({metric: why}).

    Examples
    --------
    Spatially constant latents: every token equals its neighbours and the distant ones (LDS = 0) and
    all DCT energy sits at the zero frequency (SEC = 0 at every cut-off of the sweep).

    >>> import torch
    >>> from diffusability.metrics import compute_metrics
    >>> flat = torch.randn(6, 3, 1, 1, generator=torch.Generator().manual_seed(0)).expand(6, 3, 8, 8)
    >>> table = compute_metrics(flat, names=["lds", "sec"])
    >>> list(table.columns)
    ['metric', 'value', 'direction', 'params', 'n']
    >>> [(row.metric, round(row.value, 6), row.direction, row.n) for row in table.itertuples()]
    [('lds', 0.0, 'higher', 6), ('sec', 0.0, 'lower', 6), ('sec_r0.25', 0.0, 'lower', 6),
     ('sec_r0.5', 0.0, 'lower', 6), ('sec_r0.75', 0.0, 'lower', 6)]
    >>> table.loc[0, "params"]
    '{"far_dist": 6}'
    """
    latents = as_latent_tensor(latents)
    if device is not None:
        latents = latents.to(device)
    n, _, h, w = latents.shape
    require(bool((latents != latents.reshape(-1)[0]).any()),
            "latents: all values are equal (constant latents have no measurable structure)")
    if labels is not None:
        labels = as_label_tensor(labels, n).to(latents.device)
    if masks is not None:
        masks = as_mask_tensor(masks, (n, h, w)).to(latents.device)
    train = None
    if train_latents is not None:
        require(train_labels is not None, "train_labels: required with train_latents")
        train_latents = as_latent_tensor(train_latents).to(latents.device)
        require(tuple(train_latents.shape[1:]) == tuple(latents.shape[1:]),
                f"train_latents: shape {tuple(train_latents.shape[1:])} per latent differs from the "
                f"validation latents' {tuple(latents.shape[1:])}")
        train = (train_latents, as_label_tensor(train_labels, train_latents.shape[0]).to(latents.device))
    have = (labels is not None, masks is not None, train is not None)
    selected = expand_names(names, *have)
    # metrics reached only through "all" are skipped (with the reason) when the inputs are too small
    # for their parameters; a metric asked for by name still fails with the reason
    listed = [part.strip() for part in (names.split(",") if isinstance(names, str) else names)]
    named = [part for part in listed if part and part != "all"]
    explicit = set(expand_names(named, *have)) if named else set()
    skipped: dict[str, str] = {}
    by_computation: dict[str, list[str]] = {}
    for metric in selected:
        by_computation.setdefault(METRICS[metric].computation, []).append(metric)

    rows = []
    fits: dict = {}  # class-covariance fits shared between computations (VIV → FI/FIR)
    for computation, metrics in progress(list(by_computation.items()), total=len(by_computation),
                                         desc="metrics", unit="computation"):
        kwargs, record = resolve_params(computation, metrics, params)
        if "viv_curve" in metrics and kwargs.get("curve_times") is None:
            kwargs["curve_times"] = VIV_CURVE_TIMES   # the function's own default (None) means "no curve"
        if computation == "lnc":
            record["pooling"] = "foreground" if masks is not None else "all tokens"
        inputs = {"fits": fits} if computation in ("viv_class_conditional", "fisher_class_conditional") else {}
        if "train" in COMPUTATIONS[computation].requires:
            inputs["train"] = train
            # the probe's mini-batch size changes its result, so it is a parameter here
            record.update(batch_size=kwargs.get("batch_size"), features="flattened latents",
                          n_train=int(train[0].shape[0]))
        started = time.perf_counter()
        try:
            results = COMPUTATIONS[computation].run(latents, labels, masks, **inputs, **kwargs)
        except TypeError as exc:
            raise DiffusabilityError(f"{computation}: invalid parameters {kwargs} ({exc})") from exc
        except DiffusabilityError as exc:
            if explicit & set(metrics):
                raise
            for metric in metrics:
                skipped[metric] = str(exc)
            log.warning("metrics: skipped %s (asked for through 'all'): %s", ", ".join(metrics), exc)
            continue
        seconds = time.perf_counter() - started
        log.info("metrics: %s took %.2f s", computation, seconds)
        extra = [name for name in results if name.startswith("sec_r")] if computation == "sec" else []
        for metric in metrics + extra:
            require(metric in results, f"{computation}: did not return {metric!r}")
            produced = results[metric]
            # a metric yields one (value, n) or, like viv_curve, a list of (value, n, extra params)
            for value, count, *extra_params in (produced if isinstance(produced, list) else [produced]):
                value = float(value)
                if not math.isfinite(value):
                    raise DiffusabilityError(f"{metric}: the value is {value} (degenerate latents, labels or masks?)")
                row_params = {**record, **(extra_params[0] if extra_params else {})}
                rows.append(result_row(metric, value, metric_direction(metric), row_params, count))
    frame = rows_frame(rows)
    frame.attrs["skipped"] = skipped  # {metric: why}, for the caller to report and record
    return frame
