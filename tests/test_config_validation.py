"""Config validation: bad configs fail before any job runs, naming the key and the expectation."""

from __future__ import annotations

import copy
import re
import subprocess

import pytest
import yaml

from diffusability.workflow.config import backbone_spec, sampling_spec, tokenizer_spec, validate_config
from diffusability.errors import DiffusabilityError


@pytest.fixture()
def default_config(repo):
    return yaml.safe_load((repo / "config" / "config.yaml").read_text())


def _error(config) -> str:
    with pytest.raises(DiffusabilityError) as info:
        validate_config(config)
    return str(info.value)


def test_shipped_configs_are_valid(repo):
    for name in ("config.yaml", "smoke.yaml", "paper.yaml"):
        path = repo / "config" / name
        if path.exists():
            validate_config(yaml.safe_load(path.read_text()))


def test_defaults_are_filled(default_config):
    config = validate_config(default_config)
    assert config["sampling"]["guidance_channels"] == "all"
    assert config["tokenizers"]["baseline"]["kl_weight"] == 1e-6
    assert config["tokenizers"]["baseline"]["regularizer"] == {"name": "none"}
    assert config["encode"]["mask_pooling"] == "max"
    # validation does not modify its argument
    assert "encode" not in default_config


def test_unknown_key_is_named(default_config):
    config = copy.deepcopy(default_config)
    config["tokenizers"]["baseline"]["colour"] = "red"
    message = _error(config)
    assert "'colour'" in message and "tokenizers.baseline" in message and "allowed:" in message


def test_wrong_type_is_named(default_config):
    config = copy.deepcopy(default_config)
    config["sampling"]["num_steps"] = "fifty"
    message = _error(config)
    assert "sampling.num_steps" in message and "expected integer" in message


def test_unknown_regularizer_lists_the_known_ones(default_config):
    config = copy.deepcopy(default_config)
    config["tokenizers"]["mcos-0.5"]["regularizer"]["name"] = "vf-loss"
    message = _error(config)
    assert "tokenizers.mcos-0.5.regularizer.name" in message and "'vf-loss'" in message and "mdms" in message


def test_unknown_backbone_family(default_config):
    config = copy.deepcopy(default_config)
    config["backbones"]["sit-t"]["family"] = "dit"
    message = _error(config)
    assert "backbones.sit-t.family" in message and "lightningdit" in message


def test_downsampling_must_divide_image_size(default_config):
    config = copy.deepcopy(default_config)
    config["tokenizers"]["baseline"]["channel_mult"] = [1, 1, 1, 1, 1, 1, 1]
    assert "tokenizers.baseline.channel_mult" in _error(config)


def test_specs_are_per_entity_slices(default_config):
    config = validate_config(default_config)
    spec = tokenizer_spec(config, "mcos-0.5")
    assert spec["name"] == "mcos-0.5" and spec["regularizer"]["name"] == "mcos"
    assert "tokenizers" not in spec and "baseline" not in str(spec)
    bb = backbone_spec(config, "mcos-0.5", "sit-t")
    assert bb["norm"] == "layernorm" and bb["time_sampling"] == "uniform"  # family defaults


def test_seed_repeats_have_their_own_seeds_and_repeat_0_keeps_the_root_seed(default_config):
    config = validate_config({**default_config, "seed": 5, "repeats": 3})
    train = [backbone_spec(config, "baseline", "sit-t", r)["seed"] for r in range(3)]
    sample = [sampling_spec(config, r)["seed"] for r in range(3)]
    assert train == sample and train[0] == 5 and len(set(train)) == 3
    # the same seeds for every tokenizer (common random numbers), and only the seed differs
    assert train == [backbone_spec(config, "kl-1e-1", "sit-t", r)["seed"] for r in range(3)]
    one, two = backbone_spec(config, "baseline", "sit-t", 0), backbone_spec(config, "baseline", "sit-t", 2)
    assert {k for k in one if one[k] != two[k]} == {"seed"}


def test_repeats_with_an_imported_diffusion_model_are_refused(default_config):
    config = copy.deepcopy(default_config)
    config["repeats"] = 2
    config["tokenizers"]["baseline"]["diffusion"] = {"sit-t": "/somewhere/sit-t"}
    message = _error(config)
    assert "tokenizers.baseline.diffusion.sit-t" in message and "repeats" in message


def test_a_tokenizers_latent_normalization_reaches_only_its_encode_spec(default_config):
    from diffusability.workflow.config import encode_spec

    config = copy.deepcopy(default_config)
    config["tokenizers"]["baseline"]["latent_normalization"] = {"scale": 0.18215}
    config["tokenizers"]["kl-1e-2"]["latent_normalization"] = {"mean": [0.0] * 4, "std": [1.0, 2.0, 3.0, 4.0]}
    filled = validate_config(config)
    assert encode_spec(filled, "baseline") == {**encode_spec(filled), "normalization": {"scale": 0.18215}}
    assert encode_spec(filled, "kl-1e-2")["normalization"]["std"] == [1.0, 2.0, 3.0, 4.0]
    # every other tokenizer keeps the spec it had, so a study that sets none reruns nothing
    assert encode_spec(filled, "mcos-0.1") == encode_spec(filled) and "normalization" not in encode_spec(filled)
    assert "latent_normalization" not in tokenizer_spec(filled, "baseline")  # not a training setting


@pytest.mark.parametrize("value, message", [
    ({"scale": 0}, "tokenizers.baseline.latent_normalization"),
    ({"scale": 1.0, "mean": [0.0]}, "tokenizers.baseline.latent_normalization"),
    ({"mean": [0.0] * 4}, "tokenizers.baseline.latent_normalization"),
    ({"mean": [0.0] * 4, "std": [1.0, 0.0, 1.0, 1.0]}, "tokenizers.baseline.latent_normalization"),
    ({"mean": [0.0] * 4, "std": [1.0] * 3}, "4 means but 3 stds"),
])
def test_a_bad_latent_normalization_is_refused_naming_the_key(default_config, value, message):
    config = copy.deepcopy(default_config)
    config["tokenizers"]["baseline"]["latent_normalization"] = value
    assert message in _error(config)


def test_latent_normalization_with_imported_latents_is_refused(default_config):
    config = copy.deepcopy(default_config)
    config["tokenizers"]["baseline"].update(latents="/somewhere/latents", latent_normalization={"scale": 0.5})
    message = _error(config)
    assert "tokenizers.baseline.latent_normalization" in message and "stats.safetensors" in message


def test_snakemake_refuses_bad_config_before_any_job(workdir_factory, snakemake_exe, default_config):
    config = copy.deepcopy(default_config)
    config["backbones"]["sit-t"]["family"] = "dit"
    tmp_path = workdir_factory(config)
    result = subprocess.run([snakemake_exe, "-n", "--cores", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "backbones.sit-t.family" in output and "lightningdit" in output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("path, value, message", [
    (("tokenizers", "baseline", "kl_weight"), float("nan"), "tokenizers.baseline.kl_weight: nan is not a finite"),
    (("backbones", "sit-t", "lr"), float("inf"), "backbones.sit-t.lr: inf is not a finite"),
    (("sampling", "cfg_scales"), [1.0, 1.001], "share the file name cfg1.00"),
])
def test_nan_inf_and_colliding_guidance_names_are_refused(default_config, path, value, message):
    """Fault findings 10 and 4: YAML's .nan/.inf pass a number schema; 1.0 and 1.001 would merge."""
    config = copy.deepcopy(default_config)
    target = config
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(DiffusabilityError, match=re.escape(message)):
        validate_config(config)
