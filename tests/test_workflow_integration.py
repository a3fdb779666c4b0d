"""The smoke config end to end, then what a rerun plans after a change (real DAG, real files).

One module-scoped run of `config/smoke.yaml` (about two minutes on two cores) feeds every test
here: the tables' schema and finiteness, the figures and summary, the HTML report, and the
rerun behaviour: nothing to do when nothing changed; only the new tokenizer's chain plus the
aggregation when a tokenizer is added; only that chain when one tokenizer's parameter changes.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from diffusability.analysis.tables import PROVENANCE_COLUMNS

from workflow_helpers import expected_chain_counts, expected_full_counts, planned_jobs, run_snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(repo, snakemake_exe, tmp_path_factory):
    config = yaml.safe_load((repo / "config" / "smoke.yaml").read_text())
    work = tmp_path_factory.mktemp("smoke")
    (work / "Snakefile").symlink_to(repo / "Snakefile")
    (work / "workflow").symlink_to(repo / "workflow")
    (work / "config").mkdir()
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    assert planned_jobs(snakemake_exe, work) == expected_full_counts(config)
    result = run_snakemake(snakemake_exe, work, "--cores", "2", timeout=900)
    if result.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in sorted((work / "logs").rglob("*.log")))
        pytest.fail(f"smoke run failed:\n{(result.stdout + result.stderr)[-4000:]}\n{logs[-8000:]}")
    return work, config


def _table(work, name) -> pd.DataFrame:
    return pd.read_parquet(work / "results" / "tables" / f"{name}.parquet")


def test_tables_schema_and_finite_values(smoke_run):
    work, config = smoke_run
    tokenizers = set(config["tokenizers"])
    expected_columns = {
        "tokenizers": {"tokenizer", "family", "regularizer", "kl_weight", "latent_channels", "downsample"},
        "reconstruction": {"tokenizer", "metric", "value", "direction", "params", "n", *PROVENANCE_COLUMNS},
        "metrics": {"tokenizer", "metric", "value", "direction", "params", "n", *PROVENANCE_COLUMNS},
        "generation": {"tokenizer", "backbone", "cfg_scale", "model", "metric", "value", "direction"},
        "correlations": {"family", "backbone", "cfg_scale", "proxy", "method", "n", "r", "ci95_low", "ci95_high",
                         "p_val"},
        "regressions": {"proxy_1", "proxy_2", "n", "r2", "adj_r2"},
    }
    for name, columns in expected_columns.items():
        table = _table(work, name)
        assert columns <= set(table.columns), (name, table.columns)
        assert len(table) > 0, name
        numeric = table.select_dtypes(include=[np.number])
        assert np.isfinite(numeric.to_numpy(float)).all(), (name, numeric[~np.isfinite(numeric).all(axis=1)])
        if "tokenizer" in table.columns:
            assert set(table["tokenizer"]) == tokenizers, name
    metrics = set(_table(work, "metrics")["metric"])
    assert {"viv_uniform", "viv_logit_normal", "lnc", "srss", "sec"} <= metrics
    generation = _table(work, "generation")
    assert {"fd", "is", "local_straightness", "global_efficiency"} <= set(generation["metric"])
    assert set(generation["model"]) == {"trained", "untrained"}
    # every trained (tokenizer, backbone, scale, metric) has one row per seed repeat
    trained = generation[generation["model"] == "trained"]
    assert set(trained["seed"]) == set(range(config["repeats"])) and config["repeats"] == 2
    assert (trained.groupby(["tokenizer", "backbone", "cfg_scale", "metric"])["seed"].nunique() == 2).all()
    seeds = _table(work, "seeds")
    fd = seeds[seeds["target"] == "fd"]
    assert len(fd) and (fd["n_seeds_min"] == 2).all() and np.isfinite(fd["seed_sd"]).all()
    meta = __import__("diffusability.io", fromlist=["x"]).parquet_metadata(
        work / "results" / "tables" / "correlations.parquet")
    assert {"diffusability_version", "git_commit", "config_sha256"} <= set(meta)


def test_figures_and_summary_exist(smoke_run):
    work, _ = smoke_run
    figures = list((work / "results" / "figures").glob("*.png"))
    assert any(p.name.startswith("scatter_latent") for p in figures)
    assert (work / "results" / "figures" / "trained_vs_untrained.png").exists()
    summary = (work / "results" / "report.md").read_text()
    assert "Correlation with generation fd" in summary


def test_nothing_to_do_when_nothing_changed(smoke_run, snakemake_exe):
    work, _ = smoke_run
    assert planned_jobs(snakemake_exe, work) == {}


def _planned_after_editing(work, snakemake_exe, changed: dict) -> dict[str, int]:
    """The dry-run job table with ``changed`` as the config; the original config is restored after."""
    path = work / "config" / "config.yaml"
    original = path.read_text()
    try:
        path.write_text(yaml.safe_dump(changed, sort_keys=False))
        return planned_jobs(snakemake_exe, work)
    finally:
        path.write_text(original)


def test_adding_a_tokenizer_reruns_only_its_chain(smoke_run, snakemake_exe):
    work, config = smoke_run
    changed = copy.deepcopy(config)
    changed["tokenizers"]["kl-1e-2"] = dict(config["tokenizers"]["baseline"], kl_weight=1e-2)
    assert _planned_after_editing(work, snakemake_exe, changed) == expected_chain_counts(config)


def test_changing_one_tokenizer_reruns_only_its_chain(smoke_run, snakemake_exe):
    work, config = smoke_run
    changed = copy.deepcopy(config)
    changed["tokenizers"]["mcos"]["lr"] = 0.002
    assert _planned_after_editing(work, snakemake_exe, changed) == expected_chain_counts(config)


def test_html_report(smoke_run, snakemake_exe):
    work, _ = smoke_run
    result = run_snakemake(snakemake_exe, work, "--report", "report.html", timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert (work / "report.html").stat().st_size > 10_000
