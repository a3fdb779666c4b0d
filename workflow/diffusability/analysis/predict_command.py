"""``diffusability predictions`` (the study's own out-of-cluster test) and ``diffusability predict`` (a new tokenizer).

* ``predictions --tables DIR --spec JSON --out-predictions P --out-scores S --out-figure PNG``: the
  leave-one-cluster-out predictions of the generation target (``spec.target``, default ``fd``) from the
  study's latent proxies, every single- and two-proxy OLS model, their scores and the nested
  selection (see :mod:`.predict`), plus a predicted-vs-observed figure. A study too small for the test
  gets empty tables and a figure that says so (the workflow goes on).
* ``predict LATENTS --study DIR --out OUT.parquet``: LATENTS as for ``diffusability metrics``
  (``latents`` (N, C, H, W), ``labels`` (N,), ``masks`` (N, H, W) at the latent grid). Per backbone and
  guidance scale it takes the model with the best out-of-cluster R² on the study, computes that model's
  proxies on LATENTS with the metric registry and the study's own recorded metric parameters, fits the
  model on all the study's tokenizers of the same latent shape, and writes the predicted target with
  its OLS prediction interval and the rank it would take among the study's tokenizers.

Only proxies computable from latents alone are candidates (the registry's metrics without the training
latents; curves left out): reconstruction, encoder- and model-based rows need networks LATENTS lacks.

The proxies and rows are :mod:`.study_proxies`, the figure :mod:`.prediction_figure`, the models
:mod:`.predict`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("diffusability.analysis")


def register(subparsers) -> None:
    """Add the ``predictions`` and ``predict`` subcommands."""
    from ..specs import json_spec

    p = subparsers.add_parser("predictions", help="leave-one-cluster-out prediction of generation FD from latent "
                                                   "proxies: predictions, scores, figure")
    p.add_argument("--tables", type=Path, required=True, help="directory of the aggregated tables")
    p.add_argument("--spec", type=json_spec, default={}, help='{"target": "fd"} (the analysis config)')
    p.add_argument("--out-predictions", type=Path, required=True)
    p.add_argument("--out-scores", type=Path, required=True)
    p.add_argument("--out-figure", type=Path, required=True)
    p.set_defaults(func=run_predictions)

    q = subparsers.add_parser("predict", help="predict a new tokenizer's generation FD from its latents and a study",
                              description="Predict the generation target of a new tokenizer from its latents, "
                                          "with the study's best out-of-cluster model and a prediction interval.")
    q.add_argument("latents", help=".npz or .safetensors with latents (N,C,H,W), labels (N,), masks (N,H,W)")
    q.add_argument("--study", type=Path, required=True,
                   help="a study's results/tables (tokenizers, metrics, generation .parquet)")
    q.add_argument("--out", type=Path, required=True, help="output Parquet table")
    q.add_argument("--name", default=None, help="the new tokenizer's name (default: the file name's stem)")
    q.add_argument("--target", default="fd", help="generation metric to predict (default fd)")
    q.add_argument("--normalize", choices=("none", "per-channel"), default="per-channel",
                   help="per-channel: standardise with the input's own mean/std (default); none: as given")
    q.add_argument("--device", default="cpu", help="torch device of the metrics (default cpu)")
    q.set_defaults(func=run_predict)


def run_predictions(args: argparse.Namespace) -> None:
    """The study's leave-one-cluster-out predictions, their scores and the predicted-vs-observed figure."""
    from ..io import parquet_metadata, write_parquet
    from . import predict
    from .prediction_figure import prediction_figure
    from .study_proxies import latent_proxies
    from .tables import read_predictor_tables

    t = read_predictor_tables(args.tables)
    target = args.spec.get("target", "fd")
    predictions, scores = predict.evaluate_study(latent_proxies(t["metrics"]), predict.target_rows(t["generation"], target),
                                                 predict.tokenizer_cluster(t["tokenizers"]), target)
    meta = parquet_metadata(args.tables / "generation.parquet")
    write_parquet(predictions, args.out_predictions, meta)
    write_parquet(scores, args.out_scores, meta)
    prediction_figure(predictions, scores, target, args.out_figure)
    log.info("predictions: %d rows, scores: %d models", len(predictions), len(scores))


def run_predict(args: argparse.Namespace) -> int:
    """Predict the generation target of the tokenizer of ``LATENTS`` from a study's tables."""
    import pandas as pd

    from ..io import load_arrays, provenance, write_parquet
    from ..latent_metrics.inputs import read_latent_inputs
    from .monitor_predictor import StudyPredictor
    from .study_proxies import new_proxies, prediction_rows

    inputs = read_latent_inputs(load_arrays(args.latents), str(args.latents))
    # the study's selected models for this latent shape: the same fit as the training-time monitor's
    study = StudyPredictor(args.study, tuple(inputs[0].shape[1:]), args.target, str(args.latents))
    values = new_proxies(inputs, str(args.latents), study.needed, study.study_metrics, args.normalize, args.device)
    name = args.name or Path(args.latents).stem
    rows = prediction_rows(name, study.scores, study.proxies, study.targets, values, study.direction)
    write_parquet(pd.DataFrame(rows), args.out, provenance({"latents": str(args.latents), "study": str(args.study),
                                                            "target": args.target, "normalize": args.normalize}))
    for row in rows:
        log.info("predict: %s %s cfg %g: %s = %.4g [%.4g, %.4g] (rank %d of %d; model %s, r2_oc %.2f)", name,
                 row["backbone"], row["cfg_scale"], row["target"], row["predicted"], row["lower"], row["upper"],
                 row["rank"], row["n_study"] + 1, row["model"], row["r2_oc"])
    return 0
