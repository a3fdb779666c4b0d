"""How each vision foundation model (VFM) of the study sees an image: one table, one place.

Every encoder gets the tokenizer's [0, 1] image (N, 3, H, W) resized and normalised as below,
so that a 256-pixel image lands on a 16×16 patch grid (docs/models.md §1.4, following iREPA's
``ldm/vision_encoder.py``, which covers exactly the paper's VFM list). SigLIP/SigLIP2 are not in
the study; their rows follow the transformers image processors of those checkpoints.

Sizes: an int is a fixed side in pixels; ``NATIVE`` is the checkpoint's own ``image_size``;
``PATCHES_16`` is 16 patches a side (patch × 16: 256 for /16 models, 224 for /14); ``None``
keeps the image's own size (256 in the study, so the grid is 256 / patch).
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF, UNIT = (0.5, 0.5, 0.5), (1.0, 1.0, 1.0)
ZERO = (0.0, 0.0, 0.0)

NATIVE = "native"
PATCHES_16 = "patch*16"


@dataclass(frozen=True)
class Preprocessing:
    """Resize and normalisation of one encoder family, applied to images in [0, 1].

    Attributes:
        size: target side (int), ``NATIVE``, ``PATCHES_16`` or None (keep); see the module docstring.
        interpolation: ``torch.nn.functional.interpolate`` mode.
        antialias: low-pass before downsampling (PIL-style / torchvision ``antialias=True``).
        mean, std: per-channel normalisation, (x - mean) / std; (0, 1) means none.
        note: where the convention comes from, and what else matters.
    """

    size: int | str | None
    interpolation: str
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    note: str = ""


#: encoder family → preprocessing. WebSSL-DINO is a Dinov2Model and shares the dinov2 row.
PREPROCESSING: dict[str, Preprocessing] = {
    "dinov2": Preprocessing(224, "bicubic", False, IMAGENET_MEAN, IMAGENET_STD,
                            "DINOv2-B/L and WebSSL-DINO-300m, patch 14 → 16×16"),
    "dinov3": Preprocessing(256, "bilinear", True, IMAGENET_MEAN, IMAGENET_STD,
                            "DINOv3 ViT-B/L, patch 16; official loader's antialiased resize; CLS + 4 registers"),
    "clip": Preprocessing(224, "bicubic", False, CLIP_MEAN, CLIP_STD, "CLIP-L/14 → 16×16"),
    "mae": Preprocessing(None, "bilinear", False, IMAGENET_MEAN, IMAGENET_STD,
                         "MAE-L/16 stays at 256; its fixed sin-cos position table is rebuilt for the grid"),
    "mocov3": Preprocessing(None, "bilinear", False, IMAGENET_MEAN, IMAGENET_STD,
                            "MoCov3-L/16 stays at 256; position embeddings resampled (bicubic) to the grid"),
    "pe": Preprocessing(PATCHES_16, "bilinear", False, HALF, HALF,
                        "PE-Core/Spatial/Lang; timm only (vfm.timm_teacher, the optional timm extra)"),
    "radio": Preprocessing(256, "bilinear", False, ZERO, UNIT,
                           "C-RADIOv3-B/L, patch 16; the model normalises internally; spatial features"),
    "siglip": Preprocessing(NATIVE, "bicubic", True, HALF, HALF,
                            "SigLIP / fixed-resolution SigLIP2 (model_type siglip); no prefix tokens"),
    "siglip2": Preprocessing(PATCHES_16, "bilinear", True, HALF, HALF,
                             "SigLIP2 NaFlex (model_type siglip2); patchified input, no prefix tokens"),
}


def resolve_size(preprocessing: Preprocessing, patch_size: int, native_size: int | None) -> int | None:
    """The side in pixels an image is resized to (None: keep its own size)."""
    if preprocessing.size == NATIVE:
        return native_size
    if preprocessing.size == PATCHES_16:
        return 16 * patch_size
    return preprocessing.size
