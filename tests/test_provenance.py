"""Provenance per artifact (issue 11, item 3): what made each file — input hashes, device, package
versions, code — recorded in its metadata, byte-deterministically; and the report's warning when a
table mixes rows made by different code."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pandas as pd
import pytest

from diffusability import devices, io
from diffusability.analysis.summary import mixed_code_warnings
from diffusability.cli import main
from diffusability.code_identity import SOFTWARE, command_identity
from diffusability.data.shapes import generate_shapes
from diffusability.identity import path_identity
from diffusability.io import command_inputs, read_provenance, save_tensors

TEACHER_SPEC = {"seed": 0, "width": 8, "steps": 3, "batch_size": 16, "lr": 5e-3, "warmup_steps": 1}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def installed_versions() -> dict:
    """The oracle for ``software_versions``: importlib.metadata asked directly, None when not installed."""
    out = {}
    for name in SOFTWARE:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_splits(root: Path) -> None:
    for name, seed, n in (("train", 0, 32), ("val", 1, 16)):
        data = generate_shapes(n, 16, seed=seed, n_classes=2, constant_background=True)
        save_tensors(root / f"{name}.safetensors", data, metadata={"n_classes": "2", "image_size": "16"})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    write_splits(root)
    assert main(["train-teacher", "--spec", json.dumps(TEACHER_SPEC), "--train", str(root / "train.safetensors"),
                 "--val", str(root / "val.safetensors"), "--device", "cpu", "--out", str(root / "teacher")]) == 0
    return root


def test_weights_record_input_hashes_device_versions_and_code(teacher):
    record = read_provenance(teacher / "teacher" / "model.safetensors")
    assert record["inputs"] == {"train": sha256(teacher / "train.safetensors"),
                                "val": sha256(teacher / "val.safetensors")}
    assert record["device"] == "cpu"
    assert record["software_versions"] == installed_versions()
    assert record["command"] == "train-teacher" and record["code_identity"] == command_identity("train-teacher")
    spec = json.loads((teacher / "teacher" / "config.json").read_text())["spec"]
    assert record["config_sha256"] == hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    # one JSON text under one key, keys sorted, beside the file's own metadata
    with open(teacher / "teacher" / "model.safetensors", "rb") as handle:
        header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
    stored = header["__metadata__"]
    assert stored["kind"] == "domain_classifier"
    assert list(json.loads(stored["provenance"])) == sorted(record)
    # the table beside it carries the same provenance (its JSON values parsed back)
    table = read_provenance(teacher / "teacher" / "train_log.parquet")
    assert table["inputs"] == record["inputs"] and table["software_versions"] == record["software_versions"]
    # what is recorded, and nothing else (no time stamp, host name or timing)
    assert set(record) == {"diffusability_version", "git_commit", "command", "code_identity", "software_identity",
                           "config_sha256", "device", "software_versions", "inputs"}


def test_a_folder_input_is_the_hash_of_its_files_hashes(tmp_path):
    """Directory identity in closed form: one line "relative path NUL sha256 LF" per file, sorted, training
    by-products (checkpoints/, train_log.parquet) and hidden files left out."""
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    files = {"config.json": b'{"a": 1}', "model.safetensors": b"\x00weights", "sub/extra.bin": b"xyz"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "checkpoints" / "step-1.pt").write_bytes(b"ignored")
    (folder / "train_log.parquet").write_bytes(b"ignored")
    (folder / ".hidden").write_bytes(b"ignored")
    lines = "".join(f"{name}\0{hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
    assert path_identity(folder) == hashlib.sha256(lines.encode()).hexdigest()
    assert path_identity(folder / "sub" / "extra.bin") == hashlib.sha256(b"xyz").hexdigest()
    (folder / "sub" / "extra.bin").write_bytes(b"xyzw")  # a changed file is hashed again, not served stale
    assert path_identity(folder / "sub" / "extra.bin") == hashlib.sha256(b"xyzw").hexdigest()


def test_command_inputs_are_the_existing_paths_that_are_not_outputs(tmp_path):
    for name in ("a.safetensors", "b.parquet", "c.parquet", "old-out.npz", "traj.safetensors"):
        (tmp_path / name).write_bytes(b"")
    args = argparse.Namespace(
        command="x", func=print, spec={"k": 1}, device="cpu", latents=str(tmp_path / "a.safetensors"),
        rows=[str(tmp_path / "b.parquet"), str(tmp_path / "missing.parquet"), tmp_path / "c.parquet"],
        name="not-a-path", missing=str(tmp_path / "nope"), out=str(tmp_path / "old-out.npz"),
        out_dir=str(tmp_path), trajectories=str(tmp_path / "traj.safetensors"), not_inputs=("trajectories",),
        cfg_scale=1.5, untrained=False, space=[["clip", str(tmp_path / "b.parquet"), "x"]])
    assert command_inputs(args) == {"latents": str(tmp_path / "a.safetensors"), "rows[0]": str(tmp_path / "b.parquet"),
                                    "rows[2]": str(tmp_path / "c.parquet"), "space[0][1]": str(tmp_path / "b.parquet")}


def test_device_words():
    assert devices.describe_device("cpu") == "cpu"
    assert devices.describe_device("cpu", processes=4) == "4xcpu"
    try:
        assert devices.resolve_device("cpu") == "cpu" and io.provenance_record()["device"] == "cpu"
    finally:
        devices.USED_DEVICE = None


WRITE = """
import sys
from pathlib import Path
from diffusability.cli import main
root, out = Path(sys.argv[1]), sys.argv[2]
spec = {spec!r}
assert main(["train-teacher", "--spec", spec, "--train", str(root / "train.safetensors"), "--val",
             str(root / "val.safetensors"), "--device", "cpu", "--out", out]) == 0
