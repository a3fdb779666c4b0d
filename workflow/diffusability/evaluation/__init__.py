"""Evaluation: Fréchet distances, inception-style scores, precision/recall, reconstruction metrics
and the feature networks.

The numerics (``frechet``, ``inception_score``, ``precision_recall``, ``reconstruction``,
``generation``) are pure functions on tensors/arrays; ``domain_net`` and ``inception`` hold the
feature networks; ``commands`` wires them to files for the workflow.
"""

from .frechet import feature_statistics, frechet_distance
from .inception_score import inception_score
from .precision_recall import precision_recall

__all__ = ["feature_statistics", "frechet_distance", "inception_score", "precision_recall"]
