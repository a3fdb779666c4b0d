"""FDr representation spaces: preprocessing against PIL's antialiased bicubic, the CLS / pooled feature of
each space against the model's own hidden states, FDr = raw / constant and FDr6 = mean against closed
forms, the commands on a tiny image set against a brute-force Fréchet distance (scipy sqrtm), clear
errors, and the jobs the option adds to the DAG. Tiny random transformers models saved to tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import transformers
from PIL import Image

from diffusability.workflow import config as cfg
from diffusability.analysis import tables
from diffusability.workflow import layout
from diffusability.cli import main
from diffusability.errors import DiffusabilityError
from diffusability.representation.spaces import (FDR6_SPACES, MODEL_SPACES, SPACES,
                                                      extract_representation_features, load_representation_model,
                                                      representation_fds, representation_rows, resample_position_grid)
from diffusability.io import load_arrays, provenance, read_parquet, save_npz, write_parquet
from workflow_helpers import expected_full_counts, planned_jobs

VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def tiny_model(space: str):
    """A small random model of each space's transformers class (position grids differ from the input's)."""
    torch.manual_seed(sum(map(ord, space)))
    if space == "convnext":
        return transformers.ConvNextV2Model(transformers.ConvNextV2Config(num_stages=2, hidden_sizes=[8, 16],
                                                                          depths=[1, 1]))
    if space == "dinov2":
        config = transformers.Dinov2Config(image_size=56, patch_size=14, mlp_ratio=2,
                                           **{k: v for k, v in VIT.items() if k != "intermediate_size"})
        return transformers.Dinov2Model(config)
    if space == "mae":
        return transformers.ViTMAEModel(transformers.ViTMAEConfig(image_size=224, patch_size=16, **VIT))
    if space == "siglip":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(image_size=64, patch_size=16, **VIT))
    if space == "clip":
        return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(image_size=56, patch_size=14, **VIT))
    raise AssertionError(space)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("representation_models")
    for space in MODEL_SPACES:
        tiny_model(space).save_pretrained(root / space)
    return {space: root / space for space in MODEL_SPACES}


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    """Smooth-ish random uint8 images (N, size, size, 3): noise plus a per-image colour gradient."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None, None] * rng.random((n, 1, 1, 3)) * 200
    return np.clip(rng.integers(0, 56, (n, size, size, 3)) + ramp, 0, 255).astype(np.uint8)


def tower(model):
    """The vision transformer of a CLIP/SigLIP vision model (transformers 5 has no ``vision_model`` wrapper)."""
    return getattr(model, "vision_model", model)


def pil_bicubic(channel: np.ndarray, size: int) -> np.ndarray:
    """PIL's antialiased bicubic resize of one float channel: the independent reference."""
    return np.asarray(Image.fromarray(channel.astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))


def brute_force_fd(x: np.ndarray, y: np.ndarray) -> float:
    """‖μx − μy‖² + tr(Σx + Σy − 2 sqrtm(Σx Σy)) with numpy's N − 1 covariance and scipy's sqrtm."""
    mu_x, mu_y = x.mean(0), y.mean(0)
    sigma_x, sigma_y = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(sigma_x @ sigma_y).real
    return float(((mu_x - mu_y) ** 2).sum() + np.trace(sigma_x + sigma_y - 2 * root))


# ----------------------------------------------------------------------------- the table

def test_table_holds_the_papers_constants():
    assert FDR6_SPACES == ("inception", "convnext", "dinov2", "mae", "siglip", "clip")
    assert {name: SPACES[name].validation_fd for name in FDR6_SPACES} == {
        "inception": 1.68, "convnext": 56.87, "dinov2": 14.19, "mae": 0.04, "siglip": 0.60, "clip": 5.60}
    assert {name: SPACES[name].input_size for name in MODEL_SPACES} == {
        "convnext": 224, "dinov2": 256, "mae": 224, "siglip": 224, "clip": 256}
    assert {name: SPACES[name].feature for name in MODEL_SPACES} == {
        "convnext": "global_average", "dinov2": "cls", "mae": "cls", "siglip": "pooled", "clip": "cls"}


