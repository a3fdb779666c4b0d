# Config validation, naming and the helpers every rule file uses. No rules here, except the
# dry-run stand-in for missing user files (see the path checks below).

import os
import shlex
from pathlib import Path
import sys

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from diffusability.workflow import config as cfg
from diffusability.workflow import layout
from diffusability.errors import DiffusabilityError

try:
    config.update(cfg.validate_config(config))
except DiffusabilityError as exc:
    raise WorkflowError(str(exc)) from None

TOKENIZERS = sorted(config["tokenizers"])
BACKBONES = sorted(config["backbones"])


def cfg_scales(bb):
    """Guidance scales sampled for backbone ``bb`` (its own list, else the sampling grid)."""
    scales = config["backbones"][bb].get("cfg_scales") or config["sampling"]["cfg_scales"]
    return [layout.format_cfg(w) for w in scales]


# Every (tokenizer, backbone, guidance scale, seed repeat) sampling job of the study: each repeat
# (config repeats) has its own diffusion model and noise (cfg.repeat_seed).
REPEATS = [str(r) for r in range(config["repeats"])]
SAMPLE_JOBS = [(tok, bb, w, r) for tok in TOKENIZERS for bb in BACKBONES for w in cfg_scales(bb) for r in REPEATS]
RECORD_TRAJECTORIES = config["sampling"]["trajectories"] > 0

# The command every rule runs: the package of the Python that runs Snakemake (a venv or the
# cluster's environment), so no PATH set-up is needed. PYTHON and DIFFUSABILITY are globals of the
# shell lines, not params: a second checkout's venv path must not change a job's cache key.
PYTHON = shlex.quote(sys.executable)
DIFFUSABILITY = f"{PYTHON} -m diffusability"


def code_identity(command, without=()):
    """The params entry that makes a rule rerun when the package code its command runs changes (a
    comment or docstring edit does not count) or the numerical software (torch, numpy, …) changes;
    it also keys Snakemake's between-workflow cache. ``without``: modules this job does not run.
    See diffusability/code_identity.py. The command's identity is also handed to the jobs (an
    environment variable they inherit), so a job records it without parsing the package again."""
    from diffusability.code_identity import publish_identity, rule_identity

    publish_identity(command)
    return rule_identity(command, tuple(without))


# Between-workflow output cache (`--cache` with SNAKEMAKE_OUTPUT_CACHE set): the expensive, deterministic
# rules are marked cacheable only when a cache location is set, so a plain run does not warn about
# caching it was not asked for, and a bare `--cache` without the variable only warns that nothing is
# cached. cluster/config.yaml names the cached rules (`--cache RULE…`, which Snakemake hands on to the
# SLURM jobs): named rules are cacheable whatever their `cache:` says, and without the variable Snakemake
# would stop on a traceback ("Cache backend unavailable"), so say here what to do.
CACHE = bool(os.environ.get("SNAKEMAKE_OUTPUT_CACHE"))
if not CACHE and getattr(getattr(workflow, "workflow_settings", None), "cache", None):
    raise WorkflowError(
        "--cache (the cluster profile turns the output cache on) needs the cache folder: export "
        "SNAKEMAKE_OUTPUT_CACHE=/path/to/shared/cache (README, cluster section, 'Sharing the artifact cache'), "
        "or delete `cache:` from the profile to run without the cache")


wildcard_constraints:
    tok=layout.NAME_PATTERN,
    bb=layout.NAME_PATTERN,
    cfg=r"[0-9]+\.[0-9]{2}",
    seed="[0-9]+",
    split="train|val",


def data_split(split):
    """The image split every stage reads: prepare_data's file, or the split's memory-mapped ImageNet
    shards (data.imagenet.storage: shards; then prepare_data never runs)."""
    return cfg.split_path(config, split)


def as_arg(spec):
    """A spec dict as one shell-quoted JSON argument."""
    return shlex.quote(cfg.to_json(spec))


def final_outputs():
    outputs = [layout.table(name) for name in layout.TABLES]
    outputs += [layout.figures_dir(), layout.report()]
    return outputs


# One thread per job by default: on a laptop two 1-thread jobs beat one 2-thread job, and
# on a cluster the profile sets threads per rule.
THREADS = 1


def launcher(wildcards, resources):
    """How a (possibly multi-GPU) training command starts, after ``{PYTHON}``: one process per GPU
    the job was given (torchrun; accelerate inside picks the processes up), or plain Python on a CPU."""
    gpus = int(getattr(resources, "gpu", 0) or 0)
    if gpus > 1:
        return f"-m torch.distributed.run --standalone --nproc_per_node {gpus} -m diffusability"
    return "-m diffusability"


# The user's data, weight and model paths are checked before any job runs: a real run stops on a
# missing one, naming its key. A dry run (snakemake -n) only warns, so that a study with /path/to/
# placeholders (config/paper.yaml as shipped) can still be planned; the missing files that rules
# read as inputs are then stood in for by the one job of `missing_user_files`, a rule that only
# exists in a dry run. (workflow.dryrun is only set once the DAG is executed; the output settings
# already know at parse time.)
# The feature network of the generation metrics (generation.feature_network): with the FID
# Inception, reconstruction adds rFID and generation_metrics gives the ADM suite.
DRY_RUN = bool(workflow.output_settings.dryrun or workflow.dryrun)
cfg.set_dry_run(DRY_RUN)
try:
    MISSING_PATHS = cfg.check_paths(config, dry_run=DRY_RUN)
    REFERENCE = cfg.reference_spec(config)
except DiffusabilityError as exc:
    raise WorkflowError(str(exc)) from None

if MISSING_PATHS:
    logger.warning("dry run: paths of the config not found (a real run stops on them, naming the key):\n  "
                   + "\n  ".join(map(str, MISSING_PATHS)))

if any(missing.is_file for missing in MISSING_PATHS):

    rule missing_user_files:
        output:
            sorted({missing.path for missing in MISSING_PATHS if missing.is_file}),
        shell:
            # each path quoted on its own, outside the message's quotes: a path with a quote in it
            # must not end the message and run the rest as shell
            "echo 'missing user files (see the dry run warning):' {output:q} >&2; exit 1"

INCEPTION = REFERENCE["feature_network"] == "inception"
REFERENCE_STATS = layout.reference_stats()


def inception_args():
    """Quoted --inception-weights [--inception-sha256] of the config."""
    args = f"--inception-weights {shlex.quote(REFERENCE['inception_weights'])}"
    if REFERENCE["inception_sha256"]:
        args += f" --inception-sha256 {shlex.quote(REFERENCE['inception_sha256'])}"
    return args
