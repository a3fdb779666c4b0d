"""No config path runs as shell (issue 18, finding 1).

Every user path of the config (ImageNet folders, teachers, weights, reference batch, FDr models,
imported tokenizers, latents and diffusion models) reaches some job's shell line. A path is data:
whatever characters it holds, the command must receive it as one argument (or inside one, e.g. a
JSON spec or ``<folder>/config.json``), quoted exactly once — never split, never run. The test
plans a study whose every path key holds a hostile string, prints the shell lines of the dry run
(``-n -p``) and checks them twice: parsed with :func:`shlex.split`, and executed by bash with a
stand-in ``diffusability`` package that only records its argv, so that what bash really does with
``$(…)``, backticks, ``;`` and ``&&`` is what is checked (shlex does not expand ``$(…)`` inside
double quotes, bash does), and that no marker file of an injected ``touch`` appears.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
import yaml

from workflow_helpers import run_snakemake

# A representative of each way a path leaks into the shell: a space (word splitting), `;` and `&&`
# (a second command), `$(…)` and backticks (command substitution), both quotes (closing a quoted
# word; a path quoted twice keeps its quotes), `<` and `>` (redirection). No braces: in a Snakemake
# input path they are wildcards, not shell syntax.
INJECTIONS = ("; touch {m}/semicolon", "$(touch {m}/subst)", "`touch {m}/backtick`", "&& touch {m}/and")


def _hostile(key: str, markers) -> str:
    """The hostile value of config key ``key``: a tag that names the key, then every injection."""
    tail = " ".join(injection.format(m=markers) for injection in INJECTIONS)
    # The injections between two single quotes: inside a single-quoted word the first quote ends the
    # word, so they run, and the second reopens it, so the line still parses (an odd quote would only
    # make the line a syntax error, which hides an injection instead of showing it).
    return f"/nonexistent/h dir/<{key}> \"dq\" '{tail}' end"


def _tag(key: str) -> str:
    return f"<{key}>"


def _study(repo, markers, storage: str) -> tuple[dict, dict[str, str]]:
    """The embedded default with ImageNet storage and every path-valued key of the schema set to a
    hostile string; returns (config, {key: value})."""
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    values: dict[str, str] = {}

    def hostile(key):
        values[key] = _hostile(key, markers)
        return values[key]

    config["data"].update(source="imagenet", imagenet={
        "storage": storage,
        **{key: hostile(f"data.imagenet.{key}")
           for key in ("train_dir", "val_dir", "masks_dir", "mask_categories", "cache_dir")}})
    config["teachers"] = {"vfm": hostile("teachers.vfm")}
    # The default's tokenizers are replaced by four built on its first one (its names change as the demo
    # does): an alignment tokenizer with a VFM teacher and the LPIPS perceptual loss, an imported one, one
    # with imported latents, one with an imported diffusion model, so each path key has a job that reads it.
    base = dict(next(iter(config["tokenizers"].values())) or {})
    bb = sorted(config["backbones"])[0]
    if "repeats" in config:
        config["repeats"] = 1  # an imported diffusion model is one checkpoint: no seed repeats
    config["tokenizers"] = {
        "aligned": {**base, "regularizer": {"name": "mcos", "weight": 0.5}, "teacher": "vfm",
                    "perceptual": "lpips", "lpips_weights": hostile("tokenizers.aligned.lpips_weights")},
        "imported": {"pretrained": hostile("tokenizers.imported.pretrained"), "family": "imported"},
        "with-latents": {**base, "latents": hostile("tokenizers.with-latents.latents")},
        "with-diffusion": {**base, "diffusion": {bb: hostile(f"tokenizers.with-diffusion.diffusion.{bb}")}},
    }
    config["generation"] = {
        **(config.get("generation") or {}),
        "feature_network": "inception",
        "inception_weights": hostile("generation.inception_weights"),
        "lpips_weights": hostile("generation.lpips_weights"),
        "reference_statistics": hostile("generation.reference_statistics"),
        "representations": {space: hostile(f"generation.representations.{space}")
                            for space in ("convnext", "dinov2", "mae", "siglip", "clip")},
    }
    return config, values


def _forms(value: str) -> tuple[str, ...]:
    """How a value may legitimately sit inside one argument: as itself, or escaped in a JSON spec."""
    return (value, json.dumps(value)[1:-1])


def _check_arguments(args: list[str], values: dict[str, str], where: str) -> set[str]:
    """Every argument that holds a key's tag holds the key's whole value as often as the tag: a value
    split over several arguments, cut short or quoted twice fails. Returns the keys seen."""
    seen = set()
    for key, value in values.items():
        tag = _tag(key)
        for arg in args:
            tags = arg.count(tag)
            if tags:
                whole = sum(arg.count(form) for form in _forms(value))
                assert whole == tags, f"{key}: {tags} mentions, {whole} whole values in argument {arg!r} of {where}"
                seen.add(key)
    return seen


RECORDER = """\
import json, os, sys
with open(os.environ["ARGV_RECORD"], "a") as handle:
    handle.write(json.dumps(sys.argv[1:]) + "\\n")
