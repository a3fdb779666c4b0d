"""``diffusability import-latents``: bring latents encoded elsewhere into a study.

A thin command over :mod:`diffusability.importing` (what is checked is documented there); trained
diffusion models come in through ``train-diffusion --import-from``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    from .specs import json_spec

    parser = subparsers.add_parser("import-latents", help="check and copy existing latents into a study",
                                   description="Check a latent directory (train/val/stats.safetensors) against "
                                               "the study's tokenizer and copy it to --out.")
    parser.add_argument("--source", required=True, type=Path, help="existing latent directory")
    parser.add_argument("--tokenizer", required=True, type=Path, help="the study's tokenizer directory (config.json)")
    parser.add_argument("--spec", required=True, type=json_spec,
                        help='JSON: {"image_size", "n_classes", "stats_tolerance"}')
    parser.add_argument("--out", required=True, type=Path, help="latent directory of the study")
    parser.set_defaults(func=run_import_latents)

def run_import_latents(args: argparse.Namespace) -> int:
    from .importing import import_latents
    from .progress import log

    found = import_latents(args.source, args.out, args.tokenizer, int(args.spec["image_size"]),
                           int(args.spec["n_classes"]), float(args.spec.get("stats_tolerance", 1e-3)))
    log.info("import-latents: %d train and %d val latents of (%d, %d, %d) from %s", found["train"], found["val"],
             found["channels"], found["side"], found["side"], args.source)
    return 0
