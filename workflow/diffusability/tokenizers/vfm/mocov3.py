"""Convert a public MoCo v3 ViT checkpoint into a transformers ``ViTModel`` folder.

MoCo v3 (facebookresearch/moco-v3, also RCG's ``mocov3/vit*.pth.tar``) saves
``{"state_dict": {...}}`` whose backbone keys are timm ViT keys under ``module.base_encoder.``:

    cls_token (1,1,D) · pos_embed (1,1+n²,D) · patch_embed.proj.{weight (D,3,p,p), bias}
    blocks.{i}.norm1 · attn.qkv (3D,D) rows [q; k; v] · attn.proj · norm2 · mlp.fc1 · mlp.fc2
    norm (final LayerNorm) · head.* (the contrastive projector: dropped)

The momentum encoder and the predictor are dropped too. The ViT is the pre-norm timm block
(x += attn(norm1 x); x += mlp(norm2 x); GELU; LayerNorm eps 1e-6); transformers' ViTModel is the
same network with separate q/k/v projections. The head count is not stored in the weights:
MoCo v3 uses 12 heads for ViT-S (width 384) and ViT-B (768) and 16 for ViT-L (1024).

Usage: ``python -m diffusability.tokenizers.vfm.mocov3 CHECKPOINT OUT_DIR [--heads H]``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from ...errors import DiffusabilityError, require

BACKBONE_PREFIX = "module.base_encoder."
#: MoCo v3 ViT width → attention heads (vits.py: vit_small 12, vit_base 12, vit_large 16).
HEADS_BY_WIDTH = {384: 12, 768: 12, 1024: 16}

_BLOCK_RENAMES = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}


def backbone_weights(checkpoint: Mapping[str, torch.Tensor], prefix: str = BACKBONE_PREFIX) -> dict:
    """The base encoder's timm-style tensors, prefix removed, projector head dropped."""
    state = checkpoint.get("state_dict", checkpoint)
    weights = {key[len(prefix):]: value for key, value in state.items()
               if key.startswith(prefix) and not key[len(prefix):].startswith("head.")}
    require(weights, f"MoCo v3 checkpoint: no keys under {prefix!r} (found e.g. {sorted(state)[:3]})")
    return weights


def vit_config_fields(weights: Mapping[str, torch.Tensor], num_heads: int | None = None) -> dict:
    """ViTConfig arguments read off the timm-style tensors."""
    for key in ("cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.mlp.fc1.weight"):
        require(key in weights, f"MoCo v3 checkpoint: missing {key!r} in the base encoder")
    width = int(weights["cls_token"].shape[-1])
    patch = int(weights["patch_embed.proj.weight"].shape[-1])
    positions = int(weights["pos_embed"].shape[1]) - 1
    side = int(round(positions ** 0.5))
    require(side * side == positions, f"MoCo v3 checkpoint: pos_embed has {positions} patch rows, not a square grid")
    depth = 1 + max(int(m.group(1)) for key in weights if (m := re.match(r"blocks\.(\d+)\.", key)))
    heads = num_heads or HEADS_BY_WIDTH.get(width)
    require(heads is not None and width % heads == 0,
            f"MoCo v3 checkpoint: cannot tell the head count of width {width}; pass num_heads")
    return {"hidden_size": width, "num_hidden_layers": depth, "num_attention_heads": heads,
            "intermediate_size": int(weights["blocks.0.mlp.fc1.weight"].shape[0]), "patch_size": patch,
            "image_size": side * patch, "num_channels": 3, "layer_norm_eps": 1e-6, "hidden_act": "gelu",
            "qkv_bias": "blocks.0.attn.qkv.bias" in weights, "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0}


def vit_state_dict(weights: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """timm ViT tensors → transformers 5.x ``ViTModel`` (no pooler) tensors."""
    out = {
        "embeddings.cls_token": weights["cls_token"],
        "embeddings.position_embeddings": weights["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": weights["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": weights["patch_embed.proj.bias"],
        "layernorm.weight": weights["norm.weight"],
        "layernorm.bias": weights["norm.bias"],
    }
    for i in range(num_layers):
        source, target = f"blocks.{i}.", f"layers.{i}."
        for old, new in _BLOCK_RENAMES.items():
            for kind in ("weight", "bias"):
                out[f"{target}{new}.{kind}"] = weights[f"{source}{old}.{kind}"]
        # timm's fused qkv stacks the q, k and v projections along the output rows, in that order.
        for kind in ("weight", "bias"):
            fused = weights.get(f"{source}attn.qkv.{kind}")
            if fused is None:
                continue
            for name, part in zip(("q_proj", "k_proj", "v_proj"), fused.chunk(3, dim=0)):
                out[f"{target}attention.{name}.{kind}"] = part
    return {key: value.detach().clone().contiguous() for key, value in out.items()}


def convert_mocov3_checkpoint(checkpoint: str | Path | Mapping, out_dir: str | Path,
                              num_heads: int | None = None, prefix: str = BACKBONE_PREFIX) -> Path:
    """Write a ``ViTModel`` save_pretrained folder (config.json + model.safetensors) for a MoCo v3 ViT.

    Args:
        checkpoint: path of the ``.pth.tar`` (loaded with ``weights_only=True``) or the loaded dict.
        out_dir: the folder to write (atomically: built beside it, then renamed); must not exist.
        num_heads: attention heads, when the width is not one of MoCo v3's (``HEADS_BY_WIDTH``).
    """
    import transformers

    out_dir = Path(out_dir)
    require(not out_dir.exists(), f"{out_dir}: already exists; remove it to convert again")
    if not isinstance(checkpoint, Mapping):
        path = Path(checkpoint)
        require(path.is_file(), f"{path}: MoCo v3 checkpoint not found")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a pickle error is the user's file, not our bug
            raise DiffusabilityError(f"{path}: not a loadable MoCo v3 checkpoint ({exc})") from exc
    weights = backbone_weights(checkpoint, prefix)
    fields = vit_config_fields(weights, num_heads)
    model = transformers.ViTModel(transformers.ViTConfig(**fields), add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(vit_state_dict(weights, fields["num_hidden_layers"]), strict=False)
    require(not missing and not unexpected,
            f"MoCo v3 conversion: ViTModel keys missing {missing[:5]}, unexpected {unexpected[:5]}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="MoCo v3 .pth.tar (keys under module.base_encoder.)")
    parser.add_argument("out_dir", help="folder to write (transformers ViTModel, usable as a teacher)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads (default: from the width)")
    args = parser.parse_args(argv)
    print(convert_mocov3_checkpoint(args.checkpoint, args.out_dir, args.heads))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
