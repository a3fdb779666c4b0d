"""Frozen teachers for the alignment regularizers (repa, mcos, mdms) and the perceptual loss.

A teacher offers ``feature_map(x, grid) → (N,F,h,w)`` and ``feature_pyramid(x) → list[(N,F,g,g)]``
on tokenizer images x in [-1, 1]. Two kinds live behind :func:`load_teacher`, chosen by the
folder's ``config.json``:

- the small domain classifier trained on the train split (our own format;
  ``teacher.domain_net``), the stand-in teacher of the embedded default;
- a vision foundation model in a local transformers ``save_pretrained`` folder (``model_type`` in
  config.json): DINOv2 / WebSSL-DINO, DINOv3, CLIP, SigLIP / SigLIP2, MAE, MoCo v3 (converted by
  ``python -m diffusability.tokenizers.vfm.mocov3``) and C-RADIO. The Perception Encoder is refused
  with a clear error (no native transformers image model in 5.23). Each encoder's resize and
  normalisation is one row of ``vfm.presets.PREPROCESSING`` (docs/models.md §1.4); the adapters live
  in the ``vfm`` subpackage. Nothing is downloaded; transformers is imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .vfm import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING, VisionFoundationTeacher,
                  load_vfm_teacher)

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESSING", "VisionFoundationTeacher",
           "load_teacher", "load_vfm_teacher"]


def load_teacher(directory: str | Path) -> Any:
    """The domain net (our own format) or a transformers VFM, chosen by the directory's config.json."""
    from ..errors import require
    from ..io import read_json

    config_path = Path(directory) / "config.json"
    require(config_path.is_file(), f"{config_path}: not found; a teacher folder holds config.json and its weights "
                                   "(the trained domain net, or a transformers save_pretrained VFM folder)")
    config = read_json(config_path)
    # model_type: a transformers folder; architecture: a timm folder (refused there with the reason).
    if "model_type" in config or "architecture" in config:
        return load_vfm_teacher(directory)
    from ..teacher.domain_net import load_domain_classifier

    return load_domain_classifier(directory)
