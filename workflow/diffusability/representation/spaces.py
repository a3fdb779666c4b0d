"""FDr: Fréchet distances in six representation spaces, each relative to real held-out images.

Yang, Geng, Ju, Tian, Wang (2026), "Representation Fréchet Loss for Visual Generation" (code:
Jiawei-Yang/FD-Loss, ``eval_all_fds.py``). For every space X the raw Fréchet distance between the
samples and the reference statistics is divided by the FD that the ImageNet validation set gets in
that space (a constant of the paper): FDr-X = rawFD-X / valFD-X, so 1 means "as close as real
held-out images". FDr6 is the arithmetic mean of the six ratios.

Feature conventions, as the reference code computes them (timm models there, ``transformers``
models from local ``save_pretrained`` folders here):

- uint8 images → [0, 1] → resized to the space's ``input_size`` with antialiased bicubic
  (align_corners=False), skipped when already that size → the model's mean/std;
- a ViT whose input is not a multiple of its patch (DINOv2 and CLIP at 256 with patch 14) sees the
  normalised image zero-padded at the bottom/right to the next multiple (266), as timm's
  ``dynamic_img_pad`` does; the absolute position table is resampled once to the new patch grid
  with antialiased bicubic, as timm's ``dynamic_img_size`` does at every forward (transformers'
  own interpolation has no antialiasing, so it is not used);
- the feature: ConvNeXt-V2 the global average of the last stage (before the head's LayerNorm,
  timm's ``forward_features``), DINOv2/MAE/CLIP the CLS token after the final norm, SigLIP the
  attention-pool (MAP) head output;
- statistics in float64 with the N − 1 covariance (:func:`~diffusability.metrics.frechet.feature_statistics`).

The sizes are those the validation constants were measured at (``compute_valfd.py``): ConvNeXt,
MAE and SigLIP at 224, DINOv2 and CLIP at 256 (not DINOv2's pretraining 518). The Inception space is
the existing FID path (:mod:`diffusability.evaluation.inception`, TF1 bilinear resize to 299, the ADM convention); its raw
FD comes in as a number (the ``fd`` row of ``generation-metrics`` with the FID Inception).
Numerical difference to the reference: features are computed in float32, the reference runs the
timm models under bf16 autocast.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..errors import require
from ..progress import log
from ..rows import result_row

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class RepresentationSpace:
    """One representation space of FDr6.

    ``model_class`` is the ``transformers`` class that loads the local folder (None for the
    Inception, which has its own port); ``model_types`` the ``config.json`` model types it accepts
    (a full CLIP/SigLIP checkpoint or its vision tower alone); ``feature`` which output is used;
    ``validation_fd`` the paper's FD of the ImageNet validation set in this space.
    """

    name: str
    description: str
    model_class: str | None
    model_types: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature: str
    validation_fd: float
    checkpoint: str  # where the weights usually come from (to save locally with save_pretrained)


SPACES: dict[str, RepresentationSpace] = {space.name: space for space in (
    RepresentationSpace("inception", "FID Inception-v3 (ADM convention)", None, (), 299, (0.5,) * 3, (0.5,) * 3,
                        "pool3", 1.68, "generation.inception_weights"),
    RepresentationSpace("convnext", "ConvNeXt-V2-Base (fcmae_ft_in22k_in1k)", "ConvNextV2Model", ("convnextv2",),
                        224, IMAGENET_MEAN, IMAGENET_STD, "global_average", 56.87,
                        "facebook/convnextv2-base-22k-224"),
    RepresentationSpace("dinov2", "DINOv2-L/14", "Dinov2Model", ("dinov2",), 256, IMAGENET_MEAN, IMAGENET_STD,
                        "cls", 14.19, "facebook/dinov2-large"),
    RepresentationSpace("mae", "MAE-L/16", "ViTMAEModel", ("vit_mae",), 224, IMAGENET_MEAN, IMAGENET_STD,
                        "cls", 0.04, "facebook/vit-mae-large"),
    RepresentationSpace("siglip", "SigLIP2-so400m-patch16-256", "SiglipVisionModel",
                        ("siglip", "siglip_vision_model"), 224, (0.5,) * 3, (0.5,) * 3, "pooled", 0.60,
                        "google/siglip2-so400m-patch16-256"),
    RepresentationSpace("clip", "CLIP-L/14 (OpenAI)", "CLIPVisionModel", ("clip", "clip_vision_model"), 256,
                        OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "cls", 5.60, "openai/clip-vit-large-patch14"),
)}
#: the six spaces FDr6 averages over, in the paper's order
FDR6_SPACES = ("inception", "convnext", "dinov2", "mae", "siglip", "clip")
#: the spaces with a ``transformers`` model (the Inception is the FID path)
MODEL_SPACES = tuple(name for name in FDR6_SPACES if SPACES[name].model_class is not None)


def space(name: str) -> RepresentationSpace:
    """The table entry of ``name``; a clear error for unknown names."""
    require(name in SPACES, f"unknown representation space {name!r}; known spaces are {list(FDR6_SPACES)}")
    return SPACES[name]


# ----------------------------------------------------------------------------- models

def read_model_type(name: str, folder) -> str:
    """``model_type`` of a local ``save_pretrained`` folder, checked against the space's model types."""
    entry = space(name)
    folder = Path(folder)
    config_file = folder / "config.json"
    require(config_file.is_file(),
            f"representation space {name!r}: {config_file} not found. Save the {entry.description} there with "
            f"save_pretrained (e.g. from {entry.checkpoint}); nothing is downloaded at run time.")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        require(False, f"representation space {name!r}: {config_file} is not valid JSON ({exc})")
    require(model_type in entry.model_types,
            f"representation space {name!r}: {folder} holds a {model_type!r} model, expected "
            f"{' or '.join(map(repr, entry.model_types))} ({entry.description})")
    return model_type


