"""``diffusability reconstruction``: the reconstruction stage's command.

PSNR / SSIM / rFD (domain-net Fréchet distance), and rFID / LPIPS when their weights are given, of the
trained tokenizer and of its untrained self, as tidy result rows. The measuring is
:mod:`diffusability.reconstruction.measure`.
"""

from __future__ import annotations

import argparse

from ..specs import resolve_spec


def reconstruction_defaults() -> dict:
    """Keys and defaults of the ``reconstruction`` spec: the config's ``generation`` section is passed on, and
    its ``batch_size`` and ``is_splits`` take :class:`~diffusability.evaluation.generation.GenerationSpec`'s
    defaults (one source; imported here, not at module level, so ``diffusability --help`` stays fast)."""
    from ..evaluation.generation import GenerationSpec

    generation = GenerationSpec()
    return {"seed": None, "batch_size": generation.batch_size, "is_splits": generation.is_splits}


def register(subparsers) -> None:
    """Add ``reconstruction`` to the ``diffusability`` parser."""
    from ..specs import json_spec
    from ..devices import add_device_argument

    parser = subparsers.add_parser("reconstruction", help="PSNR/SSIM/rFD of a tokenizer vs its untrained self",
                                   description="Reconstruction rows (Parquet) of a tokenizer on a split.")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--data", required=True, help="image split (.safetensors)")
    parser.add_argument("--feature-net", required=True, help="domain-net directory (features for rFD)")
    parser.add_argument("--spec", type=json_spec, required=True, help='JSON: {"batch_size"}')
    parser.add_argument("--inception-weights", default=None,
                        help="FID Inception-v3 weights (.safetensors): adds the rFID rows")
    parser.add_argument("--inception-sha256", default=None, help="expected SHA-256 of --inception-weights")
    parser.add_argument("--lpips-weights", default=None,
                        help="LPIPS-VGG weights (VGG16 features + lin heads; .safetensors/.pth): adds the lpips rows")
    add_device_argument(parser)
    parser.add_argument("--out", required=True, help="result rows (.parquet)")
    parser.set_defaults(func=run_reconstruction)


def run_reconstruction(args: argparse.Namespace) -> int:
    """Reconstruction rows of ``--tokenizer`` and of its untrained self on ``--data``, written to ``--out``."""
    import json
    import time

    from ..data.splits import open_image_split
    from ..devices import resolve_device
    from ..evaluation.inception import load_fid_inception
    from ..io import provenance, write_parquet
    from ..progress import log
    from ..rows import result_row, rows_frame
    from ..teacher.domain_net import load_domain_classifier
    from ..tokenizers.factory import initial_tokenizer, load_tokenizer
    from .measure import (RECONSTRUCTION_ROWS, domain_features, inception_features, lpips_distances,
                          original_features, reconstruction_metrics)

    spec = resolve_spec(args.spec, reconstruction_defaults(), "reconstruction", positive=("batch_size", "is_splits"))
    batch_size = int(spec["batch_size"])
    device = resolve_device(args.device)
    images = open_image_split(args.data).images  # checked: uint8 (N, H, W, 3)
    extractors = {"rfd": domain_features(load_domain_classifier(args.feature_net), device)}
    if args.inception_weights:
        extractors["rfid"] = inception_features(load_fid_inception(args.inception_weights, args.inception_sha256),
                                                device)
    pair_scores = {}
    if args.lpips_weights:
        from ..tokenizers.lpips import load_lpips_vgg

        pair_scores["lpips"] = lpips_distances(load_lpips_vgg(args.lpips_weights), device)
    trained = load_tokenizer(args.tokenizer).to(device)
    untrained = initial_tokenizer(trained.spec).eval().to(device)
    references = original_features(extractors, images, batch_size)
    params = json.dumps({"tokenizer": trained.spec.name, "posterior": "mean",
                         **{name: RECONSTRUCTION_ROWS[name][1] for name in ("psnr", "ssim", *pair_scores, *extractors)},
                         "untrained": "same config.json and seed, before training"}, sort_keys=True)
    rows = []
    for suffix, model in (("", trained), ("_untrained", untrained)):
        started = time.perf_counter()
        values = reconstruction_metrics(model, images, None, batch_size, extractors=extractors,
                                        references=references, device=device, pair_scores=pair_scores)
        seconds = time.perf_counter() - started
        log.info("reconstruction%s: %.1f s", suffix or " (trained)", seconds)
        for metric in ("psnr", "ssim", *pair_scores, *extractors):
            rows.append(result_row(metric + suffix, values[metric], RECONSTRUCTION_ROWS[metric][0], params,
                                   images.shape[0]))
    table = rows_frame(rows)
    write_parquet(table, args.out, provenance(trained.spec.to_dict(), tokenizer=str(args.tokenizer)))
    log.info("reconstruction: %s", {r["metric"]: round(r["value"], 4) for r in rows})
    return 0
