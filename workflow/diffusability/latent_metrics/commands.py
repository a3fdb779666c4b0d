"""``diffusability metrics`` (any latent file) and ``diffusability latent-metrics`` (a workflow step).

* ``metrics INPUT --metrics NAME[,NAME…] --out OUT.parquet [--normalize none|per-channel]``:
  INPUT is ``.npz`` / ``.safetensors`` with ``latents`` float (N, C, H, W), optional ``labels``
  int (N,) and ``masks`` bool (N, H, W) at latent resolution. ``per-channel`` (default)
  standardises with the input's own statistics.
* ``latent-metrics --latents DIR --spec JSON --out OUT.parquet``: DIR holds ``val.safetensors``
  and ``stats.safetensors`` (train-split mean/std); latents are normalised with those statistics,
  exactly as the diffusion model sees them. The spec is
  ``{"enabled": [names…], "params": {metric_or_group: {…}}, "seed": int (optional, provenance only)}``.
  ``train.safetensors`` is read too, only when a named metric needs the training latents
  (``linear_probe``); ``metrics`` takes them as ``--train FILE``.
* ``--device``: where the metrics compute (:mod:`diffusability.devices`): ``latent-metrics`` defaults to
  ``auto`` (the GPU when one is visible, as every workflow step), ``metrics`` to ``cpu``.
* ``tokenizer-metrics`` and ``model-metrics``: see :mod:`.network_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import DiffusabilityError, about, require
from .inputs import read_latent_inputs


def _parse_param(text: str) -> tuple[str, str, object]:
    """``metric.key=value`` → (metric, key, value); the value is parsed as JSON when it can be."""
    name_key, sep, raw = text.partition("=")
    metric, dot, key = name_key.partition(".")
    if not sep or not dot or not metric or not key:
        raise argparse.ArgumentTypeError(f"--param {text!r}: expected METRIC.KEY=VALUE, e.g. lnc.k=10")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return metric, key, value


def register(subparsers) -> None:
    """Add the ``metrics`` and ``latent-metrics`` subcommands."""
    from ..devices import add_device_argument
    from ..specs import json_spec

    p = subparsers.add_parser("metrics", help="latent proxy metrics of one latent file",
                              description="Compute latent proxy metrics of one .npz/.safetensors latent file.")
    p.add_argument("input", help=".npz or .safetensors with latents (N,C,H,W), optional labels (N,), masks (N,H,W)")
    p.add_argument("--metrics", required=True,
                   help="comma-separated metric names, groups (viv, uniformity) or 'all'")
    p.add_argument("--out", required=True, help="output Parquet table")
    p.add_argument("--normalize", choices=("none", "per-channel"), default="per-channel",
                   help="per-channel: standardise with the input's own mean/std (default); none: as given")
    p.add_argument("--param", action="append", type=_parse_param, default=[], metavar="METRIC.KEY=VALUE",
                   help="metric parameter (repeatable), e.g. lnc.k=10 or uniformity.repeats=1")
    # the shared argument (``auto`` accepted); an ad hoc command on any file keeps the CPU by default
    add_device_argument(p, default="cpu")
    p.add_argument("--train", default=None,
                   help="training latents (.npz/.safetensors: latents (M,C,H,W), labels (M,)) for linear_probe; "
                        "normalised like INPUT")
    p.set_defaults(func=run_metrics)

    q = subparsers.add_parser("latent-metrics", help="latent proxy metrics of a tokenizer's validation latents")
    q.add_argument("--latents", required=True, help="latent directory with val.safetensors and stats.safetensors")
    q.add_argument("--spec", required=True, type=json_spec,
                   help='JSON: {"enabled": [names], "params": {metric_or_group: {...}}}')
    q.add_argument("--out", required=True, help="output Parquet table")
    # a workflow step: the GPU when the job was given one (every metric runs where the latents are)
    add_device_argument(q)
    q.set_defaults(func=run_latent_metrics, input_files={"latents": latent_metrics_input_files})


def latent_metrics_input_files(args) -> tuple[str, ...]:
    """The files of ``--latents`` that ``latent-metrics`` reads: val and stats, and the train latents only when
    an enabled metric needs them (the linear probe); a spec it cannot read keeps them (the command then
    refuses the spec itself)."""
    from ..metrics.registry import expand_names, requirements

    files = ("val.safetensors", "stats.safetensors")
    enabled = args.spec.get("enabled")
    if not (isinstance(enabled, list) and all(isinstance(name, str) for name in enabled)):
        return files + ("train.safetensors",)
    try:
        wanted = expand_names(enabled, True, True, have_train=True)
    except DiffusabilityError:  # an unknown name: the command refuses it with its own message
        return files + ("train.safetensors",)
    return files + (("train.safetensors",) if any("train" in requirements(n) for n in wanted) else ())


def _params_from_flags(flags) -> dict:
    params: dict = {}
    for metric, key, value in flags:
        params.setdefault(metric, {})[key] = value
    return params


def run_metrics(args) -> int:
    from ..devices import resolve_device
    from ..io import load_arrays, provenance, write_parquet
    from ..metrics.normalization import channel_stats, normalize_latents
    from ..metrics.registry import compute_metrics

    with about(args.input):
        latents, labels, masks = read_latent_inputs(load_arrays(args.input), str(args.input))
    train_latents = train_labels = None
    if args.train is not None:
        train_latents, train_labels, _ = read_latent_inputs(load_arrays(args.train), str(args.train))
        require(train_labels is not None, f"{args.train}: the training latents need 'labels' (M,)")
    if args.normalize == "per-channel":
        with about(args.input):
            mean, std = channel_stats(latents)
            latents = normalize_latents(latents, mean, std)
        if train_latents is not None:  # the same coordinates as INPUT
            train_latents = normalize_latents(train_latents, mean, std)
    params = _params_from_flags(args.param)
    with about(args.input):
        table = compute_metrics(latents, labels, masks, names=args.metrics, params=params,
                                device=resolve_device(args.device),
                                train_latents=train_latents, train_labels=train_labels)
    skipped = table.attrs.get("skipped", {})
    for metric, why in skipped.items():
        print(f"diffusability metrics: skipped {metric}: {why}", file=sys.stderr)
    write_parquet(table, args.out, provenance({"input": str(args.input), "metrics": args.metrics,
                                               "normalize": args.normalize, "params": params}, skipped=skipped))
    return 0


def _validate_spec(spec: dict) -> tuple[list[str], dict]:
    enabled = spec.get("enabled")
    require(isinstance(enabled, list) and enabled and all(isinstance(x, str) for x in enabled),
            f"--spec: 'enabled' must be a non-empty list of metric names, got {enabled!r}")
    params = spec.get("params", {}) or {}
    require(isinstance(params, dict), f"--spec: 'params' must be an object, got {type(params).__name__}")
    # "seed" (the workflow's global seed) is accepted and recorded in the provenance only: the
    # stochastic metrics keep their documented seeds (e.g. t-SNE random_state 42) unless set in params
    unknown = sorted(set(spec) - {"enabled", "params", "seed"})
    require(not unknown, f"--spec: unknown keys {unknown} (expected 'enabled', 'params', optional 'seed')")
    return enabled, params


def run_latent_metrics(args) -> int:
    from ..devices import resolve_device
    from ..io import load_tensors, provenance, write_parquet
    from ..metrics.normalization import normalize_latents
    from ..metrics.registry import compute_metrics, expand_names, requirements

    enabled, params = _validate_spec(args.spec)
    directory = Path(args.latents)
    require(directory.is_dir(), f"{directory}: latent directory not found")
    val_path, stats_path = directory / "val.safetensors", directory / "stats.safetensors"
    val = {k: v.numpy() for k, v in load_tensors(val_path).items()}
    stats = load_tensors(stats_path, ["mean", "std"])
    latents, labels, masks = read_latent_inputs(val, str(val_path))
    channels = latents.shape[1]
    for key in ("mean", "std"):
        require(tuple(stats[key].shape) == (channels,),
                f"{stats_path}: '{key}' must have shape ({channels},), got {tuple(stats[key].shape)}")
    try:
        latents = normalize_latents(latents, stats["mean"].float(), stats["std"].float())
    except DiffusabilityError as exc:
        raise DiffusabilityError(f"{stats_path}: {exc}") from exc
    train_latents = train_labels = None
    wanted = expand_names(enabled, labels is not None, masks is not None, have_train=True)
    if any("train" in requirements(name) for name in wanted):
        train_path = directory / "train.safetensors"
        train = {k: v.numpy() for k, v in load_tensors(train_path, ["latents", "labels"]).items()}
        train_latents, train_labels, _ = read_latent_inputs(train, str(train_path))
        train_latents = normalize_latents(train_latents, stats["mean"].float(), stats["std"].float())
    with about(val_path):
        table = compute_metrics(latents, labels, masks, names=enabled, params=params,
                                device=resolve_device(args.device),
                                train_latents=train_latents, train_labels=train_labels)
    write_parquet(table, args.out, provenance(args.spec, latents=str(directory)))
    return 0
