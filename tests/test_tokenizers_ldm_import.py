"""Importing LDM-layout AutoencoderKL weights: LDM's published key names land on the right modules."""

from __future__ import annotations

import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.tokenizers import build_tokenizer, load_tokenizer
from diffusability.tokenizers.ldm_import import import_ldm_tokenizer, ldm_key_to_ours
from diffusability.tokenizers.spec import paper_f16d32

# LDM AutoencoderKL at f16d32 (ch 128, mult 1,1,2,2,4): (key, shape) facts of the published layout
LDM_FACTS = [
    ("encoder.down.0.block.0.conv1.weight", (128, 128, 3, 3)),
    ("encoder.down.2.block.0.nin_shortcut.weight", (256, 128, 1, 1)),
    ("encoder.down.3.downsample.conv.weight", (256, 256, 3, 3)),
    ("encoder.down.4.attn.1.q.weight", (512, 512, 1, 1)),
    ("encoder.mid.attn_1.proj_out.weight", (512, 512, 1, 1)),
    ("encoder.mid.block_2.norm2.weight", (512,)),
    ("encoder.conv_out.weight", (64, 512, 3, 3)),
    ("quant_conv.weight", (64, 64, 1, 1)),
    ("post_quant_conv.weight", (32, 32, 1, 1)),
    ("decoder.conv_in.weight", (512, 32, 3, 3)),
    ("decoder.up.4.block.2.conv2.weight", (512, 512, 3, 3)),  # lowest resolution, runs first
    ("decoder.up.4.attn.0.k.weight", (512, 512, 1, 1)),
    ("decoder.up.3.block.0.nin_shortcut.weight", (256, 512, 1, 1)),
    ("decoder.up.1.upsample.conv.weight", (128, 128, 3, 3)),
    ("decoder.up.0.block.2.conv1.weight", (128, 128, 3, 3)),  # full resolution, runs last
    ("decoder.conv_out.weight", (3, 128, 3, 3)),
]


@pytest.fixture(scope="module")
def f16d32_shapes():
    return {k: tuple(v.shape) for k, v in build_tokenizer(paper_f16d32()).state_dict().items()}


def test_published_ldm_keys_map_to_modules_of_the_same_shape(f16d32_shapes):
    for key, shape in LDM_FACTS:
        ours = ldm_key_to_ours(key, levels=5)
        assert ours in f16d32_shapes, key
        assert f16d32_shapes[ours] == shape, (key, ours)
    assert ldm_key_to_ours("loss.logvar", 5) is None
    assert ldm_key_to_ours("linear_proj.weight", 5) is None


def test_decoder_levels_are_reversed_and_block_parts_renamed():
    # decoder level k is LDM's up.(4−k); every one of our names is hit exactly once
    assert ldm_key_to_ours("decoder.up.4.block.0.conv1.weight", 5) == "decoder.levels.0.blocks.0.conv1.weight"
    assert ldm_key_to_ours("decoder.up.0.block.0.conv1.weight", 5) == "decoder.levels.4.blocks.0.conv1.weight"
    assert ldm_key_to_ours("encoder.mid.block_1.nin_shortcut.bias", 5) == "encoder.mid.0.shortcut.bias"


def test_import_writes_a_loadable_tokenizer_with_the_same_function(tmp_path):
    spec = dict(image_size=16, base_channels=8, channel_mult=[1, 2], num_res_blocks=1, latent_channels=3,
                attn_resolutions=[8], mid_attention=True)
    torch.manual_seed(0)
    source = build_tokenizer(spec).eval()
    # an LDM-named copy of the source weights, keyed by the hand-written LDM layout below
    ldm_state = {}
    levels = 2
    for key in _all_ldm_keys(levels, 1, (8,)):
        ours = ldm_key_to_ours(key, levels)
        ldm_state[key] = source.state_dict()[ours].clone()
    ldm_state["loss.discriminator.main.0.weight"] = torch.zeros(1)
    assert len({ldm_key_to_ours(k, levels) for k in ldm_state} - {None}) == len(source.state_dict())
    import_ldm_tokenizer(ldm_state, spec, tmp_path)
    loaded = load_tokenizer(tmp_path)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(loaded.encode(x).mode()), source.decode(source.encode(x).mode()))
    with pytest.raises(DiffusabilityError, match="missing"):
        import_ldm_tokenizer({k: v for k, v in ldm_state.items() if "conv_out" not in k}, spec, tmp_path / "bad")


def _all_ldm_keys(levels, blocks, attn_levels):
    """The LDM key names of a 16-px, mult (1, 2) plan with attention at 8 px, written out by hand."""
    keys = ["quant_conv.weight", "quant_conv.bias", "post_quant_conv.weight", "post_quant_conv.bias"]
    block = ["norm1.weight", "norm1.bias", "conv1.weight", "conv1.bias", "norm2.weight", "norm2.bias",
             "conv2.weight", "conv2.bias"]
    attn = [f"{p}.{s}" for p in ("norm", "q", "k", "v", "proj_out") for s in ("weight", "bias")]
    conv = ["weight", "bias"]
    for side in ("encoder", "decoder"):
        keys += [f"{side}.conv_in.{s}" for s in conv] + [f"{side}.conv_out.{s}" for s in conv]
        keys += [f"{side}.norm_out.{s}" for s in conv]
        for part in ("block_1", "block_2"):
            keys += [f"{side}.mid.{part}.{b}" for b in block]
        keys += [f"{side}.mid.attn_1.{a}" for a in attn]
    # encoder: level 0 (16 px, 8 ch, 1 block), downsample, level 1 (8 px, 16 ch, 1 block + attention)
    keys += [f"encoder.down.0.block.0.{b}" for b in block] + [f"encoder.down.0.downsample.conv.{s}" for s in conv]
    keys += [f"encoder.down.1.block.0.{b}" for b in block + ["nin_shortcut.weight", "nin_shortcut.bias"]]
    keys += [f"encoder.down.1.attn.0.{a}" for a in attn]
    # decoder: 2 blocks per level; up.1 (8 px, attention) runs first, then upsample, then up.0
    for j in range(2):
        keys += [f"decoder.up.1.block.{j}.{b}" for b in block] + [f"decoder.up.1.attn.{j}.{a}" for a in attn]
    keys += [f"decoder.up.1.upsample.conv.{s}" for s in conv]
    keys += [f"decoder.up.0.block.0.{b}" for b in block + ["nin_shortcut.weight", "nin_shortcut.bias"]]
    keys += [f"decoder.up.0.block.1.{b}" for b in block]
    return keys
