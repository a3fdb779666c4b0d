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
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output model directory")
    parser.set_defaults(func=run_train_diffusion)


class NormalisedLatents:
    """Latents (N, C, h, w) normalised per channel on access: ``x[indices]`` → float32 (n, C, h, w).

    The raw latents stay where they are (a memory-mapped file at ImageNet scale: 1.28 M × 32 × 16 × 16
    float32 is 42 GB, and every training process would otherwise hold its own copy); each batch is
    gathered and normalised, with the same float32 arithmetic as normalising the whole tensor.
    """

    def __init__(self, raw, mean, std):
        import torch

        self.raw = raw
        self.mean = mean.float().reshape(1, -1, 1, 1)
        self.std = std.float().reshape(1, -1, 1, 1)
        self.shape = tuple(raw.shape)
        self.dtype = torch.float32

    def __len__(self) -> int:
        return self.shape[0]

    def dim(self) -> int:
        return len(self.shape)

    def __getitem__(self, index):
        import torch

        return ((self.raw[index].float() - self.mean) / self.std).to(torch.float32)

    def all_finite(self, chunk: int = 65536) -> bool:
        """Whether every normalised value is finite (read in chunks of ``chunk`` latents)."""
        import torch

        return all(bool(torch.isfinite(self[start:start + chunk]).all()) for start in range(0, len(self), chunk))


def load_normalised_latents(latent_dir: Path, split: str = "train", flipped: bool = False, lazy: bool = False):
    """(latents (N, C, h, w) float32 normalised per channel, labels (N,) int64, stats dict) of a latent directory.

    With ``flipped`` the stats dict also carries "latents_flip" (N, C, h, w): the file's flipped
    copies, normalised with the same statistics (an error names the tensor if the file lacks it).
    With ``lazy`` the latents (and flipped copies) are :class:`NormalisedLatents` over a memory map of
    the file instead of tensors in memory.
    """
    from ..errors import require
    from ..io import load_tensors, memory_map_tensors

    source = latent_dir / f"{split}.safetensors"
    if flipped:
        from safetensors import safe_open

        require(source.is_file(), f"{source}: file not found")
        from ..io import reading
        with reading(source, "safetensors file"), safe_open(str(source), framework="pt") as handle:
            require("latents_flip" in handle.keys(),
                    f"{source}: flip_augment is set but the file has no tensor 'latents_flip' (N, C, h, w); "
                    "encode the latents with flipped copies or set flip_augment: false")
    keys = ["latents", "labels", *(["latents_flip"] if flipped else [])]
    data = memory_map_tensors(source, keys) if lazy else load_tensors(source, keys)
    stats = load_tensors(latent_dir / "stats.safetensors", ["mean", "std"])
    raw, labels = data["latents"], data["labels"].long()
    require(raw.dim() == 4, f"{source}: latents must be (N, C, h, w), got {tuple(raw.shape)}")
    channels = raw.shape[1]
    for key in ("mean", "std"):
        require(stats[key].shape == (channels,),
                f"{latent_dir / 'stats.safetensors'}: {key} must have shape ({channels},), got {tuple(stats[key].shape)}")
    require(bool((stats["std"] > 0).all()), f"{latent_dir / 'stats.safetensors'}: std must be positive")

    def normalised(tensor):
        view = NormalisedLatents(tensor, stats["mean"], stats["std"])
        return view if lazy else view[:].contiguous()

    if flipped:
        require(data["latents_flip"].shape == raw.shape, f"{source}: latents_flip must have the shape of latents "
                                                         f"{tuple(raw.shape)}, got {tuple(data['latents_flip'].shape)}")
        stats = {**stats, "latents_flip": normalised(data["latents_flip"])}
    return normalised(raw), labels, stats


def run_train_diffusion(args: argparse.Namespace) -> int:
    from ..errors import about, require
    from ..progress import log
    from .spec import DiffusionSpec
    from .train import train_diffusion

    spec = DiffusionSpec.from_dict(args.spec, source="--spec")
    require(spec.num_classes is not None, "--spec: num_classes is required (the number of class labels)")
    if args.import_from is not None:
        from ..importing import import_diffusion

        found = import_diffusion(args.import_from, args.out, args.latents, spec.num_classes)
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
        train_diffusion(latents, labels, spec, args.out, spec.num_classes, latents_flip=extra.get("latents_flip"),
                        inputs=inputs)
    return 0
