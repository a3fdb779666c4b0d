"""Throughput of the data stage on this CPU: images per second.

Rows:
- ``shapes`` generation at 32 and 64 px (vectorised numpy);
- ImageNet-like JPEGs (500×375, the typical ImageNet size) → 256 px ADM center crop:
  a plain serial decode+crop loop (the reference: what a training script would do), and
  ``write_shards`` (decode, crop, write .npy shards) with 1 and with ``--workers`` processes.

Usage: ``python benchmarks/bench_preprocess.py [--n-jpeg 200] [--workers 2] [--size 256]``.
The JPEG tree is generated in a temporary directory (smooth random images, quality 90).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_jpeg_tree(root: Path, n: int, width: int = 500, height: int = 375) -> None:
    """``n`` JPEGs in two class folders; low-frequency content so they compress like photos."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"n{i % 2:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
        image.save(folder / f"img_{i:06d}.JPEG", quality=90)


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-jpeg", type=int, default=200)
    parser.add_argument("--n-shapes", type=int, default=2500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()

    from diffusability.data.imagenet import load_center_cropped
    from diffusability.data.shapes import generate_shapes
    from diffusability.data.shards import build_manifest, write_shards

    rows = []
    for px in (32, 64):
        seconds = timed(lambda: generate_shapes(args.n_shapes, px, seed=0))
        rows.append((f"shapes {px}px", args.n_shapes, seconds, None))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        make_jpeg_tree(root, args.n_jpeg)
        manifest = build_manifest(root, root, cache_dir=str(Path(tmp) / "hf"))
        paths = manifest["path"].tolist()
        reference = timed(lambda: [load_center_cropped(p, args.size) for p in paths])
        rows.append((f"reference: serial PIL decode+crop {args.size}px", len(paths), reference, reference))
        for workers in sorted({1, args.workers}):
            seconds = timed(lambda: write_shards(manifest, Path(tmp) / f"shards{workers}", image_size=args.size,
                                                 shard_size=max(1, len(paths) // (4 * workers)),
                                                 workers=workers))
            rows.append((f"write_shards {args.size}px, {workers} worker(s)", len(paths), seconds, reference))

    print(f"{'task':<48} {'images':>7} {'seconds':>8} {'images/s':>9} {'speed vs ref':>12}")
    for name, n, seconds, ref in rows:
        ratio = f"{ref / seconds:.2f}x" if ref else "-"
        print(f"{name:<48} {n:>7} {seconds:>8.2f} {n / seconds:>9.1f} {ratio:>12}")


if __name__ == "__main__":
    main()
