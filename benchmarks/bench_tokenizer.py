"""Tokenizer training-step throughput on this machine, per regularizer.

Ours: one full ``TokenizerTrainer.train_step`` (VA-VAE nll with the teacher's perceptual distance,
KL, the regularizer and its adaptive weight). Reference: the bare step of the same network in
plain PyTorch (encode → sample → decode → summed L1 → backward → Adam), from the same run, so the
ratio is the cost of the objective and the regularizer on top of the network itself.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_tokenizer.py [--batch 16] [--base 16] [--steps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from diffusability.evaluation.domain_net import DomainClassifier
from diffusability.tokenizers import TokenizerSpec
from diffusability.tokenizers.train import TokenizerTrainer

REGULARIZERS = [{"name": "none"}, {"name": "mcos+mdms"}, {"name": "repa", "hidden": 256}, {"name": "lcr"},
                {"name": "eq", "variant": "scale", "probability": 1.0}, {"name": "lmr"}]


def median_seconds(step, repeats: int) -> float:
    step()  # warm-up: allocator, first-call overheads
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bare_step_factory(spec: TokenizerSpec, x: torch.Tensor):
    torch.manual_seed(0)
    trainer = TokenizerTrainer(spec)  # only for an identical network
    model = trainer.model
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=spec.betas)

    def step():
        posterior = model.encode(x)
        loss = (model.decode(posterior.sample()) - x).abs().sum() / x.shape[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--base", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per row (median reported)")
    args = parser.parse_args()
    torch.manual_seed(0)
    teacher = DomainClassifier(num_classes=8, image_size=args.image_size, width=32)
    x = torch.rand(args.batch, 3, args.image_size, args.image_size) * 2 - 1
    base_spec = dict(image_size=args.image_size, base_channels=args.base, batch_size=args.batch)
    reference = median_seconds(bare_step_factory(TokenizerSpec.from_dict(base_spec), x), args.steps)
    print(f"threads={torch.get_num_threads()} batch={args.batch} base={args.base} image={args.image_size} "
          f"(f4, mult 1-2-2, 1 res block, latent 4)")
    print(f"{'regularizer':<12} {'ours s/step':>12} {'bare s/step':>12} {'ratio':>7} {'img/s ours':>11}")
    for regularizer in REGULARIZERS:
        spec = TokenizerSpec.from_dict({**base_spec, "regularizer": regularizer})
        trainer = TokenizerTrainer(spec, teacher=teacher)
        ours = median_seconds(lambda: trainer.train_step(x), args.steps)
        print(f"{regularizer['name']:<12} {ours:>12.3f} {reference:>12.3f} {ours / reference:>7.2f} "
              f"{args.batch / ours:>11.1f}")


if __name__ == "__main__":
    main()
