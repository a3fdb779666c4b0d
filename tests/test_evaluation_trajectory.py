"""The trajectory-metrics rows: the one row type, the registry's directions, no wall times, same bytes twice."""

import json

import pytest
import torch

from diffusability.cli import main
from diffusability.evaluation.trajectory import trajectory_rows
from diffusability.io import read_parquet, save_tensors
from diffusability.metrics.registry import TRAJECTORY_METRICS, metric_direction
from diffusability.metrics.trajectory import trajectory_metrics
from diffusability.rows import ROW_COLUMNS


def recorded(k=4, n=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    times = torch.tensor([0.0, 0.1, 0.3, 0.6, 1.0], dtype=torch.float64)[:k + 1]
    return torch.randn(k + 1, n, 2, 2, 2, generator=generator), times


def test_rows_are_the_means_of_the_metric_with_the_registry_directions():
    trajectory, times = recorded()
    rows = trajectory_rows(trajectory, times)
    direct = trajectory_metrics(trajectory, times)
    assert [r["metric"] for r in rows] == ["local_straightness", "global_efficiency"] + ["length_ratio"] * 4
    assert all(set(r) == set(ROW_COLUMNS) and r["n"] == 3 for r in rows)          # no `seconds`
    assert rows[0]["value"] == float(direct["local_straightness"].mean())
    assert rows[1]["value"] == float(direct["global_efficiency"].mean())
    assert [r["value"] for r in rows[2:]] == direct["mean_length_ratio"].tolist()
    assert [json.loads(r["params"]) for r in rows[2:]] == [
        {"segment": k + 1, "t_start": float(times[k]), "t_end": float(times[k + 1])} for k in range(4)]
    assert {r["metric"]: r["direction"] for r in rows} == {
        "local_straightness": "higher", "global_efficiency": "higher", "length_ratio": "none"}
    assert all(r["direction"] == metric_direction(r["metric"]) for r in rows)
    assert set(TRAJECTORY_METRICS) == {r["metric"] for r in rows}


def test_one_step_leaves_local_straightness_undefined():
    trajectory, times = recorded(k=1)
    rows = {r["metric"]: r["value"] for r in trajectory_rows(trajectory, times)}
    assert rows["local_straightness"] != rows["local_straightness"]           # NaN, as before
    assert rows["global_efficiency"] == pytest.approx(1.0)


def test_the_command_writes_the_same_bytes_twice(tmp_path):
    trajectory, times = recorded()
    save_tensors(tmp_path / "trajectories.safetensors", {"trajectory": trajectory.float(), "times": times})
    outputs = []
    for name in ("a.parquet", "b.parquet"):
        assert main(["trajectory-metrics", "--trajectories", str(tmp_path / "trajectories.safetensors"),
                     "--out", str(tmp_path / name)]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    table = read_parquet(tmp_path / "a.parquet")
    assert list(table.columns) == list(ROW_COLUMNS)
    assert str(table["value"].dtype) == "float64" and str(table["n"].dtype) == "int64"
    assert list(table["direction"]) == ["higher", "higher"] + ["none"] * 4
