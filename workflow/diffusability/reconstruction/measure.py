"""Reconstruction quality of a tokenizer, streamed over an image split.

Each batch is reconstructed through the posterior mean in fixed blocks of :data:`DECODE_BLOCK` images,
scored (PSNR, SSIM: :mod:`diffusability.reconstruction.quality`; LPIPS when given) and featurised for
rFD/rFID (Fréchet distance of feature statistics), then dropped, so a large memory-mapped split never
sits in memory and the values do not depend on the batch size.
"""

from __future__ import annotations


#: Images the decoder sees together. A float32 convolution's result can depend on how many images share
#: a call (a different kernel path), which moves a few uint8 pixels by one level: decoding in fixed blocks
#: aligned to the image index makes reconstructions — and rFID, SSIM, PSNR — independent of batch_size.
DECODE_BLOCK = 8


def aligned_batch_size(batch_size: int) -> int:
    """``batch_size`` rounded down to a multiple of :data:`DECODE_BLOCK` (at least one block)."""
    return max(DECODE_BLOCK, int(batch_size) // DECODE_BLOCK * DECODE_BLOCK)


def reconstruct(model, images, batch_size: int, device: str = "cpu"):
    """uint8 (N,H,W,3) → uint8 CPU reconstructions (N,H,W,3) decoded from the posterior mean."""
    import torch

    from ..data.splits import iterate_batches

    batch_size = aligned_batch_size(batch_size)
    with torch.no_grad():
        return torch.cat([_reconstruct_batch(model, torch.as_tensor(images[rows]), device)
                          for rows in iterate_batches(images.shape[0], batch_size)])


def _reconstruct_batch(model, originals, device: str):
    """uint8 (n,H,W,3) → uint8 CPU (n,H,W,3) through the posterior mean, the model on ``device``, in blocks
    of :data:`DECODE_BLOCK` images (the batch starts at a multiple of it)."""
    import torch

    from ..imaging import to_model_input, to_uint8

    blocks = []
    for start in range(0, originals.shape[0], DECODE_BLOCK):
        x = to_model_input(originals[start:start + DECODE_BLOCK]).to(device)
        blocks.append(to_uint8(model.decode(model.encode(x).mode())).cpu())
    return torch.cat(blocks)


def domain_features(feature_net, device: str = "cpu"):
    """uint8 (n,H,W,3) batch → domain-net ``features`` (n, F) on the CPU."""
    from ..imaging import to_model_input

    feature_net = feature_net.to(device)
    return lambda batch: feature_net.features(to_model_input(batch).to(device)).double().cpu()


def inception_features(net, device: str = "cpu"):
    """uint8 (n,H,W,3) batch → FID Inception pool3 features (n, 2048) on the CPU (TF1 resize on the CPU)."""
    net = net.to(device)
    return lambda batch: net.forward_preprocessed(net.preprocess(batch).to(device))["pool3"].double().cpu()


def original_features(extractors: dict, images, batch_size: int) -> dict:
    """{name: features (N, F)} of the original images for every feature extractor, in one pass."""
    import torch

    from ..data.splits import iterate_batches
    from ..progress import progress

    features = {name: [] for name in extractors}
    count = images.shape[0]
    with torch.no_grad():
        for rows in progress(iterate_batches(count, batch_size), total=-(-count // batch_size), desc="originals"):
            batch = torch.as_tensor(images[rows])
            for name, extract in extractors.items():
                features[name].append(extract(batch))
    return {name: torch.cat(parts) for name, parts in features.items()}


def lpips_distances(lpips_net, device: str = "cpu"):
    """(originals, reconstructions) uint8 (n,H,W,3) batches → per-image LPIPS-VGG distances (n,) on [-1, 1]."""
    from ..imaging import to_model_input

    lpips_net = lpips_net.to(device)
    return lambda a, b: lpips_net(to_model_input(a).to(device), to_model_input(b).to(device)).double().cpu()


def reconstruction_metrics(model, images, feature_net, batch_size: int, extractors: dict | None = None,
                           references: dict | None = None, device: str = "cpu",
                           pair_scores: dict | None = None) -> dict[str, float]:
    """{"psnr", "ssim", "rfd"[, "rfid"]} of ``model`` on uint8 images (N,H,W,3) (posterior mean).

    Streams: each batch is reconstructed on ``device``, scored (per-image PSNR on uint8, SSIM with data
    range 1) and featurised, then dropped, so a 50,000-image memory-mapped val split never sits in
    memory. ``extractors`` maps a row name to a batch → (n, F) feature function (default: ``rfd`` from
    the domain net ``feature_net``); ``references`` holds the originals' features per name (computed
    when missing, so that several models can share one pass over the originals). ``pair_scores`` maps a
    row name to a per-image score of (originals, reconstructions), averaged over images (e.g. ``lpips``).
    """
    import numpy as np
    import torch

    from ..data.splits import iterate_batches
    from ..metrics.frechet import feature_statistics, frechet_distance
    from .quality import mean_psnr, psnr_uint8, ssim
    from ..progress import progress

    batch_size = aligned_batch_size(batch_size)  # reconstructions independent of the batch size
    extractors = extractors or {"rfd": domain_features(feature_net, device)}
    references = dict(references or {})
    missing = {name: f for name, f in extractors.items() if name not in references}
    if missing:
        references.update(original_features(missing, images, batch_size))
    to_unit = lambda batch: batch.permute(0, 3, 1, 2).double() / 255.0  # noqa: E731 - [0, 1] NCHW for SSIM
    psnr, ssim_values = [], []
    pair_scores = pair_scores or {}
    scores = {name: [] for name in pair_scores}
    features = {name: [] for name in extractors}
    count = images.shape[0]
    with torch.no_grad():
        for rows in progress(iterate_batches(count, batch_size), total=-(-count // batch_size), desc="reconstruct"):
            originals = torch.as_tensor(images[rows])
            reconstructions = _reconstruct_batch(model, originals, device)
            psnr.append(psnr_uint8(originals, reconstructions))
            ssim_values.append(ssim(to_unit(originals), to_unit(reconstructions), data_range=1.0))
            for name, extract in extractors.items():
                features[name].append(extract(reconstructions))
            for name, score in pair_scores.items():
                scores[name].append(score(originals, reconstructions))
    values = {"psnr": mean_psnr(np.concatenate(psnr)), "ssim": float(torch.cat(ssim_values).mean())}
    values.update({name: float(torch.cat(parts).mean()) for name, parts in scores.items()})
    for name in extractors:
        mu_ref, sigma_ref = feature_statistics(references[name])
        mu_rec, sigma_rec = feature_statistics(torch.cat(features[name]))
        values[name] = float(frechet_distance(mu_ref, sigma_ref, mu_rec, sigma_rec))
    return values


#: row name → (direction, description) of the reconstruction rows
RECONSTRUCTION_ROWS = {
    "psnr": ("higher", "uint8, data range 255"),
    "ssim": ("higher", "gaussian 11x11, sigma 1.5, [0, 1], data range 1"),
    "rfd": ("lower", "Frechet distance of domain-net features, originals vs reconstructions"),
    "rfid": ("lower", "rFID: Frechet distance of FID Inception-v3 pool3 features (TF1 resize to 299), "
                      "originals vs reconstructions"),
    "lpips": ("lower", "LPIPS-VGG v0.1 on [-1, 1], mean over images"),
}