def resample_position_grid(table, grid: int, new_grid: int):
    """Resample a square grid of position embeddings with antialiased bicubic (timm's dynamic size).

    Args:
        table: (grid·grid, D) embeddings in row-major patch order.

    Returns:
        (new_grid·new_grid, D), the same dtype; the input itself when the grids are equal.
    """
    import torch.nn.functional as F

    require(table.shape[0] == grid * grid,
            f"position table has {table.shape[0]} rows, expected {grid}² = {grid * grid}")
    if new_grid == grid:
        return table
    image = table.float().T.reshape(1, table.shape[1], grid, grid)
    resized = F.interpolate(image, size=(new_grid, new_grid), mode="bicubic", align_corners=False, antialias=True)
    return resized.reshape(table.shape[1], new_grid * new_grid).T.contiguous().to(table.dtype)


class RepresentationExtractor:
    """A frozen ``transformers`` model that maps uint8 images to one feature vector per image."""

    def __init__(self, name: str, model, device: str = "cpu"):
        import torch

        self.space = space(name)
        self.model = model.to(device).eval().requires_grad_(False)
        self.device = device
        self.mean = torch.tensor(self.space.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.space.std, device=device).view(1, 3, 1, 1)
        config = getattr(model.config, "vision_config", None) or model.config
        # ConvNeXt downsamples by strides and pools globally: any size works, nothing is padded.
        self.patch_size = int(config.patch_size) if self.space.feature != "global_average" else 1
        self.padded_size = -(-self.space.input_size // self.patch_size) * self.patch_size
        if self.patch_size > 1:
            self._fit_position_grid(self.padded_size // self.patch_size)

    @property
    def feature_dim(self) -> int:
        config = getattr(self.model.config, "vision_config", None) or self.model.config
        sizes = getattr(config, "hidden_sizes", None)
        return int(sizes[-1]) if sizes else int(config.hidden_size)

    def _fit_position_grid(self, new_grid: int) -> None:
        """Resample the model's absolute position table once to ``new_grid``² patches."""
        import torch
        from torch import nn

        embeddings = self.model.embeddings if hasattr(self.model, "embeddings") else self.model.vision_model.embeddings
        size = self.padded_size
        if hasattr(embeddings, "position_embedding"):  # CLIP (with a class position) and SigLIP (without)
            weight = embeddings.position_embedding.weight.detach()
            n_prefix = weight.shape[0] - embeddings.num_patches
            grid = int(round(embeddings.num_patches ** 0.5))
            table = torch.cat([weight[:n_prefix], resample_position_grid(weight[n_prefix:], grid, new_grid)])
            embeddings.position_embedding = nn.Embedding.from_pretrained(table, freeze=True).to(self.device)
            embeddings.position_ids = torch.arange(table.shape[0], device=self.device).unsqueeze(0)
            embeddings.num_patches, embeddings.num_positions = new_grid * new_grid, table.shape[0]
            embeddings.image_size = size
        else:  # DINOv2 and MAE: a (1, 1 + grid², D) parameter with the CLS position first
            weight = embeddings.position_embeddings.detach()[0]
            grid = int(round((weight.shape[0] - 1) ** 0.5))
            table = torch.cat([weight[:1], resample_position_grid(weight[1:], grid, new_grid)])
            embeddings.position_embeddings = nn.Parameter(table.unsqueeze(0), requires_grad=False)
            for module in (embeddings, getattr(embeddings, "patch_embeddings", None)):
                if module is not None and hasattr(module, "image_size"):
                    module.image_size = (size, size)
                if module is not None and hasattr(module, "num_patches"):
                    module.num_patches = new_grid * new_grid

    def preprocess(self, images):
        """uint8 (B, H, W, 3) tensor → float32 (B, 3, S, S) model input.

        [0, 1] → antialiased bicubic resize to ``input_size`` (when different) → (x − mean)/std →
        zero padding at the bottom/right up to ``padded_size`` (a multiple of the patch).
        """
        import torch.nn.functional as F

        size = self.space.input_size
        pixels = images.to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        pixels = (pixels - self.mean) / self.std
        pad = self.padded_size - size
        return F.pad(pixels, (0, pad, 0, pad)) if pad else pixels

    def features(self, pixels):
        """Model input (B, 3, S, S) → features (B, F) float32: the space's CLS / pooled output."""
        import torch

        kind = self.space.name
        if kind == "convnext":
            # timm's forward_features + mean: the last stage before the head's LayerNorm
            return self.model(pixel_values=pixels).last_hidden_state.mean(dim=(-2, -1))
        if kind == "mae":
            # mask ratio 0 and an ascending noise keep every patch in its own order (no shuffle)
            n_patches = (pixels.shape[-1] // self.patch_size) ** 2
            noise = torch.arange(n_patches, device=pixels.device, dtype=torch.float32).expand(len(pixels), -1)
            return self.model(pixel_values=pixels, noise=noise).last_hidden_state[:, 0]
        output = self.model(pixel_values=pixels)
        if kind == "dinov2":
            return output.last_hidden_state[:, 0]  # the CLS token after the final LayerNorm
        require(output.pooler_output is not None,
                f"representation space {kind!r}: the model has no pooled output (vision_use_head is off)")
        return output.pooler_output  # CLIP: post-LayerNorm CLS; SigLIP: the attention-pool head

    def __call__(self, images):
        """uint8 (B, H, W, 3) tensor → features (B, F) float32."""
        return self.features(self.preprocess(images))


def load_representation_model(name: str, folder, device: str = "cpu") -> RepresentationExtractor:
    """The extractor of space ``name`` from a local ``save_pretrained`` folder (never the hub)."""
    import torch
    import transformers

    entry = space(name)
    require(entry.model_class is not None,
            f"representation space {name!r} is the FID Inception: its FD is the gFID of generation-metrics")
    read_model_type(name, folder)
    model_class = getattr(transformers, entry.model_class)
    kwargs = {"mask_ratio": 0.0} if name == "mae" else {}
    model = model_class.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32, **kwargs)
    if name == "mae":
        model.config.mask_ratio = 0.0
    return RepresentationExtractor(name, model, device)


def extract_representation_features(extractor: RepresentationExtractor, images, batch_size: int = 256,
                                    desc: str | None = None) -> np.ndarray:
    """Features of uint8 images (N, H, W, 3) (numpy array or memory map), batch by batch.

    Returns:
        float64 (N, F) numpy array.
    """
    import numpy as np
    import torch

    from ..progress import progress
    from ..data.splits import check_uint8_images

    images = check_uint8_images(images, desc or f"{extractor.space.name} images")
    require(isinstance(batch_size, int) and batch_size >= 1, f"batch_size={batch_size!r}: expected an integer >= 1")
    starts = range(0, len(images), batch_size)
    chunks = []
    with torch.inference_mode():
        for start in progress(starts, total=len(starts), desc=desc or f"{extractor.space.name} features",
                              unit="batch"):
            batch = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))
            chunks.append(extractor(batch).double().cpu().numpy())
    return np.concatenate(chunks)


