"""Latents encoded elsewhere, checked and brought into a study instead of being recomputed.

A study may name, per tokenizer, a directory of existing latents (``tokenizers.<name>.latents``);
the workflow then runs ``import-latents`` for it instead of ``encode`` (trained diffusion models come
in the same way through ``train-diffusion --import-from``: :mod:`diffusability.diffusion.importing`).
What is checked, so that a foreign artifact cannot silently be the wrong one:

latents (``train.safetensors``, ``val.safetensors``, ``stats.safetensors``)
    ``latents`` float (N, C, h, w) with C and (h, w) those of the study's tokenizer (its
    ``config.json``: latent channels, image size / downsampling), finite; ``labels`` int (N,) in
    [0, n_classes); val ``masks`` bool (N, h, w); ``mean``/``std`` (C,) finite, std > 0, and equal —
    within ``stats_tolerance`` relative to the std — to the per-channel statistics recomputed from
    the train latents (the normalisation a diffusion model was trained with must be the one the
    study's metrics and samplers use).
The files are copied (atomically, through :mod:`diffusability.io`); the source is never modified.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import about, require
from ..io import atomic_path, load_tensors, memory_map_tensors, read_json

LATENT_FILES = ("train", "val", "stats")


def latent_grid(tokenizer_config: dict, image_size: int, source: str = "tokenizer config.json") -> tuple[int, int]:
    """(channels, side) of the latents a tokenizer's ``config.json`` (read from ``source``) describes."""
    require(isinstance(tokenizer_config, dict), f"{source}: expected a JSON object (a tokenizer spec)")
    vit = tokenizer_config.get("architecture") == "vit"
    for key, kind in (("latent_channels", int), ("patch_size" if vit else "channel_mult", int if vit else list)):
        value = tokenizer_config.get(key)
        require(isinstance(value, kind) and not isinstance(value, bool) and (kind is list or value >= 1),
                f"{source}: '{key}' must be {'a positive integer' if kind is int else 'a list'}, got {value!r}")
    channels = tokenizer_config["latent_channels"]
    factor = tokenizer_config["patch_size"] if vit else 2 ** (len(tokenizer_config["channel_mult"]) - 1)
    return channels, image_size // factor


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to ``target`` atomically (the source is never modified)."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def check_latents(source: str | Path, channels: int, side: int, n_classes: int,
                  stats_tolerance: float = 1e-3) -> dict[str, Any]:
    """Check a latent directory against the study (see the module doc); return what was found.

    Returns
    -------
    dict
        ``{"train": N_train, "val": N_val, "channels": C, "side": h}``.
    """
    import torch

    from .statistics import channel_statistics

    source = Path(source)
    require(source.is_dir(), f"{source}: latent directory not found")
    found: dict[str, Any] = {}
    for split in ("train", "val"):
        path = source / f"{split}.safetensors"
        with about(path):
            keys = ["latents", "labels", *(["masks"] if split == "val" else [])]
            data = memory_map_tensors(path, keys)
            latents, labels = data["latents"], data["labels"]
            shape = tuple(latents.shape)
            require(latents.is_floating_point() and len(shape) == 4,
                    f"latents must be float (N, C, h, w), got {latents.dtype} {shape}")
            require(shape[1:] == (channels, side, side),
                    f"latents are (N, {', '.join(map(str, shape[1:]))}) but the study's tokenizer makes "
                    f"(N, {channels}, {side}, {side})")
            require(shape[0] >= 1, "no latents")
            require(not labels.is_floating_point() and tuple(labels.shape) == (shape[0],),
                    f"labels must be int ({shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
            require(int(labels.min()) >= 0 and int(labels.max()) < n_classes,
                    f"labels must lie in [0, {n_classes}), got [{int(labels.min())}, {int(labels.max())}]")
            require(all(bool(torch.isfinite(latents[i:i + 4096]).all()) for i in range(0, shape[0], 4096)),
                    "latents contain NaN or Inf")
            if split == "val":
                masks = data["masks"]
                require(masks.dtype == torch.bool and tuple(masks.shape) == (shape[0], side, side),
                        f"masks must be bool ({shape[0]}, {side}, {side}), got {masks.dtype} {tuple(masks.shape)}")
            found[split] = shape[0]
    stats_path = source / "stats.safetensors"
    with about(stats_path):
        stats = load_tensors(stats_path, ["mean", "std"])
        for key in ("mean", "std"):
            require(tuple(stats[key].shape) == (channels,), f"{key} must be ({channels},), got {tuple(stats[key].shape)}")
            require(bool(torch.isfinite(stats[key]).all()), f"{key} is not finite")
        require(bool((stats["std"] > 0).all()), "std must be positive")
        mean, std = channel_statistics(memory_map_tensors(source / "train.safetensors", ["latents"])["latents"])
        error = float(((stats["mean"].double() - mean.double()).abs() / std.double()).max())
        error = max(error, float(((stats["std"].double() - std.double()).abs() / std.double()).max()))
        require(error <= stats_tolerance,
                f"mean/std differ from the statistics of the train latents by {error:.2e} std (tolerance "
                f"{stats_tolerance:g}): they are not the normalisation of these latents")
    return {**found, "channels": channels, "side": side}


def import_latents(source: str | Path, out: str | Path, tokenizer_dir: str | Path, image_size: int,
                   n_classes: int, stats_tolerance: float = 1e-3) -> dict[str, Any]:
    """Check ``source`` against the tokenizer of ``tokenizer_dir`` and copy it to ``out``."""
    config_path = Path(tokenizer_dir) / "config.json"
    channels, side = latent_grid(read_json(config_path), image_size, str(config_path))
    found = check_latents(source, channels, side, n_classes, stats_tolerance)
    for name in LATENT_FILES:
        copy_file(Path(source) / f"{name}.safetensors", Path(out) / f"{name}.safetensors")
    return found
