"""Train one tokenizer through accelerate: the VA-VAE objective + its regularizer, on any number of
processes, resumable to the bit on the CPU.

One step takes the global batch ``batch_size`` and meets it on W processes with micro-batches of
``micro_batch_size`` (distributed.py): the generator side (tokenizer, regularizer heads, logvar) and
the PatchGAN discriminator are each wrapped by accelerate in DDP, gradients accumulate locally
under ``no_sync`` and are averaged on a step's last micro-batch. ``precision: bf16`` runs the
forward passes under bfloat16 autocast; parameters, optimizer states and checkpoints stay float32.

Every random draw comes from a named stream: weights from ``(seed, "tokenizer-init")``, the data
order from a per-epoch permutation of ``(seed, "tokenizer-data", epoch)``, the posterior noise of
the whole global batch from one ``torch.Generator`` whose state is checkpointed (each process uses
its slice), regularizer draws from ``(seed, "tokenizer-train-micro", step, micro-batch index)``.
So the data order and the noise do not depend on the process count, and one process with
micro-batches of m images trains the weights of W processes with micro-batches of m (up to float
round-off). A checkpoint holds the model, regularizer, objective (logvar, discriminator),
optimizers, generator and global RNG states, the step (which fixes the data position) and the log
so far, so a killed run resumed from its last checkpoint ends with exactly the weights of an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import checkpointing
from ..devices import note_device
from ..errors import require
from ..imaging import to_model_input
from ..io import provenance, provenance_metadata, save_tensors, write_json, write_parquet
from ..progress import log, progress
from ..seeding import torch_generator
from .distributed import BatchLayout, training_accelerator
from .factory import CONFIG_FILE, WEIGHTS_FILE, initial_tokenizer
from .losses import VAEObjective, hinge_discriminator_loss
from .regularizers import RegularizerContext, build_regularizer, regularizer_needs_teacher
from .spec import TokenizerSpec, as_spec

LOG_FILE = "train_log.parquet"
#: the training-time monitor's figure, beside the log (written when monitor_every > 0)
MONITOR_FIGURE = "monitor.png"
CHECKPOINT_DIR = "checkpoints"
#: The generator-side values of one micro-batch that the log averages over the global batch.
GENERATOR_TERMS = ("loss", "nll", "kl", "regularizer", "l1", "gan", "gan_weight")


class EpochOrder:
    """Batch indices for a step: the step's epoch permutation, sliced at the step's offset.

    The position in the data is a pure function of (seed, step), so resuming needs only the step.
    Each epoch covers ⌊N / batch⌋ full batches (the remainder is dropped, as drop_last does).
    """

    def __init__(self, seed: int, count: int, batch_size: int):
        self.seed, self.count, self.batch_size = seed, count, batch_size
        self.batches_per_epoch = count // batch_size
        self._epoch, self._permutation = -1, None

    def indices(self, step: int) -> torch.Tensor:
        epoch, offset = divmod(step, self.batches_per_epoch)
        if epoch != self._epoch:
            self._permutation = torch.randperm(self.count, generator=torch_generator(self.seed, "tokenizer-data", epoch))
            self._epoch = epoch
        return self._permutation[offset * self.batch_size:(offset + 1) * self.batch_size]


def validate_images(images: Any, labels: Any, image_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 (N, S, S, 3) images and optional (N,) labels as torch tensors, with clear errors.

    Memory-mapped shards (:class:`~diffusability.data.shards.ConcatenatedArrays`) stay lazy: the
    training loop gathers each global batch from them.
    """
    from ..data.shards import ConcatenatedArrays

    if isinstance(images, ConcatenatedArrays):
        require(images.dtype == np.uint8, f"training images: expected uint8, got {images.dtype}")
    else:
        images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        require(images.dtype == torch.uint8, f"training images: expected uint8, got {images.dtype}")
    require(len(images.shape) == 4 and images.shape[-1] == 3,
            f"training images: expected (N, H, W, 3), got {tuple(images.shape)}")
    require(images.shape[1] == image_size and images.shape[2] == image_size,
            f"training images are {images.shape[1]}×{images.shape[2]} but the spec's image_size is {image_size}")
    if labels is not None:
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        require(labels.shape == (images.shape[0],),
                f"training labels: expected shape ({images.shape[0]},), got {tuple(labels.shape)}")
    return images, labels


def prepare_teacher(teacher: Any) -> Any:
    """Freeze a teacher network (eval mode, no gradients to its weights)."""
    if isinstance(teacher, torch.nn.Module):
        teacher.eval()
        for parameter in teacher.parameters():
            parameter.requires_grad_(False)
    return teacher


