"""Tokenizer training-step throughput on this machine, per regularizer and precision (one process).

Ours: one full ``TokenizerTrainer.train_step`` through accelerate (VA-VAE nll with the teacher's
perceptual distance, KL, the regularizer and its adaptive weight) on a global batch of uint8
images, in fp32 and under bf16 autocast. Reference: the bare fp32 step of the same network in plain
PyTorch (encode → sample → decode → summed L1 → backward → Adam), so ours/bare is the cost of the
objective, the regularizer and the accelerate wrapping on top of the network itself.

accelerate fixes the precision once per process, so each precision runs in a child process of
its own (sequentially; the ratio bf16/fp32 compares two runs of this script, one after the other).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tokenizer.py [--batch 16] [--base 16] [--steps 5]
        [--regularizers none,lmr]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

REGULARIZERS = {"none": {"name": "none"}, "mcos+mdms": {"name": "mcos+mdms"}, "repa": {"name": "repa", "hidden": 256},
                "lcr": {"name": "lcr"}, "eq": {"name": "eq", "variant": "scale", "probability": 1.0},
                "lmr": {"name": "lmr"}}
PRECISIONS = ("fp32", "bf16")


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up: allocator, first-call overheads
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_step_factory(spec, x: torch.Tensor):
    from diffusability.tokenizers.factory import initial_tokenizer

    model = initial_tokenizer(spec).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=spec.betas)

    def step():
        posterior = model.encode(x)
        loss = (model.decode(posterior.sample()) - x).abs().sum() / x.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def measure(args: argparse.Namespace) -> dict[str, float]:
    """Seconds per step {regularizer: s} at ``args.precision`` (+ "bare" for fp32): the child's job."""
    from diffusability.teacher.domain_net import DomainClassifier
    from diffusability.imaging import to_model_input
    from diffusability.tokenizers import TokenizerSpec
    from diffusability.tokenizers.distributed import BatchLayout
    from diffusability.tokenizers.train import TokenizerTrainer

    torch.manual_seed(0)
    teacher = DomainClassifier(num_classes=8, image_size=args.image_size, width=32)
    images = torch.randint(0, 256, (args.batch, args.image_size, args.image_size, 3), dtype=torch.uint8)
    layout = BatchLayout(args.batch, args.batch)
    base_spec = dict(image_size=args.image_size, base_channels=args.base, batch_size=args.batch,
                     precision=args.precision)
    seconds = {}
    if args.precision == "fp32":
        spec = TokenizerSpec.from_dict(base_spec)
        seconds["bare"] = median_seconds(bare_step_factory(spec, to_model_input(images)), args.steps)
    for name in args.regularizers.split(","):
        spec = TokenizerSpec.from_dict({**base_spec, "regularizer": REGULARIZERS[name]})
        trainer = TokenizerTrainer(spec, teacher=teacher)
        seconds[name] = median_seconds(lambda: trainer.train_step(images, layout), args.steps)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    parser.add_argument("--regularizers", default=",".join(REGULARIZERS), help="comma-separated names")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.precision is not None:  # child: one precision, JSON on stdout
        print(json.dumps(measure(args)))
        return
    results = {}
    for precision in PRECISIONS:
        child = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--precision", precision],
                               capture_output=True, text=True, check=True)
        results[precision] = json.loads(child.stdout.strip().splitlines()[-1])
    bare = results["fp32"]["bare"]
    print(f"threads={torch.get_num_threads()} batch={args.batch} base={args.base} image={args.image_size} "
          f"(f4, mult 1-2-2, 1 res block, latent 4), one process")
    print(f"{'regularizer':<12} {'fp32 s/step':>12} {'bf16 s/step':>12} {'bf16/fp32':>10} "
          f"{'bare fp32':>10} {'fp32/bare':>10} {'img/s fp32':>11}")
    for name in args.regularizers.split(","):
        fp32, bf16 = results["fp32"][name], results["bf16"][name]
        print(f"{name:<12} {fp32:>12.3f} {bf16:>12.3f} {bf16 / fp32:>10.2f} {bare:>10.3f} {fp32 / bare:>10.2f} "
              f"{args.batch / fp32:>11.1f}")


if __name__ == "__main__":
    main()
