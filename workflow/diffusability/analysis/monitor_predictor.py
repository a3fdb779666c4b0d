"""The study's gFID predictor inside the training-time monitor: fitted once, applied at every evaluation.

``diffusability predict`` (analysis/predict_command.py) predicts a finished tokenizer's generation
target from its latent proxies; the monitor asks the same question of the encoder while it trains.
:class:`StudyPredictor` is that question split in two (``predict`` itself fits a StudyPredictor once):

- at the start of training (once): read the study's tables, keep the study tokenizers with this
  tokenizer's latent shape, check that the study can be fitted (enough tokenizers in enough clusters),
  score every proxy model out of cluster and take the selected one per backbone and guidance scale;
- at every monitor step: compute the proxies those models need on the monitor's standardised latents,
  with the study's recorded metric parameters (:func:`~diffusability.analysis.study_proxies.new_proxies`),
  and refit-and-predict (:func:`~diffusability.analysis.study_proxies.prediction_rows`).

So a monitor row's prediction equals what ``diffusability predict`` writes for the same latents (test:
tests/test_tokenizers_monitor.py). A bad study folder is a DiffusabilityError naming the file, raised
before the first training step. The ``train-tokenizer`` command builds the predictor
(:func:`study_predictor`) and hands it to the training, so the tokenizers stage never imports the analysis.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ..errors import require

#: the name the prediction rows give the tokenizer being trained (the rows are not written as such)
NAME = "monitor"


def study_predictor(spec, monitor_split=None):
    """The study predictor of a tokenizer spec's ``monitor_study`` for its latent shape, or None.

    None when the monitor is off or no study is named. Raises DiffusabilityError naming the study's file
    when the study cannot be read or fitted, or has no tokenizer of this latent shape.
    """
    from ..tokenizers.spec import as_spec, downsample_factor

    spec = as_spec(spec)
    if not (spec.monitor_every and spec.monitor_study):
        return None
    side = spec.image_size // downsample_factor(spec.to_dict())
    source = f"the monitor's subset of {getattr(monitor_split, 'path', '') or 'the training images'}"
    return StudyPredictor(spec.monitor_study, (spec.latent_channels, side, side), source=source)


class StudyPredictor:
    """A study's selected proxy models for one latent shape; calling it with latents predicts the target.

    Parameters
    ----------
    study : path
        The study's ``results/tables`` (``tokenizers``, ``metrics``, ``generation`` .parquet).
    shape : (C, h, w)
        The latent shape of the tokenizer being trained: only study tokenizers of that shape are used.
    target : str
        The generation metric to predict (``fd``: gFID).
    source : str
        How error messages name the monitor's latents (e.g. the val split's path).

    Attributes
    ----------
    needed : list of str
        The proxies the selected models use (plain metric-table names, e.g. ``sec``, ``viv_uniform``).
    computed : list of str
        The registry metrics that yield them (``sec`` for the sweep rows ``sec_r*``).
    scores, proxies, targets, study_metrics, direction
        The out-of-cluster scores, the study's proxy table, its target rows, its metric rows (same shape)
        and the target's better direction — the arguments of ``prediction_rows`` and ``new_proxies``.
    """

    def __init__(self, study, shape: tuple[int, int, int], target: str = "fd", source: str = "monitor subset"):
        from ..analysis import predict
        from ..analysis.study_proxies import check_study, latent_proxies, metric_name, same_shape_tokenizers
        from ..analysis.tables import read_predictor_tables

        study = Path(study)
        require(study.is_dir(), f"{study}: not a folder (expected a study's results/tables)")
        tables = read_predictor_tables(study)
        keep = same_shape_tokenizers(tables["tokenizers"], tuple(shape), study, source)
        targets = predict.target_rows(tables["generation"], target)
        self.targets = targets[targets["tokenizer"].isin(keep)]
        clusters = predict.tokenizer_cluster(tables["tokenizers"])
        check_study(self.targets, clusters, study)
        self.study_metrics = tables["metrics"][tables["metrics"]["tokenizer"].isin(keep)]
        self.proxies = latent_proxies(self.study_metrics)
        _, self.scores = predict.evaluate_study(self.proxies, self.targets, clusters, target)
        require(bool(self.scores["selected"].any()),
                f"{study / 'generation.parquet'}: no proxy model can be fitted in every leave-one-cluster-out "
                "fold (too few tokenizers per cluster)")
        self.needed = sorted({p for col in ("proxy_1", "proxy_2") for p in self.scores.loc[self.scores["selected"], col]
                              if p})
        self.computed = sorted({metric_name(p) for p in self.needed})
        self.direction = predict.target_direction(tables["generation"], target)
        self.study, self.target, self.source = study, target, source
        self.calls = 0

    def __call__(self, latents, labels=None, masks=None) -> tuple[dict[str, float], list[dict]]:
        """The needed proxies of standardised ``latents`` (N, C, h, w) and the predictions from them.

        ``labels`` (N,) and ``masks`` (N, h, w) as torch tensors or None. Returns ``({proxy: value}, rows)``,
        the rows those of ``prediction_rows`` (backbone, cfg_scale, predicted, lower, upper, …).
        """
        from ..analysis.study_proxies import new_proxies, prediction_rows

        # new_proxies warns when the monitor's image count differs from the study's; once is news, every
        # monitor step after that would only bury the training log
        with _quiet("uses n =") if self.calls else contextlib.nullcontext():
            values = new_proxies((latents, labels, masks), self.source, self.needed, self.study_metrics, "none", "cpu")
        self.calls += 1
        return values, prediction_rows(NAME, self.scores, self.proxies, self.targets, values, self.direction)


class _DropMessage(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in str(record.msg)


@contextlib.contextmanager
def _quiet(text: str):
    """Drop the analysis logger's records whose message template contains ``text`` inside the block."""
    logger, drop = logging.getLogger("diffusability.analysis"), _DropMessage(text)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)
