"""``diffusability metrics`` and ``diffusability latent-metrics``: inputs, errors, output schema."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from diffusability.cli import main
from diffusability.io import parquet_metadata, read_parquet, save_npz, save_tensors
from diffusability.metrics.normalization import channel_stats, normalize_latents
from diffusability.metrics.spatial import local_distant_similarity
from diffusability.metrics.spectral import spectral_energy_concentration


def arrays(n=32, c=3, hw=8, seed=0):
    rng = np.random.default_rng(seed)
    latents = (rng.standard_normal((n, c, hw, hw)) * [[[2.0]], [[0.5]], [[1.0]]] + 3).astype(np.float32)
    labels = (np.arange(n) % 4).astype(np.int64)
    masks = np.zeros((n, hw, hw), dtype=bool)
    masks[:, 1:5, 2:6] = True
    return latents, labels, masks


def check_schema(path):
    table = pq.read_table(path)
    types = {f.name: str(f.type) for f in table.schema}
    assert list(types) == ["metric", "value", "direction", "params", "n"]
    assert types["value"] == "double" and types["n"] == "int64"
    assert types["metric"] in ("string", "large_string") and types["params"] in ("string", "large_string")
    frame = read_parquet(path)
    assert all(isinstance(m, str) for m in frame["metric"])
    assert set(frame["direction"]) <= {"lower", "higher"}
    for text in frame["params"]:
        json.loads(text)
    assert "git_commit" in parquet_metadata(path)
    return frame


def test_npz_per_channel_normalisation(tmp_path):
    latents, labels, masks = arrays()
    save_npz(tmp_path / "z.npz", latents=latents, labels=labels, masks=masks)
    out = tmp_path / "m.parquet"
    assert main(["metrics", str(tmp_path / "z.npz"), "--metrics", "lds,sec", "--out", str(out),
                 "--param", "lds.far_dist=4"]) == 0
    frame = check_schema(out).set_index("metric")
    z = torch.from_numpy(latents)
    normalised = normalize_latents(z, *channel_stats(z))
    assert frame.loc["lds", "value"] == pytest.approx(local_distant_similarity(normalised, far_dist=4)["value"],
                                                      abs=1e-12)
    assert frame.loc["sec", "value"] == pytest.approx(spectral_energy_concentration(normalised)["value"], abs=1e-12)


def test_safetensors_without_normalisation_and_viv_expands(tmp_path):
    pytest.importorskip("diffusability.metrics.viv")
    latents, labels, masks = arrays()
    save_tensors(tmp_path / "z.safetensors", {"latents": latents, "labels": labels, "masks": masks})
    out = tmp_path / "m.parquet"
    assert main(["metrics", str(tmp_path / "z.safetensors"), "--metrics", "viv", "--out", str(out),
                 "--normalize", "none"]) == 0
    frame = check_schema(out)
    assert list(frame["metric"]) == ["viv_uniform", "viv_logit_normal", "viv_uniform_per_dim",
                                     "viv_logit_normal_per_dim"]
    assert (frame["n"] == 32).all()


def test_raw_sec_differs_from_normalised(tmp_path):
    latents, _, _ = arrays()
    save_npz(tmp_path / "z.npz", latents=latents)
    raw, norm = tmp_path / "raw.parquet", tmp_path / "norm.parquet"
    assert main(["metrics", str(tmp_path / "z.npz"), "--metrics", "sec", "--out", str(raw), "--normalize", "none"]) == 0
    assert main(["metrics", str(tmp_path / "z.npz"), "--metrics", "sec", "--out", str(norm)]) == 0
    expected = spectral_energy_concentration(torch.from_numpy(latents))["value"]
    assert read_parquet(raw)["value"][0] == pytest.approx(expected, abs=1e-12)
    assert read_parquet(norm)["value"][0] != pytest.approx(expected, abs=1e-6)  # offset 3 removed


def test_missing_masks_exit_2(tmp_path, capsys):
    latents, labels, _ = arrays()
    save_npz(tmp_path / "z.npz", latents=latents, labels=labels)
    out = tmp_path / "m.parquet"
    assert main(["metrics", str(tmp_path / "z.npz"), "--metrics", "srss", "--out", str(out)]) == 2
    assert "masks" in capsys.readouterr().err
    assert not out.exists()


def test_nan_latents_and_bad_shapes_refused(tmp_path, capsys):
    latents, labels, masks = arrays()
    bad = latents.copy()
    bad[0, 0, 0, 0] = np.nan
    save_npz(tmp_path / "nan.npz", latents=bad)
    assert main(["metrics", str(tmp_path / "nan.npz"), "--metrics", "sec", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "NaN" in capsys.readouterr().err
    save_npz(tmp_path / "shape.npz", latents=latents, masks=masks[:, :4])
    assert main(["metrics", str(tmp_path / "shape.npz"), "--metrics", "sec", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "masks" in capsys.readouterr().err
    save_npz(tmp_path / "lab.npz", latents=latents, labels=labels.astype(np.float32))
    assert main(["metrics", str(tmp_path / "lab.npz"), "--metrics", "sec", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "labels" in capsys.readouterr().err
    save_npz(tmp_path / "none.npz", z=latents)
    assert main(["metrics", str(tmp_path / "none.npz"), "--metrics", "sec", "--out", str(tmp_path / "o.parquet")]) == 2
    assert "latents" in capsys.readouterr().err


def test_latent_metrics_uses_train_statistics(tmp_path):
    latents, labels, masks = arrays()
    directory = tmp_path / "latents"
    save_tensors(directory / "val.safetensors", {"latents": latents, "labels": labels, "masks": masks})
    mean = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    std = np.array([2.0, 1.0, 0.5], dtype=np.float32)
    save_tensors(directory / "stats.safetensors", {"mean": mean, "std": std})
    out = tmp_path / "m.parquet"
    spec = {"enabled": ["lds", "srss", "lnc"], "seed": 0,
            "params": {"lds": {"far_dist": 4}, "srss": {"min_fg": 8, "min_bg": 8, "d_neg": 4}, "lnc": {"k": 3}}}
    assert main(["latent-metrics", "--latents", str(directory), "--spec", json.dumps(spec), "--out", str(out)]) == 0
    frame = check_schema(out).set_index("metric")
    assert list(frame.index) == ["lnc", "lds", "srss"]
    normalised = normalize_latents(torch.from_numpy(latents), torch.from_numpy(mean), torch.from_numpy(std))
    assert frame.loc["lds", "value"] == pytest.approx(local_distant_similarity(normalised, far_dist=4)["value"],
                                                      abs=1e-12)
    assert json.loads(frame.loc["lnc", "params"])["k"] == 3


def test_latent_metrics_bad_spec(tmp_path, capsys):
    latents, labels, masks = arrays()
    directory = tmp_path / "latents"
    save_tensors(directory / "val.safetensors", {"latents": latents, "labels": labels})
    save_tensors(directory / "stats.safetensors", {"mean": np.zeros(3, np.float32), "std": np.zeros(3, np.float32)})
    out = str(tmp_path / "m.parquet")
    assert main(["latent-metrics", "--latents", str(directory), "--spec", '{"enabled": []}', "--out", out]) == 2
    assert "enabled" in capsys.readouterr().err
    assert main(["latent-metrics", "--latents", str(directory), "--spec", '{"enabled": ["sec"], "x": 1}',
                 "--out", out]) == 2
    assert "unknown keys" in capsys.readouterr().err
    assert main(["latent-metrics", "--latents", str(directory), "--spec", '{"enabled": ["sec"]}', "--out", out]) == 2
    assert "std" in capsys.readouterr().err


def test_channel_stats_unbiased_over_n_h_w_and_normalize():
    rng = np.random.default_rng(5)
    z = torch.from_numpy(rng.standard_normal((50, 3, 4, 5)) * [[[3.0]], [[0.1]], [[1.0]]] + 100.0)
    mean, std = channel_stats(z, chunk=7)
    flat = z.numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(mean.numpy(), flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), flat.std(1, ddof=1), rtol=1e-10)
    normalised = normalize_latents(z, mean, std).numpy().transpose(1, 0, 2, 3).reshape(3, -1)
    np.testing.assert_allclose(normalised.mean(1), 0, atol=1e-10)
    np.testing.assert_allclose(normalised.std(1, ddof=1), 1, rtol=1e-10)