class GeneratorObjective(nn.Module):
    """The generator side of one micro-batch as one module, so that one DDP wraps all it trains.

    Registered: the tokenizer, the regularizer (its heads) and the nll's logvar. Held unregistered:
    the VAE objective (its discriminator has its own optimizer and its own DDP) and the frozen
    teacher. The adaptive weights (GAN at the decoder's last conv, VF/REPA at the encoder's) take
    ``autograd.grad`` of this process's micro-batch inside ``forward``; that never touches ``.grad``,
    so DDP only ever averages the gradient of the returned loss.
    """

    def __init__(self, model: nn.Module, regularizer: nn.Module, objective: VAEObjective, teacher: Any,
                 kl_weight: float, grid: tuple[int, int]):
        super().__init__()
        self.model, self.regularizer = model, regularizer
        self.logvar = objective.logvar  # the same Parameter: trained with the generator
        self.__dict__["objective"] = objective
        self.__dict__["teacher"] = teacher
        self.kl_weight, self.grid = kl_weight, grid

    def forward(self, x: torch.Tensor, noise: torch.Tensor, generator: torch.Generator,
                step: int) -> dict[str, torch.Tensor]:
        """Images x (m,3,H,W) in [-1,1], posterior noise (m,C,h,w) → {"loss": scalar with graph,
        the other GENERATOR_TERMS detached, "reconstruction": (m,3,H,W) detached}."""
        posterior = self.regularizer.encode(self.model, x, generator)
        latents = posterior.mean + posterior.std * noise
        reconstruction = self.model.decode(self.regularizer.latents_for_decoding(latents, generator))
        nll = self.objective.nll(reconstruction, x)
        kl = posterior.kl().mean()
        gan_term, gan_weight = self.objective.generator_gan_term(reconstruction, nll,
                                                                 self.model.decoder_last_layer(), step)
        teacher_features = None
        if self.regularizer.needs_teacher:
            with torch.no_grad():
                teacher_features = self.teacher.feature_map(x, self.grid)
        context = RegularizerContext(images=x, posterior=posterior, latents=latents, model=self.model,
                                     step=step, nll=nll, teacher_features=teacher_features,
                                     reconstruction_nll=self.objective.nll, generator=generator)
        reg_loss = self.regularizer.loss(context)
        loss = nll + self.kl_weight * kl + gan_term + reg_loss
        detached = {"nll": nll, "kl": kl, "regularizer": reg_loss, "l1": (x - reconstruction).abs().mean(),
                    "gan": gan_term, "gan_weight": gan_weight, "reconstruction": reconstruction}
        return {"loss": loss, **{key: value.detach() for key, value in detached.items()}}


class DiscriminatorObjective(nn.Module):
    """The PatchGAN's hinge loss on one micro-batch (real and reconstructed (m,3,H,W)) as a module,
    so that DDP sees both discriminator calls in one forward."""

    def __init__(self, discriminator: nn.Module):
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return hinge_discriminator_loss(self.discriminator(real.detach()), self.discriminator(fake.detach()))


@contextlib.contextmanager
def frozen(module: nn.Module | None):
    """``module``'s parameters need no gradient inside the block (the generator's pass through the
    discriminator: its weights are the discriminator step's business)."""
    parameters = [p for p in module.parameters() if p.requires_grad] if module is not None else []
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


#: Spec keys that do not change the trained weights (a run that differs only there resumes).
NON_RESULT_KEYS = ("name", "checkpoint_every", "monitor_every", "monitor_images", "monitor_study")


def training_identity(spec: TokenizerSpec, inputs: Mapping[str, Any] | None, images: Any = None,
                      labels: Any = None) -> dict[str, Any]:
    """The run identity (:func:`diffusability.identity.run_identity`) of a tokenizer training run.

    ``inputs`` names the input paths (training split, teacher); a caller that passes arrays only
    (the Python API, tests) gets the hash of the arrays instead.
    """
    from ..identity import run_identity

    result_spec = {k: v for k, v in spec.to_dict().items() if k not in NON_RESULT_KEYS}
    if inputs is None:
        import hashlib

        digest = hashlib.sha256(np.ascontiguousarray(np.asarray(images)).tobytes())
        if labels is not None:
            digest.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
        return {**run_identity(result_spec, {}), "arrays": digest.hexdigest()}
    return run_identity(result_spec, inputs)


