"""A tokenizer's latents as the diffusion model sees them: normalised per channel with the train statistics.

Read by the stages downstream of the latents (diffusion training, the model-based latent metrics).
"""

from __future__ import annotations

from pathlib import Path


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
    import torch

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
    raw, labels = data["latents"], data["labels"]
    require(raw.is_floating_point() and raw.dim() == 4,
            f"{source}: latents must be float (N, C, h, w), got {raw.dtype} {tuple(raw.shape)}")
    require(raw.shape[0] >= 1, f"{source}: no latents")
    require(not labels.is_floating_point() and labels.dtype != torch.bool and tuple(labels.shape) == (raw.shape[0],),
            f"{source}: labels must be integer ({raw.shape[0]},), got {labels.dtype} {tuple(labels.shape)}")
    labels = labels.long()
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
