"""A released SiT checkpoint converted (``convert-diffusion``) computes SiT's own forward and imports into a study.

The oracle is tests/sit_reference.py: SiT's forward written from its published design on the SiT-keyed state
dict, float64, sharing no code with the package's transformer (docs/models.md §2.7).
"""

from __future__ import annotations

import argparse
import json
import pathlib

import pytest
import torch

from diffusability.cli import main
from diffusability.diffusion.external import SIT_HEADS, convert_sit, sit_architecture
from diffusability.diffusion.train import load_diffusion_model
from diffusability.errors import DiffusabilityError
from diffusability.io import save_tensors
from sit_reference import sit_forward, sit_state_dict

SMALL = dict(depth=2, width=64, patch=2, channels=4, grid=8, num_classes=10)
HEADS = 4


def _inputs(channels: int, grid: int, num_classes: int, n: int = 6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, channels, grid, grid, generator=g)
    t = torch.cat([torch.tensor([0.0, 1.0]), torch.rand(n - 2, generator=g)])
    y = torch.randint(0, num_classes, (n,), generator=g)
    y[-1] = num_classes  # the null label of classifier-free guidance
    return x, t, y


def _save(tmp_path, obj, name="sit.pt") -> pathlib.Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("variant", [
    dict(learn_sigma=True),
    dict(learn_sigma=False),
    dict(learn_sigma=True, patch=1, grid=4),
])
def test_the_converted_model_computes_sits_forward(tmp_path, variant):
    params = {**SMALL, **variant}
    state = sit_state_dict(**params)
    source = _save(tmp_path, state)
    found = convert_sit(source, tmp_path / "model", heads=HEADS)
    assert found["learn_sigma"] == params["learn_sigma"] and found["grid_size"] == params["grid"]
    model = load_diffusion_model(tmp_path / "model")
    x, t, y = _inputs(params["channels"], params["grid"], params["num_classes"])
    with torch.no_grad():
        ours = model(x, t, y).double()
    reference = sit_forward(state, x, t, y, HEADS)
    assert reference.abs().max() > 0.1  # not trivially zero: random adaLN and final layers
    assert (ours - reference).abs().max() <= 1e-5 * max(1.0, float(reference.abs().max()))
    # the velocity differs between classes, and the null label is its own row
    assert (ours[-1] - model(x[-1:], t[-1:], y[:1]).double()[0]).abs().max() > 1e-3


def test_config_json_describes_sits_architecture_and_normalisation(tmp_path):
    source = _save(tmp_path, sit_state_dict(**SMALL), name="SiT-tiny.pt")
    convert_sit(source, tmp_path / "model", heads=HEADS, latent_scale=0.18215)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    spec = config["spec"]
    assert {k: spec[k] for k in ("name", "family", "depth", "width", "heads", "patch_size", "qk_norm", "pos_embed",
                                 "norm", "mlp", "num_classes")} == dict(
        name="SiT-tiny", family="sit", depth=2, width=64, heads=4, patch_size=2, qk_norm=False, pos_embed="sincos",
        norm="layernorm", mlp="gelu", num_classes=10)
    assert (config["in_channels"], config["grid_size"], config["num_classes"]) == (4, 8, 10)
    assert config["latent_stats"] == {"mean": [0.0] * 4, "std": [1 / 0.18215] * 4}
    assert config["converted_from"] == {"format": "sit", "file": "SiT-tiny.pt", "key": None, "learn_sigma": True}


def test_a_training_checkpoint_gives_its_ema_and_its_transport_is_checked(tmp_path):
    ema, raw = sit_state_dict(**SMALL, seed=0), sit_state_dict(**SMALL, seed=7)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))], lr=1e-4).state_dict()
    args = argparse.Namespace(model="SiT-XL/2", path_type="Linear", prediction="velocity", loss_weight=None)
    source = _save(tmp_path, {"model": raw, "ema": ema, "opt": optimizer, "args": args})
    assert convert_sit(source, tmp_path / "model", heads=HEADS)["source_key"] == "ema"
    x, t, y = _inputs(4, 8, 10)
    with torch.no_grad():
        ours = load_diffusion_model(tmp_path / "model")(x, t, y).double()
    assert (ours - sit_forward(ema, x, t, y, HEADS)).abs().max() < 1e-4
    noise = _save(tmp_path, {"model": raw, "ema": ema, "args": argparse.Namespace(path_type="Linear",
                                                                                  prediction="noise")}, "noise.pt")
    with pytest.raises(DiffusabilityError, match=r"noise\.pt: args\.prediction is 'noise'"):
        convert_sit(noise, tmp_path / "noise", heads=HEADS)
    assert not (tmp_path / "noise").exists()


