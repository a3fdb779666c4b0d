"""``diffusability sample``: generate images with a trained (or untrained) diffusion model and a tokenizer's decoder."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import require


@dataclass
class SamplingSpec:
    """Sampler settings. ``backbone`` (a diffusion spec with num_classes) is used with ``--untrained``
    when no ``--diffusion`` directory is given. The defaults are the schema's ``sampling`` defaults
    (tests/test_defaults.py): ADM's 50,000 samples, 50 Euler updates, 64 recorded trajectories."""

    seed: int = 0
    num_samples: int = 50_000
    num_steps: int = 50
    batch_size: int = 250
    guidance_channels: str = "all"  # "all" | "first3" (DiT/SiT/LightningDiT legacy)
    timestep_shift: float | None = None
    cfg_interval_start: float | None = None
    trajectories: int = 64  # recorded only when the command is given --trajectories PATH
    which: str = "ema"  # "ema" | "model"
    device: str | None = None  # None: cuda when available
    backbone: dict | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "--spec") -> "SamplingSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        spec = cls(**{k: v for k, v in data.items() if v is not None or k in ("timestep_shift", "cfg_interval_start")})
        for key in ("num_samples", "num_steps", "batch_size"):
            value = getattr(spec, key)
            require(isinstance(value, int) and value > 0, f"{source}: {key} must be a positive integer, got {value!r}")
        require(isinstance(spec.trajectories, int) and 0 <= spec.trajectories <= spec.num_samples,
                f"{source}: trajectories must be an integer in [0, num_samples], got {spec.trajectories!r}")
        require(spec.guidance_channels in ("all", "first3"),
                f"{source}: guidance_channels must be 'all' or 'first3', got {spec.guidance_channels!r}")
        require(spec.which in ("ema", "model"), f"{source}: which must be 'ema' or 'model', got {spec.which!r}")
        return spec

    def sampler_kwargs(self, cfg_scale: float) -> dict[str, Any]:
        """Keyword arguments of :func:`~diffusability.sampling.euler.euler_sample`."""
        return {"num_steps": self.num_steps, "cfg_scale": float(cfg_scale),
                "guidance_channels": None if self.guidance_channels == "all" else 3,
                "timestep_shift": self.timestep_shift, "cfg_interval": self.cfg_interval_start}


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
    parser.set_defaults(func=run_sample)


def latent_shape(latent_dir: Path) -> tuple[int, int, int]:
    """(C, h, w) of LATENT_DIR/train.safetensors without loading the tensor."""
    from safetensors import safe_open

    path = latent_dir / "train.safetensors"
    require(path.is_file(), f"{path}: file not found")
    from ..io import reading
    with reading(path, "safetensors file"), safe_open(str(path), framework="pt") as handle:
        require("latents" in handle.keys(), f"{path}: has no tensor 'latents'")
        shape = handle.get_slice("latents").get_shape()
    require(len(shape) == 4, f"{path}: latents must be (N, C, h, w), got {shape}")
    return int(shape[1]), int(shape[2]), int(shape[3])


def load_sampling_model(args: argparse.Namespace, spec: SamplingSpec, shape: tuple[int, int, int]):
    """The model to sample from and its number of classes."""
    from ..diffusion.spec import DiffusionSpec
    from ..diffusion.train import init_model, load_diffusion_model, read_model_config

    if not args.untrained:
        require(args.diffusion is not None, "--diffusion is required unless --untrained is given")
        model = load_diffusion_model(args.diffusion, which=spec.which)
        return model, model.config.num_classes
    if args.diffusion is not None:
        backbone, model_shape = read_model_config(args.diffusion)
        num_classes = model_shape["num_classes"]
    else:
        require(spec.backbone is not None, "--untrained without --diffusion needs the spec key 'backbone' "
                                           "(the diffusion spec, with num_classes)")
        backbone = DiffusionSpec.from_dict(spec.backbone, source="--spec backbone")
        require(backbone.num_classes is not None, "--spec backbone: num_classes is required")
        num_classes = backbone.num_classes
    require(shape[1] == shape[2], f"latents must be on a square grid, got {shape}")
    return init_model(backbone, shape[0], shape[1], num_classes).eval(), num_classes


