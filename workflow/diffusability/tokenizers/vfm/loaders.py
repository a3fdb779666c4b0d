"""Load a VFM teacher from a local transformers folder, chosen by its config.json ``model_type``.

Only local ``save_pretrained`` folders are read (``local_files_only=True``); nothing is downloaded.
Every encoder goes through transformers (timm needs torchvision, which this project never
installs). Supported ``model_type`` values and their encoder family (row of ``PREPROCESSING``):

    dinov2 (DINOv2, WebSSL-DINO), dinov2_with_registers, dinov3_vit, clip / clip_vision_model,
    siglip / siglip_vision_model, siglip2 / siglip2_vision_model (NaFlex), vit_mae,
    vit (a MoCo v3 checkpoint converted by ``vfm.mocov3``), radio (C-RADIO).

The Perception Encoder (PE-Core / Spatial / Lang) has no native image model in transformers
5.23: it is only reachable through timm (``vit_pe_*``). A timm folder (``config.json`` with
``architecture``) is therefore loaded by :mod:`.timm_teacher`, which imports timm lazily — an optional
extra for environments with a matching torchvision; transformers folders that wrap timm are refused
with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ...errors import DiffusabilityError, require
from ...io import read_json
from .presets import PREPROCESSING, resolve_size
from .teacher import VisionFoundationTeacher

_PE_MISSING = ("the Perception Encoder (PE-Core/PE-Spatial/PE-Lang) has no native image model in transformers "
               "5.23 (only TimmWrapperModel around timm's vit_pe_*, and timm needs torchvision, which must not be "
               "installed here); give the timm folder itself instead (config.json with 'architecture', "
               "model.safetensors): it loads through the optional timm extra where timm and torchvision are "
               "installed")

#: model_type values that name a PE (or another timm-backed) model; refused with the reason.
UNAVAILABLE = {
    "timm_wrapper": "timm-backed transformers models need timm, hence torchvision; " + _PE_MISSING,
    "perception_lm": "PerceptionLM's vision tower is a timm model; " + _PE_MISSING,
    "pe_video": "PE-Video's frame encoder is a timm model; " + _PE_MISSING,
    "pe_audio_video": "PE-AV's frame encoder is a timm model; " + _PE_MISSING,
}


class MaskFreeMae(nn.Module):
    """ViTMAEModel as a plain encoder: no masking, patches in order, positions for any grid.

    MAE's position table is a fixed 2-D sin-cos table, so at a grid other than the checkpoint's
    (MAE-L/16 trained at 224 = 14×14, used at 256 = 16×16) it is rebuilt exactly for that grid,
    as MAE/REPA do, rather than resampled. A table that is not MAE's sin-cos is left to
    transformers' bicubic resampling (``interpolate_pos_encoding``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        table = model.embeddings.position_embeddings
        side = math.isqrt(table.shape[1] - 1)
        reference = mae_sincos_table(side, table.shape[-1])
        self.sincos = side * side == table.shape[1] - 1 and torch.allclose(table[0].float(), reference, atol=1e-4)

    def _fit_position_table(self, side: int) -> None:
        embeddings = self.model.embeddings
        if not self.sincos or embeddings.position_embeddings.shape[1] == side * side + 1:
            return
        table = embeddings.position_embeddings
        embeddings.position_embeddings = nn.Parameter(
            mae_sincos_table(side, table.shape[-1]).to(table)[None], requires_grad=False)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """(N,3,S,S) → the ViTMAE output with CLS + g² patch tokens in row-major order."""
        batch, side = pixel_values.shape[0], pixel_values.shape[-1] // self.model.config.patch_size
        self._fit_position_table(side)
        # ViTMAE orders tokens by argsort(noise): increasing noise keeps the patch order.
        noise = torch.arange(side * side, dtype=torch.float32, device=pixel_values.device).expand(batch, -1)
        return self.model(pixel_values=pixel_values, noise=noise, output_hidden_states=output_hidden_states,
                          interpolate_pos_encoding=True)