# ----------------------------------------------------------------------------- distances and rows

def representation_fds(stats_gen: dict, stats_ref: dict, raw_fds: dict | None = None) -> dict:
    """Raw FD and FDr per space, and FDr6 when all six spaces are present.

    Args:
        stats_gen, stats_ref: {space: (mu (F,), sigma (F, F))} of the samples and of the reference;
            the same spaces in both.
        raw_fds: {space: raw FD} computed elsewhere (the Inception's gFID), for spaces not in the stats.

    Returns:
        ``{"fd": {space: raw}, "fdr": {space: raw / validation FD}, "fdr6": mean of the six FDr or
        None, "spaces": [spaces in the paper's order]}``.
    """
    import numpy as np  # numpy and the Fréchet module on first use: every command imports this module

    from ..metrics.frechet import frechet_distance

    require(set(stats_gen) == set(stats_ref),
            f"representation statistics: samples have spaces {sorted(stats_gen)}, the reference {sorted(stats_ref)}")
    raw_fds = dict(raw_fds or {})
    both = sorted(set(raw_fds) & set(stats_gen))
    require(not both, f"representation spaces {both}: given both as statistics and as a raw FD")
    fds = {name: frechet_distance(*stats_gen[name], *stats_ref[name]) for name in stats_gen}
    for name, value in raw_fds.items():
        require(np.isfinite(value) and value >= 0, f"raw FD of {name!r}: expected a finite value >= 0, got {value!r}")
        fds[name] = float(value)
    names = [name for name in FDR6_SPACES if name in fds]
    unknown = sorted(set(fds) - set(names))
    require(not unknown, f"unknown representation spaces {unknown}; known spaces are {list(FDR6_SPACES)}")
    ratios = {name: fds[name] / SPACES[name].validation_fd for name in names}
    fdr6 = float(np.mean([ratios[name] for name in FDR6_SPACES])) if len(names) == len(FDR6_SPACES) else None
    return {"fd": {name: fds[name] for name in names}, "fdr": ratios, "fdr6": fdr6, "spaces": names}


