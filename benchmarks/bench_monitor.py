"""Cost of one training-time monitor evaluation (tokenizers/monitor.py), in total and per proxy.

Trains the embedded default's tokenizer (config/config.yaml's conv f4d4: base 16, channel_mult
[1, 2, 2], 4 latent channels, batch 16, lr 1e-3; no teacher, so no perceptual term) on the demo's
shapes splits (2000 train, 500 val images, 32 px, 8 classes) for --steps steps with the monitor every
--every steps on --images val images, and reports the logged ``monitor_seconds`` (encoding, proxies
and, with --study, the prediction) against the training step's own time. Then, on the trained
encoder, it times the parts of one evaluation separately, --repeats times each (median): the
encoding of the subset (posterior means), every default proxy through the metric registry alone
and, with --study, the study predictor's call (its proxies and the refit).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_monitor.py [--steps 60] [--every 10] [--images 256]
        [--study results/tables] [--out /tmp/monitor-bench]

The training directory (train_log.parquet, monitor.png) stays in --out.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DEMO_TOKENIZER = dict(name="baseline", image_size=32, base_channels=16, channel_mult=[1, 2, 2], num_res_blocks=1,
                      latent_channels=4, batch_size=16, lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--study", default=None, help="a study's results/tables of (4, 8, 8) latents")
    parser.add_argument("--out", default=None, help="training directory (default: a temporary one)")
    args = parser.parse_args()

    from diffusability.data.commands import split_seed
    from diffusability.data.shapes import generate_shapes
    from diffusability.data.splits import ImageSplit
    from diffusability.imaging import to_model_input
    from diffusability.io import read_parquet
    from diffusability.metrics.normalization import channel_stats, normalize_latents
    from diffusability.metrics.registry import compute_metrics
    from diffusability.tokenizers import load_tokenizer, train_tokenizer
    from diffusability.tokenizers.monitor import DEFAULT_PROXIES, default_params

    train = generate_shapes(2000, 32, split_seed(0, "train"))
    val = generate_shapes(500, 32, split_seed(0, "val"))
    split = ImageSplit(val["images"], val["labels"].astype(np.int64), val["masks"], None, 8, "shapes val")
    out = Path(args.out or tempfile.mkdtemp(prefix="monitor-bench-"))
    spec = {**DEMO_TOKENIZER, "steps": args.steps, "checkpoint_every": args.steps, "monitor_every": args.every,
            "monitor_images": args.images, "monitor_study": args.study}
    started = time.perf_counter()
    train_tokenizer(train["images"], train["labels"], spec, out, monitor_split=split)
    total = time.perf_counter() - started
    log = read_parquet(out / "train_log.parquet")
    monitored = log.dropna(subset=["monitor_seconds"])
    # the log's "seconds" is cumulative training time (the monitor's own time is not in it)
    step_seconds = float(np.median(np.diff(np.r_[0.0, log["seconds"].to_numpy()])))
    evaluation = float(monitored["monitor_seconds"].median())
    print(f"{torch.get_num_threads()} threads; {args.steps} steps in {total:.1f} s; "
          f"training step median {step_seconds:.3f} s")
    print(f"monitor: {len(monitored)} evaluations of {int(monitored['monitor_n'].iloc[0])} images: median "
          f"{evaluation:.3f} s (min {monitored['monitor_seconds'].min():.3f} s, max "
          f"{monitored['monitor_seconds'].max():.3f} s) = {evaluation / step_seconds:.1f} training steps; "
          f"every {args.every} steps: +{evaluation / (args.every * step_seconds):.0%} of training time")

    # the parts of one evaluation, on the trained encoder
    from diffusability.tokenizers.monitor import fixed_subset

    model = load_tokenizer(out)
    index = fixed_subset(len(split), min(args.images, len(split)), 0, split.labels)
    x = to_model_input(torch.as_tensor(split.images[index]))
    masks = torch.from_numpy(split.masks[index].reshape(len(index), 8, 4, 8, 4).any(axis=(2, 4)))
    labels = torch.from_numpy(split.labels[index])
    timings: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        with torch.no_grad():
            latents = model.encode(x).mode()
        timings.setdefault("encode", []).append(time.perf_counter() - started)
        latents = normalize_latents(latents, *channel_stats(latents))
        for name in DEFAULT_PROXIES:
            started = time.perf_counter()
            compute_metrics(latents, labels, masks, names=[name], params=default_params((8, 8)))
            timings.setdefault(name, []).append(time.perf_counter() - started)
    if args.study:
        from diffusability.analysis.monitor_predictor import StudyPredictor

        started = time.perf_counter()
        predictor = StudyPredictor(args.study, (4, 8, 8))
        print(f"study predictor: fitted once in {time.perf_counter() - started:.2f} s; proxies {predictor.needed}")
        for _ in range(args.repeats):
            started = time.perf_counter()
            predictor(latents, labels, masks)
            timings.setdefault("prediction (" + ", ".join(predictor.needed) + ")", []).append(
                time.perf_counter() - started)
    for part, values in timings.items():
        print(f"  {part:<40} median {1000 * statistics.median(values):8.1f} ms, min {1000 * min(values):8.1f} ms")
    print(f"figure: {out / 'monitor.png'}")


if __name__ == "__main__":
    main()
