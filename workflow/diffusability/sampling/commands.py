"""``diffusability sample``: generate images with a trained (or untrained) diffusion model and a tokenizer's decoder.

The sampling itself is :mod:`diffusability.sampling.run`; the settings are
:class:`~diffusability.sampling.spec.SamplingSpec`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import require


def register(subparsers) -> None:
    from ..specs import json_spec

    parser = subparsers.add_parser(
        "sample", help="sample latents with the Euler ODE sampler + CFG and decode them to images",
        description="Sample num_samples images (labels uniform at random; noise and label of sample i depend only "
                    "on (seed, i)), undo the latent normalisation with LATENT_DIR/stats.safetensors, decode with "
                    "the tokenizer and write an ADM-layout .npz (arr_0 uint8 NHWC, labels, sampler settings).")
    parser.add_argument("--diffusion", type=Path, metavar="DIR", help="trained diffusion model directory")
    parser.add_argument("--tokenizer", required=True, type=Path, metavar="TOK_DIR", help="tokenizer directory")
    parser.add_argument("--latents", required=True, type=Path, metavar="LATENT_DIR",
                        help="latent directory (stats.safetensors for the inverse normalisation)")
    parser.add_argument("--spec", required=True, type=json_spec, metavar="JSON", help="sampling spec")
    parser.add_argument("--cfg-scale", required=True, type=float, metavar="W", help="guidance scale (1 = none)")
    parser.add_argument("--out", required=True, type=Path, metavar="SAMPLES.npz", help="output .npz")
    parser.add_argument("--trajectories", type=Path, metavar="TRAJ.safetensors",
                        help="also write the ODE trajectories of the first `trajectories` samples (normalised latents)")
    parser.add_argument("--untrained", action="store_true",
                        help="sample from the freshly initialised model (a baseline); the backbone comes from "
                             "--diffusion's config.json or, without --diffusion, from the spec key 'backbone'")
    # --trajectories is an output: never hashed as an input of the provenance (io.command_inputs)
    # only the latents' statistics are read (to un-normalise the samples)
    parser.set_defaults(func=run_sample, not_inputs=("trajectories",), input_files={"latents": ("stats.safetensors",)})


def run_sample(args: argparse.Namespace) -> int:
    """Sample, decode and write the npz; under torchrun the index blocks are shared among the processes."""
    import torch

    from ..devices import note_device
    from .run import sample_to_files
    from .sharding import join_process_group
    from .spec import SamplingSpec

    spec = SamplingSpec.from_dict(args.spec)
    require(args.cfg_scale >= 0, f"--cfg-scale must be ≥ 0, got {args.cfg_scale}")
    require(args.trajectories is None or spec.trajectories > 0,
            "--trajectories was given but the spec asks for trajectories = 0")
    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    group = join_process_group(use_cuda=device.type == "cuda")
    if device.type == "cuda" and group.world_size > 1 and device.index is None:
        device = torch.device("cuda", group.local_rank)
    note_device(device, group.world_size)
    try:
        sample_to_files(spec, latents=args.latents, tokenizer=args.tokenizer, diffusion=args.diffusion,
                        untrained=args.untrained, cfg_scale=args.cfg_scale, out=args.out,
                        trajectories=args.trajectories, device=device, group=group)
    finally:
        group.close()
    return 0
