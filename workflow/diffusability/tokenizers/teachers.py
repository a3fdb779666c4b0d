"""Frozen vision-foundation-model teachers behind the domain net's interface.

The alignment regularizers and the perceptual loss need ``feature_map(x, grid) → (N,F,h,w)`` and
``feature_pyramid(x) → list[(N,F,g,g)]``. :class:`VisionFoundationTeacher` gives a
transformers-style ViT (Dinov2Model, CLIPVisionModel, ViTMAEModel: anything whose output has
``last_hidden_state`` and, with ``output_hidden_states=True``, ``hidden_states``) that interface:

    x in [-1,1] → [0,1] → resize to the model's input size → normalise (mean/std)
      → ViT → drop the prefix (CLS/register) tokens → (N,D,g,g) patch grid → resize to the latent grid

Preprocessing per encoder follows iREPA's loader (MODELS.md §1.4). Weights come only from local
directories (``load_vfm_teacher``); transformers is imported lazily and is not a default dependency.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DiffusabilityError, require

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

#: model_type (config.json) → (input side or None = keep the image size, interpolation, mean, std)
PRESETS = {
    "dinov2": (224, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
    "clip_vision_model": (224, "bicubic", CLIP_MEAN, CLIP_STD),
    "clip": (224, "bicubic", CLIP_MEAN, CLIP_STD),
    "vit_mae": (None, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
}


class VisionFoundationTeacher(nn.Module):
    """Wrap a transformers-style ViT as a frozen teacher; see the module docstring.

    Args:
        model: callable ``model(pixel_values=..., output_hidden_states=..., **extra)``.
        patch_size: the ViT's patch side p; the patch grid is g = input_size / p.
        input_size: side the image is resized to (None: keep the image's own size).
        pyramid_layers: indices into ``hidden_states`` used by ``feature_pyramid``.
        extra_inputs: callable (N, tokens) → dict of extra keyword arguments (ViTMAE's ``noise``).
    """

    def __init__(self, model: nn.Module, patch_size: int, input_size: int | None, interpolation: str,
                 mean: Sequence[float], std: Sequence[float], pyramid_layers: Sequence[int] = (-1,),
                 extra_inputs=None):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.patch_size, self.input_size, self.interpolation = patch_size, input_size, interpolation
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.pyramid_layers = tuple(pyramid_layers)
        self.extra_inputs = extra_inputs

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """(N,3,H,W) in [-1,1] → the model's normalised input (N,3,S,S)."""
        require(x.dim() == 4 and x.shape[1] == 3, f"teacher input: expected (N,3,H,W), got {tuple(x.shape)}")
        x = (x + 1.0) / 2.0
        if self.input_size is not None and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              align_corners=False)
        return (x - self.mean) / self.std

    def _grid_tokens(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        """(N, prefix + g², D) → (N, D, g, g), dropping the prefix tokens."""
        count = side * side
        require(tokens.shape[1] >= count, f"teacher: {tokens.shape[1]} tokens for a {side}×{side} patch grid")
        patches = tokens[:, tokens.shape[1] - count:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)

    def _run(self, x: torch.Tensor, hidden_states: bool):
        pixels = self.preprocess(x)
        side = pixels.shape[-1] // self.patch_size
        extra = self.extra_inputs(pixels.shape[0], side * side) if self.extra_inputs else {}
        output = self.model(pixel_values=pixels, output_hidden_states=hidden_states, **extra)
        return output, side

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Patch-token maps (N, D, g, g) of the chosen hidden layers."""
        output, side = self._run(x, hidden_states=True)
        return [self._grid_tokens(output.hidden_states[i], side) for i in self.pyramid_layers]

    def feature_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Last-layer patch tokens on the latent grid: (N, D, h, w) (area-averaged or bilinear)."""
        output, side = self._run(x, hidden_states=False)
        tokens = self._grid_tokens(output.last_hidden_state, side)
        if tuple(grid) == (side, side):
            return tokens
        if side % grid[0] == 0 and side % grid[1] == 0:
            return F.adaptive_avg_pool2d(tokens, tuple(grid))
        return F.interpolate(tokens, size=tuple(grid), mode="bilinear", align_corners=False)


def _mae_identity_order(batch: int, tokens: int) -> dict[str, torch.Tensor]:
    """ViTMAE shuffles tokens by argsort(noise); increasing noise keeps the patch order."""
    return {"noise": torch.arange(tokens, dtype=torch.float32).expand(batch, tokens)}


def load_vfm_teacher(directory: str | Path, pyramid_layers: Sequence[int] = (-1,)) -> VisionFoundationTeacher:
    """A teacher from a local transformers directory (``save_pretrained`` layout); no download."""
    from ..io import read_json

    directory = Path(directory)
    config = read_json(directory / "config.json")
    model_type = config.get("model_type")
    require(model_type in PRESETS, f"{directory / 'config.json'}: model_type {model_type!r} is not a supported "
                                   f"teacher (expected one of {sorted(PRESETS)})")
    try:
        import transformers
    except ImportError as exc:
        raise DiffusabilityError(f"{directory}: loading a {model_type} teacher needs the 'transformers' package "
                                 "(install it without torchvision)") from exc
    input_size, interpolation, mean, std = PRESETS[model_type]
    extra = None
    if model_type == "dinov2":
        model = transformers.Dinov2Model.from_pretrained(directory, local_files_only=True)
    elif model_type.startswith("clip"):
        model = transformers.CLIPVisionModel.from_pretrained(directory, local_files_only=True)
    else:
        model = transformers.ViTMAEModel.from_pretrained(directory, local_files_only=True, mask_ratio=0.0)
        extra = _mae_identity_order
    vision_config = getattr(model.config, "vision_config", model.config)
    return VisionFoundationTeacher(model, int(vision_config.patch_size), input_size, interpolation, mean, std,
                                   pyramid_layers, extra)


def load_teacher(directory: str | Path) -> Any:
    """The domain net (our own format) or a transformers VFM, chosen by the directory's config.json."""
    from ..io import read_json

    config = read_json(Path(directory) / "config.json")
    if "model_type" in config:
        return load_vfm_teacher(directory)
    from ..evaluation.domain_net import load_domain_classifier

    return load_domain_classifier(directory)
