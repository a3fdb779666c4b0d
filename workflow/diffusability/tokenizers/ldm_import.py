"""Import a pretrained LDM-layout AutoencoderKL (SD-VAE, VA-VAE, …) into our tokenizer format.

The LDM code names its modules ``encoder.down.{level}.block.{j}``, ``encoder.mid.block_1`` …,
and ``decoder.up.{level}`` with the *level* index (0 = full resolution) although the decoder
runs the levels in reverse. Our ConvVAE stores the decoder in execution order, so decoder level
``k`` is LDM's ``up.{L−1−k}``. Everything else maps one to one; keys outside the autoencoder
(``loss.*``, VA-VAE's ``linear_proj``) are ignored. The result is a directory that
``load_tokenizer`` reads: ``config.json`` (the spec) + ``model.safetensors``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import require
from .spec import TokenizerSpec, as_spec

_BLOCK_PARTS = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "nin_shortcut": "shortcut"}
_MID = {"block_1": "0", "attn_1": "1", "block_2": "2"}


def ldm_key_to_ours(key: str, levels: int) -> str | None:
    """Our parameter name for an LDM AutoencoderKL key, or None for keys we do not use."""
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    match = re.match(r"^(encoder|decoder)\.(.*)$", key)
    if not match:
        return None
    side, rest = match.groups()
    for prefix in ("conv_in.", "norm_out.", "conv_out."):
        if rest.startswith(prefix):
            return key
    mid = re.match(r"^mid\.(block_1|attn_1|block_2)\.(.*)$", rest)
    if mid:
        part, tail = mid.groups()
        tail = _rename_block_part(tail) if part != "attn_1" else tail
        return f"{side}.mid.{_MID[part]}.{tail}"
    level = re.match(r"^(down|up)\.(\d+)\.(block|attn)\.(\d+)\.(.*)$", rest)
    if level:
        _, index, kind, j, tail = level.groups()
        ours = int(index) if side == "encoder" else levels - 1 - int(index)
        if kind == "block":
            return f"{side}.levels.{ours}.blocks.{j}.{_rename_block_part(tail)}"
        return f"{side}.levels.{ours}.attentions.{j}.{tail}"
    resample = re.match(r"^(down|up)\.(\d+)\.(downsample|upsample)\.conv\.(.*)$", rest)
    if resample:
        _, index, kind, tail = resample.groups()
        ours = int(index) if side == "encoder" else levels - 1 - int(index)
        return f"{side}.levels.{ours}.{kind}.conv.{tail}"
    return None


def _rename_block_part(tail: str) -> str:
    head, _, rest = tail.partition(".")
    require(head in _BLOCK_PARTS, f"LDM checkpoint: unexpected ResNet block part {head!r}")
    return f"{_BLOCK_PARTS[head]}.{rest}"


def convert_ldm_state_dict(state: Mapping[str, Any], levels: int) -> dict[str, Any]:
    """Rename an LDM AutoencoderKL state dict (``levels`` = len(channel_mult)) to ours."""
    converted = {}
    for key, value in state.items():
        ours = ldm_key_to_ours(key, levels)
        if ours is not None:
            converted[ours] = value
    return converted


def import_ldm_tokenizer(state: Mapping[str, Any], spec: TokenizerSpec | Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write an LDM-layout state dict (e.g. ``torch.load(ckpt)["state_dict"]``) as a tokenizer directory.

    The spec must describe the checkpoint's channel plan (e.g. ``paper_f16d32()`` for VA-VAE);
    a mismatch is an error that lists the first missing/unexpected names.
    """
    from .pretrained import write_checked_tokenizer

    spec = as_spec(spec)
    require(spec.architecture == "conv", "import_ldm_tokenizer: only the conv architecture has an LDM layout")
    converted = convert_ldm_state_dict(state, len(spec.channel_mult))
    return write_checked_tokenizer(converted, spec, out_dir, source="ldm-autoencoderkl")
