"""A trained diffusion model from elsewhere, checked and brought into a study instead of being trained.

A study may name, per tokenizer and backbone, a trained model directory (``tokenizers.<name>.diffusion:
{<backbone>: DIR}``); the workflow then runs ``train-diffusion --import-from DIR``. What is checked:
``config.json`` (this project's format) readable as a backbone spec, its ``in_channels``/``grid_size``/
``num_classes`` equal to the study's latents and classes, the weights loading into that architecture,
and the normalisation: the per-channel latent mean/std the model was trained with (``latent_stats`` in
its ``config.json``, written by ``train-diffusion``) equal, within :data:`STATS_TOLERANCE` of the
study's std, to the study's ``stats.safetensors`` — a model trained on differently normalised latents
would be sampled with the wrong inverse normalisation and its images silently degraded. A model whose
``config.json`` records no statistics (trained by an older version or elsewhere) is imported with a
warning. The files are copied atomically; the source is never modified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import about, require
from ..io import load_tensors, memory_map_tensors, read_json
from ..latents.importing import copy_file

#: Largest accepted difference between the recorded and the study's latent mean or std, per channel, in
#: units of the study's std. Statistics recomputed from the same latents agree to float round-off; latents
#: of the same tokenizer encoded on another machine or with another posterior seed differ by the sampling
#: error of a mean over N·h·w values (≈ 1e-4 std for ImageNet); another tokenizer, scaling or shift is far
#: beyond 1e-2.
STATS_TOLERANCE = 1e-2


def check_latent_stats(config_path: str | Path, recorded: Any, stats_path: str | Path,
                       tolerance: float = STATS_TOLERANCE) -> float | None:
    """Compare the statistics a model was trained with against the study's; return the largest difference.

    Parameters
    ----------
    config_path : path
        The model's ``config.json`` (named in errors).
    recorded : dict or None
        Its ``latent_stats``: ``{"mean": [C floats], "std": [C floats]}``; None: nothing recorded.
    stats_path : path
        The study's ``stats.safetensors`` (``mean``, ``std``: (C,)).
    tolerance : float
        Largest accepted ``max_c |recorded − study| / std_study`` over mean and std.

    Returns
    -------
    float or None
        The largest difference in units of the study's std; None when nothing is recorded (a warning is
        logged).

    Raises
    ------
    DiffusabilityError
        When the recorded statistics are malformed, of another channel count, or differ by more than
        ``tolerance``; the message names both files, the channel and the two values.
    """
    import torch

    from ..progress import log

    if recorded is None:
        log.warning("%s records no latent_stats (trained by an older version or elsewhere): the latent "
                    "normalisation it was trained with cannot be checked against %s", config_path, stats_path)
        return None
    study = load_tensors(stats_path, ["mean", "std"])
    channels = int(study["mean"].numel())
    require(isinstance(recorded, dict) and all(isinstance(recorded.get(k), list) for k in ("mean", "std")),
            f"{config_path}: latent_stats must be {{\"mean\": [...], \"std\": [...]}}, got {recorded!r}"[:400])
    got = {key: torch.tensor(recorded[key], dtype=torch.float64) for key in ("mean", "std")}
    for key, values in got.items():
        require(values.shape == (channels,), f"{config_path}: latent_stats.{key} has {values.numel()} channels "
                                             f"but {stats_path} has {channels}")
    errors = {key: (got[key] - study[key].double()).abs() / study["std"].double() for key in ("mean", "std")}
    key = max(errors, key=lambda name: float(errors[name].max()))
    channel = int(errors[key].argmax())
    worst = float(errors[key][channel])
    require(worst <= tolerance,
            f"{config_path}: the model was trained on latents normalised with another {key} than the study's "
            f"{stats_path}: channel {channel} has {key} {float(got[key][channel]):.6g} in latent_stats but "
            f"{float(study[key][channel]):.6g} in the study ({worst:.3g} std apart, tolerance {tolerance:g})")
    return worst


def import_diffusion(source: str | Path, out: str | Path, latent_dir: str | Path, n_classes: int,
                     stats_tolerance: float = STATS_TOLERANCE) -> dict[str, Any]:
    """Check a trained diffusion model directory against the study's latents and copy it to ``out``.

    Returns
    -------
    dict
        ``{"spec": the backbone spec, "in_channels", "grid_size", "num_classes", "stats_error"}``
        (``stats_error``: the largest mean/std difference in study std, None when none is recorded).
    """
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
    stats_error = check_latent_stats(source / "config.json", read_json(source / "config.json").get("latent_stats"),
                                     Path(latent_dir) / "stats.safetensors", stats_tolerance)
    load_diffusion_model(source)  # the weights must load into the described architecture
    for name in ("ema.safetensors", "config.json"):
        copy_file(source / name, Path(out) / name)
    return {"spec": spec.to_dict(), **shape, "stats_error": stats_error}
