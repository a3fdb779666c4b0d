"""The embedded default's "domain network": a small CNN classifier trained on the shapes images.

It plays two roles on the laptop-sized default, where no pretrained Inception/DINOv2 is present:
- the feature network of the generation metrics (FD of its pooled features, IS and class
  accuracy of its logits), and
- the stand-in teacher of the tokenizer regularizers: spatial feature maps at the latent grid
  for the VF/REPA alignment losses (``feature_map``) and a feature pyramid for the perceptual loss.

Architecture (``width`` = w, input side S divisible by 16):

    (N,3,S,S) in [-1,1] ─ patchify conv (stride S/16) → w @16×16
        ─ conv3×3 → level 1 (w @16×16)
        ─ conv3×3 /2, conv3×3 → level 2 (2w @8×8)
        ─ conv3×3 /2, conv3×3 → level 3 (4w @4×4)
        ─ global average pool → features (4w) ─ linear → logits (K)

Every conv is followed by GroupNorm and SiLU. SiLU (not ReLU) because a ReLU channel that is
dead on every image has zero variance and makes the FD covariance singular. Reducing to a
16×16 grid at once keeps a training step at batch 128 around 0.1 s on two CPU cores.
The training loop and the directory format (``model.safetensors``, ``config.json``,
``train_log.parquet``) are at the bottom of this file.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffusabilityError, about, reject_unknown_keys, require

BASE_GRID = 16  # side of the first feature map, whatever the image size


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    groups = math.gcd(8, out_channels)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
    )


class DomainClassifier(nn.Module):
    """Small CNN classifier on (N, 3, S, S) images in [-1, 1]; see the module docstring."""

    def __init__(self, num_classes: int, image_size: int, width: int = 32):
        super().__init__()
        require(isinstance(num_classes, int) and num_classes >= 2,
                f"DomainClassifier num_classes={num_classes!r}: expected an integer >= 2")
        require(isinstance(image_size, int) and image_size >= BASE_GRID and image_size % BASE_GRID == 0,
                f"DomainClassifier image_size={image_size!r}: expected a multiple of {BASE_GRID} (32 or 64)")
        require(isinstance(width, int) and width >= 8, f"DomainClassifier width={width!r}: expected an integer >= 8")
        self.num_classes, self.image_size, self.width = num_classes, image_size, width
        patch = image_size // BASE_GRID
        groups = math.gcd(8, width)
        self.stem = nn.Sequential(nn.Conv2d(3, width, patch, stride=patch), nn.GroupNorm(groups, width), nn.SiLU())
        self.level1 = _conv_block(width, width)
        self.level2 = nn.Sequential(_conv_block(width, 2 * width, stride=2), _conv_block(2 * width, 2 * width))
        self.level3 = nn.Sequential(_conv_block(2 * width, 4 * width, stride=2), _conv_block(4 * width, 4 * width))
        self.head = nn.Linear(4 * width, num_classes)

    @property
    def feature_dim(self) -> int:
        """F of :meth:`features` (= 4·width)."""
        return 4 * self.width

    def feature_map_channels(self, grid: tuple[int, int]) -> int:
        """Fm of :meth:`feature_map` at this latent grid (w, 2w or 4w; see there)."""
        return self.width * 2 ** self._feature_map_level(grid)

    def _feature_map_level(self, grid) -> int:
        """Index of the coarsest pyramid level whose side (16, 8, 4) is at least the grid's larger side."""
        side = max(grid)
        for level in (2, 1):
            if BASE_GRID >> level >= side:
                return level
        return 0

    def _check_input(self, x: torch.Tensor) -> None:
        require(x.ndim == 4 and x.shape[1] == 3 and tuple(x.shape[-2:]) == (self.image_size, self.image_size),
                f"domain net input: expected (N, 3, {self.image_size}, {self.image_size}) floats in [-1, 1], "
                f"got {tuple(x.shape)}")
        require(x.is_floating_point(), f"domain net input: expected floats in [-1, 1], got {x.dtype}")

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Intermediate maps for a perceptual loss.

        Args:
            x: (N, 3, S, S) in [-1, 1].
        Returns:
            [(N, w, 16, 16), (N, 2w, 8, 8), (N, 4w, 4, 4)].
        """
        self._check_input(x)
        level1 = self.level1(self.stem(x))
        level2 = self.level2(level1)
        level3 = self.level3(level2)
        return [level1, level2, level3]

    def feature_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A spatial feature map at a tokenizer's latent grid, for the alignment regularizers.

        The most semantic level that still has at least the grid's resolution is
        adaptive-average-pooled to the grid: grids up to 4×4 use level 3 (4w channels), up to
        8×8 level 2 (2w), finer grids level 1 (w; repeated, nearest, beyond 16×16). Taking a
        finer level rather than upsampling the 4×4 map keeps one distinct feature per latent token.

        Args:
            x: (N, 3, S, S) in [-1, 1]; grid: (h, w) of the tokenizer's latent.
        Returns:
            (N, :meth:`feature_map_channels` (grid), h, w).
        """
        require(len(grid) == 2 and all(int(g) == g and g >= 1 for g in grid),
                f"feature_map grid={grid!r}: expected (h, w) positive integers")
        grid = (int(grid[0]), int(grid[1]))
        level = self._feature_map_level(grid)
        return F.adaptive_avg_pool2d(self.feature_pyramid(x)[level], grid)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features for Fréchet distances: (N, 3, S, S) → (N, 4·width)."""
        return self.feature_pyramid(x)[-1].mean(dim=(2, 3))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits: (N, 3, S, S) → (N, num_classes)."""
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both outputs from one pass: ((N, 4·width), (N, num_classes))."""
        features = self.features(x)
        return features, self.head(features)

    def config(self) -> dict:
        return {"num_classes": self.num_classes, "image_size": self.image_size, "width": self.width}


# ----------------------------------------------------------------------------- training

@dataclasses.dataclass(frozen=True)
class DomainNetSpec:
    """Training settings of the domain network (the ``teacher`` slice of the config).

    ``max_shift`` is the largest random translation in pixels (edge-replicated padding);
    ``flip`` enables random horizontal flips (the shapes classes are mirror-invariant);
    ``warmup_steps`` of linear warm-up precede a cosine decay to zero.
    """

    seed: int = 0
    width: int = 32
    steps: int = 300
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_shift: int = 4
    flip: bool = True
    warmup_steps: int = 20
    eval_batch_size: int = 256

    @classmethod
    def from_dict(cls, spec: dict | None) -> "DomainNetSpec":
        spec = dict(spec or {})
        known = {f.name for f in dataclasses.fields(cls)}
        reject_unknown_keys(spec, known, "teacher spec")
        result = cls(**spec)
        for name in ("steps", "batch_size", "width", "eval_batch_size"):
            value = getattr(result, name)
            require(isinstance(value, int) and value >= 1, f"teacher spec {name}={value!r}: expected an integer >= 1")
        require(isinstance(result.max_shift, int) and result.max_shift >= 0,
                f"teacher spec max_shift={result.max_shift!r}: expected an integer >= 0")
        require(float(result.lr) > 0, f"teacher spec lr={result.lr!r}: expected > 0")
        require(float(result.weight_decay) >= 0, f"teacher spec weight_decay={result.weight_decay!r}: expected >= 0")
        return result


def _augment(batch: torch.Tensor, spec: DomainNetSpec, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and translations of (N, 3, S, S) images (one draw per image)."""
    n, _, size, _ = batch.shape
    if spec.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        batch = torch.where(flip.view(n, 1, 1, 1), batch.flip(-1), batch)
    if spec.max_shift > 0:
        s = spec.max_shift
        padded = F.pad(batch, (s, s, s, s), mode="replicate")
        offsets = torch.randint(0, 2 * s + 1, (n, 2), generator=generator).tolist()
        batch = torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets)])
    return batch


