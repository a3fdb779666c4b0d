"""Training of the diffusion transformer on cached, normalised latents (accelerate).

Reproducibility is by construction rather than by saved RNG streams: everything random in
step k — which latents form the global batch, their noise, times and label drops — is drawn
from generators keyed by (seed, k) for the WHOLE global batch, and each process takes its slice.
So the result does not depend on the number of processes or the micro-batch size (up to float
round-off of the gradient sum), and resuming needs only the step number plus the model, EMA
and optimizer states (which full-state checkpoints hold, together with the global RNG states).

Output directory: ``ema.safetensors``, ``model.safetensors``, ``config.json``,
``train_log.parquet``, ``checkpoints/``.
"""

from __future__ import annotations

import contextlib
import copy
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpointing import (capture_rng_state, check_finite, resume_checkpoint,
                             restore_rng_state, save_checkpoint)
from ..devices import note_device
from ..errors import DiffusabilityError, require
from ..io import load_tensors, provenance, provenance_metadata, read_json, save_tensors, write_json, write_parquet
from ..progress import log, progress
from ..seeding import derive_seed, torch_generator
from .spec import DiffusionSpec
from .transformer import DiffusionTransformer, build_backbone
from .transport import flow_matching_loss, sample_time

#: A step whose loss exceeds this multiple of the running loss average is logged as a spike.
SPIKE_FACTOR = 3.0
SPIKE_WARMUP_STEPS = 20


def as_spec(spec: DiffusionSpec | dict) -> DiffusionSpec:
    return spec if isinstance(spec, DiffusionSpec) else DiffusionSpec.from_dict(spec)


def init_model(spec: DiffusionSpec | dict, in_channels: int, grid_size: int, num_classes: int) -> DiffusionTransformer:
    """The freshly initialised backbone of ``spec``; its weights depend only on ``spec.seed``."""
    spec = as_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(spec.seed, "diffusion-init"))
        return build_backbone(spec, in_channels, grid_size, num_classes)


