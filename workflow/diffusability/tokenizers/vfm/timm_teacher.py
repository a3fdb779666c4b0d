"""The optional timm route: Perception Encoder teachers from a local timm folder.

The Perception Encoder (PE-Core / PE-Spatial / PE-Lang) exists only as timm models (``vit_pe_*``), and
timm imports torchvision, which the default environment never installs (its wheel is a CUDA build that
breaks timm, lpips and accelerate here). So timm is an optional extra, imported only when a PE folder is
loaded — e.g. on a GPU cluster whose environment has a torchvision that matches its torch.

A timm folder is what ``timm`` saves for the hub: ``config.json`` with ``architecture`` (e.g.
``vit_pe_core_base_patch16_224``) and the weights as ``model.safetensors`` (or ``pytorch_model.bin``).
The model is built with ``pretrained=True`` from that file (no download), without its head, with a
dynamic image size so that PE-L/14 runs at 14·16 = 224 and PE-B/16 at 256 px (docs/models.md §1.4: bilinear,
mean 0.5 / std 0.5); ``forward_features`` gives the prefix tokens then the patch tokens in row-major order.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import torch
from torch import nn

from ...errors import DiffusabilityError, require
from .presets import PREPROCESSING, resolve_size
from .teacher import VisionFoundationTeacher

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


class TimmTokens(nn.Module):
    """A timm ViT as a transformers-style encoder: ``last_hidden_state`` = ``forward_features`` (N, T, D)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        tokens = self.model.forward_features(pixel_values)
        return SimpleNamespace(last_hidden_state=tokens, hidden_states=(tokens,) if output_hidden_states else None)


def is_perception_encoder(architecture: str) -> bool:
    return "_pe_" in architecture or architecture.startswith("pe_")


def load_timm_teacher(directory: Path, architecture: str,
                      pyramid_layers: Sequence[int] = (-1,)) -> VisionFoundationTeacher:
    """A frozen PE teacher from the timm folder ``directory`` (see the module docstring)."""
    require(is_perception_encoder(architecture),
            f"{directory / 'config.json'}: timm checkpoint {architecture!r}: only Perception Encoder models "
            "(vit_pe_*) are read through timm; every other teacher has a transformers route (see vfm.loaders)")
    require(tuple(pyramid_layers) == (-1,),
            f"{directory}: a timm teacher gives its last layer only (pyramid_layers {tuple(pyramid_layers)})")
    weights = next((directory / name for name in WEIGHT_FILES if (directory / name).is_file()), None)
    require(weights is not None, f"{directory}: no weights file (expected one of {list(WEIGHT_FILES)})")
    try:
        import timm
    except ImportError as exc:
        raise DiffusabilityError(
            f"{directory}: the Perception Encoder {architecture!r} is a timm model and needs the optional 'timm' "
            "package with a torchvision that matches your torch (e.g. on the GPU cluster); the default "
            "environment has neither — install both there, or use a transformers teacher") from exc
    try:
        model = timm.create_model(architecture, pretrained=True, pretrained_cfg_overlay={"file": str(weights)},
                                  num_classes=0, dynamic_img_size=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DiffusabilityError(f"{directory}: timm could not build {architecture!r} from {weights.name} ({exc})") \
            from exc
    patch = model.patch_embed.patch_size
    patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
    preprocessing = PREPROCESSING["pe"]
    return VisionFoundationTeacher(
        TimmTokens(model), patch, resolve_size(preprocessing, patch, None), preprocessing.interpolation,
        preprocessing.mean, preprocessing.std, pyramid_layers, antialias=preprocessing.antialias,
        prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)))