# ----------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize("space, source_size", [("convnext", 32), ("dinov2", 32), ("clip", 300), ("siglip", 224)])
def test_preprocessing_is_antialiased_bicubic_then_mean_std_then_padding(model_folders, space, source_size):
    """[0, 1] → PIL bicubic (antialiased) to the input size → (x − mean)/std → zeros up to the patch
    multiple."""
    extractor = load_representation_model(space, model_folders[space])
    images = random_images(2, source_size, seed=1)
    pixels = extractor.preprocess(torch.from_numpy(images)).numpy()
    entry = SPACES[space]
    size = entry.input_size
    padded = {"convnext": 224, "dinov2": 266, "clip": 266, "siglip": 224}[space]
    assert pixels.shape == (2, 3, padded, padded)
    for i in range(2):
        for c in range(3):
            channel = images[i, :, :, c] / 255.0
            resized = channel if source_size == size else pil_bicubic(channel, size)
            expected = (resized - entry.mean[c]) / entry.std[c]
            np.testing.assert_allclose(pixels[i, c, :size, :size], expected, atol=2e-4)
    assert not pixels[:, :, size:, :].any() and not pixels[:, :, :, size:].any()


def test_position_grid_is_resampled_like_pil_bicubic():
    rng = np.random.default_rng(2)
    table = torch.from_numpy(rng.standard_normal((4 * 4, 5)).astype(np.float32))
    resized = resample_position_grid(table, 4, 19).numpy()
    assert resized.shape == (19 * 19, 5)
    for d in range(5):
        expected = pil_bicubic(table[:, d].numpy().reshape(4, 4), 19)
        np.testing.assert_allclose(resized[:, d].reshape(19, 19), expected, atol=1e-5)
    assert resample_position_grid(table, 4, 4) is table


def test_models_see_the_resampled_grid_and_keep_the_class_position(model_folders):
    original = transformers.Dinov2Model.from_pretrained(str(model_folders["dinov2"]))
    extractor = load_representation_model("dinov2", model_folders["dinov2"])
    table = extractor.model.embeddings.position_embeddings.detach()[0]
    before = original.embeddings.position_embeddings.detach()[0]
    assert table.shape[0] == 1 + 19 * 19  # 266 / 14 patches per side
    torch.testing.assert_close(table[0], before[0])
    torch.testing.assert_close(table[1:], resample_position_grid(before[1:], 4, 19))
    siglip = load_representation_model("siglip", model_folders["siglip"])
    assert tower(siglip.model).embeddings.position_embedding.weight.shape[0] == 14 * 14  # no class token


# ----------------------------------------------------------------------------- the chosen feature

def test_feature_is_the_cls_or_pooled_output(model_folders):
    """Each space's feature recomputed from the model's last hidden state, by the definition of the space."""
    images = torch.from_numpy(random_images(3, 32, seed=3))
    for space in MODEL_SPACES:
        extractor = load_representation_model(space, model_folders[space])
        pixels = extractor.preprocess(images)
        with torch.no_grad():
            features = extractor(images)
            model = extractor.model
            if space == "convnext":
                output = model(pixel_values=pixels, output_hidden_states=True)
                expected = output.hidden_states[-1].mean(dim=(2, 3))  # before the head's LayerNorm
                assert not torch.allclose(features, output.pooler_output, atol=1e-3)
            elif space == "mae":
                n_patches = (224 // 16) ** 2
                shuffled = torch.rand(3, n_patches)
                output = model(pixel_values=pixels, noise=shuffled, output_hidden_states=True)
                assert output.last_hidden_state.shape[1] == 1 + n_patches  # no patch masked
                expected = model.layernorm(output.hidden_states[-1])[:, 0]  # patch order does not change CLS
            elif space == "dinov2":
                output = model(pixel_values=pixels, output_hidden_states=True)
                expected = model.layernorm(output.hidden_states[-1])[:, 0]
            elif space == "siglip":
                vision = tower(model)
                hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
                expected = vision.head(vision.post_layernorm(hidden))
            else:
                vision = tower(model)
                hidden = model(pixel_values=pixels, output_hidden_states=True).hidden_states[-1]
                expected = vision.post_layernorm(hidden[:, 0])
        assert features.shape == (3, extractor.feature_dim), space
        torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4, msg=space)


