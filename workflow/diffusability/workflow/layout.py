"""Where every artifact lives under the results directory — one source of truth.

The Snakemake rules build their paths with these functions and the aggregation step parses
them back, so a path's meaning (which tokenizer, backbone, guidance scale) is never guessed.
All paths are relative to the workflow's working directory.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

RESULTS = "results"
#: every job's log lands under this directory (:func:`log_file`)
LOGS = "logs"

# Names of tokenizers and backbones become path components and wildcards.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"


def format_cfg(scale: float) -> str:
    """A guidance scale as it appears in file names: 1.5 → ``1.50``."""
    return f"{float(scale):.2f}"


def data_split(split: str) -> str:
    return f"{RESULTS}/data/{split}.safetensors"


def imagenet_manifest(split: str) -> str:
    """A split's ImageNet manifest: every image of its folder listed once (paths, labels, SHA-256)."""
    return f"{RESULTS}/data/imagenet/{split}.manifest.parquet"


def imagenet_shards_index(split: str) -> str:
    """The index of a split's memory-mapped ImageNet shards (its completion marker)."""
    return f"{RESULTS}/data/imagenet/shards/{split}/index.json"


def teacher_file(name: str = "model.safetensors") -> str:
    return f"{RESULTS}/teacher/{name}"


def tokenizer_file(tok: str, name: str = "model.safetensors") -> str:
    return f"{RESULTS}/tokenizers/{tok}/{name}"


def reconstruction_rows(tok: str) -> str:
    return f"{RESULTS}/reconstruction/{tok}.parquet"


def latents_file(tok: str, name: str) -> str:
    return f"{RESULTS}/latents/{tok}/{name}.safetensors"


def latent_metric_rows(tok: str) -> str:
    return f"{RESULTS}/metrics/{tok}.parquet"


def tokenizer_metric_rows(tok: str) -> str:
    """Rows of the proxies that need the tokenizer's encoder/decoder (equivariance, iFID)."""
    return f"{RESULTS}/metrics/{tok}/tokenizer.parquet"


def model_metric_rows(tok: str, bb: str) -> str:
    """Rows of the proxies of one trained diffusion model (model-based FI/FIR)."""
    return f"{RESULTS}/metrics/{tok}/{bb}/model.parquet"


def diffusion_file(tok: str, bb: str, name: str = "ema.safetensors", seed: str = "0") -> str:
    """A file of diffusion model ``bb`` on ``tok``'s latents, trained with seed repeat ``seed`` (0, 1, …)."""
    return f"{RESULTS}/diffusion/{tok}/{bb}/seed{seed}/{name}"


def reference_stats() -> str:
    """The cached FID-Inception statistics of the reference images (generation.feature_network: inception)."""
    return f"{RESULTS}/evaluation/reference_stats.npz"


def representation_stats(space: str) -> str:
    """The cached reference statistics of one FDr representation space."""
    return f"{RESULTS}/evaluation/representation_stats/{space}.npz"


# A sample set is keyed by (tokenizer, backbone, guidance scale, seed repeat): the repeat's model
# (diffusion_file(..., seed=)) sampled with the repeat's noise (config ``repeats``).


def samples_file(tok: str, bb: str, cfg: str, seed: str = "0") -> str:
    return f"{RESULTS}/samples/{tok}/{bb}/seed{seed}/cfg{cfg}.npz"


def trajectories_file(tok: str, bb: str, cfg: str, seed: str = "0") -> str:
    return f"{RESULTS}/samples/{tok}/{bb}/seed{seed}/cfg{cfg}.trajectories.safetensors"


def generation_rows(tok: str, bb: str, cfg: str, seed: str = "0") -> str:
    return f"{RESULTS}/generation/{tok}/{bb}/seed{seed}/cfg{cfg}.parquet"


def trajectory_rows(tok: str, bb: str, cfg: str, seed: str = "0") -> str:
    return f"{RESULTS}/generation/{tok}/{bb}/seed{seed}/cfg{cfg}.trajectory.parquet"


def representation_rows(tok: str, bb: str, cfg: str, seed: str = "0") -> str:
    """FDr rows (fd_<space>, fdr_<space>, fdr6) of a sample set, when generation.representations is set."""
    return f"{RESULTS}/generation/{tok}/{bb}/seed{seed}/cfg{cfg}.representation.parquet"


def untrained_samples_file(tok: str, bb: str) -> str:
    return f"{RESULTS}/samples/{tok}/{bb}/untrained.npz"


