"""Vision-foundation-model (VFM) teachers: preprocessing table, adapters, checkpoint converters.

- ``presets``: one table of every encoder's resize / interpolation / normalisation.
- ``teacher``: :class:`VisionFoundationTeacher`, the frozen-ViT wrapper (``feature_map``,
  ``feature_pyramid``) used by the alignment regularizers and the perceptual loss.
- ``loaders``: ``load_vfm_teacher(folder)`` for local transformers folders, by ``model_type``.
- ``mocov3``: MoCo v3 checkpoint → transformers ``ViTModel`` folder.
"""

from __future__ import annotations

from .loaders import ADAPTERS, UNAVAILABLE, load_vfm_teacher
from .presets import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, PREPROCESSING, Preprocessing
from .teacher import VisionFoundationTeacher

__all__ = ["ADAPTERS", "CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "PREPROCESSING", "Preprocessing",
           "UNAVAILABLE", "VisionFoundationTeacher", "load_vfm_teacher"]