def epoch_permutation(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of one epoch (n,), a function of (seed, epoch) only."""
    return torch.randperm(n, generator=torch_generator(seed, "diffusion-data-order", epoch))


def global_batch_indices(seed: int, step: int, batch_size: int, n: int) -> torch.Tensor:
    """Dataset indices (batch_size,) of the global batch of ``step``: positions step·B … step·B + B − 1
    of the endless stream of per-epoch permutations (a batch may straddle two epochs)."""
    positions = torch.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = torch.empty(batch_size, dtype=torch.long)
    for epoch in epochs.unique().tolist():
        chosen = epochs == epoch
        out[chosen] = epoch_permutation(seed, epoch, n)[positions[chosen] % n]
    return out


def step_randomness(spec: DiffusionSpec, step: int, batch_shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """Noise (B, C, H, W), times (B,) and label-drop mask (B,) of the global batch of ``step`` (CPU)."""
    generator = torch_generator(spec.seed, "diffusion-step", step)
    t = sample_time(batch_shape[0], spec.time_sampling, generator)
    noise = torch.randn(batch_shape, generator=generator)
    drop = torch.rand(batch_shape[0], generator=generator) < spec.label_dropout
    return {"t": t, "noise": noise, "drop": drop}


def flip_choices(seed: int, step: int, batch_size: int) -> torch.Tensor:
    """Which samples (batch_size,) bool of the global batch of ``step`` take the flipped latent (p = 0.5).

    A stream of its own keyed by (seed, step), so switching flips on leaves every other draw of the
    step unchanged, and a resumed run draws the same choices as an uninterrupted one.
    """
    return torch.rand(batch_size, generator=torch_generator(seed, "diffusion-flip", step)) < 0.5


def compile_for_training(model: torch.nn.Module, enabled: bool):
    """``torch.compile(model)`` when ``enabled`` and compilation works here, else ``model`` (warning logged).

    A tiny probe compiles first, so a missing C compiler or backend is caught before training; the
    trainer also falls back to eager if the model's own first compiled call fails.
    """
    if not enabled:
        return model
    try:
        probe = torch.compile(lambda x: x * 2.0 + 1.0)
        require(bool((probe(torch.ones(2)) == 3.0).all()), "torch.compile probe returned a wrong value")
        return torch.compile(model)
    except Exception as exc:  # noqa: BLE001 - any backend failure means "not supported here"
        log.warning("compile: true but torch.compile does not work here (%s: %s); training eagerly",
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return model


def all_finite(latents) -> bool:
    """Finiteness of a tensor, or of lazily normalised latents read chunk by chunk."""
    return latents.all_finite() if hasattr(latents, "all_finite") else bool(torch.isfinite(latents).all())


def check_training_data(latents: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    """Shapes, dtypes, finiteness and label range of the training data; ``latents`` is a float32 tensor
    or :class:`~diffusability.latents.normalised.NormalisedLatents` (memory-mapped, gathered per batch)."""
    require(hasattr(latents, "shape") and hasattr(latents, "dim") and latents.dim() == 4,
            f"latents must be a float tensor (N, C, h, w), got {getattr(latents, 'shape', type(latents))}")
    require(latents.dtype == torch.float32, f"latents must be float32, got {latents.dtype}")
    require(latents.shape[2] == latents.shape[3], f"latents must be on a square grid, got {tuple(latents.shape)}")
    require(labels.shape == (latents.shape[0],), f"labels must have shape ({latents.shape[0]},), got {tuple(labels.shape)}")
    require(labels.dtype == torch.int64, f"labels must be int64, got {labels.dtype}")
    require(all_finite(latents), "latents contain NaN or Inf values")
    require(int(labels.min()) >= 0 and int(labels.max()) < num_classes,
            f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")


def _batch_layout(spec: DiffusionSpec, world: int) -> tuple[int, int]:
    """(micro-batch size, accumulation steps) so that micro × world × accumulation = global batch."""
    require(spec.batch_size % world == 0,
            f"batch_size {spec.batch_size} is not divisible by the {world} processes")
    per_process = spec.batch_size // world
    micro = spec.micro_batch_size or per_process
    require(per_process % micro == 0,
            f"micro_batch_size {micro} does not divide the per-process batch {per_process} "
            f"(batch_size {spec.batch_size} over {world} processes)")
    return micro, per_process // micro


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema ← decay·ema + (1 − decay)·model, parameter by parameter (buffers are fixed encodings)."""
    ema_params = list(ema.parameters())
    params = [p.detach().to(e.dtype) for e, p in zip(ema_params, model.parameters())]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def training_identity(spec: DiffusionSpec, shape: dict, inputs: dict | None, latents: torch.Tensor,
                      labels: torch.Tensor, latents_flip: torch.Tensor | None) -> dict:
    """The run identity (:func:`diffusability.identity.run_identity`) of a diffusion training run: the
    spec's :meth:`~DiffusionSpec.training_fingerprint`, the data shape, and the content of the inputs
    (``inputs``: named paths, e.g. the latent and statistics files; without them — the Python API,
    tests — the hash of the tensors themselves)."""
    from ..identity import run_identity

    result_spec = {**spec.training_fingerprint(), **shape}
    if inputs is None:
        import hashlib

        digest = hashlib.sha256()
        for tensor in (latents, labels, latents_flip):
            if tensor is not None:
                digest.update(torch.as_tensor(tensor[:]).contiguous().numpy().tobytes())
        return {**run_identity(result_spec, {}), "arrays": digest.hexdigest()}
    return run_identity(result_spec, inputs)


def train_diffusion(latents: torch.Tensor, labels: torch.Tensor, spec: DiffusionSpec | dict, out_dir: str | Path,
                    num_classes: int, *, latents_flip: torch.Tensor | None = None,
                    stop_after: int | None = None, inputs: dict | None = None,
                    latent_stats: dict | None = None) -> Path:
    """Train the backbone of ``spec`` on latents (N, C, h, w) float32 (already normalised) with labels (N,) int64.

    ``latents_flip`` (N, C, h, w): the latents of the horizontally flipped images, normalised like
    ``latents``; required when ``spec.flip_augment`` (each draw then takes it with probability 0.5,
    see :func:`flip_choices`), ignored otherwise.
    Resumes by itself from the newest checkpoint in ``out_dir/checkpoints`` when it was written by the
    same run (:func:`training_identity`: same fingerprint, data shape and input content — ``inputs``
    names the input files; without them the tensors are hashed); any other checkpoint folder is moved
    aside and training starts fresh. ``stop_after`` ends
    the call after that step (checkpoint written, no final files): a hook that simulates an
    interrupted job. ``latent_stats`` ({"mean", "std"}: (C,) each): the per-channel statistics the latents
    were normalised with, recorded in ``config.json`` (``latent_stats``) so that a study importing the
    model can check that its latents are normalised the same way (:mod:`diffusability.diffusion.importing`).
    Returns ``out_dir``.
    """
    from accelerate import Accelerator

    spec = as_spec(spec)
    out_dir = Path(out_dir)
    check_training_data(latents, labels, num_classes)
    if spec.flip_augment:
        require(latents_flip is not None, "flip_augment is set but no flipped latents were given: the latent "
                                          "file needs the tensor 'latents_flip' (N, C, h, w)")
        require(hasattr(latents_flip, "shape") and tuple(latents_flip.shape) == tuple(latents.shape)
                and latents_flip.dtype == torch.float32,
                f"latents_flip must be float32 of the latents' shape {tuple(latents.shape)}, got "
                f"{getattr(latents_flip, 'dtype', type(latents_flip))} {tuple(getattr(latents_flip, 'shape', ()))}")
        require(all_finite(latents_flip), "latents_flip contain NaN or Inf values")
    else:
        latents_flip = None
    n, channels, grid = latents.shape[0], latents.shape[1], latents.shape[2]
    shape_info = {"in_channels": channels, "grid_size": grid, "num_classes": num_classes, "num_latents": n}

    accelerator = Accelerator(mixed_precision="bf16" if spec.precision == "bf16" else "no")
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    note_device(device, world)
    micro, accumulation = _batch_layout(spec, world)

    model = init_model(spec, channels, grid, num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=spec.betas,
                                  weight_decay=spec.weight_decay, eps=spec.adam_eps)
    start_step, log_rows, loss_average = 0, [], None
    checkpoint_dir = out_dir / "checkpoints"
    identity = training_identity(spec, shape_info, inputs, latents, labels, latents_flip)
    resume_path, state = resume_checkpoint(checkpoint_dir, identity, max_step=spec.steps)
    if resume_path is not None:
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        restore_rng_state(state["rng"])
        start_step, log_rows, loss_average = state["step"], state["log"], state["loss_average"]
        log.info("resuming diffusion training from %s (step %d)", resume_path, start_step)
    model, optimizer = accelerator.prepare(model, optimizer)
    # the compiled wrapper shares its parameters with `model`; only the forward passes go through it
    forward_model = compile_for_training(model, spec.compile)
    first_call = True
    null_label = num_classes

    def save_state(step: int) -> None:
        if accelerator.is_main_process:
            save_checkpoint(checkpoint_dir, step, {
                "model": accelerator.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                "optimizer": optimizer.state_dict(), "step": step, "rng": capture_rng_state(),
                "data_order": {"seed": spec.seed, "epoch": step * spec.batch_size // n,
                               "position": step * spec.batch_size % n},
                "log": log_rows, "loss_average": loss_average,
                "identity": identity, "spec": spec.to_dict()})
        accelerator.wait_for_everyone()

    model.train()
    bar = progress(range(start_step, spec.steps), total=spec.steps - start_step, desc=f"train {spec.name}",
                   unit="step", disable=not accelerator.is_local_main_process)
    for step in bar:
        started = time.perf_counter()
        indices = global_batch_indices(spec.seed, step, spec.batch_size, n)
        draws = step_randomness(spec, step, (spec.batch_size, channels, grid, grid))
        flips = flip_choices(spec.seed, step, spec.batch_size) if latents_flip is not None else None
        loss_sum = torch.zeros(2, device=device)  # (objective, mse) summed over micro-batches
        for round_ in range(accumulation):
            lo = (round_ * world + rank) * micro
            part = slice(lo, lo + micro)
            x1 = latents[indices[part]]
            if flips is not None:
                x1 = torch.where(flips[part].reshape(-1, 1, 1, 1), latents_flip[indices[part]], x1)
            x1 = x1.to(device)
            y = labels[indices[part]].masked_fill(draws["drop"][part], null_label).to(device)
            # Gradients are all-reduced only on the last micro-batch of the step.
            sync = contextlib.nullcontext() if round_ == accumulation - 1 else accelerator.no_sync(model)
            with sync:
                loss_args = dict(loss=spec.loss, noise=draws["noise"][part], t=draws["t"][part], return_terms=True)
                try:
                    terms = flow_matching_loss(forward_model, x1, y, **loss_args)
                except Exception as exc:  # noqa: BLE001 - only a failing first compiled call is caught
                    if forward_model is model or not first_call:
                        raise
                    log.warning("the compiled model failed on its first call (%s); training eagerly",
                                type(exc).__name__)
                    forward_model = model
                    terms = flow_matching_loss(model, x1, y, **loss_args)
                first_call = False
                accelerator.backward(terms["loss"] / accumulation)
            loss_sum += torch.stack([terms["loss"].detach(), terms["mse"].detach()]) / accumulation
        if world > 1:
            loss_sum = accelerator.reduce(loss_sum, reduction="mean")
        loss_value, mse_value = loss_sum.tolist()
        check_finite(loss_value, "diffusion loss", step)
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), spec.grad_clip or float("inf"))
        grad_norm = float(grad_norm)
        check_finite(grad_norm, "diffusion gradient norm", step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, accelerator.unwrap_model(model), spec.ema_decay)

        spike = loss_average is not None and step >= SPIKE_WARMUP_STEPS and loss_value > SPIKE_FACTOR * loss_average
        if spike:
            log.warning("loss spike at step %d: %.4g vs running average %.4g", step, loss_value, loss_average)
        loss_average = loss_value if loss_average is None else 0.99 * loss_average + 0.01 * loss_value
        log_rows.append({"step": step, "loss": loss_value, "mse": mse_value, "grad_norm": grad_norm,
                         "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started,
                         "loss_spike": bool(spike)})
        done = step + 1
        if done % spec.checkpoint_every == 0 or done == spec.steps or done == stop_after:
            save_state(done)
        if done == stop_after:
            return out_dir
    if resume_path is not None and start_step == spec.steps:
        log.info("diffusion training already complete at step %d; rewriting outputs", start_step)

    if accelerator.is_main_process:
        write_outputs(out_dir, accelerator.unwrap_model(model), ema, spec, shape_info, log_rows, latent_stats)
    accelerator.wait_for_everyone()
    return out_dir