def mae_sincos_table(side: int, dim: int) -> torch.Tensor:
    """MAE's fixed position table for a side×side grid: (1 + side², dim), a zero row for CLS.

    Patch (row i, column j) gets [sin(jω), cos(jω), sin(iω), cos(iω)] with ω_k = 10000^(−k/(dim/4)),
    k < dim/4: MAE's released layout (its first half encodes the column).
    """
    require(dim % 4 == 0, f"MAE position table: width {dim} is not a multiple of 4")
    omega = 1.0 / 10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(side, dtype=torch.float64), torch.arange(side, dtype=torch.float64),
                                indexing="ij")
    col_angles = cols.reshape(-1, 1) * omega
    row_angles = rows.reshape(-1, 1) * omega
    patches = torch.cat([col_angles.sin(), col_angles.cos(), row_angles.sin(), row_angles.cos()], dim=1)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), patches]).float()


class NaFlexSiglip2(nn.Module):
    """Siglip2VisionModel (NaFlex) on ordinary (N,3,S,S) images: patchified, every patch valid."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool = False):
        """(N,3,S,S) → patches (N, g², p·p·3) laid out (row, column, channel) as SigLIP2's processor does."""
        batch, channels, height, width = pixel_values.shape
        patch = self.model.config.patch_size
        rows, cols = height // patch, width // patch
        patches = pixel_values.reshape(batch, channels, rows, patch, cols, patch)
        patches = patches.permute(0, 2, 4, 3, 5, 1).reshape(batch, rows * cols, patch * patch * channels)
        mask = torch.ones(batch, rows * cols, dtype=torch.long, device=pixel_values.device)
        shapes = torch.tensor([[rows, cols]] * batch, dtype=torch.long, device=pixel_values.device)
        return self.model(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes,
                          output_hidden_states=output_hidden_states)


@dataclass(frozen=True)
class Adapter:
    """How one transformers ``model_type`` becomes a teacher.

    Attributes:
        encoder: row of ``PREPROCESSING``.
        model_class: the transformers class to load (the vision tower for CLIP/SigLIP folders).
        prefix_tokens: config → number of tokens before the patches.
        wrap: optional module around the model (MAE without masking, NaFlex patchifying).
        model_kwargs: fixed keyword arguments of every call.
        load_kwargs: extra ``from_pretrained`` arguments.
    """

    encoder: str
    model_class: str
    prefix_tokens: Callable[[Any], int]
    wrap: Callable[[nn.Module], nn.Module] | None = None
    model_kwargs: dict = field(default_factory=dict)
    load_kwargs: dict = field(default_factory=dict)


def _one(config) -> int:
    return 1


def _none(config) -> int:
    return 0


def _cls_and_registers(config) -> int:
    return 1 + int(config.num_register_tokens)


def _radio_summary_and_registers(config) -> int:
    return int(config.num_cls_tokens) + int(config.num_registers)


ADAPTERS: dict[str, Adapter] = {
    "dinov2": Adapter("dinov2", "Dinov2Model", _one),
    "dinov2_with_registers": Adapter("dinov2", "Dinov2WithRegistersModel", _cls_and_registers),
    "dinov3_vit": Adapter("dinov3", "DINOv3ViTModel", _cls_and_registers),
    "clip": Adapter("clip", "CLIPVisionModel", _one),
    "clip_vision_model": Adapter("clip", "CLIPVisionModel", _one),
    "siglip": Adapter("siglip", "SiglipVisionModel", _none),
    "siglip_vision_model": Adapter("siglip", "SiglipVisionModel", _none),
    "siglip2": Adapter("siglip2", "Siglip2VisionModel", _none, wrap=NaFlexSiglip2),
    "siglip2_vision_model": Adapter("siglip2", "Siglip2VisionModel", _none, wrap=NaFlexSiglip2),
    "vit_mae": Adapter("mae", "ViTMAEModel", _one, wrap=MaskFreeMae, load_kwargs={"mask_ratio": 0.0}),
    # A ViTModel folder is read as MoCo v3 (vfm.mocov3 writes one); its learned 14×14 table is
    # resampled to the input grid by transformers (bicubic).
    "vit": Adapter("mocov3", "ViTModel", _one, model_kwargs={"interpolate_pos_encoding": True},
                   load_kwargs={"add_pooling_layer": False}),
    # RADIO normalises inside (its input conditioner); the teacher feeds [0, 1] pixels.
    "radio": Adapter("radio", "RadioModel", _radio_summary_and_registers),
}


