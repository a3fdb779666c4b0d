"""``diffusability train-diffusion``: train a SiT/LightningDiT backbone on a tokenizer's cached latents."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from ..specs import json_spec

    parser = subparsers.add_parser(
        "train-diffusion", help="train a diffusion transformer on cached latents (resumes by itself)",
        description="Train the backbone described by --spec on LATENT_DIR/train.safetensors, normalised per channel "
                    "with LATENT_DIR/stats.safetensors. Writes ema.safetensors, model.safetensors, config.json, "
                    "train_log.parquet and checkpoints/ to --out; a rerun resumes from the newest checkpoint.")
    parser.add_argument("--latents", required=True, type=Path, metavar="LATENT_DIR",
                        help="directory with train.safetensors (latents, labels) and stats.safetensors (mean, std)")
    parser.add_argument("--spec", required=True, type=json_spec, metavar="JSON",
                        help="diffusion spec (see diffusability.diffusion.spec.DiffusionSpec); num_classes required")
    parser.add_argument("--import-from", type=Path, default=None, metavar="DIR",
                        help="a trained model directory (ema.safetensors, config.json) to check against "
                             "LATENT_DIR and copy to --out instead of training")
    parser.add_argument("--stats-tolerance", type=float, default=None, metavar="TOL",
                        help="with --import-from: the largest accepted difference, in units of the study's "
                             "per-channel std, between the latent mean/std recorded in the model's config.json "
                             "and LATENT_DIR/stats.safetensors (default: "
                             "diffusability.diffusion.importing.STATS_TOLERANCE = 0.01)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output model directory")
    parser.set_defaults(func=run_train_diffusion)


def run_train_diffusion(args: argparse.Namespace) -> int:
    from ..errors import about, require
    from ..latents.normalised import load_normalised_latents
    from ..progress import log
    from .spec import DiffusionSpec
    from .train import train_diffusion

    spec = DiffusionSpec.from_dict(args.spec, source="--spec")
    require(spec.num_classes is not None, "--spec: num_classes is required (the number of class labels)")
    if args.import_from is not None:
        from .importing import STATS_TOLERANCE, import_diffusion

        tolerance = STATS_TOLERANCE if args.stats_tolerance is None else args.stats_tolerance
        require(tolerance >= 0, f"--stats-tolerance must be ≥ 0, got {tolerance}")
        found = import_diffusion(args.import_from, args.out, args.latents, spec.num_classes, tolerance)
        log.info("imported %s (%d channels, grid %d) from %s", found["spec"]["name"], found["in_channels"],
                 found["grid_size"], args.import_from)
        return 0
    # memory-mapped: every training process shares the file's pages instead of holding its own copy
    with about(Path(args.latents) / "train.safetensors"):
        latents, labels, extra = load_normalised_latents(args.latents, flipped=spec.flip_augment, lazy=True)
    log.info("training %s on %d latents of shape %s%s", spec.name, latents.shape[0], tuple(latents.shape[1:]),
             " (+ flipped copies, p = 0.5)" if spec.flip_augment else "")
    # what the weights depend on besides the spec: a checkpoint of other latents is never resumed
    inputs = {"latents": Path(args.latents) / "train.safetensors", "stats": Path(args.latents) / "stats.safetensors"}
    with about(inputs["latents"]):
        # the statistics go into config.json: a study that imports this model checks its own against them
        train_diffusion(latents, labels, spec, args.out, spec.num_classes, latents_flip=extra.get("latents_flip"),
                        inputs=inputs, latent_stats={"mean": extra["mean"], "std": extra["std"]})
    return 0
