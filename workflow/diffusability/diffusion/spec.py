"""The diffusion training spec: one dataclass, family presets, strict validation of keys.

The workflow passes the backbone's slice of the config as JSON. Keys left out (or null) take the
documented default; family-dependent keys (positions, norm, MLP, time law, loss, lr, betas)
default to the family's published recipe (docs/models.md §2.4, §2.6), and an explicit value wins.
The dataclass fields and ``FAMILY_DEFAULTS`` are the defaults; the schema's ``default:`` values
equal them (tests/test_defaults.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import require

# The choices of the architecture and recipe switches. They live here, in a module without torch,
# so that the workflow's config code (imported by the Snakefile) can read them; transformer.py and
# transport.py import them from here.
POS_EMBEDS = ("sincos", "rope+sincos")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
TIME_LAWS = ("uniform", "logit_normal")
LOSSES = ("mse", "mse+cosine")
FAMILIES = ("sit", "lightningdit")
PRECISIONS = ("fp32", "bf16")

#: What ``family`` implies for every key the user leaves unset: the one source of these defaults
#: (the workflow's ``config.backbone_spec`` and the transformer's factories read it). The paper's
#: Table 2: SiT lr 1e-4, AdamW β2 0.999; LightningDiT lr 2e-4, β2 0.95 (docs/models.md §2.4, §2.6).
FAMILY_DEFAULTS = {
    "sit": dict(pos_embed="sincos", norm="layernorm", mlp="gelu", time_sampling="uniform", loss="mse",
                lr=1e-4, betas=(0.9, 0.999)),
    "lightningdit": dict(pos_embed="rope+sincos", norm="rmsnorm", mlp="swiglu", time_sampling="logit_normal",
                         loss="mse+cosine", lr=2e-4, betas=(0.9, 0.95)),
}


@dataclass
class DiffusionSpec:
    """Backbone architecture + training recipe. Defaults: SiT-B/1 with the SiT recipe."""

    name: str = "diffusion"
    seed: int = 0
    family: str = "sit"
    depth: int = 12
    width: int = 768
    heads: int = 12
    patch_size: int = 1
    pos_embed: str | None = None  # family default
    norm: str | None = None  # family default
    mlp: str | None = None  # family default
    qk_norm: bool = True
    use_checkpoint: bool = False  # activation (gradient) checkpointing per block
    time_sampling: str | None = None  # family default
    loss: str | None = None  # family default
    steps: int = 400_000
    batch_size: int = 256  # GLOBAL batch: micro_batch_size × processes × accumulation
    micro_batch_size: int | None = None  # None: the whole per-process share in one pass
    lr: float | None = None  # family default
    betas: tuple[float, float] | None = None  # family default
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    ema_decay: float = 0.9999
    label_dropout: float = 0.1
    grad_clip: float | None = None
    precision: str = "fp32"
    checkpoint_every: int = 5000
    flip_augment: bool = False  # draw the horizontally flipped cached latent (latents_flip) with probability 0.5
    compile: bool = False  # torch.compile the model for training (falls back, with a warning, where unsupported)
    num_classes: int | None = None  # the command requires it; train_diffusion takes it as an argument
    extra: dict = field(default_factory=dict, repr=False)  # never set from JSON; reserved

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, source: str = "diffusion spec") -> "DiffusionSpec":
        """Validate ``data`` (unknown key → error naming it) and fill family defaults."""
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        unknown = sorted(set(data) - known)
        require(not unknown, f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        family = data.get("family") or "sit"
        require(family in FAMILIES, f"{source}: family must be one of {FAMILIES}, got {family!r}")
        for key, value in FAMILY_DEFAULTS[family].items():
            if data.get(key) is None:
                data[key] = value
        # null means "the default" for every key (the nullable keys default to None anyway).
        spec = cls(**{k: v for k, v in data.items() if v is not None})
        spec.betas = tuple(float(b) for b in spec.betas)
        spec.validate(source)
        return spec

    def validate(self, source: str = "diffusion spec") -> None:
        def choice(key: str, options: tuple) -> None:
            require(getattr(self, key) in options, f"{source}: {key} must be one of {options}, got "
                                                   f"{getattr(self, key)!r}")

        choice("family", FAMILIES)
        choice("pos_embed", POS_EMBEDS)
        choice("norm", NORMS)
        choice("mlp", MLPS)
        choice("time_sampling", TIME_LAWS)
        choice("loss", LOSSES)
        choice("precision", PRECISIONS)
        for key in ("depth", "width", "heads", "patch_size", "steps", "batch_size", "checkpoint_every"):
            value = getattr(self, key)
            require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                    f"{source}: {key} must be a positive integer, got {value!r}")
        for key in ("flip_augment", "compile", "qk_norm", "use_checkpoint"):
            require(isinstance(getattr(self, key), bool), f"{source}: {key} must be true or false, got "
                                                          f"{getattr(self, key)!r}")
        if self.micro_batch_size is not None:
            require(isinstance(self.micro_batch_size, int) and self.micro_batch_size > 0,
                    f"{source}: micro_batch_size must be a positive integer or null, got {self.micro_batch_size!r}")
        if self.num_classes is not None:
            require(isinstance(self.num_classes, int) and self.num_classes > 0,
                    f"{source}: num_classes must be a positive integer, got {self.num_classes!r}")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
                f"{source}: betas must be two numbers in [0, 1), got {self.betas!r}")
        require(self.lr > 0, f"{source}: lr must be positive, got {self.lr!r}")
        require(self.weight_decay >= 0, f"{source}: weight_decay must be ≥ 0, got {self.weight_decay!r}")
        require(0 <= self.ema_decay < 1, f"{source}: ema_decay must be in [0, 1), got {self.ema_decay!r}")
        require(0 <= self.label_dropout < 1, f"{source}: label_dropout must be in [0, 1), got {self.label_dropout!r}")
        require(self.grad_clip is None or self.grad_clip > 0,
                f"{source}: grad_clip must be positive or null, got {self.grad_clip!r}")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("extra")
        out["betas"] = list(self.betas)
        return out

    def training_fingerprint(self) -> dict[str, Any]:
        """The keys a resumed run must share with its checkpoint (``steps``, the checkpoint cadence and
        ``compile``, which changes how the same function is computed, may change)."""
        out = self.to_dict()
        for key in ("name", "steps", "checkpoint_every", "compile"):
            out.pop(key)
        return out
