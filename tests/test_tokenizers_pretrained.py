"""Pretrained tokenizers: diffusers AutoencoderKL names, import of local checkpoints, the DAG rule."""

from __future__ import annotations

import pytest
import torch
import yaml

from diffusability.errors import DiffusabilityError
from diffusability.io import save_tensors, write_json
from diffusability.tokenizers import build_tokenizer, load_tokenizer
from diffusability.tokenizers.diffusers_import import (convert_diffusers_state_dict, diffusers_key_to_ours,
                                                      spec_from_diffusers_config)
from diffusability.tokenizers.pretrained import import_pretrained_tokenizer

STUDY = {"name": "sd-tiny", "seed": 0, "image_size": 16}


def test_diffusers_names_map_onto_ours_with_decoder_levels_in_execution_order():
    facts = {
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": "encoder.levels.1.blocks.0.shortcut.weight",
        "encoder.down_blocks.0.downsamplers.0.conv.bias": "encoder.levels.0.downsample.conv.bias",
        "encoder.mid_block.resnets.1.norm2.weight": "encoder.mid.2.norm2.weight",
        "encoder.mid_block.attentions.0.group_norm.bias": "encoder.mid.1.norm.bias",
        "decoder.mid_block.attentions.0.to_out.0.weight": "decoder.mid.1.proj_out.weight",
        "decoder.mid_block.attentions.0.query.weight": "decoder.mid.1.q.weight",  # old diffusers spelling
        "encoder.conv_norm_out.weight": "encoder.norm_out.weight",
        # diffusers' up_blocks.0 is the lowest resolution and runs first, as our decoder level 0
        "decoder.up_blocks.0.upsamplers.0.conv.weight": "decoder.levels.0.upsample.conv.weight",
        "decoder.up_blocks.3.resnets.2.conv1.weight": "decoder.levels.3.blocks.2.conv1.weight",
        "quant_conv.weight": "quant_conv.weight",
        "encoder.conv_out.bias": "encoder.conv_out.bias",
    }
    for theirs, ours in facts.items():
        assert diffusers_key_to_ours(theirs) == ours, theirs
    assert diffusers_key_to_ours("loss.logvar") is None
    with pytest.raises(DiffusabilityError, match="unexpected module"):
        diffusers_key_to_ours("encoder.mid_block.attentions.0.rotary.weight")
    linear = torch.randn(4, 4)
    converted = convert_diffusers_state_dict({"encoder.mid_block.attentions.0.to_q.weight": linear})
    assert torch.equal(converted["encoder.mid.1.q.weight"], linear.reshape(4, 4, 1, 1))


def _diffusers_state_of(model) -> dict[str, torch.Tensor]:
    """A diffusers-named copy of our ConvVAE's weights, written by inverting the documented table by hand."""
    state = {}
    for key, value in model.state_dict().items():
        name = key.replace(".norm_out.", ".conv_norm_out.").replace(".shortcut.", ".conv_shortcut.")
        name = name.replace(".downsample.conv.", ".downsamplers.0.conv.").replace(".upsample.conv.", ".upsamplers.0.conv.")
        name = name.replace(".blocks.", ".resnets.")
        side = name.split(".")[0]
        name = name.replace(f"{side}.levels.", f"{side}.{'down_blocks' if side == 'encoder' else 'up_blocks'}.")
        for ours, theirs in (("mid.0.", "mid_block.resnets.0."), ("mid.2.", "mid_block.resnets.1.")):
            name = name.replace(f"{side}.{ours}", f"{side}.{theirs}")
        if f"{side}.mid.1." in name:
            part = name.split(".")[3]
            theirs = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}[part]
            name = name.replace(f"{side}.mid.1.{part}.", f"{side}.mid_block.attentions.0.{theirs}.")
            if value.dim() == 4:
                value = value.reshape(value.shape[0], value.shape[1])
        state[name] = value.clone()
    return state


DIFFUSERS_CONFIG = {"_class_name": "AutoencoderKL", "in_channels": 3, "out_channels": 3,
                    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
                    "block_out_channels": [32, 64], "layers_per_block": 1, "latent_channels": 3,
                    "norm_num_groups": 32, "sample_size": 16}


def test_hand_built_diffusers_folder_imports_to_the_same_function(tmp_path):
    spec = dict(image_size=16, base_channels=32, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3,
                mid_attention=True)
    torch.manual_seed(0)
    source = build_tokenizer(spec).eval()
    folder = tmp_path / "vae"
    save_tensors(folder / "diffusion_pytorch_model.safetensors", _diffusers_state_of(source))
    write_json(folder / "config.json", DIFFUSERS_CONFIG)
    import_pretrained_tokenizer(folder, STUDY, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.spec.name == "sd-tiny" and loaded.spec.channel_mult == (1, 2) and loaded.spec.mid_attention
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x).mode()), source.decode(source.encode(x).mode()))


