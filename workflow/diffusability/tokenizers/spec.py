"""The tokenizer spec: every key a tokenizer training run reads, with the embedded default's values.

``TokenizerSpec.from_dict`` rejects unknown keys with a message naming them, so a typo in the
config never silently trains the default. The spec is written verbatim to ``config.json`` and
``load_tokenizer`` rebuilds the network from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import DiffusabilityError, require

ARCHITECTURES = ("conv", "vit")
PERCEPTUAL = ("teacher", "lpips")
#: "bf16": forward passes under bfloat16 autocast; weights, optimizer states and checkpoints stay float32
PRECISIONS = ("fp32", "bf16")


@dataclass
class TokenizerSpec:
    """Architecture, loss weights and optimisation of one tokenizer (defaults: the small CPU variant)."""

    name: str = "baseline"
    seed: int = 0
    architecture: str = "conv"
    image_size: int = 32
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    mid_attention: bool = False
    latent_channels: int = 4
    dropout: float = 0.0
    # architecture "vit" only (docs/models.md §1.8): patch grid = image_size / patch_size
    patch_size: int = 4
    vit_width: int = 128
    vit_depth: int = 2
    vit_heads: int = 4
    kl_weight: float = 1e-6
    perceptual_weight: float = 1.0
    # "teacher": head-less distance on the teacher's features; "lpips": LPIPS-VGG from lpips_weights
    perceptual: str = "teacher"
    lpips_weights: str | None = None
    learn_logvar: bool = True
    # PatchGAN (docs/models.md §1.2); disc_weight 0 switches the discriminator off entirely.
    disc_weight: float = 0.0
    disc_start: int = 5001
    disc_layers: int = 3
    disc_channels: int = 64
    # the CPU budget of the embedded default: ≈ 0.12–0.4 s per step on 2 shared cores (see the report)
    steps: int = 300
    batch_size: int = 16
    # images per forward/backward on one process; None = the process's whole share of batch_size
    micro_batch_size: int | None = None
    precision: str = "fp32"
    # training-time proxy monitor (tokenizers/monitor.py): every monitor_every steps (0 = off), on a fixed
    # class-balanced subset of monitor_images val images; adds monitor_* columns to train_log.parquet and
    # monitor.png; with monitor_study (a study's results/tables) also the study predictor's gFID estimate
    monitor_every: int = 0
    monitor_images: int = 256
    monitor_study: str | None = None
    lr: float = 1e-3
    betas: tuple[float, float] = (0.5, 0.9)
    checkpoint_every: int = 100
    regularizer: dict = field(default_factory=lambda: {"name": "none"})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "TokenizerSpec":
        values = dict(values or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        require(not unknown, f"tokenizer spec: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for key in ("channel_mult", "attn_resolutions", "betas"):
            if key in values:
                require(isinstance(values[key], (list, tuple)),
                        f"tokenizer spec: {key!r} must be a list, got {values[key]!r}")
                values[key] = tuple(values[key])
        if "regularizer" in values:
            reg = values["regularizer"]
            if isinstance(reg, str):
                reg = {"name": reg}
            require(isinstance(reg, Mapping) and "name" in reg,
                    f"tokenizer spec: 'regularizer' must be an object with a 'name', got {reg!r}")
            values["regularizer"] = dict(reg)
        spec = cls(**values)
        spec.validate()
        return spec

    def validate(self) -> None:
        require(self.architecture in ARCHITECTURES,
                f"tokenizer spec: architecture {self.architecture!r} not supported (expected one of {ARCHITECTURES})")
        for key in ("image_size", "base_channels", "num_res_blocks", "latent_channels", "steps",
                    "batch_size", "checkpoint_every"):
            value = getattr(self, key)
            require(isinstance(value, int) and value >= 1,
                    f"tokenizer spec: {key!r} must be a positive integer, got {value!r}")
        require(len(self.channel_mult) >= 1, "tokenizer spec: 'channel_mult' must not be empty")
        factor = 2 ** (len(self.channel_mult) - 1) if self.architecture == "conv" else self.patch_size
        require(self.image_size % factor == 0,
                f"tokenizer spec: image_size {self.image_size} not divisible by the downsample factor {factor}")
        require(self.micro_batch_size is None or (isinstance(self.micro_batch_size, int) and self.micro_batch_size >= 1),
                f"tokenizer spec: 'micro_batch_size' must be a positive integer or null, got {self.micro_batch_size!r}")
        require(isinstance(self.monitor_every, int) and not isinstance(self.monitor_every, bool)
                and self.monitor_every >= 0,
                f"tokenizer spec: 'monitor_every' must be an integer >= 0, got {self.monitor_every!r}")
        require(isinstance(self.monitor_images, int) and not isinstance(self.monitor_images, bool)
                and self.monitor_images >= 2,
                f"tokenizer spec: 'monitor_images' must be an integer >= 2, got {self.monitor_images!r}")
        require(self.monitor_study is None or (isinstance(self.monitor_study, str) and self.monitor_study),
                f"tokenizer spec: 'monitor_study' must be a folder path or null, got {self.monitor_study!r}")
        require(self.precision in PRECISIONS,
                f"tokenizer spec: precision {self.precision!r} not supported (expected one of {PRECISIONS})")
        require(self.perceptual in PERCEPTUAL,
                f"tokenizer spec: perceptual {self.perceptual!r} not supported (expected one of {PERCEPTUAL})")
        require(self.perceptual != "lpips" or (isinstance(self.lpips_weights, str) and self.lpips_weights),
                "tokenizer spec: perceptual 'lpips' needs 'lpips_weights' (the path of the LPIPS-VGG weights file)")
        require(self.lr > 0, f"tokenizer spec: 'lr' must be positive, got {self.lr}")
        require(len(self.betas) == 2, f"tokenizer spec: 'betas' must have 2 entries, got {self.betas}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("channel_mult", "attn_resolutions", "betas"):
            out[key] = list(out[key])
        return out

    def architecture_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ConvVAE (architecture "conv") or VitVAE ("vit")."""
        if self.architecture == "vit":
            return dict(image_size=self.image_size, patch_size=self.patch_size, width=self.vit_width,
                        depth=self.vit_depth, heads=self.vit_heads, latent_channels=self.latent_channels)
        return dict(image_size=self.image_size, base_channels=self.base_channels,
                    channel_mult=self.channel_mult, num_res_blocks=self.num_res_blocks,
                    attn_resolutions=self.attn_resolutions, mid_attention=self.mid_attention,
                    latent_channels=self.latent_channels, dropout=self.dropout)