def run_sample(args: argparse.Namespace) -> int:
    """Sample, decode and write the npz; under torchrun the index blocks are shared among the processes."""
    import torch

    from .sharding import join_process_group

    spec = SamplingSpec.from_dict(args.spec)
    require(args.cfg_scale >= 0, f"--cfg-scale must be ≥ 0, got {args.cfg_scale}")
    require(args.trajectories is None or spec.trajectories > 0,
            "--trajectories was given but the spec asks for trajectories = 0")
    device = torch.device(spec.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    group = join_process_group(use_cuda=device.type == "cuda")
    if device.type == "cuda" and group.world_size > 1 and device.index is None:
        device = torch.device("cuda", group.local_rank)
    try:
        return _sample(args, spec, device, group)
    finally:
        group.close()


def _sample(args: argparse.Namespace, spec: SamplingSpec, device, group) -> int:
    import numpy as np
    import torch

    from .. import tokenizers
    from ..imaging import to_uint8
    from ..io import load_tensors, save_npz, save_tensors
    from ..progress import log, progress
    from . import generate
    from .sharding import blocks_of_rank, index_blocks, shard_path

    shape = latent_shape(args.latents)
    stats = load_tensors(args.latents / "stats.safetensors", ["mean", "std"])
    for key in ("mean", "std"):
        require(stats[key].shape == (shape[0],), f"{args.latents}/stats.safetensors: {key} must have shape "
                                                  f"({shape[0]},), got {tuple(stats[key].shape)}")
    model, num_classes = load_sampling_model(args, spec, shape)
    require(model.config.in_channels == shape[0] and model.config.grid_size == shape[1],
            f"the diffusion model expects latents ({model.config.in_channels}, {model.config.grid_size}, "
            f"{model.config.grid_size}) but {args.latents} holds {shape}")
    model = model.to(device)
    sampler = spec.sampler_kwargs(args.cfg_scale)
    settings = {**sampler, "guidance_channels": spec.guidance_channels, "seed": spec.seed,
                "num_samples": spec.num_samples, "which": "untrained" if args.untrained else spec.which,
                "labels": "uniform random per index", "time_convention": "t=0 noise, t=1 data"}
    blocks = index_blocks(spec.num_samples, spec.batch_size)
    mine = blocks_of_rank(len(blocks), group.rank, group.world_size)
    if group.is_main:
        log.info("sampling %d images: %s", spec.num_samples, json.dumps(settings, sort_keys=True))
    log.info("rank %d of %d: %d of %d blocks of %d indices", group.rank, group.world_size, len(mine), len(blocks),
             spec.batch_size)
    wanted = range(spec.trajectories) if args.trajectories is not None else ()

    tokenizer = tokenizers.load_tokenizer(args.tokenizer)
    if hasattr(tokenizer, "to") and callable(tokenizer.to):
        tokenizer = tokenizer.to(device) or tokenizer
    mean, std = stats["mean"].float().reshape(1, -1, 1, 1), stats["std"].float().reshape(1, -1, 1, 1)
    parts: list[dict[str, torch.Tensor]] = []
    for block in progress(mine, total=len(mine), desc=f"sample+decode (rank {group.rank})", unit="batch"):
        # one block = one sampler batch = one decoder batch, whatever the number of processes
        part = generate.sample_batch(model, spec.seed, blocks[block], num_classes, shape, device=device,
                                     trajectory_indices=wanted, **sampler)
        with torch.no_grad():
            z = part.pop("latents") * std + mean
            part["images"] = to_uint8(tokenizer.decode(z.to(device)).cpu())
        parts.append(part)
    local = _concat_parts(parts)

    if group.world_size > 1:
        save_tensors(shard_path(args.out, group.rank, group.world_size), local)
        group.barrier()
        if group.is_main:
            paths = [shard_path(args.out, r, group.world_size) for r in range(group.world_size)]
            local = _concat_parts([load_tensors(p) for p in paths])
    if group.is_main:
        order = torch.argsort(local["index"])
        require(local["index"][order].tolist() == list(range(spec.num_samples)),
                "the gathered shards do not cover every sample index exactly once")
        save_npz(args.out, arr_0=local["images"][order].numpy(), labels=local["labels"][order].numpy(),
                 sampler=np.array([json.dumps(settings, sort_keys=True)]))
        if args.trajectories is not None:
            order = torch.argsort(local["trajectory_index"])
            index = local["trajectory_index"][order]
            save_tensors(args.trajectories, {"trajectory": local["trajectory"][:, order], "times": local["times"],
                                             "labels": local["labels"][torch.argsort(local["index"])][index],
                                             "index": index},
                         metadata={"sampler": json.dumps(settings, sort_keys=True),
                                   "space": "normalised latents (as the diffusion model sees them)"})
        if group.world_size > 1:
            for path in paths:
                path.unlink(missing_ok=True)
    group.barrier()
    return 0


def _concat_parts(parts: list[dict]) -> dict:
    """Concatenate per-block results: images/labels/index along samples, trajectories along dim 1.

    An empty list (a rank with no block) gives {"index": empty}; such parts are skipped when merging.
    """
    import torch

    parts = [p for p in parts if p["index"].numel() > 0]
    if not parts:
        return {"index": torch.empty(0, dtype=torch.int64)}
    out = {key: torch.cat([p[key] for p in parts]) for key in ("images", "labels", "index")}
    with_trajectory = [p for p in parts if "trajectory" in p]
    if with_trajectory:
        out["trajectory"] = torch.cat([p["trajectory"] for p in with_trajectory], dim=1)
        out["trajectory_index"] = torch.cat([p["trajectory_index"] for p in with_trajectory])
        out["times"] = with_trajectory[0]["times"]
    return out
