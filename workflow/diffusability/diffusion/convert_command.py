"""``diffusability convert-diffusion``: a released SiT checkpoint → a model directory ``train-diffusion`` imports.

* ``convert-diffusion --source FILE.pt --out DIR [--heads H] [--latent-scale S | --latent-mean M…
  --latent-std SD…]``: reads SiT's ``.pt`` (the state dict, or a training checkpoint's ``ema``), infers the
  architecture from its shapes, checks and renames every key and writes ``DIR/config.json`` and
  ``DIR/ema.safetensors`` (:mod:`.external`, docs/models.md §2.7). A study then names ``DIR`` under
  ``tokenizers.<name>.diffusion``.

A module of its own (not :mod:`.commands`) so that adding it leaves ``train-diffusion``'s code identity, and
hence every trained model of a study, untouched.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-diffusion", help="convert a released SiT checkpoint into a model directory (for --import-from)",
        description="Convert a SiT checkpoint (github.com/willisma/SiT: the released EMA state dict, or a training "
                    "checkpoint's 'ema') into --out/config.json + --out/ema.safetensors, the format train-diffusion "
                    "writes and --import-from reads. The architecture is read from the tensor shapes; a key or shape "
                    "that does not map is refused.")
    parser.add_argument("--source", required=True, type=Path, metavar="FILE.pt", help="the SiT checkpoint")
    parser.add_argument("--heads", type=int, default=None, metavar="H",
                        help="attention heads (default: SiT's value for the width: "
                             "384→6, 768→12, 1024→16, 1152→16)")
    stats = parser.add_mutually_exclusive_group()
    stats.add_argument("--latent-scale", type=float, default=None, metavar="S",
                       help="the model was trained on latents × S (SiT's release: SD-VAE latents × 0.18215): "
                            "recorded as per-channel mean 0, std 1/S")
    stats.add_argument("--latent-mean", type=float, nargs="+", default=None, metavar="M",
                       help="per-channel mean the training latents were shifted by (with --latent-std)")
    parser.add_argument("--latent-std", type=float, nargs="+", default=None, metavar="SD",
                        help="per-channel std the training latents were divided by (with --latent-mean)")
    parser.add_argument("--name", default=None, help="the spec's name (default: the file name without suffix)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output model directory")
    parser.set_defaults(func=run_convert_diffusion)


def run_convert_diffusion(args: argparse.Namespace) -> int:
    from ..progress import log
    from .external import convert_sit

    found = convert_sit(args.source, args.out, heads=args.heads, latent_scale=args.latent_scale,
                        latent_mean=args.latent_mean, latent_std=args.latent_std, name=args.name)
    log.info("converted %s%s: SiT depth %d, width %d, %d heads, patch %d, %d channels, grid %d, %d classes%s → %s",
             args.source, f" ({found['source_key']})" if found["source_key"] else "", found["depth"], found["width"],
             found["heads"], found["patch_size"], found["in_channels"], found["grid_size"], found["num_classes"],
             ", learned-sigma half dropped" if found["learn_sigma"] else "", args.out)
    if found["latent_stats"] is None:
        log.warning("no --latent-scale or --latent-mean/--latent-std: config.json records no latent_stats, so the "
                    "import cannot check the study's latent normalisation against the model's")
    return 0