def write_outputs(out_dir: Path, model: DiffusionTransformer, ema: DiffusionTransformer, spec: DiffusionSpec,
                  shape_info: dict[str, int], log_rows: list[dict[str, Any]],
                  latent_stats: dict | None = None) -> None:
    """Final artifacts: weights (safetensors, provenance in their metadata), config.json (spec, data shape
    and, when given, the ``latent_stats`` the latents were normalised with), train_log.parquet."""
    import pandas as pd

    meta = provenance_metadata(spec.to_dict())
    save_tensors(out_dir / "model.safetensors", {k: v.float() for k, v in model.state_dict().items()}, meta)
    save_tensors(out_dir / "ema.safetensors", {k: v.float() for k, v in ema.state_dict().items()}, meta)
    columns = ["step", "loss", "mse", "grad_norm", "lr", "seconds", "loss_spike"]
    write_parquet(pd.DataFrame(log_rows, columns=columns), out_dir / "train_log.parquet",
                  provenance(spec.to_dict()))
    config = {"spec": spec.to_dict(), **shape_info, "steps_done": len(log_rows)}
    if latent_stats is not None:
        config["latent_stats"] = {key: [float(v) for v in torch.as_tensor(latent_stats[key]).reshape(-1).tolist()]
                                  for key in ("mean", "std")}
    write_json(out_dir / "config.json", config)