def test_full_clip_checkpoint_loads_its_vision_tower(tmp_path):
    """openai/clip-vit-large-patch14 is a whole CLIPModel folder (model_type 'clip')."""
    config = transformers.CLIPConfig(vision_config=dict(image_size=56, patch_size=14, **VIT),
                                     text_config=dict(vocab_size=50, **VIT), projection_dim=16)
    transformers.CLIPModel(config).save_pretrained(tmp_path / "clip")
    extractor = load_representation_model("clip", tmp_path / "clip")
    features = extract_representation_features(extractor, random_images(2, 32, seed=4), batch_size=1)
    assert features.shape == (2, 32) and features.dtype == np.float64


def test_batches_do_not_change_features(model_folders):
    extractor = load_representation_model("mae", model_folders["mae"])
    images = random_images(5, 32, seed=5)
    np.testing.assert_allclose(extract_representation_features(extractor, images, batch_size=2),
                               extract_representation_features(extractor, images, batch_size=5), atol=1e-5)


# ----------------------------------------------------------------------------- distances and rows

def shifted_gaussians(dim: int, shift: float, seed: int):
    """Two Gaussians with the same covariance whose means differ by a vector of squared norm shift²:
    their Fréchet distance is exactly shift²."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((dim, dim))
    sigma = a @ a.T / dim + np.eye(dim)
    mu = rng.standard_normal(dim)
    direction = rng.standard_normal(dim)
    return (mu, sigma), (mu + shift * direction / np.linalg.norm(direction), sigma)


def test_fdr_is_raw_over_the_validation_fd_and_fdr6_their_mean():
    shifts = {"convnext": 3.0, "dinov2": 2.0, "mae": 0.5, "siglip": 1.0, "clip": 1.5}
    gen, ref = {}, {}
    for k, (name, shift) in enumerate(shifts.items()):
        gen[name], ref[name] = shifted_gaussians(6, shift, seed=k)
    result = representation_fds(gen, ref, raw_fds={"inception": 3.36})
    expected_fd = {"inception": 3.36, **{name: shift ** 2 for name, shift in shifts.items()}}
    assert result["spaces"] == list(FDR6_SPACES)
    for name, value in expected_fd.items():
        assert result["fd"][name] == pytest.approx(value, rel=1e-9)
        assert result["fdr"][name] == pytest.approx(value / SPACES[name].validation_fd, rel=1e-9)
    ratios = [3.36 / 1.68, 9 / 56.87, 4 / 14.19, 0.25 / 0.04, 1 / 0.60, 2.25 / 5.60]
    assert result["fdr6"] == pytest.approx(sum(ratios) / 6, rel=1e-9)

    rows = representation_rows(result, n=50, seconds={"dinov2": 2.0, "clip": 1.0})
    by_metric = {row["metric"]: row for row in rows}
    assert list(by_metric) == [f"{kind}_{name}" for name in FDR6_SPACES for kind in ("fd", "fdr")] + ["fdr6"]
    assert by_metric["fdr6"]["value"] == pytest.approx(sum(ratios) / 6) and "seconds" not in by_metric["fdr6"]
    assert all(row["direction"] == "lower" and row["n"] == 50 for row in rows)
    params = json.loads(by_metric["fdr_mae"]["params"])
    assert params["spaces"] == list(FDR6_SPACES) and params["validation_fd"]["mae"] == 0.04


def test_fdr6_needs_all_six_spaces_and_the_params_say_which_were_used():
    gen, ref = shifted_gaussians(4, 1.0, seed=0)
    result = representation_fds({"dinov2": gen}, {"dinov2": ref})
    assert result["fdr6"] is None and result["spaces"] == ["dinov2"]
    rows = representation_rows(result, n=10)
    assert [row["metric"] for row in rows] == ["fd_dinov2", "fdr_dinov2"]
    params = json.loads(rows[0]["params"])
    assert params["spaces"] == ["dinov2"] and "inception" in params["fdr6"] and "clip" in params["fdr6"]


def test_fd_of_a_set_with_itself_is_zero(model_folders):
    extractor = load_representation_model("siglip", model_folders["siglip"])
    from diffusability.metrics.frechet import feature_statistics

    stats = feature_statistics(extract_representation_features(extractor, random_images(8, 32, seed=6)))
    result = representation_fds({"siglip": stats}, {"siglip": stats})
    assert result["fd"]["siglip"] == pytest.approx(0.0, abs=1e-8)


# ----------------------------------------------------------------------------- clear errors

def test_missing_folder_names_the_space_and_path(tmp_path):
    with pytest.raises(DiffusabilityError, match=r"'dinov2'.*absent/config.json not found.*facebook/dinov2-large"):
        load_representation_model("dinov2", tmp_path / "absent")


def test_wrong_model_type_names_the_space_and_path(model_folders):
    with pytest.raises(DiffusabilityError, match=r"'clip'.*dinov2.*holds a 'dinov2' model, expected 'clip'"):
        load_representation_model("clip", model_folders["dinov2"])


def test_unknown_space_and_inconsistent_statistics_are_named():
    with pytest.raises(DiffusabilityError, match="unknown representation space 'dino'"):
        load_representation_model("dino", "/nowhere")
    gen, ref = shifted_gaussians(3, 1.0, seed=0)
    with pytest.raises(DiffusabilityError, match="samples have spaces"):
        representation_fds({"mae": gen}, {"clip": ref})
    with pytest.raises(DiffusabilityError, match="both as statistics and as a raw FD"):
        representation_fds({"mae": gen}, {"mae": ref}, raw_fds={"mae": 1.0})


# ----------------------------------------------------------------------------- commands

def write_inception_rows(path, fd: float, feature_net: str = "inception") -> None:
    import pandas as pd

    params = json.dumps({"feature_net": feature_net, "n_reference": 10, "reference": "ref.npz"})
    rows = pd.DataFrame([{"metric": m, "value": v, "direction": "lower", "params": params, "n": 6, "seconds": 0.0}
                         for m, v in (("fd", fd), ("sfid", 9.0))])
    write_parquet(rows, path, provenance())


def test_commands_on_a_tiny_image_set(model_folders, tmp_path):
    """representation-stats per space, then representation-metrics: the FD of each space against a
    brute-force FD of the same features, FDr6 over the five spaces and the Inception's gFID row, and
    FD ≈ 0 for samples equal to the reference."""
    reference_images, sample_images = random_images(8, 32, seed=7), random_images(6, 32, seed=8)
    np.savez(tmp_path / "reference.npz", arr_0=reference_images)
    np.savez(tmp_path / "samples.npz", arr_0=sample_images, labels=np.zeros(6, dtype=np.int64))
    np.savez(tmp_path / "same.npz", arr_0=reference_images, labels=np.zeros(8, dtype=np.int64))
    write_inception_rows(tmp_path / "gfid.parquet", fd=2.52)
    space_args = []
    for space in MODEL_SPACES:
        stats = tmp_path / f"{space}.npz"
        assert main(["representation-stats", "--images", str(tmp_path / "reference.npz"), "--space", space,
                     "--model", str(model_folders[space]), "--batch-size", "3", "--device", "cpu",
                     "--out", str(stats)]) == 0
        saved = load_arrays(stats)
        assert str(saved["space"]) == space and int(saved["n"]) == 8 and saved["sigma"].dtype == np.float64
        space_args += ["--space", space, str(model_folders[space]), str(stats)]

    out = tmp_path / "rows.parquet"
    assert main(["representation-metrics", "--samples", str(tmp_path / "samples.npz"), *space_args,
                 "--inception-rows", str(tmp_path / "gfid.parquet"), "--spec", '{"batch_size": 4}',
                 "--device", "cpu", "--out", str(out)]) == 0
    rows = read_parquet(out).set_index("metric")["value"]
    assert set(rows.index) == {f"{k}_{s}" for s in FDR6_SPACES for k in ("fd", "fdr")} | {"fdr6"}
    for space in MODEL_SPACES:
        extractor = load_representation_model(space, model_folders[space])
        expected = brute_force_fd(extract_representation_features(extractor, sample_images),
                                  extract_representation_features(extractor, reference_images))
        assert rows[f"fd_{space}"] == pytest.approx(expected, rel=1e-4, abs=1e-8), space
        assert rows[f"fdr_{space}"] == pytest.approx(rows[f"fd_{space}"] / SPACES[space].validation_fd)
    assert rows["fd_inception"] == 2.52 and rows["fdr_inception"] == pytest.approx(1.5)
    assert rows["fdr6"] == pytest.approx(np.mean([rows[f"fdr_{s}"] for s in FDR6_SPACES]))

    same = tmp_path / "same_rows.parquet"
    assert main(["representation-metrics", "--samples", str(tmp_path / "same.npz"), *space_args,
                 "--device", "cpu", "--out", str(same)]) == 0
    same_rows = read_parquet(same)
    assert "fdr6" not in set(same_rows["metric"])  # no Inception space given
    fds = same_rows[same_rows["metric"].str.startswith("fd_")]["value"]
    assert len(fds) == 5 and (fds.abs() < 1e-6).all()


def test_commands_refuse_mismatched_statistics_and_domain_rows(model_folders, tmp_path, capsys):
    images = random_images(4, 32, seed=9)
    np.savez(tmp_path / "samples.npz", arr_0=images, labels=np.zeros(4, dtype=np.int64))
    save_npz(tmp_path / "clip.npz", mu=np.zeros(32), sigma=np.eye(32), n=np.array(4), space=np.array("clip"))
    code = main(["representation-metrics", "--samples", str(tmp_path / "samples.npz"), "--space", "mae",
                 str(model_folders["mae"]), str(tmp_path / "clip.npz"), "--out", str(tmp_path / "x.parquet")])
    assert code == 2 and "statistics of space 'clip', expected 'mae'" in capsys.readouterr().err
    write_inception_rows(tmp_path / "domain.parquet", fd=1.0, feature_net="domain")
    code = main(["representation-metrics", "--samples", str(tmp_path / "samples.npz"),
                 "--inception-rows", str(tmp_path / "domain.parquet"), "--out", str(tmp_path / "y.parquet")])
    assert code == 2 and "feature net 'domain'" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "y.parquet").exists()


# ----------------------------------------------------------------------------- workflow

def test_config_names_unknown_spaces_and_missing_folders(repo, tmp_path):
    import yaml

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    config.setdefault("generation", {})["representations"] = {"dino": str(tmp_path)}
    with pytest.raises(DiffusabilityError, match=r"'dino'.*generation.representations"):
        cfg.validate_config(config)
    config["generation"]["representations"] = {"dinov2": str(tmp_path / "absent")}
    validated = cfg.validate_config(config)
    with pytest.raises(DiffusabilityError, match=r"generation.representations.dinov2: .*absent/config.json not found"):
        cfg.representation_models(validated)
    del config["generation"]["representations"]
    assert cfg.representation_models(cfg.validate_config(config)) == {}


def test_aggregate_reads_representation_rows_with_the_generation_rows(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    gen, ref = shifted_gaussians(3, 1.0, seed=0)
    rows = representation_rows(representation_fds({"mae": gen}, {"mae": ref}), n=4)
    import pandas as pd

    paths = [layout.generation_rows("tok", "bb", "1.50"), layout.representation_rows("tok", "bb", "1.50")]
    write_inception_rows(paths[0], fd=2.0)
    write_parquet(pd.DataFrame(rows), paths[1], provenance())
    table = tables.generation_table(layout.keyed("generation", paths[:1]), layout.keyed("representation", paths[1:]))
    assert sorted(table["metric"]) == ["fd", "fd_mae", "fdr_mae", "sfid"]
    assert set(table["tokenizer"]) == {"tok"} and set(table["cfg_scale"]) == {1.5}
    assert layout.parse("representation", paths[1]) == ("tok", "bb", "0", "1.50")


def test_option_adds_exactly_the_representation_jobs(repo, snakemake_exe, workdir_factory, model_folders):
    """Five cached reference-statistics jobs and one rows job per sample set; nothing else changes."""
    import yaml

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    baseline = expected_full_counts(config)
    config.setdefault("generation", {})["representations"] = {space: str(folder)
                                                              for space, folder in model_folders.items()}
    counts = planned_jobs(snakemake_exe, workdir_factory(config, name="representations"))
    assert counts == {**baseline, "representation_reference_stats": 5,
                      "representation_metrics": baseline["generation_metrics"]}