class TokenizerTrainer:
    """Holds the model, objective, regularizer, optimizers and the Accelerator of one run; one call per step."""

    def __init__(self, spec: TokenizerSpec, teacher: Any = None):
        self.spec = spec
        self.model = initial_tokenizer(spec)
        self.teacher = prepare_teacher(teacher)
        self.grid = self.model.latent_grid(spec.image_size)
        needs_teacher = regularizer_needs_teacher(spec.regularizer)
        require(teacher is not None or not needs_teacher,
                f"regularizer {spec.regularizer['name']!r} needs a teacher network (pass --teacher)")
        teacher_dim = None
        if teacher is not None:
            with torch.no_grad():
                probe = torch.zeros(1, 3, spec.image_size, spec.image_size)
                teacher_dim = int(self.teacher.feature_map(probe, self.grid).shape[1])
        self.regularizer = build_regularizer(spec.regularizer, spec.latent_channels, teacher_dim)
        require(not getattr(self.regularizer, "needs_token_masking", False) or spec.architecture == "vit",
                f"regularizer {spec.regularizer['name']!r} masks encoder tokens: it needs architecture 'vit', "
                f"not {spec.architecture!r}")
        self.perceptual_net = None
        if spec.perceptual == "lpips" and spec.perceptual_weight > 0:
            from .lpips import load_lpips_vgg

            self.perceptual_net = load_lpips_vgg(spec.lpips_weights)
        self.objective = VAEObjective(kl_weight=spec.kl_weight, perceptual_weight=spec.perceptual_weight,
                                      teacher=self.teacher, learn_logvar=spec.learn_logvar,
                                      disc_weight=spec.disc_weight, disc_start=spec.disc_start,
                                      disc_layers=spec.disc_layers, disc_channels=spec.disc_channels,
                                      image_size=spec.image_size, perceptual_net=self.perceptual_net)

        self.accelerator = accelerator = training_accelerator(spec.precision)
        # on the device before the optimizers exist, so that resumed optimizer states land there too
        for module in (self.model, self.regularizer, self.objective, self.teacher, self.perceptual_net):
            if isinstance(module, nn.Module):
                module.to(accelerator.device)
        trainable = list(self.model.parameters()) + list(self.regularizer.parameters())
        if spec.learn_logvar:
            trainable.append(self.objective.logvar)
        optimizer = torch.optim.Adam(trainable, lr=spec.lr, betas=tuple(spec.betas))
        self.train_generator, self.optimizer = accelerator.prepare(
            GeneratorObjective(self.model, self.regularizer, self.objective, self.teacher, spec.kl_weight,
                               self.grid), optimizer)
        self.train_discriminator = self.disc_optimizer = None
        if self.objective.discriminator is not None:
            disc_optimizer = torch.optim.Adam(self.objective.discriminator.parameters(), lr=spec.lr,
                                              betas=tuple(spec.betas))
            self.train_discriminator, self.disc_optimizer = accelerator.prepare(
                DiscriminatorObjective(self.objective.discriminator), disc_optimizer)
        self.generator = torch_generator(spec.seed, "tokenizer-train")
        self.step = 0
        self.log_rows: list[dict[str, float]] = []
        self.seconds = 0.0
        for module in (self.model, self.regularizer, self.objective):
            module.train()

    # -- checkpoint state ------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "regularizer": self.regularizer.state_dict(),
                "objective": self.objective.state_dict(), "optimizer": self.optimizer.state_dict(),
                "disc_optimizer": self.disc_optimizer.state_dict() if self.disc_optimizer else None,
                "generator": self.generator.get_state(), "rng": checkpointing.capture_rng_state(),
                "step": self.step, "log_rows": self.log_rows, "seconds": self.seconds,
                "spec": self.spec.to_dict(), "identity": self.identity}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint into the (already prepared) modules: DDP shares their parameters,
        and every process loads the same file (:func:`checkpointing.resume_checkpoint` has checked
        that it belongs to this run)."""
        self.model.load_state_dict(state["model"])
        self.regularizer.load_state_dict(state["regularizer"])
        self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.disc_optimizer is not None:
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.generator.set_state(state["generator"])
        checkpointing.restore_rng_state(state["rng"])
        self.step, self.log_rows, self.seconds = state["step"], list(state["log_rows"]), state["seconds"]

    # -- one optimisation step -----------------------------------------------------------
    def _sync_on_last(self, module: nn.Module, is_last: bool):
        """DDP all-reduces gradients only in the backward of a process's last micro-batch."""
        return contextlib.nullcontext() if is_last else self.accelerator.no_sync(module)

    def train_step(self, batch: torch.Tensor, layout: BatchLayout) -> dict[str, float]:
        """One generator (+ discriminator) update on the global batch (B,H,W,3) uint8; returns the log row.

        Every process draws the posterior noise of the whole global batch and uses its slice, so a
        micro-batch's noise does not depend on the layout. With the GAN on, the adaptive weight and
        the discriminator's BatchNorm see micro-batches, so the result then depends on the
        micro-batch size (as in every accumulating LDM trainer), not on the process count.
        """
        step, device, accelerator = self.step, self.accelerator.device, self.accelerator
        noise = torch.randn((layout.global_batch, self.spec.latent_channels, *self.grid), generator=self.generator)
        parts = layout.my_micro_batches()
        # each process's shares of the global-batch means; summed over processes below
        share = layout.micro_batch / layout.global_batch
        sums = torch.zeros(len(GENERATOR_TERMS) + 1, dtype=torch.float64, device=device)
        kept = []
        with frozen(self.objective.discriminator):
            for position, (index, part) in enumerate(parts):
                x = to_model_input(batch[part]).to(device)
                generator = torch_generator(self.spec.seed, "tokenizer-train-micro", step, index)
                with self._sync_on_last(self.train_generator, position == len(parts) - 1):
                    terms = self.train_generator(x, noise[part].to(device), generator, step)
                    accelerator.backward(terms["loss"] * layout.loss_scale)
                kept.append((x, terms["reconstruction"]))
                sums[:-1] += share * torch.stack([terms[k].detach().double() for k in GENERATOR_TERMS])
        gan_active = self.objective.gan_active(step)
        if gan_active:
            for position, (x, reconstruction) in enumerate(kept):
                with self._sync_on_last(self.train_discriminator, position == len(kept) - 1):
                    d_loss = self.train_discriminator(x, reconstruction)
                    accelerator.backward(d_loss * layout.loss_scale)
                sums[-1] += share * d_loss.detach().double()
        # one all-reduce for the log; every process then sees the same values and stops together
        totals = dict(zip((*GENERATOR_TERMS, "disc"), accelerator.reduce(sums, reduction="sum").tolist()))
        checkpointing.check_finite(totals["loss"], "tokenizer loss", step)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if gan_active:
            checkpointing.check_finite(totals["disc"], "discriminator loss", step)
            self.disc_optimizer.step()
            self.disc_optimizer.zero_grad(set_to_none=True)
        else:
            for key in ("gan", "gan_weight", "disc"):
                totals.pop(key)
        row = {"step": step + 1, **totals, "logvar": float(self.objective.logvar.detach())}
        row.update(self.regularizer.last_logs)
        self.step += 1
        return row


