"""Tokenizers: conv VAEs, their training objective, latent regularizers and the train/import commands.

Public entry points (imported lazily so ``diffusability --help`` does not import torch):
``build_tokenizer(spec)``, ``load_tokenizer(directory)``, ``train_tokenizer(...)``, ``TokenizerSpec``.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "build_tokenizer": "diffusability.tokenizers.factory",
    "load_tokenizer": "diffusability.tokenizers.factory",
    "TokenizerSpec": "diffusability.tokenizers.spec",
    "train_tokenizer": "diffusability.tokenizers.train",
    "DiagonalGaussian": "diffusability.tokenizers.conv_vae",
    "ConvVAE": "diffusability.tokenizers.conv_vae",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'diffusability.tokenizers' has no attribute {name!r}")