def test_half_precision_weights_are_converted_to_float32(tmp_path):
    state = {k: v.half() for k, v in sit_state_dict(**SMALL).items()}
    convert_sit(_save(tmp_path, state), tmp_path / "model", heads=HEADS)
    model = load_diffusion_model(tmp_path / "model")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values())


def test_heads_default_to_sits_sizes_and_an_unknown_width_needs_them(tmp_path):
    shapes = {k: torch.empty(v.shape) for k, v in sit_state_dict(**{**SMALL, "depth": 1}).items()}
    assert sit_architecture(shapes, "x.pt", heads=8)["heads"] == 8
    with pytest.raises(DiffusabilityError, match=r"x\.pt: width 64 is not one of SiT's sizes .*--heads"):
        sit_architecture(shapes, "x.pt")
    for width, heads in SIT_HEADS.items():  # shapes only: the widths of SiT-S/B/L/XL
        wide = {"x_embedder.proj.weight": torch.empty(width, 4, 2, 2), "pos_embed": torch.empty(1, 256, width),
                "y_embedder.embedding_table.weight": torch.empty(1001, width),
                "blocks.0.attn.qkv.weight": torch.empty(3 * width, width),
                "final_layer.linear.weight": torch.empty(32, width)}
        arch = sit_architecture(wide, "xl.pt")
        assert (arch["heads"], arch["grid_size"], arch["num_classes"], arch["learn_sigma"]) == (heads, 32, 1000, True)


# ------------------------------------------------------------------------------------- into a study

