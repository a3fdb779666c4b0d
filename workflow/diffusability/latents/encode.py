"""Encoding image splits into latents: fixed-seed posterior samples, masks on the latent grid.

An image's posterior noise depends on its index only (drawn in blocks of :data:`NOISE_BLOCK` images),
never on the batch size or the device; a split is written chunk by chunk through
:class:`~diffusability.io.ResumableTensorFile`, so a killed job resumes where it stopped.
"""

from __future__ import annotations

from ..errors import require
from .spec import CHUNK

#: posterior noise is drawn in fixed blocks of images so the latents do not depend on batch_size
NOISE_BLOCK = 256


def posterior_noise(seed: int, split: str, start: int, stop: int, shape: tuple[int, ...]):
    """Standard normal noise (stop − start, *shape) for images [start, stop) of ``split``.

    Block b of NOISE_BLOCK images draws from ``torch_generator(seed, "encode", split, b)``, so an
    image's noise depends on its index only, never on the encoding batch size.
    """
    import torch

    from ..seeding import torch_generator

    pieces = []
    for block in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        noise = torch.randn((NOISE_BLOCK, *shape), generator=torch_generator(seed, "encode", split, block))
        lo = max(start, block * NOISE_BLOCK) - block * NOISE_BLOCK
        hi = min(stop, (block + 1) * NOISE_BLOCK) - block * NOISE_BLOCK
        pieces.append(noise[lo:hi])
    return torch.cat(pieces)


def encode_images(model, images, seed: int, split: str, batch_size: int, sample: bool = True,
                  mirror: bool = False, device: str = "cpu", start: int = 0, stop: int | None = None):
    """uint8 (N,H,W,3) → float32 CPU latents of images [start, stop): posterior samples (or means if
    ``sample`` is False), shape (stop − start, C, h, w).

    ``images`` may be any array-like that slices to uint8 numpy/torch batches (a memory-mapped shard
    split is read batch by batch); ``mirror`` encodes each image flipped left-right. The model runs on
    ``device``; the posterior noise is drawn on the CPU by image index, so it is the same on every device,
    batch size and range.
    """
    import torch

    from ..data.splits import iterate_batches
    from ..imaging import to_model_input
    from ..progress import progress

    stop = images.shape[0] if stop is None else stop
    require(stop - start >= 1, f"encode: the {split} split is empty")
    outputs = []
    with torch.no_grad():
        for rows in progress(iterate_batches(stop - start, batch_size), total=-(-(stop - start) // batch_size),
                             desc=f"encode {split} [{start}, {stop})"):
            rows = slice(start + rows.start, start + rows.stop)
            batch = torch.as_tensor(images[rows])
            if mirror:
                batch = batch.flip(2)  # (n, H, W, 3): W is axis 2
            posterior = model.encode(to_model_input(batch).to(device))
            latents = posterior.mode()
            if sample:
                noise = posterior_noise(seed, split, rows.start, rows.stop, tuple(latents.shape[1:]))
                latents = latents + posterior.std * noise.to(latents.device)
            outputs.append(latents.float().cpu())
    return torch.cat(outputs)


def latent_shape(model, images, device: str) -> tuple[int, int, int]:
    """(C, h, w) of the tokenizer's latents for these images (one image encoded)."""
    import torch

    from ..imaging import to_model_input

    with torch.no_grad():
        return tuple(model.encode(to_model_input(torch.as_tensor(images[0:1])).to(device)).mode().shape[1:])


def encode_split_to_file(model, split, path, *, seed: int, name: str, batch_size: int, device: str,
                         metadata: dict, fingerprint: dict, chunk: int = CHUNK,
                         mirror_copy: bool = False, mask_spec: dict | None = None):
    """Encode a split into ``path`` (.safetensors: ``latents`` float32 (N,C,h,w), ``labels`` int64 (N,),
    optionally ``latents_flip`` and pooled ``masks`` bool (N,h,w)), chunk by chunk, resumably.

    The file is written through :class:`~diffusability.io.ResumableTensorFile`: a killed job that is rerun
    continues after its last finished chunk of ``chunk`` images and ends with the same bytes.
    """
    import numpy as np

    from ..io import ResumableTensorFile
    from ..progress import log

    count = len(split)
    require(count >= 1, f"encode: the {name} split is empty")
    shape = latent_shape(model, split.images, device)
    tensors = {"latents": ("float32", (count, *shape)), "labels": ("int64", (count,))}
    if mirror_copy:
        tensors["latents_flip"] = ("float32", (count, *shape))
    if mask_spec is not None:
        tensors["masks"] = ("bool", (count, *shape[1:]))
    out = ResumableTensorFile(path, tensors, metadata, fingerprint)
    if out.resumed:
        log.info("encode %s: resuming %s (%s)", name, path, out.done)
    if out.done["labels"] < count:
        out.arrays["labels"][:] = np.asarray(split.labels, dtype=np.int64)
        out.mark("labels", count)
    streams = [("latents", name, False)] + ([("latents_flip", f"{name}_flip", True)] if mirror_copy else [])
    for key, noise_split, mirror in streams:
        for start in range(out.done[key], count, chunk):
            stop = min(start + chunk, count)
            out.arrays[key][start:stop] = encode_images(model, split.images, seed, noise_split, batch_size,
                                                        mirror=mirror, device=device, start=start,
                                                        stop=stop).numpy()
            out.mark(key, stop)
    if mask_spec is not None and out.done["masks"] < count:
        out.arrays["masks"][:] = pooled_masks(split, shape[1:], mask_spec["rule"], mask_spec["threshold"]).numpy()
        out.mark("masks", count)
    out.commit()


def pooled_masks(split, grid: tuple[int, int], rule: str, threshold: float, batch_size: int = 1024):
    """The split's pixel masks pooled onto the latent grid, batch by batch: bool torch (N, h, w)."""
    import numpy as np
    import torch

    from ..data.masks import pool_masks_to_grid
    from ..data.splits import iterate_batches

    pieces = [pool_masks_to_grid(np.asarray(split.masks[rows]), grid, rule=rule, threshold=threshold,
                                 valid=None if split.mask_valid is None else np.asarray(split.mask_valid[rows]))
              for rows in iterate_batches(len(split), batch_size)]
    return torch.as_tensor(np.concatenate(pieces)).bool()
