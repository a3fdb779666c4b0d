"""Per-channel statistics of latents: the normalisation every diffusion model and metric of a study uses."""

from __future__ import annotations

from ..errors import require


def channel_statistics(latents, chunk: int = 65536):
    """Per-channel mean and unbiased std over (N, h, w) of latents (N,C,h,w) (a tensor or a memory map),
    two float64 passes over chunks of ``chunk`` latents: two float32 (C,) tensors."""
    import torch

    count, channels = latents.shape[0], latents.shape[1]
    values = count * latents.shape[2] * latents.shape[3]
    require(values >= 2, "encode: need at least 2 latent values per channel for a std")

    def chunks():
        for start in range(0, count, chunk):
            yield torch.as_tensor(latents[start:start + chunk]).double().transpose(0, 1).reshape(channels, -1)

    mean = sum(part.sum(dim=1) for part in chunks()) / values
    variance = sum((part - mean[:, None]).pow(2).sum(dim=1) for part in chunks()) / (values - 1)
    return mean.float(), variance.sqrt().float()


def fixed_normalization(normalization, channels: int):
    """The per-channel mean and std of a normalisation given by the study instead of measured.

    Parameters
    ----------
    normalization : dict
        ``{"scale": S}`` (latent diffusion's scaling factor: mean 0, std 1/S) or ``{"mean": [C numbers],
        "std": [C positive numbers]}``.
    channels : int
        The latents' channel count C.

    Returns
    -------
    (torch.Tensor, torch.Tensor)
        Two float32 (C,) tensors, mean and std, to write as ``stats.safetensors``.

    Examples
    --------
    >>> mean, std = fixed_normalization({"scale": 0.5}, 2)
    >>> mean.tolist(), std.tolist()
    ([0.0, 0.0], [2.0, 2.0])
    """
    import math

    import torch

    def numbers(key: str, positive: bool) -> list:
        values = normalization[key]
        listed = [values] if key == "scale" else values
        valid = isinstance(listed, list) and len(listed) > 0 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
            for v in listed)
        kind = "a positive number" if key == "scale" else f"a list of {'positive ' if positive else ''}numbers"
        require(valid, f"encode spec: normalization.{key} must be {kind}, got {values!r}")
        return listed

    shapes = ({"scale"}, {"mean", "std"})
    require(isinstance(normalization, dict) and set(normalization) in shapes,
            f'encode spec: normalization must be {{"scale": S}} or {{"mean": [...], "std": [...]}}, got {normalization!r}')
    if "scale" in normalization:
        scale = numbers("scale", positive=True)[0]
        return torch.zeros(channels, dtype=torch.float32), torch.full((channels,), 1.0 / scale, dtype=torch.float32)
    mean, std = numbers("mean", positive=False), numbers("std", positive=True)
    for key, values in (("mean", mean), ("std", std)):
        require(len(values) == channels, f"encode spec: normalization.{key} has {len(values)} values but the latents "
                                         f"have {channels} channels")
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
