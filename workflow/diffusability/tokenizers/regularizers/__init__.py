"""Latent regularizers: one interface (:class:`Regularizer`), one module per cluster, one registry.

``build_regularizer({"name": ..., **params}, latent_channels, teacher_dim)`` →
``none`` | ``mcos`` | ``mdms`` | ``mcos+mdms`` | ``repa`` | ``eq`` | ``lcr`` | ``lmr`` | ``mae`` (ViT only) | ``pae``.
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import require
from .base import Regularizer, RegularizerContext
from .eq import EquivarianceRegularizer
from .lcr import LocalCorrelationRegularizer
from .lmr import LatentMaskedReconstruction
from .mae import MaskedEncoding
from .pae import PriorAlignedRegularizer
from .repa import RepaAlignment
from .vf import VisionFoundationLoss

REGULARIZER_NAMES = ("none", "mcos", "mdms", "mcos+mdms", "repa", "eq", "lcr", "lmr", "mae", "pae")


def regularizer_needs_teacher(spec: Mapping[str, Any] | str | None) -> bool:
    name = spec if isinstance(spec, str) else (spec or {}).get("name", "none")
    return name in ("mcos", "mdms", "mcos+mdms", "repa", "pae")


def build_regularizer(spec: Mapping[str, Any] | str | None, latent_channels: int,
                      teacher_dim: int | None = None) -> Regularizer:
    """The regularizer named by ``spec["name"]`` with its parameters (unknown name/key → error)."""
    if spec is None:
        spec = {"name": "none"}
    if isinstance(spec, str):
        spec = {"name": spec}
    require(isinstance(spec, Mapping) and "name" in spec,
            f"regularizer spec: expected an object with a 'name', got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    name = spec["name"]
    require(name in REGULARIZER_NAMES,
            f"regularizer spec: unknown regularizer {name!r}; expected one of {list(REGULARIZER_NAMES)}")
    if name == "none":
        Regularizer.resolve_params(params)
        return Regularizer()
    if name in ("mcos", "mdms", "mcos+mdms"):
        return VisionFoundationLoss(name, latent_channels, teacher_dim,
                                    **VisionFoundationLoss.resolve_params(params, name))
    if name == "repa":
        return RepaAlignment(latent_channels, teacher_dim, **RepaAlignment.resolve_params(params))
    if name == "eq":
        return EquivarianceRegularizer(**EquivarianceRegularizer.resolve_params(params))
    if name == "lcr":
        return LocalCorrelationRegularizer(**LocalCorrelationRegularizer.resolve_params(params))
    if name == "mae":
        return MaskedEncoding(**MaskedEncoding.resolve_params(params))
    if name == "pae":
        return PriorAlignedRegularizer(latent_channels, teacher_dim, **PriorAlignedRegularizer.resolve_params(params))
    return LatentMaskedReconstruction(latent_channels, **LatentMaskedReconstruction.resolve_params(params))


__all__ = ["Regularizer", "RegularizerContext", "build_regularizer", "regularizer_needs_teacher",
           "REGULARIZER_NAMES"]
