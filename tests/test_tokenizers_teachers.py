"""VFM teachers: the generic adapter on a fake ViT, then every transformers model type of the study.

Each model type is a tiny random network (width 32, 2 layers) saved with ``save_pretrained`` to
tmp_path and loaded back through ``load_teacher``. The teacher's patch tokens are compared with
the raw transformers model called on pixels preprocessed by hand from docs/models.md §1.4's table
(the numbers are typed in here, not imported), so a wrong size, mode, antialias flag, mean/std or
prefix count fails the comparison. The MoCo v3 converter is checked against a hand-written
timm-style ViT forward.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diffusability.errors import DiffusabilityError
from diffusability.io import write_json
from diffusability.tokenizers.teachers import (IMAGENET_MEAN, IMAGENET_STD, VisionFoundationTeacher, load_teacher,
                                               load_vfm_teacher)

transformers = pytest.importorskip("transformers")

WIDTH = 32
TINY = dict(hidden_size=WIDTH, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
NO_NORM = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


# ----------------------------------------------------------------------------- generic adapter

class FakeViT(nn.Module):
    """Patch embedding + CLS + one register token; hidden_states = (embeddings, after a linear layer)."""

    def __init__(self, patch=4, width=6):
        super().__init__()
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 2, width))
        self.layer = nn.Linear(width, width)
        self.seen = None

    def forward(self, pixel_values, output_hidden_states=False, **extra):
        self.seen = pixel_values
        tokens = self.embed(pixel_values).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        out = self.layer(tokens)
        return SimpleNamespace(last_hidden_state=out, hidden_states=(tokens, out) if output_hidden_states else None)


def _fake_teacher(input_size=16, prefix_tokens=2):
    torch.manual_seed(0)
    return VisionFoundationTeacher(FakeViT(), patch_size=4, input_size=input_size, interpolation="bilinear",
                                   mean=IMAGENET_MEAN, std=IMAGENET_STD, pyramid_layers=(0, -1),
                                   prefix_tokens=prefix_tokens)


def test_preprocessing_resizes_and_normalises():
    teacher = _fake_teacher(input_size=16)
    x = torch.zeros(1, 3, 8, 8)  # mid-grey in [-1, 1] = 0.5 in [0, 1]
    teacher.feature_map(x, (4, 4))
    assert teacher.model.seen.shape == (1, 3, 16, 16)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(teacher.model.seen[0, :, 3, 5], expected)


def test_prefix_tokens_are_dropped_and_the_grid_is_row_major():
    teacher = _fake_teacher()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    features = teacher.feature_map(x, (4, 4))
    out = teacher.model(pixel_values=teacher.preprocess(x)).last_hidden_state
    assert features.shape == (2, 6, 4, 4)
    torch.testing.assert_close(features[:, :, 1, 2], out[:, 2 + 1 * 4 + 2])  # skip CLS + register
    torch.testing.assert_close(teacher.feature_map(x, (2, 2)), F.avg_pool2d(features, 2))
    pyramid = teacher.feature_pyramid(x)
    assert [p.shape for p in pyramid] == [(2, 6, 4, 4)] * 2
    assert not any(p.requires_grad for p in teacher.parameters())


def test_a_wrong_prefix_count_is_a_clear_error():
    teacher = _fake_teacher(prefix_tokens=1)
    with pytest.raises(DiffusabilityError, match="1 prefix tokens"):
        teacher.feature_map(torch.zeros(1, 3, 16, 16), (4, 4))


def test_gradients_flow_to_the_input_for_the_perceptual_loss():
    teacher = _fake_teacher()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    teacher.feature_pyramid(x)[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- every model type

def manual_pixels(x, size, mode, antialias, mean_std):
    """docs/models.md §1.4 by hand: [-1,1] → [0,1] → resize → (x − mean) / std."""
    x = (x + 1) / 2
    if size is not None:
        x = F.interpolate(x, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in mean_std)
    return (x - mean) / std


def grid_of(tokens, prefix):
    """(N, prefix + g², D) → (N, D, g, g), written independently of the teacher."""
    patches = tokens[:, prefix:]
    side = math.isqrt(patches.shape[1])
    assert side * side == patches.shape[1]
    return patches.permute(0, 2, 1).reshape(tokens.shape[0], tokens.shape[2], side, side)


def plain_call(model, pixels):
    return model(pixel_values=pixels, output_hidden_states=True)


def siglip2_call(model, pixels):
    """NaFlex input built with unfold: patches (N, g², p·p·C) ordered (row, column, channel)."""
    patch = model.config.patch_size
    n, c = pixels.shape[:2]
    columns = F.unfold(pixels, kernel_size=patch, stride=patch)  # (N, C·p·p, L), C-major
    count = columns.shape[-1]
    patches = columns.view(n, c, patch, patch, count).permute(0, 4, 2, 3, 1).reshape(n, count, -1)
    side = math.isqrt(count)
    return model(pixel_values=patches, pixel_attention_mask=torch.ones(n, count, dtype=torch.long),
                 spatial_shapes=torch.tensor([[side, side]] * n), output_hidden_states=True)


def mae_call(model, pixels):
    tokens = (pixels.shape[-1] // model.config.patch_size) ** 2
    noise = torch.arange(tokens, dtype=torch.float32).expand(pixels.shape[0], -1)
    return model(pixel_values=pixels, noise=noise, output_hidden_states=True)


def mae_model(image_size):
    """A tiny ViTMAEModel whose position table is MAE's fixed sin-cos, as in released checkpoints.

    transformers 5.23 leaves the table at zero when a model is built from a config (its sin-cos init
    is skipped once the patch projection is marked initialised), so it is run here explicitly.
    """
    model = transformers.ViTMAEModel(transformers.ViTMAEConfig(image_size=image_size, patch_size=8,
                                                               mask_ratio=0.0, **TINY))
    model.embeddings.patch_embeddings.projection._is_hf_initialized = False
    model.embeddings.initialize_weights()
    assert model.embeddings.position_embeddings[0, 1:].abs().sum() > 0
    return model.eval()


def radio_call(model, pixels):
    return model(pixel_values=pixels, output_hidden_states=True)


# name: (build model, input image side, resize side, mode, antialias, mean/std, prefix, raw call)
CASES = {
    "dinov2": (lambda: transformers.Dinov2Model(transformers.Dinov2Config(image_size=224, patch_size=14, **TINY)),
               32, 224, "bicubic", False, IMAGENET, 1, plain_call),
    "dinov2_with_registers": (
        lambda: transformers.Dinov2WithRegistersModel(transformers.Dinov2WithRegistersConfig(
            image_size=224, patch_size=14, num_register_tokens=4, **TINY)),
        32, 224, "bicubic", False, IMAGENET, 5, plain_call),
    # a 512 input is downsampled to 256, where the antialias flag changes the pixels
    "dinov3_vit": (lambda: transformers.DINOv3ViTModel(transformers.DINOv3ViTConfig(
        patch_size=16, num_register_tokens=4, **TINY)), 512, 256, "bilinear", True, IMAGENET, 5, plain_call),
    "clip_vision_model": (lambda: transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        image_size=224, patch_size=14, **TINY)), 32, 224, "bicubic", False, CLIP, 1, plain_call),
    # native image_size 64 with patch 16: a 128 input comes down to 64, a 4×4 grid
    "siglip_vision_model": (lambda: transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        image_size=64, patch_size=16, **TINY)), 128, 64, "bicubic", True, HALF, 0, plain_call),
    "siglip2_vision_model": (lambda: transformers.Siglip2VisionModel(transformers.Siglip2VisionConfig(
        patch_size=16, num_patches=256, **TINY)), 64, 256, "bilinear", True, HALF, 0, siglip2_call),
    "vit_mae": (lambda: mae_model(32), 32, None, None, False, IMAGENET, 1, mae_call),
    "radio": (lambda: transformers.RadioModel(transformers.RadioConfig(
        patch_size=16, max_img_size=256, num_cls_tokens=2, num_registers=3, hidden_size=WIDTH, num_hidden_layers=2,
        num_attention_heads=2, mlp_ratio=2.0)), 64, 256, "bilinear", False, NO_NORM, 5, radio_call),
}


def _saved(name, tmp_path):
    torch.manual_seed(0)
    build, *_ = CASES[name]
    model = build().eval()
    folder = tmp_path / name
    model.save_pretrained(folder)
    return model, folder


@pytest.mark.parametrize("name", sorted(CASES))
def test_teacher_matches_the_model_on_hand_preprocessed_pixels(name, tmp_path):
    _, side, size, mode, antialias, mean_std, prefix, call = CASES[name]
    model, folder = _saved(name, tmp_path)
    teacher = load_teacher(folder)
    teacher.pyramid_layers = (0, -1)
    assert isinstance(teacher, VisionFoundationTeacher)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 2 - 1

    with torch.no_grad():
        expected = call(model, manual_pixels(x, size, mode, antialias, mean_std))
        grid = _grid(expected, prefix)
        features = teacher.feature_map(x, grid)
        pyramid = teacher.feature_pyramid(x)
    if size in (224, 256):
        assert grid == (16, 16)  # the study's 16×16 tokens
    # (a) shapes on the native grid, on a coarser latent grid, and of the pyramid
    assert features.shape == (2, WIDTH, *grid)
    assert teacher.feature_map(x, (grid[0] // 2, grid[1] // 2)).shape == (2, WIDTH, grid[0] // 2, grid[1] // 2)
    assert [p.shape for p in pyramid] == [(2, WIDTH, *grid)] * 2
    # (b) + (c): the teacher's tokens are the model's patch tokens after the table's preprocessing
    torch.testing.assert_close(features, grid_of(expected.last_hidden_state, prefix), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pyramid[0], grid_of(expected.hidden_states[0], prefix), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pyramid[1], grid_of(expected.hidden_states[-1], prefix), rtol=1e-4, atol=1e-4)
    assert expected.last_hidden_state.shape[1] == prefix + grid[0] * grid[1]


def _grid(output, prefix):
    side = math.isqrt(output.last_hidden_state.shape[1] - prefix)
    return side, side


def test_radio_teacher_uses_the_spatial_features_not_the_summary(tmp_path):
    model, folder = _saved("radio", tmp_path)
    teacher = load_vfm_teacher(folder)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        out = model(pixel_values=(x + 1) / 2)  # RADIO normalises inside: the teacher feeds [0, 1]
        features = teacher.feature_map(x, (16, 16))
    torch.testing.assert_close(features.flatten(2).transpose(1, 2), out.features, rtol=1e-4, atol=1e-4)


def test_a_full_clip_folder_gives_its_vision_tower(tmp_path):
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
        vision_config=dict(image_size=224, patch_size=14, **TINY), projection_dim=16)
    model = transformers.CLIPModel(config).eval()
    model.save_pretrained(tmp_path / "clip")
    teacher = load_teacher(tmp_path / "clip")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model.vision_model(pixel_values=manual_pixels(x, 224, "bicubic", False, CLIP)).last_hidden_state
        torch.testing.assert_close(teacher.feature_map(x, (16, 16)), grid_of(expected, 1), rtol=1e-4, atol=1e-4)


def test_mae_rebuilds_its_sincos_positions_for_a_new_grid(tmp_path):
    """A 32-pixel MAE (4×4 table) on 48-pixel images equals a fresh 48-pixel MAE (6×6 table) with the same
    weights: MAE's table is fixed sin-cos, rebuilt for the grid as MAE/REPA do at 256."""
    model, folder = _saved("vit_mae", tmp_path)
    teacher = load_teacher(folder)
    reference = mae_model(48)
    weights = {k: v for k, v in model.state_dict().items() if k != "embeddings.position_embeddings"}
    missing, _ = reference.load_state_dict(weights, strict=False)
    assert missing == ["embeddings.position_embeddings"]
    x = torch.rand(2, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        expected = mae_call(reference, manual_pixels(x, None, None, False, IMAGENET)).last_hidden_state
        torch.testing.assert_close(teacher.feature_map(x, (6, 6)), grid_of(expected, 1), rtol=1e-4, atol=1e-4)


def test_mae_sincos_table_matches_transformers_init():
    from diffusability.tokenizers.vfm.loaders import mae_sincos_table

    for side in (4, 6):
        fresh = mae_model(8 * side)
        torch.testing.assert_close(mae_sincos_table(side, WIDTH), fresh.embeddings.position_embeddings[0].detach(),
                                   rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- MoCo v3 conversion

def timm_style_checkpoint(width=WIDTH, depth=2, patch=8, side=4, mlp=64, seed=0):
    """Random tensors with the MoCo v3 layout (module.base_encoder. + timm ViT keys) and distractors."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    w = {"cls_token": rand(1, 1, width), "pos_embed": rand(1, 1 + side * side, width),
         "patch_embed.proj.weight": rand(width, 3, patch, patch), "patch_embed.proj.bias": rand(width),
         "norm.weight": 1 + rand(width), "norm.bias": rand(width)}
    for i in range(depth):
        b = f"blocks.{i}."
        w.update({b + "norm1.weight": 1 + rand(width), b + "norm1.bias": rand(width),
                  b + "attn.qkv.weight": rand(3 * width, width), b + "attn.qkv.bias": rand(3 * width),
                  b + "attn.proj.weight": rand(width, width), b + "attn.proj.bias": rand(width),
                  b + "norm2.weight": 1 + rand(width), b + "norm2.bias": rand(width),
                  b + "mlp.fc1.weight": rand(mlp, width), b + "mlp.fc1.bias": rand(mlp),
                  b + "mlp.fc2.weight": rand(width, mlp), b + "mlp.fc2.bias": rand(width)})
    state = {"module.base_encoder." + k: v for k, v in w.items()}
    state.update({"module.base_encoder.head.0.weight": rand(16, width), "module.momentum_encoder.cls_token": rand(1, 1, width),
                  "module.predictor.0.weight": rand(16, 16)})
    return {"state_dict": state, "epoch": 300, "arch": "vit_tiny"}, w


def timm_vit_forward(w, pixels, heads, depth=2):
    """A minimal timm VisionTransformer forward_features (pre-norm blocks, fused qkv, eps 1e-6)."""
    patch = w["patch_embed.proj.weight"].shape[-1]
    tokens = F.conv2d(pixels, w["patch_embed.proj.weight"], w["patch_embed.proj.bias"], stride=patch)
    side = tokens.shape[-1]
    tokens = tokens.flatten(2).transpose(1, 2)
    pos = w["pos_embed"]
    old = math.isqrt(pos.shape[1] - 1)
    if old != side:  # resample the patch rows of the table to the new grid (bicubic), CLS row unchanged
        grid = pos[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, side * side, -1)], dim=1)
    x = torch.cat([w["cls_token"].expand(pixels.shape[0], -1, -1), tokens], dim=1) + pos
    n, t, d = x.shape
    for i in range(depth):
        b = f"blocks.{i}."
        h = F.layer_norm(x, (d,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
        qkv = (h @ w[b + "attn.qkv.weight"].T + w[b + "attn.qkv.bias"]).reshape(n, t, 3, heads, d // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1)
        mixed = (attention @ v).transpose(1, 2).reshape(n, t, d)
        x = x + mixed @ w[b + "attn.proj.weight"].T + w[b + "attn.proj.bias"]
        h = F.layer_norm(x, (d,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
        h = F.gelu(h @ w[b + "mlp.fc1.weight"].T + w[b + "mlp.fc1.bias"])
        x = x + h @ w[b + "mlp.fc2.weight"].T + w[b + "mlp.fc2.bias"]
    return F.layer_norm(x, (d,), w["norm.weight"], w["norm.bias"], eps=1e-6)


@pytest.mark.parametrize("side", [32, 48])  # the checkpoint's own 4×4 grid, and resampled to 6×6
def test_converted_mocov3_matches_a_timm_style_forward(side, tmp_path):
    from diffusability.tokenizers.vfm.mocov3 import convert_mocov3_checkpoint

    checkpoint, weights = timm_style_checkpoint()
    torch.save(checkpoint, tmp_path / "mocov3.pth.tar")
    folder = convert_mocov3_checkpoint(tmp_path / "mocov3.pth.tar", tmp_path / "mocov3", num_heads=2)
    teacher = load_teacher(folder)
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = timm_vit_forward(weights, manual_pixels(x, None, None, False, IMAGENET), heads=2)
        features = teacher.feature_map(x, (side // 8, side // 8))
    torch.testing.assert_close(features, grid_of(expected, 1), rtol=1e-4, atol=1e-4)


def test_mocov3_conversion_errors(tmp_path):
    from diffusability.tokenizers.vfm.mocov3 import convert_mocov3_checkpoint

    checkpoint, _ = timm_style_checkpoint()
    with pytest.raises(DiffusabilityError, match="head count of width 32"):
        convert_mocov3_checkpoint(checkpoint, tmp_path / "a")
    with pytest.raises(DiffusabilityError, match="no keys under 'module.base_encoder.'"):
        convert_mocov3_checkpoint({"state_dict": {"encoder.x": torch.zeros(1)}}, tmp_path / "b", num_heads=2)
    with pytest.raises(DiffusabilityError, match="not found"):
        convert_mocov3_checkpoint(tmp_path / "missing.pth.tar", tmp_path / "c", num_heads=2)
    assert not (tmp_path / "a").exists()


# ----------------------------------------------------------------------------- clear errors

def test_load_teacher_rejects_an_unknown_model_type(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "resnet"})
    with pytest.raises(DiffusabilityError, match="resnet"):
        load_teacher(tmp_path)


def test_missing_folder_and_missing_config_are_clear_errors(tmp_path):
    with pytest.raises(DiffusabilityError, match="not found"):
        load_teacher(tmp_path / "nowhere")
    with pytest.raises(DiffusabilityError, match="VFM teacher folder not found"):
        load_vfm_teacher(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffusabilityError, match="config.json: not found"):
        load_vfm_teacher(tmp_path / "empty")


def test_a_folder_without_weights_is_a_clear_error(tmp_path):
    transformers.Dinov2Config(image_size=224, patch_size=14, **TINY).save_pretrained(tmp_path)
    with pytest.raises(DiffusabilityError, match="could not load Dinov2Model"):
        load_teacher(tmp_path)


def test_custom_code_folders_are_refused_with_the_reason(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "radio_model", "auto_map": {"AutoModel": "hf_model.RADIOModel"}})
    with pytest.raises(DiffusabilityError, match="trust_remote_code.*'radio'"):
        load_teacher(tmp_path)


@pytest.mark.parametrize("config", [
    {"model_type": "timm_wrapper", "architecture": "vit_pe_core_large_patch14_336"},
    {"model_type": "perception_lm"},
])
def test_perception_encoder_folders_say_what_is_missing(config, tmp_path):
    write_json(tmp_path / "config.json", config)
    with pytest.raises(DiffusabilityError, match="Perception Encoder .* no native image model in transformers"):
        load_teacher(tmp_path)


class FakeTimmViT(torch.nn.Module):
    """What timm's vit_pe_* offers the teacher: patch_embed.patch_size, num_prefix_tokens, forward_features."""

    def __init__(self, patch: int, width: int = 6):
        super().__init__()
        self.patch_embed = torch.nn.Module()
        self.patch_embed.patch_size = (patch, patch)
        self.num_prefix_tokens = 1
        self.proj = torch.nn.Conv2d(3, width, patch, stride=patch)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, width))

    def forward_features(self, x):
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)


