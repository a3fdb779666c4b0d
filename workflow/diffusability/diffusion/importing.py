"""A trained diffusion model from elsewhere, checked and brought into a study instead of being trained.

A study may name, per tokenizer and backbone, a trained model directory (``tokenizers.<name>.diffusion:
{<backbone>: DIR}``); the workflow then runs ``train-diffusion --import-from DIR``. What is checked:
``config.json`` (this project's format) readable as a backbone spec, its ``in_channels``/``grid_size``/
``num_classes`` equal to the study's latents and classes, and the weights loading into that
architecture. The files are copied atomically; the source is never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import about, require
from ..io import memory_map_tensors
from ..latents.importing import copy_file


def import_diffusion(source: str | Path, out: str | Path, latent_dir: str | Path, n_classes: int) -> dict[str, Any]:
    """Check a trained diffusion model directory against the study's latents and copy it to ``out``."""
    from .train import load_diffusion_model, read_model_config

    source = Path(source)
    require(source.is_dir(), f"{source}: diffusion model directory not found")
    with about(source / "config.json"):
        spec, shape = read_model_config(source)
    latents = memory_map_tensors(Path(latent_dir) / "train.safetensors", ["latents"])["latents"]
    expected = {"in_channels": int(latents.shape[1]), "grid_size": int(latents.shape[2]), "num_classes": n_classes}
    wrong = {k: (shape[k], v) for k, v in expected.items() if shape[k] != v}
    require(not wrong, f"{source}/config.json: the model does not fit the study's latents: "
                       + ", ".join(f"{k} is {got}, the study has {want}" for k, (got, want) in wrong.items()))
    load_diffusion_model(source)  # the weights must load into the described architecture
    for name in ("ema.safetensors", "config.json"):
        copy_file(source / name, Path(out) / name)
    return {"spec": spec.to_dict(), **shape}