def train_tokenizer(images: Any, labels: Any, spec: TokenizerSpec | Mapping[str, Any] | None,
                    out_dir: str | Path, teacher: Any = None, stop_after: int | None = None,
                    inputs: Mapping[str, Any] | None = None, monitor_split: Any = None,
                    predictor: Any = None) -> Path | None:
    """Train a tokenizer on uint8 (N,S,S,3) images; write ``model.safetensors``, ``config.json``,
    ``train_log.parquet`` (and ``checkpoints/``) into ``out_dir``; return ``out_dir``.

    One process (``python``), or every process of a ``torchrun`` / ``accelerate launch`` job.
    Resumes from the newest checkpoint in ``out_dir/checkpoints`` by itself when it was written by
    the same run — same spec (``NON_RESULT_KEYS`` aside) and same ``inputs`` (named paths: the
    training split and teacher; without them, the arrays' content) — and moves any other checkpoint
    folder aside to start fresh. ``stop_after`` ends the
    run after that many steps without writing the final files (returns None): it simulates a job
    killed after its checkpoint, for tests. The spec's ``batch_size`` is the global batch; it is met
    on any number of processes by gradient accumulation over ``micro_batch_size`` (see distributed.py).
    Only process 0 writes checkpoints and outputs.

    With ``spec.monitor_every > 0`` the training-time monitor (monitor.py) logs the latent proxies of a
    fixed subset of ``monitor_split`` (an :class:`~diffusability.data.splits.ImageSplit`, normally the
    val split: its labels and masks too) every that many steps, and the study predictor's estimate when
    ``spec.monitor_study`` names a study's tables (``predictor``: its
    :func:`~diffusability.analysis.monitor_predictor.study_predictor`, which the train-tokenizer command
    builds; the analysis sits above this stage); without a split it watches the training images
    (no masks: no SRSS). ``monitor.png`` plots it at the end. The monitor never changes the weights.
    """
    spec = as_spec(spec)
    images, labels = validate_images(images, labels, spec.image_size)
    count = images.shape[0]
    require(count >= 1, "training images: the set is empty")
    batch_size = min(spec.batch_size, count)
    if batch_size < spec.batch_size:
        log.warning("train_tokenizer: only %d images, batch size lowered from %d", count, spec.batch_size)
    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / CHECKPOINT_DIR
    identity = training_identity(spec, inputs, images, labels)
    # the caller fitted the study predictor (a bad study folder failed there, before any step was spent)
    require(predictor is not None or not (spec.monitor_every and spec.monitor_study),
            f"tokenizer spec: monitor_study {spec.monitor_study!r} needs its predictor: pass "
            "predictor=diffusability.analysis.monitor_predictor.study_predictor(spec, monitor_split)")
    # decided before any network or process group is built; every process reads the same folder
    latest, resume_state = checkpointing.resume_checkpoint(checkpoint_dir, identity, max_step=spec.steps)
    trainer = TokenizerTrainer(spec, teacher)
    trainer.identity = identity
    accelerator = trainer.accelerator
    world = accelerator.num_processes
    note_device(accelerator.device, world)  # recorded in the provenance of the weights
    micro = spec.micro_batch_size or batch_size // world
    layout = BatchLayout(batch_size, micro, world, accelerator.process_index)
    if resume_state is not None:
        trainer.load_state(resume_state)
        log.info("train_tokenizer: resumed from %s (step %d)", latest, trainer.step)
    order = EpochOrder(spec.seed, count, batch_size)
    monitor = None
    if spec.monitor_every and accelerator.is_main_process:
        monitor = build_monitor(spec, images, labels, monitor_split, predictor)
    bar = progress(total=spec.steps, desc=f"tokenizer {spec.name}", unit="step",
                   disable=not accelerator.is_local_main_process)
    bar.update(trainer.step)
    while trainer.step < spec.steps:
        if stop_after is not None and trainer.step >= stop_after:
            bar.close()
            return None
        started = time.perf_counter()
        row = trainer.train_step(torch.as_tensor(images[order.indices(trainer.step)]), layout)
        trainer.seconds += time.perf_counter() - started
        row["seconds"] = trainer.seconds
        if monitor is not None and trainer.step % spec.monitor_every == 0:
            row.update(monitor(trainer.model))  # the proxies of the current encoder; weights unchanged
        trainer.log_rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4g}", l1=f"{row['l1']:.3f}")
        if trainer.step % spec.checkpoint_every == 0 or trainer.step == spec.steps:
            if accelerator.is_main_process:
                checkpointing.save_checkpoint(checkpoint_dir, trainer.step, trainer.state())
            accelerator.wait_for_everyone()
    bar.close()
    if accelerator.is_main_process:
        write_outputs(trainer, out_dir)
    accelerator.wait_for_everyone()
    return out_dir


