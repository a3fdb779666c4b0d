"""Sampling a study's images: a diffusion model's latents through the Euler sampler, decoded by the tokenizer.

The index blocks of ``num_samples`` are dealt to the processes of a (torchrun) group; each block is one
sampler batch and one decoder batch, so the images are the same bytes whatever the number of processes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import require
from .spec import SamplingSpec


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


def load_sampling_model(spec: SamplingSpec, shape: tuple[int, int, int], diffusion: Path | None, untrained: bool):
    """The model to sample from and its number of classes: the trained model of ``diffusion`` or, with
    ``untrained``, a freshly initialised one (the backbone of ``diffusion``'s config.json or of the spec)."""
    from ..diffusion.spec import DiffusionSpec
    from ..diffusion.train import init_model, load_diffusion_model, read_model_config

    if not untrained:
        require(diffusion is not None, "--diffusion is required unless --untrained is given")
        model = load_diffusion_model(diffusion, which=spec.which)
        return model, model.config.num_classes
    if diffusion is not None:
        backbone, model_shape = read_model_config(diffusion)
        num_classes = model_shape["num_classes"]
    else:
        require(spec.backbone is not None, "--untrained without --diffusion needs the spec key 'backbone' "
                                           "(the diffusion spec, with num_classes)")
        backbone = DiffusionSpec.from_dict(spec.backbone, source="--spec backbone")
        require(backbone.num_classes is not None, "--spec backbone: num_classes is required")
        num_classes = backbone.num_classes
    require(shape[1] == shape[2], f"latents must be on a square grid, got {shape}")
    return init_model(backbone, shape[0], shape[1], num_classes).eval(), num_classes


def sample_to_files(spec: SamplingSpec, *, latents: Path, tokenizer: Path, diffusion: Path | None, untrained: bool,
                    cfg_scale: float, out: Path, trajectories: Path | None, device, group) -> None:
    """Sample ``spec.num_samples`` images, decode them with ``tokenizer`` and write the ADM-layout ``out``
    (and the recorded ``trajectories``); this process samples its share of the index blocks of ``group``."""
    import numpy as np
    import torch

    from .. import tokenizers
    from ..imaging import to_uint8
    from ..io import PROVENANCE_KEY, load_tensors, provenance_json, save_npz, save_tensors
    from ..progress import log, progress
    from . import generate
    from .sharding import blocks_of_rank, index_blocks, shard_path

    shape = latent_shape(latents)
    stats = load_tensors(latents / "stats.safetensors", ["mean", "std"])
    for key in ("mean", "std"):
        require(stats[key].shape == (shape[0],), f"{latents}/stats.safetensors: {key} must have shape "
                                                  f"({shape[0]},), got {tuple(stats[key].shape)}")
        require(bool(stats[key].isfinite().all()), f"{latents}/stats.safetensors: {key} contains NaN or Inf")
    require(bool((stats["std"] > 0).all()), f"{latents}/stats.safetensors: std must be positive")
    model, num_classes = load_sampling_model(spec, shape, diffusion, untrained)
    require(model.config.in_channels == shape[0] and model.config.grid_size == shape[1],
            f"the diffusion model expects latents ({model.config.in_channels}, {model.config.grid_size}, "
            f"{model.config.grid_size}) but {latents} holds {shape}")
    model = model.to(device)
    sampler = spec.sampler_kwargs(cfg_scale)
    settings = {**sampler, "guidance_channels": spec.guidance_channels, "seed": spec.seed,
                "num_samples": spec.num_samples, "which": "untrained" if untrained else spec.which,
                "labels": "uniform random per index", "time_convention": "t=0 noise, t=1 data"}
    blocks = index_blocks(spec.num_samples, spec.batch_size)
    mine = blocks_of_rank(len(blocks), group.rank, group.world_size)
    if group.is_main:
        log.info("sampling %d images: %s", spec.num_samples, json.dumps(settings, sort_keys=True))
    log.info("rank %d of %d: %d of %d blocks of %d indices", group.rank, group.world_size, len(mine), len(blocks),
             spec.batch_size)
    wanted = range(spec.trajectories) if trajectories is not None else ()

    tokenizer = tokenizers.load_tokenizer(tokenizer)
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
        save_tensors(shard_path(out, group.rank, group.world_size), local)
        group.barrier()
        if group.is_main:
            paths = [shard_path(out, r, group.world_size) for r in range(group.world_size)]
            local = _concat_parts([load_tensors(p) for p in paths])
    if group.is_main:
        order = torch.argsort(local["index"])
        require(local["index"][order].tolist() == list(range(spec.num_samples)),
                "the gathered shards do not cover every sample index exactly once")
        # the ADM layout (arr_0, labels) plus the sampler settings and what made the file (one JSON each)
        record = provenance_json({**dataclasses.asdict(spec), "cfg_scale": cfg_scale, "untrained": untrained})
        save_npz(out, arr_0=local["images"][order].numpy(), labels=local["labels"][order].numpy(),
                 sampler=np.array([json.dumps(settings, sort_keys=True)]), **{PROVENANCE_KEY: np.array([record])})
        if trajectories is not None:
            order = torch.argsort(local["trajectory_index"])
            index = local["trajectory_index"][order]
            save_tensors(trajectories, {"trajectory": local["trajectory"][:, order], "times": local["times"],
                                             "labels": local["labels"][torch.argsort(local["index"])][index],
                                             "index": index},
                         metadata={"sampler": json.dumps(settings, sort_keys=True),
                                   "space": "normalised latents (as the diffusion model sees them)",
                                   PROVENANCE_KEY: record})
        if group.world_size > 1:
            for path in paths:
                path.unlink(missing_ok=True)
    group.barrier()


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