def as_spec(spec: "TokenizerSpec | Mapping[str, Any] | None") -> TokenizerSpec:
    if isinstance(spec, TokenizerSpec):
        spec.validate()
        return spec
    if spec is None or isinstance(spec, Mapping):
        return TokenizerSpec.from_dict(spec)
    raise DiffusabilityError(f"tokenizer spec: expected a mapping, got {type(spec).__name__}")


def paper_f16d32(**overrides: Any) -> TokenizerSpec:
    """VA-VAE's f16d32 (docs/models.md §1.1) at 256 px: batch 256, lr 1e-4, KL 1e-6, PatchGAN from step 5001."""
    values = dict(name="conv-f16d32", image_size=256, base_channels=128, channel_mult=(1, 1, 2, 2, 4),
                  num_res_blocks=2, attn_resolutions=(16,), mid_attention=True, latent_channels=32,
                  batch_size=256, lr=1e-4, disc_weight=0.5, disc_start=5001, checkpoint_every=1000,
                  steps=80_000)
    values.update(overrides)
    return TokenizerSpec.from_dict(values)


def paper_trans_f16d32(**overrides: Any) -> TokenizerSpec:
    """The trans-f16d32 family: ViT-B/16 encoder and decoder (12 layers, width 768, 12 heads) at 256 px."""
    values = dict(name="trans-f16d32", architecture="vit", image_size=256, patch_size=16, vit_width=768,
                  vit_depth=12, vit_heads=12, latent_channels=32, batch_size=256, lr=1e-4, disc_weight=0.5,
                  disc_start=5001, checkpoint_every=1000, steps=80_000)
    values.update(overrides)
    return TokenizerSpec.from_dict(values)


def paper_f16d64(**overrides: Any) -> TokenizerSpec:
    """As :func:`paper_f16d32` with 64 latent channels."""
    return paper_f16d32(**{"name": "conv-f16d64", "latent_channels": 64, **overrides})


def downsample_factor(tokenizer: dict) -> int:
    """Pixels per latent token along a side: 2^(levels − 1) for conv, the patch size for ViT."""
    if tokenizer.get("architecture") == "vit":
        return tokenizer["patch_size"]
    return 2 ** (len(tokenizer["channel_mult"]) - 1)