def _study_latents(folder, channels=4, grid=8, classes=10, std=None):
    """A study's latent folder whose stats.safetensors says mean 0 and std ``std`` per channel."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(20) % classes
    save_tensors(folder / "train.safetensors", {"latents": torch.randn(20, channels, grid, grid, generator=g),
                                                "labels": labels})
    save_tensors(folder / "stats.safetensors", {"mean": torch.zeros(channels), "std": torch.as_tensor(std).float()})
    return folder


def _import(tmp_path, latents, model, out):
    spec = json.dumps({"depth": 1, "width": 16, "heads": 2, "num_classes": 10})
    return main(["train-diffusion", "--latents", str(latents), "--spec", spec, "--import-from", str(model),
                 "--out", str(tmp_path / out)])


def test_the_converted_directory_is_imported_by_a_study_with_its_normalisation(tmp_path, capsys):
    source = _save(tmp_path, sit_state_dict(**SMALL))
    assert main(["convert-diffusion", "--source", str(source), "--heads", "4", "--latent-scale", "0.5",
                 "--out", str(tmp_path / "model")]) == 0
    study = tmp_path / "study"
    _study_latents(study, std=[2.0] * 4)  # latents × 0.5 ⇔ mean 0, std 2
    assert _import(tmp_path, study, tmp_path / "model", "imported") == 0
    imported, converted = tmp_path / "imported" / "ema.safetensors", tmp_path / "model" / "ema.safetensors"
    assert imported.read_bytes() == converted.read_bytes()
    # explicit per-channel statistics are recorded as given
    assert main(["convert-diffusion", "--source", str(source), "--heads", "4", "--latent-mean", "0", "0", "0", "0",
                 "--latent-std", "2", "2", "2", "2", "--out", str(tmp_path / "model2")]) == 0
    assert _import(tmp_path, study, tmp_path / "model2", "imported2") == 0
    capsys.readouterr()
    # a study normalised otherwise refuses the model: its sampler would invert the wrong normalisation
    other = tmp_path / "other"
    _study_latents(other, std=[2.0, 2.0, 3.0, 2.0])
    assert _import(tmp_path, other, tmp_path / "model", "refused") == 2
    err = capsys.readouterr().err
    assert "channel 2 has std 2 in latent_stats but 3 in the study" in err
    assert str(tmp_path / "model" / "config.json") in err and str(other / "stats.safetensors") in err
    assert not (tmp_path / "refused").exists()


# ------------------------------------------------------------------------------------- bad input

def _drop(key):
    return lambda s: {k: v for k, v in s.items() if k != key}


BAD = [  # (label, edit of the SiT state dict or a replacement object, text the message must contain)
    ("missing-key", _drop("blocks.1.mlp.fc1.weight"), "missing key(s) ['blocks.1.mlp.fc1.weight']"),
    ("missing-table", _drop("y_embedder.embedding_table.weight"), "no tensor 'y_embedder.embedding_table.weight'"),
    ("qk-norm-key", lambda s: {**s, "blocks.0.attn.q_norm.weight": torch.ones(16)},
     "['blocks.0.attn.q_norm.weight'] have no counterpart"),
    ("wrong-shape", lambda s: {**s, "blocks.1.mlp.fc2.weight": torch.zeros(64, 128)},
     "blocks.1.mlp.fc2.weight has shape (64, 128), expected (64, 256)"),
    ("final-rows", lambda s: {**s, "final_layer.linear.weight": torch.zeros(20, 64)},
     "final_layer.linear.weight has 20 outputs"),
    ("learned-positions", lambda s: {**s, "pos_embed": torch.randn(s["pos_embed"].shape)},
     "pos_embed is not the fixed 2-D sin-cos table"),
    ("gap-in-blocks", lambda s: {k.replace("blocks.1.", "blocks.2."): v for k, v in s.items()},
     "blocks numbered [0, 2]"),
    ("nan", lambda s: {**s, "blocks.0.attn.proj.bias": torch.full((64,), float("nan"))},
     "blocks.0.attn.proj.bias contains NaN"),
    ("not-a-state-dict", lambda s: [1, 2, 3], "holds a list, not a state dict"),
    ("other-dict", lambda s: {"state_dict": s}, "neither a SiT state dict"),
    ("python-object", lambda s: {"ema": s, "args": pathlib.PurePosixPath("x")},
     "holds Python objects other than weights"),
]


@pytest.mark.parametrize("label, edit, expect", BAD, ids=[row[0] for row in BAD])
def test_a_checkpoint_that_does_not_map_is_refused_naming_file_and_key(tmp_path, capsys, label, edit, expect):
    source = _save(tmp_path, edit(sit_state_dict(**SMALL)))
    status = main(["convert-diffusion", "--source", str(source), "--heads", "4", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and expect in err and str(source) in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("label, argv, expect", [
    ("missing", ["--source", "{dir}/absent.pt"], "absent.pt: file not found"),
    ("garbage", ["--source", "{dir}/garbage.pt"], "garbage.pt: not a valid PyTorch checkpoint"),
    ("no-heads", ["--source", "{dir}/sit.pt"], "width 64 is not one of SiT's sizes"),
    ("stats-count", ["--source", "{dir}/sit.pt", "--heads", "4", "--latent-mean", "0", "--latent-std", "1"],
     "--latent-mean has 1 values but the model has 4 channels"),
    ("negative-scale", ["--source", "{dir}/sit.pt", "--heads", "4", "--latent-scale", "-1"], "--latent-scale"),
    ("heads-do-not-divide", ["--source", "{dir}/sit.pt", "--heads", "5"], "not divisible by --heads 5"),
])
def test_bad_arguments_exit_2_without_a_traceback(tmp_path, capsys, label, argv, expect):
    _save(tmp_path, sit_state_dict(**SMALL))
    (tmp_path / "garbage.pt").write_bytes(b"\x00garbage" * 40)
    status = main(["convert-diffusion", *[a.replace("{dir}", str(tmp_path)) for a in argv],
                   "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2 and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
