"""The sampler's settings: :class:`SamplingSpec`, the ``--spec`` of ``diffusability sample``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import require


@dataclass
class SamplingSpec:
    """Sampler settings. ``backbone`` (a diffusion spec with num_classes) is used with ``--untrained``
    when no ``--diffusion`` directory is given. The defaults are the schema's ``sampling`` defaults
    (tests/test_defaults.py): ADM's 50,000 samples, 50 Euler updates, 64 recorded trajectories."""

    seed: int = 0
    num_samples: int = 50_000
    num_steps: int = 50
    batch_size: int = 250
    guidance_channels: str = "all"  # "all" | "first3" (DiT/SiT/LightningDiT legacy)
    timestep_shift: float | None = None
    cfg_interval_start: float | None = None
    trajectories: int = 64  # recorded only when the command is given --trajectories PATH
    which: str = "ema"  # "ema" | "model"
    device: str | None = None  # None: cuda when available
    backbone: dict | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "--spec") -> "SamplingSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, f"{source}: unknown key(s) {unknown}; expected some of {sorted(known)}")
        spec = cls(**{k: v for k, v in data.items() if v is not None or k in ("timestep_shift", "cfg_interval_start")})
        for key in ("num_samples", "num_steps", "batch_size"):
            value = getattr(spec, key)
            require(isinstance(value, int) and value > 0, f"{source}: {key} must be a positive integer, got {value!r}")
        require(isinstance(spec.trajectories, int) and 0 <= spec.trajectories <= spec.num_samples,
                f"{source}: trajectories must be an integer in [0, num_samples], got {spec.trajectories!r}")
        require(spec.guidance_channels in ("all", "first3"),
                f"{source}: guidance_channels must be 'all' or 'first3', got {spec.guidance_channels!r}")
        require(spec.which in ("ema", "model"), f"{source}: which must be 'ema' or 'model', got {spec.which!r}")
        return spec

    def sampler_kwargs(self, cfg_scale: float) -> dict[str, Any]:
        """Keyword arguments of :func:`~diffusability.sampling.euler.euler_sample`."""
        return {"num_steps": self.num_steps, "cfg_scale": float(cfg_scale),
                "guidance_channels": None if self.guidance_channels == "all" else 3,
                "timestep_shift": self.timestep_shift, "cfg_interval": self.cfg_interval_start}
