"""Commands of the FDr metrics: ``representation-stats`` and ``representation-metrics``.

``representation-stats`` caches the feature mean/covariance of the reference images in one
representation space (one job per space, so adding a space computes only its own statistics).
``representation-metrics`` computes the rows ``fd_<space>``, ``fdr_<space>`` and ``fdr6`` of one
sample set against those statistics; the Inception space is read from the sample set's
``generation-metrics`` rows (their ``fd`` under the FID Inception is the gFID), so the Inception
does not run twice. Models load from local ``save_pretrained`` folders only. Torch is imported
inside the command functions.

Statistics file (.npz): ``mu`` (F,) and ``sigma`` (F, F) float64, ``n`` (images), ``image_size``,
``space`` (its name), ``input_size``.
"""

from __future__ import annotations

import time
from pathlib import Path


def register(subparsers) -> None:
    """Add the FDr subcommands to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument
    from .spaces import FDR6_SPACES, MODEL_SPACES

    parser = subparsers.add_parser(
        "representation-stats", help="reference statistics of one FDr representation space",
        description="Feature mean/covariance (float64, N − 1) of an image set in one representation space "
                    f"({', '.join(MODEL_SPACES)}), from a local save_pretrained folder.")
    parser.add_argument("--images", required=True, help="image split (.safetensors 'images' or .npz 'arr_0')")
    parser.add_argument("--space", required=True, choices=MODEL_SPACES)
    parser.add_argument("--model", required=True, help="local save_pretrained folder of the space's model")
    parser.add_argument("--batch-size", type=int, default=256)
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="statistics (.npz: mu, sigma, n, image_size, space, input_size)")
    parser.set_defaults(func=run_representation_stats)

    parser = subparsers.add_parser(
        "representation-metrics", help="fd_<space> / fdr_<space> / fdr6 rows of a sample set",
        description="Raw Fréchet distance and FDr (raw / the validation-set FD of the paper) in each given "
                    f"representation space, and FDr6 (mean of the six: {', '.join(FDR6_SPACES)}) when all six "
                    "are present. The Inception space comes from --inception-rows.")
    parser.add_argument("--samples", required=True, help="samples (.npz with arr_0 uint8 NHWC)")
    parser.add_argument("--space", nargs=3, action="append", default=[], metavar=("NAME", "MODEL", "STATS"),
                        help="a representation space: its name, its local model folder and its reference "
                             "statistics from representation-stats (repeat per space)")
    parser.add_argument("--inception-rows", default=None,
                        help="generation-metrics rows of the same samples under the FID Inception: their fd "
                             "(gFID) is the Inception space's raw FD")
    parser.add_argument("--spec", type=json_spec, default={}, help='JSON: {"batch_size": 256}')
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="result rows (.parquet)")
    parser.set_defaults(func=run_representation_metrics)


def read_representation_stats(path, name: str) -> dict:
    """mu, sigma, n of a ``representation-stats`` file, checked to belong to space ``name``."""
    import numpy as np

    from ..errors import require

    path = Path(path)
    require(path.is_file() and path.suffix == ".npz",
            f"{path}: reference statistics of space {name!r} not found (an .npz from representation-stats)")
    from ..io import reading
    with reading(path, ".npz file"), np.load(path, allow_pickle=False) as data:
        require({"mu", "sigma", "space"} <= set(data.files),
                f"{path}: expected arrays mu, sigma and space (from representation-stats), found {sorted(data.files)}")
        stored = str(data["space"])
        require(stored == name, f"{path}: statistics of space {stored!r}, expected {name!r}")
        return {key: data[key] for key in ("mu", "sigma", "n") if key in data.files}


def inception_fd_from_rows(path) -> tuple[float, dict]:
    """The ``fd`` (gFID) of a generation-metrics rows file computed with the FID Inception, and its params."""
    import json

    import numpy as np

    from ..errors import DiffusabilityError, require
    from ..io import read_parquet

    require(Path(path).is_file(), f"{path}: generation rows not found")
    rows = read_parquet(path)
    missing = [c for c in ("metric", "value", "params") if c not in rows.columns]
    require(not missing, f"{path}: missing columns {missing} (generation-metrics rows)")
    fd = rows[rows["metric"] == "fd"]
    require(len(fd) == 1, f"{path}: expected one 'fd' row, found {len(fd)}")
    try:
        params = json.loads(fd["params"].iloc[0])
    except (TypeError, json.JSONDecodeError) as exc:
        raise DiffusabilityError(f"{path}: the fd row's params are not JSON ({exc})") from exc
    require(isinstance(params, dict), f"{path}: the fd row's params must be a JSON object")
    value = fd["value"].iloc[0]
    require(isinstance(value, (int, float)) and np.isfinite(value) and value >= 0,
            f"{path}: the fd row's value must be a finite number >= 0, got {value!r}")
    require(params.get("feature_net") == "inception",
            f"{path}: its fd was computed with feature net {params.get('feature_net')!r}; the Inception space "
            "needs the FID Inception's (generation.feature_network: inception)")
    return float(fd["value"].iloc[0]), params


def run_representation_stats(args) -> None:
    import numpy as np
    import torch

    from ..errors import require
    from ..io import save_npz
    from ..devices import resolve_device
    from ..data.splits import load_images
    from ..metrics.frechet import feature_statistics
    from .spaces import extract_representation_features, load_representation_model, space

    require(args.batch_size >= 1, f"--batch-size {args.batch_size}: expected an integer >= 1")
    torch.set_flush_denormal(True)
    images, _ = load_images(args.images)
    extractor = load_representation_model(args.space, args.model, resolve_device(args.device))
    features = extract_representation_features(extractor, images, args.batch_size,
                                                desc=f"reference {args.space} features")
    mu, sigma = feature_statistics(features)
    save_npz(args.out, mu=mu, sigma=sigma, n=np.array(len(images)), image_size=np.array(images.shape[1]),
             space=np.array(args.space), input_size=np.array(space(args.space).input_size))


def run_representation_metrics(args) -> None:
    import pandas as pd
    import torch

    from ..errors import reject_unknown_keys, require
    from ..io import provenance, write_parquet
    from ..progress import log
    from ..devices import resolve_device
    from ..data.splits import load_images
    from ..metrics.frechet import feature_statistics
    from .spaces import (extract_representation_features, load_representation_model,
                                 representation_fds, representation_rows)

    spec = dict(args.spec)
    reject_unknown_keys(spec, {"batch_size"}, "representation-metrics spec")
    batch_size = spec.get("batch_size", 256)
    require(isinstance(batch_size, int) and batch_size >= 1,
            f"spec batch_size={batch_size!r}: expected an integer >= 1")
    names = [name for name, _, _ in args.space]
    repeated = sorted({name for name in names if names.count(name) > 1})
    require(not repeated, f"--space {repeated}: given more than once")
    require(args.space or args.inception_rows, "representation-metrics: give at least one --space or --inception-rows")
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    samples, _ = load_images(args.samples, keys=("arr_0",))

    stats_gen, stats_ref, raw_fds, seconds = {}, {}, {}, {}
    params = {"n_reference": {}, "reference": {}}
    for name, folder, stats_path in args.space:
        start = time.perf_counter()
        reference = read_representation_stats(stats_path, name)
        extractor = load_representation_model(name, folder, device)
        features = extract_representation_features(extractor, samples, batch_size, desc=f"sample {name} features")
        stats_gen[name] = feature_statistics(features)
        stats_ref[name] = (reference["mu"], reference["sigma"])
        params["n_reference"][name] = int(reference["n"]) if "n" in reference else -1
        params["reference"][name] = Path(stats_path).name
        seconds[name] = time.perf_counter() - start
        del extractor  # one large model in memory at a time
    if args.inception_rows:
        raw_fds["inception"], inception_params = inception_fd_from_rows(args.inception_rows)
        params["n_reference"]["inception"] = inception_params.get("n_reference", -1)
        params["reference"]["inception"] = inception_params.get("reference", "")
        seconds["inception"] = 0.0  # computed by generation-metrics
    result = representation_fds(stats_gen, stats_ref, raw_fds)
    rows = representation_rows(result, len(samples), params, seconds)
    write_parquet(pd.DataFrame(rows), args.out,
                  provenance({"batch_size": batch_size}, samples=str(args.samples),
                             spaces=",".join(result["spaces"])))
    log.info("representation metrics of %s: %s", args.samples,
             ", ".join(f"{r['metric']}={r['value']:.4f}" for r in rows))
