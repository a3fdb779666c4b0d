"""Diffusion training and sampling throughput, and "does the small default beat its untrained self?".

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_diffusion.py             # small CPU config
    .venv/bin/python benchmarks/bench_diffusion.py --mode gpu --model sit_b      # SiT-B/1 bf16 on a GPU

CPU mode trains the small config (class-conditional toy latents, 4 channels on an 8×8 grid) for
--steps steps, then compares the trained EMA with the untrained model built from the same spec:
held-out flow-matching loss (fixed noise and times) and the error of per-class sample means
(50-step Euler, CFG 1.5). GPU mode times training steps (bf16 autocast, AdamW) and 50-step
CFG sampling of SiT-B/1, SiT-XL/1 or the LightningDiT variants at 32 channels on 16×16.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from diffusability.diffusion import transformer
from diffusability.diffusion.train import init_model, load_diffusion_model, train_diffusion
from diffusability.diffusion.transport import flow_matching_loss, sample_time
from diffusability.sampling.euler import euler_sample

SMALL = dict(name="small", depth=3, width=96, heads=4, batch_size=64, lr=1e-3, betas=[0.9, 0.99], ema_decay=0.9,
             label_dropout=0.1, checkpoint_every=1000)


def toy_latents(n: int, classes: int, channels: int = 4, grid: int = 8, seed: int = 0):
    """Class-conditional Gaussians with a smooth per-class spatial pattern, normalised per channel.

    The class patterns and the normalisation are fixed (one distribution); ``seed`` only draws the
    samples, so a held-out set (another seed) comes from the distribution the model was trained on.
    """
    g = torch.Generator().manual_seed(0)
    patterns = torch.randn(classes, channels, 2, 2, generator=g)
    patterns = torch.nn.functional.interpolate(patterns, size=(grid, grid), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(1000 + seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    latents = patterns[labels] * 1.5 + 0.5 * torch.randn(n, channels, grid, grid, generator=g)
    # per-channel moments of the distribution itself (uniform classes), not of this draw
    mean = patterns.mean(dim=(0, 2, 3), keepdim=True) * 1.5
    second = (patterns * 1.5).pow(2).mean(dim=(0, 2, 3), keepdim=True) + 0.25
    std = (second - mean.pow(2)).sqrt()
    return ((latents - mean) / std).float(), labels


@torch.no_grad()
def heldout_loss(model, latents, labels) -> float:
    g = torch.Generator().manual_seed(123)
    t = sample_time(len(latents), "uniform", g)
    return float(flow_matching_loss(model.eval(), latents, labels, g, t=t))


@torch.no_grad()
def class_mean_error(samples, sample_labels, latents, labels, classes) -> float:
    """Mean over classes of ‖mean(generated_c) − mean(data_c)‖² / D."""
    errors = [(samples[sample_labels == c].mean(0) - latents[labels == c].mean(0)).pow(2).mean()
              for c in range(classes) if (sample_labels == c).any()]
    return float(torch.stack(errors).mean())


def cpu_mode(args) -> None:
    classes = 4
    latents, labels = toy_latents(2048, classes)
    heldout, heldout_labels = toy_latents(512, classes, seed=1)
    spec = dict(SMALL, steps=args.steps)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        train_diffusion(latents, labels, spec, out, classes)
        train_seconds = time.perf_counter() - started
        trained = load_diffusion_model(out)
        raw = load_diffusion_model(out, which="model")
        import pandas as pd

        step_seconds = pd.read_parquet(f"{out}/train_log.parquet")["seconds"]
    untrained = init_model(spec, 4, 8, classes).eval()
    n = args.samples
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(n, 4, 8, 8, generator=g)
    sample_labels = torch.arange(n) % classes
    rows = [("train steps", f"{args.steps}", ""),
            ("train seconds (incl. setup)", f"{train_seconds:.1f}", ""),
            ("median step seconds (batch 64)", f"{step_seconds.median():.3f}", ""),
            ("train images/s", f"{64 / step_seconds.median():.1f}", "")]
    results = {}
    for name, model in (("trained EMA", trained), ("trained raw", raw), ("untrained", untrained)):
        started = time.perf_counter()
        samples = euler_sample(model, noise, sample_labels, num_steps=50, cfg_scale=1.5).latents
        seconds = time.perf_counter() - started
        results[name] = (heldout_loss(model, heldout, heldout_labels),
                         class_mean_error(samples, sample_labels, heldout, heldout_labels, classes), n / seconds)
    for metric, k in (("held-out FM loss", 0), ("class-mean error", 1), ("sampling images/s (50 steps, CFG)", 2)):
        a, r, b = results["trained EMA"][k], results["trained raw"][k], results["untrained"][k]
        rows.append((metric, f"{a:.4f} EMA / {r:.4f} raw vs {b:.4f} untrained", f"EMA/untrained {a / b:.3f}"))
    print(f"{'quantity':38s} {'value':50s} note")
    for row in rows:
        print(f"{row[0]:38s} {row[1]:50s} {row[2]}")


def gpu_mode(args) -> None:
    require_cuda = torch.cuda.is_available()
    if not require_cuda:
        raise SystemExit("--mode gpu needs CUDA")
    torch.backends.cuda.matmul.allow_tf32 = True
    device = torch.device("cuda")
    config = getattr(transformer, args.model)(32)
    model = transformer.DiffusionTransformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step = torch.compile(model) if args.compile else model
    batch = args.batch
    x1 = torch.randn(batch, 32, 16, 16, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)

    def train_step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = flow_matching_loss(step, x1, y, t=torch.rand(batch, device=device),
                                      noise=torch.randn_like(x1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        train_step()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.iters):
        train_step()
    torch.cuda.synchronize()
    train_ips = batch * args.iters / (time.perf_counter() - started)
    model.eval()
    noise = torch.randn(args.sample_batch, 32, 16, 16, device=device)
    labels = torch.randint(0, 1000, (args.sample_batch,), device=device)
    euler_sample(model, noise, labels, num_steps=2, cfg_scale=1.5)
    torch.cuda.synchronize()
    started = time.perf_counter()
    euler_sample(model, noise, labels, num_steps=50, cfg_scale=1.5)
    torch.cuda.synchronize()
    sample_ips = args.sample_batch / (time.perf_counter() - started)
    print(f"{args.model}: params {transformer.count_parameters(model) / 1e6:.1f}M, train {train_ips:.0f} img/s "
          f"(bf16, batch {batch}), sampling {sample_ips:.1f} img/s (fp32, 50 steps, CFG 1.5)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--model", default="sit_b", choices=("sit_b", "sit_xl", "lightningdit_b", "lightningdit_xl"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    cpu_mode(args) if args.mode == "cpu" else gpu_mode(args)


if __name__ == "__main__":
    main()
