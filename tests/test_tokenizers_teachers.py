"""The VFM teacher adapter on a fake transformers-style ViT (no transformers, no weights)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from diffusability.errors import DiffusabilityError
from diffusability.io import write_json
from diffusability.tokenizers.teachers import IMAGENET_MEAN, IMAGENET_STD, VisionFoundationTeacher, load_teacher


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


def _teacher(input_size=16):
    torch.manual_seed(0)
    return VisionFoundationTeacher(FakeViT(), patch_size=4, input_size=input_size, interpolation="bilinear",
                                   mean=IMAGENET_MEAN, std=IMAGENET_STD, pyramid_layers=(0, -1))


def test_preprocessing_resizes_and_normalises():
    teacher = _teacher(input_size=16)
    x = torch.zeros(1, 3, 8, 8)  # mid-grey in [-1, 1] = 0.5 in [0, 1]
    teacher.feature_map(x, (4, 4))
    assert teacher.model.seen.shape == (1, 3, 16, 16)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(teacher.model.seen[0, :, 3, 5], expected)


def test_prefix_tokens_are_dropped_and_the_grid_is_row_major():
    teacher = _teacher()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    features = teacher.feature_map(x, (4, 4))
    out = teacher.model(pixel_values=teacher.preprocess(x)).last_hidden_state
    assert features.shape == (2, 6, 4, 4)
    torch.testing.assert_close(features[:, :, 1, 2], out[:, 2 + 1 * 4 + 2])  # skip CLS + register
    torch.testing.assert_close(teacher.feature_map(x, (2, 2)), F.avg_pool2d(features, 2))
    pyramid = teacher.feature_pyramid(x)
    assert [p.shape for p in pyramid] == [(2, 6, 4, 4)] * 2
    assert not any(p.requires_grad for p in teacher.parameters())


def test_gradients_flow_to_the_input_for_the_perceptual_loss():
    teacher = _teacher()
    x = (torch.rand(1, 3, 16, 16) * 2 - 1).requires_grad_()
    teacher.feature_pyramid(x)[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_load_teacher_rejects_an_unknown_model_type(tmp_path):
    write_json(tmp_path / "config.json", {"model_type": "resnet"})
    with pytest.raises(DiffusabilityError, match="resnet"):
        load_teacher(tmp_path)
