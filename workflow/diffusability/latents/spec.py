"""The defaults of the ``encode`` spec and the keys of the ``import-latents`` spec: the one table of them, which
the schema's ``default:`` values must equal (tests/test_defaults.py)."""

from __future__ import annotations

#: images between two progress records of a latent file (``encode.chunk``'s default): bounds what a crash loses
CHUNK = 8192

#: ``encode``: missing keys take these values
ENCODE_DEFAULTS = {"seed": 0, "batch_size": 256, "mask_pooling": "max", "mask_threshold": 0.5, "flip": False,
                   "chunk": CHUNK}

#: keys of the ``import-latents`` spec
IMPORT_LATENTS_KEYS = ("image_size", "n_classes", "stats_tolerance")
