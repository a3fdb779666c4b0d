"""Conversions between stored images (uint8, NHWC) and network inputs (float, NCHW, [-1, 1])."""

from __future__ import annotations


def to_model_input(images):
    """uint8 (N, H, W, 3) numpy/torch → float32 torch (N, 3, H, W) in [-1, 1]."""
    import torch

    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {tensor.dtype}")
    return tensor.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images):
    """float torch (N, 3, H, W) in [-1, 1] → uint8 torch (N, H, W, 3); ADM's 127.5·x + 128 clamp."""
    import torch

    return (images.detach().float() * 127.5 + 128.0).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()
