"""The defaults of the ``encode`` spec and the keys of the ``import-latents`` spec: the one table of them, which
the schema's ``default:`` values must equal (tests/test_defaults.py)."""

from __future__ import annotations

#: images between two progress records of a latent file (``encode.chunk``'s default): bounds what a crash loses
CHUNK = 8192

#: ``encode``: missing keys take these values
#: (``normalization``: None = the train latents' per-channel mean and std; a tokenizer's
#: ``latent_normalization`` of the workflow sets ``{"scale": S}`` or ``{"mean": [...], "std": [...]}``)
ENCODE_DEFAULTS = {"seed": 0, "batch_size": 256, "mask_pooling": "max", "mask_threshold": 0.5, "flip": False,
                   "chunk": CHUNK, "normalization": None}

#: keys of the ``import-latents`` spec
IMPORT_LATENTS_KEYS = ("image_size", "n_classes", "stats_tolerance")