def untrained_generation_rows(tok: str, bb: str) -> str:
    return f"{RESULTS}/generation/{tok}/{bb}/untrained.parquet"


def tables_dir() -> str:
    """The directory of the study's tables (the aggregation writes them, the analysis steps read them)."""
    return f"{RESULTS}/tables"


def table(name: str) -> str:
    return f"{tables_dir()}/{name}.parquet"


def figures_dir() -> str:
    """The directory of the study's figures (one PNG each)."""
    return f"{RESULTS}/figures"


def report() -> str:
    """The readable Markdown summary of the tables."""
    return f"{RESULTS}/report.md"


def log_file(job: str, *parts: str) -> str:
    """The log of a job: ``logs/<job>.log``, or ``logs/<job>/<part>/….log`` for a job per entity.

    >>> log_file("aggregate"), log_file("sample", "{tok}", "{bb}", "cfg{cfg}")
    ('logs/aggregate.log', 'logs/sample/{tok}/{bb}/cfg{cfg}.log')
    """
    return "/".join((LOGS, job, *parts)) + ".log"


#: the predictor's tables (analysis/predict.py): leave-one-cluster-out predictions and their scores
PREDICTION_TABLES = ("predictions", "prediction_scores")

#: the correlate step's tables besides correlations and regressions (docs/analysis.md): the perspectives (the study's
#: Figs. 4–6), the pairs of main proxies (Fig. 8), the guidance optima and the correlations there (Figs. 7, 25),
#: the seed noise
ANALYSIS_TABLES = ("perspectives", "perspective_pairs", "guidance_optima", "guidance_correlations", "seeds")

TABLES = ("tokenizers", "reconstruction", "metrics", "generation", "correlations", "regressions", *ANALYSIS_TABLES,
          *PREDICTION_TABLES)


def prediction_figure() -> str:
    """Predicted vs observed generation target, out of cluster (beside results/figures, a rule's directory)."""
    return f"{RESULTS}/prediction/predicted_vs_observed.png"


def _pattern(template: str) -> re.Pattern:
    name = f"({NAME_PATTERN})"
    text = re.escape(template).replace(r"\{tok\}", name).replace(r"\{bb\}", name)
    text = text.replace(r"\{cfg\}", r"([0-9]+\.[0-9]{2})").replace(r"\{seed\}", r"([0-9]+)")
    return re.compile(f"^{text}$")


_PARSERS = {
    "reconstruction": _pattern(reconstruction_rows("{tok}")),
    "metrics": _pattern(latent_metric_rows("{tok}")),
    "tokenizer_metrics": _pattern(tokenizer_metric_rows("{tok}")),
    "model_metrics": _pattern(model_metric_rows("{tok}", "{bb}")),
    "generation": _pattern(generation_rows("{tok}", "{bb}", "{cfg}", "{seed}")),
    "trajectory": _pattern(trajectory_rows("{tok}", "{bb}", "{cfg}", "{seed}")),
    "representation": _pattern(representation_rows("{tok}", "{bb}", "{cfg}", "{seed}")),
    "untrained": _pattern(untrained_generation_rows("{tok}", "{bb}")),
}


def is_kind(kind: str, path: str) -> bool:
    """Whether ``path`` is a results path of ``kind``."""
    return bool(_PARSERS[kind].match(str(PurePosixPath(path))))


def parse(kind: str, path: str) -> tuple[str, ...]:
    """The (tok[, bb[, seed, cfg]]) a results path of ``kind`` belongs to, in path order; ValueError otherwise.

    >>> parse("generation", generation_rows("kl", "sit-b", "1.50", "2"))
    ('kl', 'sit-b', '2', '1.50')
    """
    match = _PARSERS[kind].match(str(PurePosixPath(path)))
    if not match:
        raise ValueError(f"{path}: not a {kind} path of the results layout")
    return match.groups()


def keyed(kind: str, paths) -> list[tuple[str, tuple[str, ...]]]:
    """``(path, (tok[, bb[, seed, cfg]]))`` for each results path of ``kind``: what the aggregation's tables take.

    Raises
    ------
    DiffusabilityError
        A path that is not of ``kind`` (naming it).
    """
    from ..errors import DiffusabilityError

    try:
        return [(str(path), parse(kind, path)) for path in paths]
    except ValueError as exc:
        raise DiffusabilityError(str(exc)) from None
