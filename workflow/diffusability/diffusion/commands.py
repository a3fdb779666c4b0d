"""``diffusability train-diffusion``: train a SiT/LightningDiT backbone on a tokenizer's cached latents."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ..cli import json_spec

    parser = subparsers.add_parser(
        "train-diffusion", help="train a diffusion transformer on cached latents (resumes by itself)",
        description="Train the backbone described by --spec on LATENT_DIR/train.safetensors, normalised per channel "
                    "with LATENT_DIR/stats.safetensors. Writes ema.safetensors, model.safetensors, config.json, "
                    "train_log.parquet and checkpoints/ to --out; a rerun resumes from the newest checkpoint.")
    parser.add_argument("--latents", required=True, type=Path, metavar="LATENT_DIR",
                        help="directory with train.safetensors (latents, labels) and stats.safetensors (mean, std)")
    parser.add_argument("--spec", required=True, type=json_spec, metavar="JSON",
                        help="diffusion spec (see diffusability.diffusion.spec.DiffusionSpec); num_classes required")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output model directory")
    parser.set_defaults(func=run_train_diffusion)


def load_normalised_latents(latent_dir: Path, split: str = "train"):
    """(latents (N, C, h, w) float32 normalised per channel, labels (N,) int64, stats dict) of a latent directory."""
    import torch

    from ..errors import require
    from ..io import load_tensors

    data = load_tensors(latent_dir / f"{split}.safetensors", ["latents", "labels"])
    stats = load_tensors(latent_dir / "stats.safetensors", ["mean", "std"])
    latents, labels = data["latents"].float(), data["labels"].long()
    source = latent_dir / f"{split}.safetensors"
    require(latents.dim() == 4, f"{source}: latents must be (N, C, h, w), got {tuple(latents.shape)}")
    channels = latents.shape[1]
    for key in ("mean", "std"):
        require(stats[key].shape == (channels,),
                f"{latent_dir / 'stats.safetensors'}: {key} must have shape ({channels},), got {tuple(stats[key].shape)}")
    require(bool((stats["std"] > 0).all()), f"{latent_dir / 'stats.safetensors'}: std must be positive")
    mean, std = stats["mean"].float().reshape(1, -1, 1, 1), stats["std"].float().reshape(1, -1, 1, 1)
    return ((latents - mean) / std).to(torch.float32).contiguous(), labels, stats


def run_train_diffusion(args: argparse.Namespace) -> int:
    from ..errors import require
    from ..progress import log
    from .spec import DiffusionSpec
    from .train import train_diffusion

    spec = DiffusionSpec.from_dict(args.spec, source="--spec")
    require(spec.num_classes is not None, "--spec: num_classes is required (the number of class labels)")
    latents, labels, _ = load_normalised_latents(args.latents)
    log.info("training %s on %d latents of shape %s", spec.name, latents.shape[0], tuple(latents.shape[1:]))
    train_diffusion(latents, labels, spec, args.out, spec.num_classes)
    return 0