"""


@pytest.mark.parametrize("storage", ["memory", "shards"])
def test_hostile_config_paths_stay_single_arguments(repo, snakemake_exe, workdir_factory, tmp_path, storage):
    """Every hostile path comes back whole in one argument of every shell line that names it, both as
    shlex parses the line and as bash runs it; every key reaches some line (else it was not tested);
    no injected command runs."""
    markers = tmp_path / "markers"
    markers.mkdir()  # exists, so that an injected `touch` would succeed and leave its file
    config, values = _study(repo, markers, storage)
    work = workdir_factory(config, name=f"hostile-{storage}")
    result = run_snakemake(snakemake_exe, work, "-n", "-p", "--cores", "1", timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    lines = [line.split("Shell command: ", 1)[1] for line in output.splitlines() if line.startswith("Shell command: ")]
    assert lines, output[-3000:]

    # 1. bash: run every line (as Snakemake does, `bash -c`) with a `diffusability` package that only
    # records its argv, and before any other check, look for the files of injected commands
    stub = tmp_path / "stub"
    (stub / "diffusability").mkdir(parents=True)
    (stub / "diffusability" / "__init__.py").write_text("")
    (stub / "diffusability" / "__main__.py").write_text(RECORDER)
    run_dir, records = tmp_path / "run", tmp_path / "argv"
    run_dir.mkdir()
    records.mkdir()
    for number, line in enumerate(lines):
        # the job's log folder, which Snakemake makes before a job runs (a line shlex cannot parse fails below)
        for log in re.findall(r"> (\S+) 2>&1", line):
            (run_dir / log).parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(stub), "ARGV_RECORD": str(records / f"{number}.jsonl")}
        subprocess.run(["bash", "-c", line], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60)
    assert sorted(p.name for p in markers.iterdir()) == [], "an injected command ran"

    # 2. shlex: each line parses, and each hostile value is one whole argument or inside one
    seen = set()
    for line in lines:
        seen |= _check_arguments(shlex.split(line), values, line)
    assert seen == set(values), f"keys that reached no shell line: {sorted(set(values) - seen)}"

    # 3. what the commands really received: each `diffusability` line ran once (a line bash cannot
    # parse runs nothing), with every hostile value whole in one argument
    seen = set()
    for number, line in enumerate(lines):
        if " -m diffusability " not in line:
            continue
        record = records / f"{number}.jsonl"
        runs = record.read_text().splitlines() if record.exists() else []
        assert len(runs) == 1, f"ran {len(runs)} times: {line}"
        seen |= _check_arguments(json.loads(runs[0]), values, line)
    assert seen == set(values), f"keys that reached no command: {sorted(set(values) - seen)}"


def test_a_path_quoted_twice_is_caught(repo, tmp_path):
    """The check itself: the double quoting of issue 18 (imagenet_folder quoted and `:q` again) and an
    unquoted path both fail it, so the test above can fail."""
    markers = tmp_path / "m"
    values = {"data.imagenet.train_dir": _hostile("data.imagenet.train_dir", markers)}
    value = values["data.imagenet.train_dir"]
    twice = f"prog --image-root {shlex.quote(shlex.quote(value))}"
    with pytest.raises(AssertionError):
        _check_arguments(shlex.split(twice), values, twice)
    bare = f"prog --image-root {value}"
    with pytest.raises((AssertionError, ValueError)):  # split into words, or an unbalanced quote
        _check_arguments(shlex.split(bare), values, bare)
    once = f"prog --image-root {shlex.quote(value)}"
    assert _check_arguments(shlex.split(once), values, once) == set(values)
