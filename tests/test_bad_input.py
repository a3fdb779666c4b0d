"""The bad-input table: every reader and command, fed what users actually hand it by mistake.

Each case is (command line, files to create, text the error must contain). Every case must end
with exit status 2 and a message naming the file or key — never a traceback, never a result row.
The commands run in-process through ``diffusability.cli.main`` (as the console script does), so
the whole table takes seconds; one case also runs as a real subprocess to pin the exit status.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusability.cli import main
from diffusability.io import save_tensors

HOSTILE = "x; touch PWNED $(touch PWNED2) `touch PWNED3` 'q\"\n"
TABLE: list[tuple[str, list[str], str]] = []  # filled below, one block per kind of input


def _good_latents(n=24, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    latents = torch.randn(n, 4, 4, 4, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    return latents, labels


def _write(kind: str, path: Path) -> None:
    """Create the bad file ``kind`` at ``path``."""
    latents, labels = _good_latents()
    if kind == "truncated":
        save_tensors(path, {"latents": latents, "labels": labels})
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 50)
    elif kind == "huge_header":
        path.write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    elif kind == "object_npz":
        np.savez(path, latents=np.array([object(), 1], dtype=object))
    elif kind == "not_a_zip_npz":
        path.write_bytes(b"PK\x03\x04 nonsense")
    elif kind == "wrong_dtype":
        save_tensors(path, {"latents": latents.to(torch.int32), "labels": labels})
    elif kind == "wrong_shape":
        save_tensors(path, {"latents": latents.flatten(1), "labels": labels})
    elif kind == "nan":
        bad = latents.clone()
        bad[3, 0, 0, 0] = float("nan")
        save_tensors(path, {"latents": bad, "labels": labels})
    elif kind == "empty":
        save_tensors(path, {"latents": torch.zeros(0, 4, 4, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    elif kind == "single_class":
        save_tensors(path, {"latents": latents, "labels": torch.zeros_like(labels)})
    elif kind == "float_labels":
        save_tensors(path, {"latents": latents, "labels": labels.float()})
    elif kind == "label_count":
        save_tensors(path, {"latents": latents, "labels": labels[:-1]})
    elif kind == "no_latents":
        save_tensors(path, {"other": latents})
    elif kind == "garbage_json":
        path.write_text("{not json")
    elif kind == "garbage_parquet":
        path.write_bytes(b"PAR1 nonsense PAR1")
    else:  # pragma: no cover
        raise ValueError(kind)


FILE_KINDS = ["truncated", "garbage", "huge_header", "wrong_dtype", "wrong_shape", "nan", "empty", "no_latents",
              "float_labels", "label_count"]
CLASS_METRICS = ["lnc", "viv"]


def _cases(tmp: Path) -> list[tuple[str, list[str], str]]:
    cases = []
    # 1. `diffusability metrics FILE` on every bad latent file (safetensors and npz)
    for kind in FILE_KINDS:
        path = tmp / f"{kind}.safetensors"
        cases.append((f"metrics/{kind}", ["metrics", str(path), "--metrics", "lnc,sec", "--out", str(tmp / "o.parquet")],
                      path.name, kind, path))
    for kind in ("object_npz", "not_a_zip_npz", "garbage"):
        path = tmp / f"{kind}.npz"
        cases.append((f"metrics/{kind}.npz", ["metrics", str(path), "--metrics", "lnc", "--out", str(tmp / "o.parquet")],
                      path.name, kind, path))
    for metric in CLASS_METRICS:  # a single class scores nothing, instead of a perfect LNC
        path = tmp / f"single-{metric}.safetensors"
        cases.append((f"metrics/single_class/{metric}", ["metrics", str(path), "--metrics", metric, "--out",
                                                          str(tmp / "o.parquet")], "two classes", "single_class", path))
    missing = tmp / HOSTILE
    cases.append(("metrics/missing+hostile", ["metrics", str(missing), "--metrics", "lnc", "--out", str(tmp / "o.parquet")],
                  "not found", None, None))
    cases.append(("metrics/unknown-metric", ["metrics", str(tmp / "ok.safetensors"), "--metrics", "lnc,nonsense",
                                             "--out", str(tmp / "o.parquet")], "nonsense", "ok", tmp / "ok.safetensors"))
    cases.append(("metrics/bad-param", ["metrics", str(tmp / "ok.safetensors"), "--metrics", "lnc", "--param", "lnc.k=-3",
                                        "--out", str(tmp / "o.parquet")], "k", "ok", tmp / "ok.safetensors"))
    # 2. `latent-metrics` and `train-diffusion` on a latent directory whose files are bad
    spec_metrics = json.dumps({"seed": 0, "enabled": ["lnc"], "params": {}})
    spec_diffusion = json.dumps({"depth": 1, "width": 16, "heads": 2, "steps": 2, "batch_size": 4, "num_classes": 3})
    for kind in ("truncated", "garbage", "nan", "wrong_shape", "single_class"):
        folder = tmp / f"latents-{kind}"
        cases.append((f"latent-metrics/{kind}", ["latent-metrics", "--latents", str(folder), "--spec", spec_metrics,
                                                 "--out", str(tmp / "o.parquet")],
                      "val.safetensors" if kind != "single_class" else "two classes", kind, folder / "val.safetensors"))
        if kind != "single_class":
            cases.append((f"train-diffusion/{kind}", ["train-diffusion", "--latents", str(folder), "--spec",
                                                      spec_diffusion, "--out", str(tmp / f"model-{kind}")],
                          "train.safetensors", kind, folder / "train.safetensors"))
    # 3. analysis readers: a garbage per-job row file, a garbage tokenizer config
    spec_aggregate = json.dumps({"tokenizers": {}, "config": {}})
    cases.append(("aggregate/no-tokenizers-key", ["aggregate", "--spec", "{}", "--out-dir", str(tmp / "tables")],
                  "tokenizers", None, None))
    cases.append(("aggregate/garbage-rows", ["aggregate", "--spec", spec_aggregate, "--metrics", str(tmp / "rows.parquet"),
                                             "--out-dir", str(tmp / "tables")], "rows.parquet", "garbage_parquet",
                  tmp / "rows.parquet"))
    cases.append(("aggregate/garbage-config", ["aggregate", "--spec", spec_aggregate, "--tokenizer-configs", str(tmp / "c.json"),
                                               "--out-dir", str(tmp / "tables")], "c.json", "garbage_json",
                  tmp / "c.json"))
    # 4. --spec that is not JSON (argparse's own error, exit 2)
    cases.append(("latent-metrics/spec-not-json", ["latent-metrics", "--latents", str(tmp), "--spec", "{x",
                                                   "--out", str(tmp / "o.parquet")], "--spec", None, None))
    return cases


def _prepare(case, tmp: Path) -> None:
    _, _, _, kind, path = case
    if kind is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "ok":
        latents, labels = _good_latents()
        save_tensors(path, {"latents": latents, "labels": labels})
        return
    _write(kind, path)
    if path.name == "val.safetensors":  # the rest of the directory is good
        latents, labels = _good_latents()
        save_tensors(path.parent / "train.safetensors", {"latents": latents, "labels": labels})
        save_tensors(path.parent / "stats.safetensors", {"mean": torch.zeros(4), "std": torch.ones(4)})
    if path.name == "train.safetensors":
        save_tensors(path.parent / "stats.safetensors", {"mean": torch.zeros(4), "std": torch.ones(4)})


def _run(argv, capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    except Exception as exc:  # noqa: BLE001 - a traceback is a failure of the case, reported with the others
        status = f"uncaught {type(exc).__name__}: {exc}"
    captured = capsys.readouterr()
    return status, captured.err + captured.out


def test_every_bad_input_exits_2_naming_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = _cases(tmp_path)
    failures = []
    for case in cases:
        name, argv, expected, _, _ = case
        _prepare(case, tmp_path)
        status, text = _run(argv, capsys)
        if status != 2 or expected not in text or "Traceback" in text:
            failures.append(f"{name}: exit {status}, expected {expected!r} in: {text[-400:]}")
        if (tmp_path / "o.parquet").exists():
            failures.append(f"{name}: wrote a result table")
            (tmp_path / "o.parquet").unlink()
    assert not any((tmp_path / f).exists() for f in ("PWNED", "PWNED2", "PWNED3"))
    assert not failures, "\n".join(failures)
    print(f"{len(cases)} bad-input cases, all exit 2 naming the file or key")


def test_the_console_command_exits_2_without_a_traceback(tmp_path):
    path = tmp_path / "garbage.safetensors"
    _write("garbage", path)
    result = subprocess.run([sys.executable, "-m", "diffusability", "metrics", str(path), "--metrics", "lnc",
                             "--out", str(tmp_path / "o.parquet")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "garbage.safetensors" in result.stderr and "Traceback" not in result.stderr


def test_all_computes_what_small_inputs_allow_and_says_what_it_skipped(tmp_path, capsys):
    """Fault finding 7: on an 8×8 grid SRSS's 64/64 token filter and uniformity's n = 10,000 cannot hold;
    `all` leaves them out and names why, while asking for srss by name still fails naming the reason."""
    import pandas as pd

    from diffusability.io import parquet_metadata

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    latents = torch.randn(60, 4, 8, 8, generator=g) + labels.float().reshape(-1, 1, 1, 1)
    masks = torch.zeros(60, 8, 8, dtype=torch.bool)
    masks[:, 2:6, 2:6] = True
    path = tmp_path / "small.safetensors"
    save_tensors(path, {"latents": latents, "labels": labels, "masks": masks})
    out = tmp_path / "o.parquet"
    status, text = _run(["metrics", str(path), "--metrics", "all", "--param", "viv_marginal.draws=50",
                         "--param", "viv.nodes=8", "--out", str(out)], capsys)
    assert status == 0, text
    table = pd.read_parquet(out)
    assert {"lnc", "sec", "viv_uniform"} <= set(table["metric"])
    assert not {"srss", "uniformity_cv"} & set(table["metric"])
    assert "skipped srss" in text and "min_fg=64" in text and "skipped uniformity_cv" in text
    assert "srss" in json.loads(parquet_metadata(out)["skipped"])
    status, text = _run(["metrics", str(path), "--metrics", "srss", "--out", str(tmp_path / "p.parquet")], capsys)
    assert status == 2 and "min_fg=64" in text