def test_diffusers_configs_that_do_not_convert_are_named():
    with pytest.raises(DiffusabilityError, match="DownEncoderBlock2D"):
        spec_from_diffusers_config({**DIFFUSERS_CONFIG, "down_block_types": ["AttnDownEncoderBlock2D"] * 2}, 16)
    with pytest.raises(DiffusabilityError, match="norm_num_groups"):
        spec_from_diffusers_config({**DIFFUSERS_CONFIG, "norm_num_groups": 8}, 16)
    with pytest.raises(DiffusabilityError, match="_class_name"):
        spec_from_diffusers_config({**DIFFUSERS_CONFIG, "_class_name": "AutoencoderTiny"}, 16)
    sd_vae = {**DIFFUSERS_CONFIG, "block_out_channels": [128, 256, 512, 512], "latent_channels": 4,
              "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    assert spec_from_diffusers_config(sd_vae, 256)["channel_mult"] == [1, 2, 4, 4]


def test_real_diffusers_autoencoderkl_round_trip(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    theirs = diffusers.AutoencoderKL(**{k: v for k, v in DIFFUSERS_CONFIG.items() if k != "_class_name"}).eval()
    # random GroupNorm affines and biases, so that a swapped or dropped parameter shows
    with torch.no_grad():
        for name, parameter in theirs.named_parameters():
            if parameter.dim() == 1:
                parameter.normal_(0.0 if name.endswith("bias") else 1.0, 0.2)
    theirs.save_pretrained(tmp_path / "vae", safe_serialization=True)
    import_pretrained_tokenizer(tmp_path / "vae", STUDY, tmp_path / "tok")
    ours = load_tokenizer(tmp_path / "tok")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        their_posterior = theirs.encode(x).latent_dist
        our_posterior = ours.encode(x)
        torch.testing.assert_close(our_posterior.mean, their_posterior.mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(our_posterior.logvar, their_posterior.logvar, atol=1e-5, rtol=1e-5)
        z = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(ours.decode(z), theirs.decode(z).sample, atol=1e-5, rtol=1e-5)


def test_own_format_import_keeps_weights_and_checks_the_image_size(tmp_path):
    spec = dict(name="elsewhere", image_size=16, base_channels=8, channel_mult=[1, 2], latent_channels=3)
    torch.manual_seed(1)
    model = build_tokenizer(spec)
    save_tensors(tmp_path / "src" / "model.safetensors", model.state_dict())
    write_json(tmp_path / "src" / "config.json", spec)
    import_pretrained_tokenizer(tmp_path / "src" / "model.safetensors", STUDY, tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert loaded.spec.name == "sd-tiny"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(DiffusabilityError, match="image_size"):
        import_pretrained_tokenizer(tmp_path / "src", {**STUDY, "image_size": 32}, tmp_path / "bad")
    with pytest.raises(DiffusabilityError, match="not found"):
        import_pretrained_tokenizer(tmp_path / "absent", STUDY, tmp_path / "bad")
    with pytest.raises(DiffusabilityError, match="do not match"):
        save_tensors(tmp_path / "cut" / "model.safetensors",
                     {k: v for k, v in model.state_dict().items() if "conv_out" not in k})
        write_json(tmp_path / "cut" / "config.json", spec)
        import_pretrained_tokenizer(tmp_path / "cut", STUDY, tmp_path / "bad")


def test_import_command_writes_a_tokenizer_directory(tmp_path):
    from diffusability.cli import main

    spec = dict(image_size=16, base_channels=8, channel_mult=[1, 2], latent_channels=3)
    save_tensors(tmp_path / "src" / "model.safetensors", build_tokenizer(spec).state_dict())
    write_json(tmp_path / "src" / "config.json", spec)
    code = main(["import-tokenizer", "--source", str(tmp_path / "src"), "--spec",
                 '{"name": "x", "seed": 0, "image_size": 16}', "--out", str(tmp_path / "tok")])
    assert code in (0, None)
    assert load_tokenizer(tmp_path / "tok").spec.name == "x"


def test_dag_imports_pretrained_entries_instead_of_training_them(repo, snakemake_exe, workdir_factory):
    from workflow_helpers import planned_jobs

    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    names = list(config["tokenizers"])
    config["tokenizers"][names[0]] = {"pretrained": "/nowhere/sd-vae", "family": "sd"}
    work = workdir_factory(config)
    counts = planned_jobs(snakemake_exe, work)
    assert counts["import_tokenizer"] == 1
    assert counts["train_tokenizer"] == len(names) - 1
    assert counts["encode"] == len(names)  # the rest of the DAG runs on the imported one too
