"""Latent proxy metrics: pure functions on tensors (no file I/O), and their registry.

Modules: ``viv`` (velocity irreducible variance), ``kronecker`` (the Kronecker class-covariance fit
that VIV and ``fisher`` share), ``semantic`` (LNC, linear probe), ``spatial``
(LDS, CDS, SRSS, RMSC), ``spectral`` (SEC), ``uniformity`` (t-SNE density), ``equivariance``,
``continuity`` (iFID), ``fisher``, ``trajectory``, ``normalization``, ``frechet`` (the Fréchet distance
of feature statistics, shared by FD, rFD, iFID and FDr); ``registry`` maps metric
names to functions and ``compute_metrics`` returns tidy rows. The commands that read files and build
networks are the latent-metrics stage's (:mod:`diffusability.latent_metrics`).

Public names are imported lazily so that ``diffusability --help`` does not import torch. Each
public function's docstring gives shapes and a runnable example (run as doctests by pytest);
docs/metrics.md gives the definitions, defaults and sources.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "compute_metrics": "registry", "METRICS": "registry", "GROUPS": "registry",
    "channel_stats": "normalization", "normalize_latents": "normalization",
    "latent_neighbor_consistency": "semantic", "linear_probe": "semantic",
    "local_distant_similarity": "spatial", "correlation_decay_slope": "spatial",
    "semantic_region_self_similarity": "spatial", "rms_spatial_contrast": "spatial",
    "dct_matrix": "spectral", "spectral_energy_concentration": "spectral",
    "sample_latent_pixels": "uniformity", "tsne_embedding": "uniformity",
    "density_statistics": "uniformity", "latent_uniformity": "uniformity",
    "affine_equivariance": "equivariance",
    "interpolated_latents": "continuity", "interpolated_fd": "continuity",
    "class_conditional_viv": "viv", "irreducible_variance": "viv",
    "trajectory_metrics": "trajectory",
    "feature_statistics": "frechet", "frechet_distance": "frechet",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