""".format(spec=json.dumps(TEACHER_SPEC))


def test_identical_runs_write_identical_bytes(teacher, tmp_path):
    """Two runs of one command in fresh processes (random hash seeds, other time zones, other output
    folders) write the same bytes: the provenance holds no time, host or path of the output."""
    for name, zone in (("one", "UTC0"), ("two", "JST-9")):
        env = {**os.environ, "PYTHONHASHSEED": "random", "TZ": zone}
        subprocess.run([sys.executable, "-c", WRITE, str(teacher), str(tmp_path / name)], check=True, env=env,
                       cwd=tmp_path)
    for name in ("model.safetensors", "config.json"):
        one, two = (tmp_path / "one" / name).read_bytes(), (tmp_path / "two" / name).read_bytes()
        assert one == two, name
    assert read_provenance(tmp_path / "one" / "model.safetensors")["inputs"]["train"] == \
        sha256(teacher / "train.safetensors")


def _rows(identities: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"tokenizer": [f"t{i}" for i in range(len(identities))], "metric": "fd",
                         "value": 1.0, "code_identity": identities})


def test_mixed_code_warning_names_the_table_the_command_and_both_identities():
    tables = {"generation": _rows(["generation-metrics:aaaa1111", "generation-metrics:bbbb2222",
                                   "generation-metrics:aaaa1111", "representation-metrics:cccc3333"]),
              "metrics": _rows(["latent-metrics:dddd4444"] * 3)}
    lines = mixed_code_warnings(tables)
    warnings = [line for line in lines if line]
    assert len(warnings) == 1, lines
    assert "`generation`" in warnings[0] and "`generation-metrics`" in warnings[0]
    assert "aaaa1111, bbbb2222" in warnings[0] and "cccc3333" not in warnings[0]
    assert lines[-1] == ""  # a blank line ends the warning block in the Markdown


def test_no_warning_for_one_identity_per_command():
    tables = {"generation": _rows(["generation-metrics:aaaa1111"] * 2 + ["representation-metrics:cccc3333"]),
              "empty": _rows([]), "no_column": pd.DataFrame({"metric": ["fd"], "value": [1.0]})}
    assert mixed_code_warnings(tables) == []


def test_software_warning_names_the_command_when_package_versions_differ():
    frame = _rows(["latent-metrics:dddd4444"] * 3)
    frame["software_identity"] = ["a" * 64, "b" * 64, "a" * 64]
    warnings = [line for line in mixed_code_warnings({"metrics": frame}) if line]
    assert len(warnings) == 1 and "different package versions" in warnings[0] and "`latent-metrics`" in warnings[0]
    assert "aaaaaaaaaaaa" in warnings[0] and "bbbbbbbbbbbb" in warnings[0]


def _latent_folder(root: Path) -> Path:
    import torch

    folder = root / "latents"
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 40), ("val", 24)):
        save_tensors(folder / f"{split}.safetensors",
                     {"latents": torch.randn(n, 2, 4, 4, generator=generator),
                      "labels": torch.arange(n) % 2})
    save_tensors(folder / "stats.safetensors", {"mean": torch.zeros(2), "std": torch.ones(2)})
    return folder


def test_latent_metrics_records_the_train_latents_only_when_a_metric_reads_them(tmp_path):
    """A folder argument is recorded as the files the command reads; which ones may depend on the spec."""
    folder = _latent_folder(tmp_path)
    for enabled, train in ((["lds"], False), (["lds", "linear_probe"], True)):
        out = tmp_path / f"rows-{len(enabled)}.parquet"
        assert main(["latent-metrics", "--latents", str(folder), "--spec", json.dumps({"enabled": enabled}),
                     "--out", str(out)]) == 0
        inputs = read_provenance(out)["inputs"]
        expected = {"latents/val.safetensors", "latents/stats.safetensors"} | ({"latents/train.safetensors"}
                                                                               if train else set())
        assert set(inputs) == expected, enabled
        for name in expected:
            assert inputs[name] == sha256(folder / name.split("/", 1)[1])


def test_tokenizer_metrics_input_files_follow_the_ifid_pool():
    from diffusability.latent_metrics.network_commands import tokenizer_metrics_input_files as files

    both = ("val.safetensors", "stats.safetensors")
    assert files(argparse.Namespace(spec={"enabled": ["equivariance"]})) == both
    assert files(argparse.Namespace(spec={"enabled": ["ifid"]})) == both + ("train.safetensors",)
    assert files(argparse.Namespace(spec={"enabled": ["ifid"], "ifid": {"pool": "val"}})) == both
    assert files(argparse.Namespace(spec={"enabled": "garbage"})) == both + ("train.safetensors",)


def test_aggregated_rows_carry_their_files_provenance(tmp_path):
    """Each row of an aggregated table carries what made its per-job file: code, config, inputs, software, device."""
    from diffusability.analysis.tables import PROVENANCE_COLUMNS, metrics_table

    folder = _latent_folder(tmp_path)
    paths = []
    for name, enabled in (("a", ["lds"]), ("b", ["sec"])):
        out = tmp_path / f"{name}.parquet"
        assert main(["latent-metrics", "--latents", str(folder), "--spec", json.dumps({"enabled": enabled}),
                     "--out", str(out)]) == 0
        paths.append((str(out), (name,)))
    table = metrics_table(paths)
    assert set(PROVENANCE_COLUMNS) <= set(table.columns)
    for path, (name,) in paths:
        record = read_provenance(path)
        rows = table[table["tokenizer"] == name]
        assert (rows["code_identity"] == f"latent-metrics:{command_identity('latent-metrics')}").all()
        assert (rows["config_sha256"] == record["config_sha256"]).all()
        assert (rows["software_identity"] == record["software_identity"]).all() and (rows["device"] == "cpu").all()
        expected = hashlib.sha256(json.dumps(record["inputs"], sort_keys=True).encode()).hexdigest()
        assert (rows["inputs_sha256"] == expected).all()
    # same latent files, different specs: equal input hashes, different config hashes
    assert table["inputs_sha256"].nunique() == 1 and table["config_sha256"].nunique() == 2