def build_monitor(spec: TokenizerSpec, images: Any, labels: Any, monitor_split: Any = None, predictor: Any = None):
    """The training-time monitor of a fixed subset of ``monitor_split`` (labels, masks, mask_valid), chosen by
    the run's seed; of the training images (labels only) when no split is given."""
    from .monitor import TokenizerMonitor

    if monitor_split is None:
        log.info("train_tokenizer: the monitor watches training images (no val split given: no SRSS)")
        return TokenizerMonitor.from_split(images, labels, None, spec.monitor_images, spec.seed, predictor=predictor)
    shape = tuple(monitor_split.images.shape)
    require(shape[1:3] == (spec.image_size, spec.image_size),
            f"{monitor_split.path}: the monitor's images are {shape[1]}×{shape[2]} but the spec's image_size is "
            f"{spec.image_size}")
    return TokenizerMonitor.from_split(monitor_split.images, monitor_split.labels, monitor_split.masks,
                                       spec.monitor_images, spec.seed, valid=monitor_split.mask_valid,
                                       predictor=predictor)


def write_outputs(trainer: TokenizerTrainer, out_dir: Path) -> None:
    import pandas as pd

    # float32 whatever the precision: autocast never changes the parameters themselves
    weights = {key: value.detach().cpu() for key, value in trainer.model.state_dict().items()}
    save_tensors(out_dir / WEIGHTS_FILE, weights,
                 metadata={"format": "diffusability-conv-vae", **provenance_metadata(trainer.spec.to_dict())})
    write_json(out_dir / CONFIG_FILE, trainer.spec.to_dict())
    table = pd.DataFrame(trainer.log_rows)
    write_parquet(table, out_dir / LOG_FILE, provenance(trainer.spec.to_dict()))
    if trainer.spec.monitor_every:
        from .monitor import monitor_figure

        monitor_figure(table, out_dir / MONITOR_FIGURE, title=trainer.spec.name)
