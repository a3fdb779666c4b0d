"""Import a diffusers ``AutoencoderKL`` folder (config.json + diffusion_pytorch_model.safetensors).

diffusers names the same LDM network differently from the LDM code:

    encoder.down_blocks.{i}.resnets.{j}.conv_shortcut   → encoder.levels.{i}.blocks.{j}.shortcut
    encoder.down_blocks.{i}.downsamplers.0.conv         → encoder.levels.{i}.downsample.conv
    decoder.up_blocks.{k}.resnets.{j}                    → decoder.levels.{k}.blocks.{j}
    decoder.up_blocks.{k}.upsamplers.0.conv             → decoder.levels.{k}.upsample.conv
    {side}.mid_block.resnets.{0,1} / .attentions.0       → {side}.mid.{0,2} / .mid.1
    mid attention group_norm, to_q, to_k, to_v, to_out.0 → norm, q, k, v, proj_out
    {side}.conv_norm_out                                 → {side}.norm_out

diffusers' decoder ``up_blocks`` are already in execution order (0 = lowest resolution), like
ours, so unlike the LDM layout no level is reversed. Its attention projections are ``nn.Linear``
(C, C) where ours are 1×1 convs (C, C, 1, 1): the weights are reshaped. Older diffusers
checkpoints name the attention ``query/key/value/proj_attn``; both spellings are read.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import DiffusabilityError, require

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
_RESNET_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
                 "conv_shortcut": "shortcut"}
_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                    "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_ENCODER_BLOCK = "DownEncoderBlock2D"
_DECODER_BLOCK = "UpDecoderBlock2D"


def diffusers_key_to_ours(key: str) -> str | None:
    """Our ConvVAE parameter name for a diffusers AutoencoderKL key, or None for keys we do not use."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    match = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not match:
        return None
    side, rest = match.groups()
    if rest.startswith("conv_in.") or rest.startswith("conv_out."):
        return key
    if rest.startswith("conv_norm_out."):
        return f"{side}.norm_out.{rest[len('conv_norm_out.'):]}"
    mid = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", rest)
    if mid:
        kind, index, tail = mid.groups()
        if kind == "attentions":
            require(index == "0", f"diffusers checkpoint: unexpected mid-block attention {key!r}")
            return f"{side}.mid.1.{_rename(tail, _ATTENTION_PARTS, key)}"
        require(index in ("0", "1"), f"diffusers checkpoint: unexpected mid-block resnet {key!r}")
        return f"{side}.mid.{0 if index == '0' else 2}.{_rename(tail, _RESNET_PARTS, key)}"
    block = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$", rest)
    if block:
        _, level, kind, j, tail = block.groups()
        if kind == "resnets":
            return f"{side}.levels.{level}.blocks.{j}.{_rename(tail, _RESNET_PARTS, key)}"
        return f"{side}.levels.{level}.attentions.{j}.{_rename(tail, _ATTENTION_PARTS, key)}"
    resample = re.match(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv\.(.*)$", rest)
    if resample:
        _, level, kind, tail = resample.groups()
        ours = "downsample" if kind == "downsamplers" else "upsample"
        return f"{side}.levels.{level}.{ours}.conv.{tail}"
    return None


def _rename(tail: str, parts: Mapping[str, str], key: str) -> str:
    """Rename the leading module of ``tail`` (``to_out.0.weight`` → ``proj_out.weight``)."""
    for theirs, ours in parts.items():
        if tail.startswith(theirs + "."):
            return ours + tail[len(theirs):]
    raise DiffusabilityError(f"diffusers checkpoint: unexpected module in {key!r} (known: {sorted(parts)})")


def convert_diffusers_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """Rename a diffusers AutoencoderKL state dict to ours; Linear attention weights become 1×1 convs."""
    converted = {}
    for key, value in state.items():
        ours = diffusers_key_to_ours(key)
        if ours is None:
            continue
        # the only 2-D tensors of the VAE are the Linear attention projections (convs are 4-D)
        if value.dim() == 2:
            value = value.reshape(*value.shape, 1, 1)
        converted[ours] = value
    return converted


def spec_from_diffusers_config(config: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """The architecture keys of our TokenizerSpec for a diffusers AutoencoderKL ``config.json``.

    Only the plain LDM plan converts: DownEncoderBlock2D / UpDecoderBlock2D blocks (no attention
    outside the mid block), 3 image channels, quant convs present, double_z.
    """
    name = config.get("_class_name", "AutoencoderKL")
    require(name == "AutoencoderKL", f"diffusers config: expected _class_name 'AutoencoderKL', got {name!r}")
    channels = list(config.get("block_out_channels", [64]))
    down = list(config.get("down_block_types", [_ENCODER_BLOCK]))
    up = list(config.get("up_block_types", [_DECODER_BLOCK]))
    require(all(t == _ENCODER_BLOCK for t in down) and all(t == _DECODER_BLOCK for t in up),
            f"diffusers config: only {_ENCODER_BLOCK}/{_DECODER_BLOCK} blocks convert, got {down} / {up}")
    require(len(down) == len(up) == len(channels),
            f"diffusers config: {len(down)} down blocks, {len(up)} up blocks, {len(channels)} block_out_channels")
    require(config.get("in_channels", 3) == 3 and config.get("out_channels", 3) == 3,
            "diffusers config: only 3-channel images convert (in_channels/out_channels)")
    require(config.get("use_quant_conv", True) and config.get("use_post_quant_conv", True),
            "diffusers config: a VAE without quant_conv/post_quant_conv does not convert")
    base = int(channels[0])
    require(all(int(c) % base == 0 for c in channels),
            f"diffusers config: block_out_channels {channels} are not multiples of the first")
    groups = int(config.get("norm_num_groups", 32))
    from .conv_vae import group_count

    require(all(group_count(int(c)) == groups for c in channels),
            f"diffusers config: norm_num_groups {groups} differs from ours (the largest divisor ≤ 32 of "
            f"each width) for block_out_channels {channels}")
    return dict(architecture="conv", image_size=int(image_size), base_channels=base,
                channel_mult=[int(c) // base for c in channels], num_res_blocks=int(config.get("layers_per_block", 1)),
                attn_resolutions=[], mid_attention=bool(config.get("mid_block_add_attention", True)),
                latent_channels=int(config.get("latent_channels", 4)))


def is_diffusers_folder(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / DIFFUSERS_WEIGHTS).is_file() and (path / "config.json").is_file()


def read_diffusers_folder(path: str | Path, image_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(architecture spec keys, converted state dict) of a diffusers AutoencoderKL folder."""
    from ..io import load_tensors, read_json

    path = Path(path)
    require(is_diffusers_folder(path),
            f"{path}: not a diffusers AutoencoderKL folder (expected config.json and {DIFFUSERS_WEIGHTS})")
    architecture = spec_from_diffusers_config(read_json(path / "config.json"), image_size)
    return architecture, convert_diffusers_state_dict(load_tensors(path / DIFFUSERS_WEIGHTS))