def test_perception_encoder_loads_through_the_optional_timm_extra(tmp_path, monkeypatch):
    """A timm PE folder goes through timm when it is importable (a fake module here: timm itself needs
    torchvision): bilinear resize to 16 patches, mean/std 0.5, the CLS token dropped; without timm the
    error says what to install; non-PE timm folders are refused."""
    import sys
    import types

    write_json(tmp_path / "config.json", {"architecture": "vit_pe_core_large_patch14_336", "num_classes": 0})
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(DiffusabilityError, match="optional 'timm' package with a torchvision"):
        load_teacher(tmp_path)

    torch.manual_seed(0)
    built = {}

    def create_model(name, pretrained, pretrained_cfg_overlay, num_classes, dynamic_img_size):
        built.update(name=name, file=pretrained_cfg_overlay["file"], num_classes=num_classes,
                     dynamic=dynamic_img_size, pretrained=pretrained)
        return FakeTimmViT(14)

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    teacher = load_teacher(tmp_path)
    assert built == {"name": "vit_pe_core_large_patch14_336", "file": str(tmp_path / "model.safetensors"),
                     "num_classes": 0, "dynamic": True, "pretrained": True}
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    pixels = torch.nn.functional.interpolate((x + 1) / 2, size=(224, 224), mode="bilinear", align_corners=False)
    expected = teacher.model.model.forward_features((pixels - 0.5) / 0.5)[:, 1:]
    got = teacher.feature_map(x, (16, 16))
    torch.testing.assert_close(got, expected.transpose(1, 2).reshape(2, 6, 16, 16), rtol=1e-5, atol=1e-5)

    write_json(tmp_path / "config.json", {"architecture": "vit_base_patch16_224"})
    with pytest.raises(DiffusabilityError, match="only Perception Encoder models"):
        load_teacher(tmp_path)
