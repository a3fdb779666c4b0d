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
