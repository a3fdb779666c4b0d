"""Build a tokenizer from its spec, or load a trained one from its directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..errors import require
from .spec import TokenizerSpec, as_spec

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def build_tokenizer(spec: TokenizerSpec | Mapping[str, Any] | None = None):
    """A freshly initialised tokenizer (``nn.Module``) for ``spec`` (a TokenizerSpec or its dict).

    Initialisation uses the global torch RNG; seed it (``torch.manual_seed``) for a fixed init.
    """
    spec = as_spec(spec)
    if spec.architecture == "vit":
        from .vit_vae import VitVAE

        return VitVAE(**spec.architecture_kwargs())
    from .conv_vae import ConvVAE

    return ConvVAE(**spec.architecture_kwargs())


def initial_tokenizer(spec: TokenizerSpec | Mapping[str, Any] | None = None):
    """The tokenizer exactly as training initialises it (seeded from ``(seed, "tokenizer-init")``).

    Reconstruction reports compare a trained tokenizer against this, its own untrained self.
    """
    import torch

    from ..seeding import derive_seed

    spec = as_spec(spec)
    torch.manual_seed(derive_seed(spec.seed, "tokenizer-init"))
    return build_tokenizer(spec)


def load_tokenizer(directory: str | Path):
    """The trained tokenizer in ``directory`` (``config.json`` + ``model.safetensors``), in eval mode."""
    from ..errors import DiffusabilityError, about
    from ..io import load_tensors, read_json

    directory = Path(directory)
    require(directory.is_dir(), f"{directory}: tokenizer directory not found")
    weights = directory / WEIGHTS_FILE
    require(weights.is_file(), f"{weights}: tokenizer weights not found (train the tokenizer first)")
    config = read_json(directory / CONFIG_FILE)
    require(isinstance(config, dict), f"{directory / CONFIG_FILE}: expected a JSON object (a tokenizer spec)")
    with about(directory / CONFIG_FILE):
        spec = as_spec(config)
    model = build_tokenizer(spec)
    state = load_tensors(weights)  # a truncated or foreign file: an error naming it, not a traceback
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # same names, other shapes
        raise DiffusabilityError(f"{weights}: does not match config.json ({str(exc).splitlines()[0]})") from exc
    require(not missing and not unexpected,
            f"{weights}: does not match config.json (missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.eval()
    model.spec = spec
    return model
