"""Code is part of every artifact's identity, and artifacts are cached across workflows.

Checkout A (the session's `small_study_checkout`, see conftest.py) is a copy of the repository
(Snakefile, workflow/ with the package, config/) whose package is the one the jobs import
(PYTHONPATH points at the copy), so a test can edit "the code" without touching the repository. A
small study has run in A with Snakemake's output cache. Then:

- a real change in the sampler plans sampling, generation metrics and the analysis — not
  tokenizer or diffusion training; a change in a latent metric plans only metric and analysis
  jobs; a comment- or docstring-only change plans nothing (dry-run job lists);
- checkout B, a fresh copy of the repository with the same cache folder, completes the same study
  without executing any cached rule, and its final tables equal A's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

from diffusability.snakemake_output import job_counts
from workflow_helpers import checkout, expected_full_counts, snakemake_in, study_tables

pytestmark = pytest.mark.slow

CACHED_RULES = ("prepare_data", "train_teacher", "train_tokenizer", "encode", "train_diffusion", "sample")
ANALYSIS = {"aggregate": 1, "correlate": 1, "predictions": 1, "figures": 1, "summary": 1, "all": 1}


def _planned(exe, work, cache) -> dict[str, int]:
    result = snakemake_in(exe, work, cache, "-n", "--cores", "1", "--quiet", "rules", timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return job_counts(result.stdout + result.stderr)


@pytest.fixture(scope="module")
def checkout_a(small_study_checkout):
    return small_study_checkout


def _edited(path: Path, transform):
    """Context: ``path`` rewritten by ``transform`` (its text → new text), restored afterwards."""
    class Edit:
        def __enter__(self):
            self.original = path.read_text()
            path.write_text(transform(self.original))

        def __exit__(self, *exc):
            path.write_text(self.original)

    return Edit()


def test_a_sampler_change_reruns_sampling_and_what_follows_only(checkout_a, snakemake_exe):
    work, cache, config, _ = checkout_a.values()
    sampler = work / "workflow" / "diffusability" / "sampling" / "euler.py"
    with _edited(sampler, lambda text: text + "\n_CHANGED_BEHAVIOUR = 1\n"):
        planned = _planned(snakemake_exe, work, cache)
    n_tok = len(config["tokenizers"])
    assert planned == {"sample": n_tok, "generation_metrics": n_tok, **ANALYSIS}, planned


def test_a_latent_metric_change_reruns_only_metric_and_analysis_jobs(checkout_a, snakemake_exe):
    work, cache, config, _ = checkout_a.values()
    metric = work / "workflow" / "diffusability" / "metrics" / "semantic.py"
    with _edited(metric, lambda text: text + "\n_CHANGED_BEHAVIOUR = 1\n"):
        planned = _planned(snakemake_exe, work, cache)
    assert planned == {"latent_metrics": len(config["tokenizers"]), **ANALYSIS}, planned


def test_a_comment_or_docstring_change_reruns_nothing(checkout_a, snakemake_exe):
    work, cache, _, _ = checkout_a.values()
    sampler = work / "workflow" / "diffusability" / "sampling" / "euler.py"
    metric = work / "workflow" / "diffusability" / "metrics" / "semantic.py"

    def comment_and_docstring(text: str) -> str:
        head, _, rest = text.partition('"""')
        return head + '"""An edited docstring. ' + rest + "\n# a new comment\n"

    with _edited(sampler, comment_and_docstring), _edited(metric, comment_and_docstring):
        assert _planned(snakemake_exe, work, cache) == {}


def _ran(work: Path, rule: str) -> bool:
    """Whether a job of ``rule`` executed its command in ``work``: its command logs to its log file.

    Snakemake creates a cached job's log file too (empty) when it takes the outputs from the cache,
    so only a log file with content proves that the command ran; every cached rule's command logs at
    least one line (checked on checkout A, where they all ran)."""
    logs = work / "logs"
    files = [logs / f"{rule}.log", *(logs / rule).rglob("*")]
    return any(path.is_file() and path.stat().st_size > 0 for path in files)


def test_a_second_checkout_reuses_every_cached_artifact(checkout_a, repo, snakemake_exe, tmp_path):
    work_a, cache, config, seconds_a = checkout_a.values()
    work_b = checkout(repo, tmp_path / "b", config)
    # The dry run says, job by job, where each cached output will come from.
    dry = snakemake_in(snakemake_exe, work_b, cache, "-n", "--cores", "2", "--cache", timeout=300)
    dry_output = dry.stdout + dry.stderr
    assert dry.returncode == 0, dry_output[-3000:]
    assert "will be written to global between-workflow cache" not in dry_output, dry_output[-3000:]
    n_cached = dry_output.count("will be obtained from global between-workflow cache")
    counts = expected_full_counts(config)
    assert n_cached == sum(counts[rule] for rule in CACHED_RULES), dry_output[-3000:]

    started = time.perf_counter()
    result = snakemake_in(snakemake_exe, work_b, cache, "--cores", "2", "--cache")
    seconds_b = time.perf_counter() - started
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert output.count(" from cache.") >= n_cached, output[-3000:]
    assert all(_ran(work_a, rule) for rule in CACHED_RULES), "checkout A must have run every cached rule"
    executed = [rule for rule in CACHED_RULES if _ran(work_b, rule)]
    assert not executed, f"cached rules ran again in the second checkout: {executed}\n{output[-3000:]}"
    tables_a, tables_b = study_tables(work_a), study_tables(work_b)
    assert tables_a.keys() == tables_b.keys()
    for name in tables_a:
        pd.testing.assert_frame_equal(tables_a[name], tables_b[name], check_exact=False, rtol=1e-12, obj=name)
    print(f"first checkout {seconds_a:.0f} s, second checkout from the cache {seconds_b:.0f} s")
