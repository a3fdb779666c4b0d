"""Evaluation: generation metrics of sample sets — FD, inception-style scores, precision/recall — and
the FID Inception.

The numerics (``inception_scoring``, ``manifold_precision_recall``, ``generation``; the Fréchet distance
is :mod:`diffusability.metrics.frechet`) are pure functions on tensors/arrays; ``inception`` holds the FID feature network (the
domain network is the teacher stage's, :mod:`diffusability.teacher`); ``trajectory`` turns recorded
sampling trajectories into transport-efficiency rows; ``commands`` wires them to files for the workflow.

Public names are imported lazily (as in ``metrics``): every ``diffusability`` command imports this
package for ``evaluation.commands``, and the eager imports cost ``--help`` 0.9 s (``scipy.special``
through ``inception_scoring``).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "inception_score": "inception_scoring", "precision_recall": "manifold_precision_recall",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