def _read_model_type(directory: Path) -> str:
    config_path = directory / "config.json"
    require(directory.is_dir(), f"{directory}: VFM teacher folder not found (put a transformers save_pretrained "
                                "folder there: config.json + model.safetensors)")
    require(config_path.is_file(), f"{config_path}: not found; a VFM teacher folder is a transformers "
                                   "save_pretrained folder (config.json + model.safetensors)")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if model_type is None and "architecture" in config:  # a timm hub folder (e.g. timm/vit_pe_core_*)
        return TIMM
    if model_type in UNAVAILABLE:
        raise DiffusabilityError(f"{config_path}: model_type {model_type!r} cannot be a teacher: "
                                 f"{UNAVAILABLE[model_type]}")
    if model_type not in ADAPTERS and "auto_map" in config:  # e.g. the hub's custom-code C-RADIOv3 folders
        raise DiffusabilityError(f"{config_path}: a custom-code (trust_remote_code) folder of model_type "
                                 f"{model_type!r}; no remote code is run here: convert it to a native transformers "
                                 f"layout first (C-RADIO: model_type 'radio'); supported: {sorted(ADAPTERS)}")
    require(model_type in ADAPTERS, f"{config_path}: model_type {model_type!r} is not a supported teacher "
                                    f"(expected one of {sorted(ADAPTERS)})")
    return model_type


#: what _read_model_type returns for a timm folder (config.json with ``architecture``, no ``model_type``)
TIMM = "timm"


def load_vfm_teacher(directory: str | Path, pyramid_layers: Sequence[int] = (-1,)) -> VisionFoundationTeacher:
    """A frozen teacher from a local transformers folder (``save_pretrained`` layout) or a timm PE folder;
    no download."""
    directory = Path(directory)
    model_type = _read_model_type(directory)
    if model_type == TIMM:
        from .timm_teacher import load_timm_teacher

        return load_timm_teacher(directory, str(read_json(directory / "config.json")["architecture"]),
                                 pyramid_layers)
    adapter = ADAPTERS[model_type]
    try:
        import transformers
    except ImportError as exc:
        raise DiffusabilityError(f"{directory}: loading a {model_type} teacher needs the 'transformers' package "
                                 "(install it without torchvision)") from exc
    model_class = getattr(transformers, adapter.model_class, None)
    require(model_class is not None, f"{directory}: transformers {transformers.__version__} has no "
                                     f"{adapter.model_class} (needed for model_type {model_type!r})")
    try:
        model = model_class.from_pretrained(directory, local_files_only=True, **adapter.load_kwargs)
    except (OSError, ValueError, RuntimeError) as exc:
        raise DiffusabilityError(f"{directory}: could not load {adapter.model_class} ({exc})") from exc
    config = model.config
    patch_size = config.patch_size
    if isinstance(patch_size, (list, tuple)):
        require(patch_size[0] == patch_size[1], f"{directory}: non-square patches {patch_size} are not supported")
        patch_size = patch_size[0]
    native = getattr(config, "image_size", None)
    native = native[0] if isinstance(native, (list, tuple)) else native
    preprocessing = PREPROCESSING[adapter.encoder]
    if adapter.wrap is not None:
        model = adapter.wrap(model)
    return VisionFoundationTeacher(
        model, int(patch_size), resolve_size(preprocessing, int(patch_size), native), preprocessing.interpolation,
        preprocessing.mean, preprocessing.std, pyramid_layers, antialias=preprocessing.antialias,
        prefix_tokens=adapter.prefix_tokens(config), model_kwargs=adapter.model_kwargs)
