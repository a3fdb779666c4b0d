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


def load_normalised_latents(latent_dir: Path, split: str = "train", flipped: bool = False):
    """(latents (N, C, h, w) float32 normalised per channel, labels (N,) int64, stats dict) of a latent directory.

    With ``flipped`` the stats dict also carries "latents_flip" (N, C, h, w): the file's flipped
    copies, normalised with the same statistics (an error names the tensor if the file lacks it).
    """
    import torch

    from ..errors import require
    from ..io import load_tensors

    source = latent_dir / f"{split}.safetensors"
    if flipped:
        from safetensors import safe_open

        require(source.is_file(), f"{source}: file not found")
        with safe_open(str(source), framework="pt") as handle:
            require("latents_flip" in handle.keys(),
                    f"{source}: flip_augment is set but the file has no tensor 'latents_flip' (N, C, h, w); "
                    "encode the latents with flipped copies or set flip_augment: false")
    data = load_tensors(source, ["latents", "labels", *(["latents_flip"] if flipped else [])])
    stats = load_tensors(latent_dir / "stats.safetensors", ["mean", "std"])
    latents, labels = data["latents"].float(), data["labels"].long()
    require(latents.dim() == 4, f"{source}: latents must be (N, C, h, w), got {tuple(latents.shape)}")
    channels = latents.shape[1]
    for key in ("mean", "std"):
        require(stats[key].shape == (channels,),
                f"{latent_dir / 'stats.safetensors'}: {key} must have shape ({channels},), got {tuple(stats[key].shape)}")
    require(bool((stats["std"] > 0).all()), f"{latent_dir / 'stats.safetensors'}: std must be positive")
    mean, std = stats["mean"].float().reshape(1, -1, 1, 1), stats["std"].float().reshape(1, -1, 1, 1)
    if flipped:
        flip = data["latents_flip"].float()
        require(flip.shape == latents.shape, f"{source}: latents_flip must have the shape of latents "
                                             f"{tuple(latents.shape)}, got {tuple(flip.shape)}")
        stats = {**stats, "latents_flip": ((flip - mean) / std).to(torch.float32).contiguous()}
    return ((latents - mean) / std).to(torch.float32).contiguous(), labels, stats


def run_train_diffusion(args: argparse.Namespace) -> int:
    from ..errors import require
    from ..progress import log
    from .spec import DiffusionSpec
    from .train import train_diffusion

    spec = DiffusionSpec.from_dict(args.spec, source="--spec")
    require(spec.num_classes is not None, "--spec: num_classes is required (the number of class labels)")
    latents, labels, extra = load_normalised_latents(args.latents, flipped=spec.flip_augment)
    log.info("training %s on %d latents of shape %s%s", spec.name, latents.shape[0], tuple(latents.shape[1:]),
             " (+ flipped copies, p = 0.5)" if spec.flip_augment else "")
    train_diffusion(latents, labels, spec, args.out, spec.num_classes, latents_flip=extra.get("latents_flip"))
    return 0
