"""Train one tokenizer: the VA-VAE objective + its regularizer, resumable to the bit on the CPU.

Every random draw comes from a named stream: weights from ``(seed, "tokenizer-init")``, the data
order from a per-epoch permutation of ``(seed, "tokenizer-data", epoch)``, posterior noise and
regularizer draws from one ``torch.Generator`` whose state is checkpointed. A checkpoint holds the
model, regularizer, objective (logvar, discriminator), optimizers, generator and global RNG states,
the step (which fixes the data position) and the log so far, so a killed run resumed from its last
checkpoint ends with exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .. import checkpointing
from ..errors import require
from ..imaging import to_model_input
from ..io import provenance, save_tensors, write_json, write_parquet
from ..progress import log, progress
from ..seeding import torch_generator
from .factory import CONFIG_FILE, WEIGHTS_FILE, initial_tokenizer
from .losses import VAEObjective
from .distributed import BatchLayout, ProcessGroup
from .regularizers import RegularizerContext, build_regularizer, regularizer_needs_teacher
from .spec import TokenizerSpec, as_spec

LOG_FILE = "train_log.parquet"
CHECKPOINT_DIR = "checkpoints"


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
    """uint8 (N, S, S, 3) images and optional (N,) labels as torch tensors, with clear errors."""
    images = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    require(images.dtype == torch.uint8, f"training images: expected uint8, got {images.dtype}")
    require(images.dim() == 4 and images.shape[-1] == 3,
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


class TokenizerTrainer:
    """Holds the model, objective, regularizer and optimizers of one run; one call per step."""

    def __init__(self, spec: TokenizerSpec, teacher: Any = None, group: ProcessGroup | None = None):
        self.spec = spec
        self.group = group or ProcessGroup()
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
        trainable = list(self.model.parameters()) + list(self.regularizer.parameters())
        if spec.learn_logvar:
            trainable.append(self.objective.logvar)
        self.optimizer = torch.optim.Adam(trainable, lr=spec.lr, betas=tuple(spec.betas))
        discriminator = self.objective.discriminator
        self.disc_optimizer = (torch.optim.Adam(discriminator.parameters(), lr=spec.lr, betas=tuple(spec.betas))
                               if discriminator is not None else None)
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
                "spec": self.spec.to_dict()}

    def load_state(self, state: Mapping[str, Any]) -> None:
        require(state.get("spec") == self.spec.to_dict(),
                "tokenizer checkpoint was written with a different spec; delete the checkpoints/ folder to restart")
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
    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One generator (+ discriminator) update on images x (N,3,H,W) in [-1,1]; returns the log row."""
        step = self.step
        posterior = self.regularizer.encode(self.model, x, self.generator)
        latents = posterior.sample(self.generator)
        reconstruction = self.model.decode(self.regularizer.latents_for_decoding(latents, self.generator))
        nll = self.objective.nll(reconstruction, x)
        kl = posterior.kl().mean()
        loss = nll + self.spec.kl_weight * kl
        gan_term, gan_weight = self.objective.generator_gan_term(reconstruction, nll,
                                                                 self.model.decoder_last_layer(), step)
        loss = loss + gan_term
        teacher_features = None
        if self.regularizer.needs_teacher:
            with torch.no_grad():
                teacher_features = self.teacher.feature_map(x, self.grid)
        context = RegularizerContext(images=x, posterior=posterior, latents=latents, model=self.model,
                                     step=step, nll=nll, teacher_features=teacher_features,
                                     reconstruction_nll=self.objective.nll, generator=self.generator)
        reg_loss = self.regularizer.loss(context)
        loss = loss + reg_loss
        checkpointing.check_finite(float(loss.detach()), "tokenizer loss", step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        row = {"step": step + 1, "loss": float(loss.detach()), "nll": float(nll.detach()),
               "kl": float(kl.detach()), "regularizer": float(reg_loss.detach()),
               "l1": float((x - reconstruction).abs().mean().detach()),
               "logvar": float(self.objective.logvar.detach())}
        if self.objective.gan_active(step):
            d_loss = self.objective.discriminator_loss(x, reconstruction)
            checkpointing.check_finite(float(d_loss.detach()), "discriminator loss", step)
            self.disc_optimizer.zero_grad(set_to_none=True)
            d_loss.backward()
            self.disc_optimizer.step()
            row.update(gan=float(gan_term.detach()), gan_weight=float(gan_weight), disc=float(d_loss.detach()))
        row.update(self.regularizer.last_logs)
        self.step += 1
        return row

    # -- one step over micro-batches and processes -----------------------------------------
    def _generator_parameters(self) -> list[torch.nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def train_step_sharded(self, batch: torch.Tensor, layout: BatchLayout) -> dict[str, float]:
        """One update on the global batch (B,H,W,3) uint8, computed as this process's micro-batches.

        Every process draws the posterior noise of the whole global batch from the shared trainer
        generator and uses its own slice, so a micro-batch's noise does not depend on the layout;
        regularizer draws come from a generator named by (step, global micro-batch index). With the
        GAN on, the adaptive weight and the discriminator's BatchNorm see micro-batches, so the
        result then depends on the micro-batch size (as in every accumulating LDM trainer).
        """
        step, scale = self.step, layout.loss_scale
        share = layout.micro_batch / layout.global_batch
        side = self.grid
        noise = torch.randn((layout.global_batch, self.spec.latent_channels, *side), generator=self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        totals = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "regularizer": 0.0, "l1": 0.0, "gan": 0.0, "gan_weight": 0.0}
        kept = []
        for index, part in layout.my_micro_batches():
            generator = torch_generator(self.spec.seed, "tokenizer-train-micro", step, index)
            x = to_model_input(batch[part])
            posterior = self.regularizer.encode(self.model, x, generator)
            latents = posterior.mean + posterior.std * noise[part]
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
            loss = nll + self.spec.kl_weight * kl + gan_term + reg_loss
            checkpointing.check_finite(float(loss.detach()), "tokenizer loss", step)
            (loss * scale).backward()
            kept.append((x, reconstruction.detach()))
            for key, value in (("loss", loss), ("nll", nll), ("kl", kl), ("regularizer", reg_loss),
                               ("l1", (x - reconstruction).abs().mean()), ("gan", gan_term), ("gan_weight", gan_weight)):
                totals[key] += share * float(value.detach())
        self.group.average_gradients(self._generator_parameters())
        self.optimizer.step()
        if self.objective.gan_active(step):
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_total = 0.0
            for x, reconstruction in kept:
                d_loss = self.objective.discriminator_loss(x, reconstruction)
                checkpointing.check_finite(float(d_loss.detach()), "discriminator loss", step)
                (d_loss * scale).backward()
                disc_total += share * float(d_loss.detach())
            self.group.average_gradients(self.objective.discriminator.parameters())
            self.disc_optimizer.step()
            totals["disc"] = disc_total
        else:
            totals.pop("gan"), totals.pop("gan_weight")
        # the shares of all processes add up to the global-batch mean
        row = dict(zip(totals, self.group.sum_values(list(totals.values()))))
        row = {"step": step + 1, **row, "logvar": float(self.objective.logvar.detach())}
        row.update(self.regularizer.last_logs)
        self.step += 1
        return row


def train_tokenizer(images: Any, labels: Any, spec: TokenizerSpec | Mapping[str, Any] | None,
                    out_dir: str | Path, teacher: Any = None, stop_after: int | None = None) -> Path | None:
    """Train a tokenizer on uint8 (N,S,S,3) images (one process, or every process of a torchrun job); write ``model.safetensors``, ``config.json``,
    ``train_log.parquet`` (and ``checkpoints/``) into ``out_dir``; return ``out_dir``.

    Resumes from the newest checkpoint in ``out_dir/checkpoints`` by itself. ``stop_after`` ends the
    run after that many steps without writing the final files (returns None): it simulates a job
    killed after its checkpoint, for tests. The spec's ``batch_size`` is the global batch; it is met
    on any number of processes by gradient accumulation over ``micro_batch_size`` (see distributed.py).
    Only process 0 writes checkpoints and outputs.
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
    group = ProcessGroup()
    micro = spec.micro_batch_size or batch_size // group.world_size
    layout = BatchLayout(batch_size, micro, group.world_size, group.rank)
    trainer = TokenizerTrainer(spec, teacher, group)
    latest = checkpointing.latest_checkpoint(checkpoint_dir)
    if latest is not None:
        trainer.load_state(checkpointing.load_checkpoint(latest))
        log.info("train_tokenizer: resumed from %s (step %d)", latest, trainer.step)
    order = EpochOrder(spec.seed, count, batch_size)
    bar = progress(total=spec.steps, desc=f"tokenizer {spec.name}", unit="step")
    bar.update(trainer.step)
    while trainer.step < spec.steps:
        if stop_after is not None and trainer.step >= stop_after:
            bar.close()
            return None
        started = time.perf_counter()
        batch = images[order.indices(trainer.step)]
        if layout.total_micro_batches == 1:  # one process, one micro-batch: the plain step
            row = trainer.train_step(to_model_input(batch))
        else:
            row = trainer.train_step_sharded(batch, layout)
        trainer.seconds += time.perf_counter() - started
        row["seconds"] = trainer.seconds
        trainer.log_rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.4g}", l1=f"{row['l1']:.3f}")
        if group.is_main and (trainer.step % spec.checkpoint_every == 0 or trainer.step == spec.steps):
            checkpointing.save_checkpoint(checkpoint_dir, trainer.step, trainer.state())
    bar.close()
    if group.is_main:
        write_outputs(trainer, out_dir)
    group.barrier()
    return out_dir


def write_outputs(trainer: TokenizerTrainer, out_dir: Path) -> None:
    import pandas as pd

    save_tensors(out_dir / WEIGHTS_FILE, trainer.model.state_dict(), metadata={"format": "diffusability-conv-vae"})
    write_json(out_dir / CONFIG_FILE, trainer.spec.to_dict())
    write_parquet(pd.DataFrame(trainer.log_rows), out_dir / LOG_FILE, provenance(trainer.spec.to_dict()))