def representation_rows(result: dict, n: int, params: dict | None = None,
                        seconds: dict | None = None) -> list[dict]:
    """Tidy rows ``fd_<space>``, ``fdr_<space>`` (and ``fdr6``) of :func:`representation_fds`' result.

    ``params`` (JSON-able) is stored in every row with the spaces used, their validation FDs and
    input sizes; ``seconds`` maps a space to its time (``fdr6`` gets the sum).
    """
    names = result["spaces"]
    seconds = dict(seconds or {})
    params = dict(params or {}, spaces=names,
                  validation_fd={name: SPACES[name].validation_fd for name in names},
                  input_size={name: SPACES[name].input_size for name in names},
                  feature={name: SPACES[name].feature for name in names})
    if result["fdr6"] is None:
        missing = [name for name in FDR6_SPACES if name not in names]
        params["fdr6"] = f"not computed: spaces {missing} are missing"
    params_json = json.dumps(params, sort_keys=True)

    def row(metric, value, elapsed):
        log.info("representation: %s took %.2f s", metric, elapsed)
        return result_row(metric, value, "lower", params_json, n)

    rows = []
    for name in names:
        rows += [row(f"fd_{name}", result["fd"][name], seconds.get(name, 0.0)),
                 row(f"fdr_{name}", result["fdr"][name], seconds.get(name, 0.0))]
    if result["fdr6"] is not None:
        rows.append(row("fdr6", result["fdr6"], sum(seconds.values())))
    return rows