def read_model_config(directory: str | Path) -> tuple[DiffusionSpec, dict[str, int]]:
    """(spec, {"in_channels", "grid_size", "num_classes"}) from a trained model directory's config.json."""
    config = read_json(Path(directory) / "config.json")
    require(isinstance(config, dict), f"{directory}/config.json: expected a JSON object")
    missing = [k for k in ("spec", "in_channels", "grid_size", "num_classes") if k not in config]
    require(not missing, f"{directory}/config.json: missing keys {missing}")
    for key in ("in_channels", "grid_size", "num_classes"):
        require(isinstance(config[key], int) and not isinstance(config[key], bool) and config[key] >= 1,
                f"{directory}/config.json: {key!r} must be a positive integer, got {config[key]!r}")
    spec = DiffusionSpec.from_dict(config["spec"], source=f"{directory}/config.json spec")
    return spec, {k: int(config[k]) for k in ("in_channels", "grid_size", "num_classes")}


def load_diffusion_model(directory: str | Path, which: str = "ema", device: str | torch.device = "cpu"
                         ) -> DiffusionTransformer:
    """The trained model of ``directory`` (``which`` = "ema" or "model") in eval mode, float32."""
    require(which in ("ema", "model"), f"which must be 'ema' or 'model', got {which!r}")
    spec, shape = read_model_config(directory)
    model = build_backbone(spec, shape["in_channels"], shape["grid_size"], shape["num_classes"])
    weights = load_tensors(Path(directory) / f"{which}.safetensors")
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise DiffusabilityError(f"{directory}/{which}.safetensors does not match config.json: {exc}") from exc
    return model.to(device).eval()