def _check_images(images, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    from ..data.shards import ConcatenatedArrays

    if not isinstance(images, ConcatenatedArrays):  # memory-mapped shards stay lazy (gathered per batch)
        images = np.asarray(images)
    labels = np.asarray(labels)
    require(images.dtype == np.uint8 and images.ndim == 4 and images.shape[-1] == 3,
            f"{name} images: expected uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    require(labels.shape == (images.shape[0],),
            f"{name} labels: expected shape ({images.shape[0]},), got {labels.shape}")
    require(images.shape[0] >= 1, f"{name} images: empty")
    return images, labels.astype(np.int64)


@torch.no_grad()
def classification_accuracy(model: DomainClassifier, images: np.ndarray, labels: np.ndarray,
                            batch_size: int = 256) -> float:
    """Fraction of uint8 (N, H, W, 3) images whose argmax logit equals their label (on the model's device)."""
    from ..imaging import to_model_input

    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model.logits(to_model_input(images[start:start + batch_size]).to(device)).cpu()
        correct += int((logits.argmax(dim=1) == torch.as_tensor(labels[start:start + batch_size])).sum())
    model.train(was_training)
    return correct / len(images)


def train_domain_classifier(images, labels, spec: dict | DomainNetSpec | None, out_dir,
                            val_images=None, val_labels=None, num_classes: int | None = None,
                            device: str = "cpu") -> dict:
    """Train a :class:`DomainClassifier` and save it as a directory.

    Args:
        images: uint8 (N, S, S, 3) training images; labels: int (N,) in [0, K).
        spec: a :class:`DomainNetSpec` or its dict (unknown keys are an error).
        out_dir: directory to write ``model.safetensors``, ``config.json``, ``train_log.parquet``.
        val_images, val_labels: optional held-out split for the reported accuracy.
        num_classes: K (default: max label + 1 over train and val).

    Returns:
        The ``config.json`` content (includes ``val_accuracy``, ``train_accuracy``, ``seconds``).
    """
    import pandas as pd

    from ..imaging import to_model_input
    from ..io import provenance, provenance_metadata, save_tensors, write_json, write_parquet
    from ..progress import log, progress
    from ..seeding import torch_generator

    spec = spec if isinstance(spec, DomainNetSpec) else DomainNetSpec.from_dict(spec)
    images, labels = _check_images(images, labels, "train")
    has_val = val_images is not None
    if has_val:
        val_images, val_labels = _check_images(val_images, val_labels, "val")
        require(val_images.shape[1:] == images.shape[1:],
                f"val images: shape {val_images.shape[1:]} differs from train {images.shape[1:]}")
    require(images.shape[1] == images.shape[2], f"train images: expected square images, got {images.shape[1:3]}")
    all_labels = np.concatenate([labels, val_labels]) if has_val else labels
    require(int(all_labels.min()) >= 0, "labels: negative class index")
    num_classes = int(num_classes) if num_classes is not None else int(all_labels.max()) + 1
    require(int(all_labels.max()) < num_classes, f"labels: max label {int(all_labels.max())} >= num_classes {num_classes}")

    torch.manual_seed(spec.seed)  # the initial weights
    model = DomainClassifier(num_classes, int(images.shape[1]), spec.width).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

    def learning_rate(step: int) -> float:
        if step < spec.warmup_steps:
            return spec.lr * (step + 1) / spec.warmup_steps
        progress_fraction = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return spec.lr * 0.5 * (1.0 + math.cos(math.pi * progress_fraction))

    order_generator = torch_generator(spec.seed, "domain_net", "batches")
    augment_generator = torch_generator(spec.seed, "domain_net", "augment")
    all_targets = torch.from_numpy(labels)
    rows, start = [], time.perf_counter()
    model.train()
    bar = progress(range(spec.steps), total=spec.steps, desc="train domain net", unit="step")
    for step in bar:
        index = torch.randint(0, len(images), (min(spec.batch_size, len(images)),), generator=order_generator)
        # Augmentation draws on the CPU generator, so a GPU run sees the same crops and flips.
        batch = _augment(to_model_input(images[index.numpy()]), spec, augment_generator).to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        logits = model.logits(batch)
        targets = all_targets[index].to(device)
        loss = F.cross_entropy(logits, targets)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise DiffusabilityError(f"domain net cross-entropy is {value} at step {step}: lower teacher lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = float((logits.argmax(1) == targets).float().mean())
        rows.append({"step": step, "loss": value, "batch_accuracy": accuracy, "lr": learning_rate(step),
                     "seconds": time.perf_counter() - start})
        bar.set_postfix(loss=f"{value:.3f}", acc=f"{accuracy:.2f}", refresh=False)
    bar.close()
    train_seconds = time.perf_counter() - start
    model.eval()
    train_subset = slice(0, min(len(images), 2000))
    config = {
        **model.config(),
        "feature_dim": model.feature_dim,
        "spec": dataclasses.asdict(spec),
        "train_accuracy": classification_accuracy(model, images[train_subset], labels[train_subset],
                                                  spec.eval_batch_size),
        "val_accuracy": (classification_accuracy(model, val_images, val_labels, spec.eval_batch_size)
                         if has_val else None),
        "n_train": int(len(images)),
        "n_val": int(len(val_images)) if has_val else 0,
        "chance_accuracy": 1.0 / num_classes,
    }
    # the wall time stays out of config.json (a declared output: its bytes must identify its content);
    # the log and the per-step rows of train_log.parquet keep it
    log.info("domain net: trained in %.1f s", train_seconds)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(out_dir / "model.safetensors", {k: v.cpu() for k, v in model.state_dict().items()},
                 metadata={"kind": "domain_classifier", **provenance_metadata(dataclasses.asdict(spec))})
    write_parquet(pd.DataFrame(rows), out_dir / "train_log.parquet", provenance(dataclasses.asdict(spec)))
    # config.json last: its presence marks a complete directory.
    write_json(out_dir / "config.json", config)
    return config


def load_domain_classifier(directory) -> DomainClassifier:
    """Load a directory written by :func:`train_domain_classifier`; eval mode, no gradients."""
    from ..io import load_tensors, read_json

    directory = Path(directory)
    require(directory.is_dir(), f"{directory}: domain network directory not found (run train-teacher)")
    config = read_json(directory / "config.json")
    require(isinstance(config, dict), f"{directory / 'config.json'}: expected a JSON object")
    for key in ("num_classes", "image_size", "width"):
        require(key in config, f"{directory / 'config.json'}: missing key {key!r}")
        require(isinstance(config[key], int) and not isinstance(config[key], bool),
                f"{directory / 'config.json'}: {key!r} must be an integer, got {config[key]!r}")
    with about(directory / "config.json"):
        model = DomainClassifier(config["num_classes"], config["image_size"], config["width"])
    state = load_tensors(directory / "model.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise DiffusabilityError(f"{directory / 'model.safetensors'}: does not match config.json ({exc})") from exc
    model.eval()
    model.requires_grad_(False)
    return model
