"""The FID Inception-v3 (TF graph of 2015-12-05) in plain PyTorch: pool3, IS logits, sFID features.

A port of the TensorFlow graph ``classify_image_graph_def.pb`` that the ADM evaluator runs:
- input: uint8 (N, H, W, 3) or float 0..255 (N, 3, H, W); TF1 ``ResizeBilinear`` to 299×299
  (output pixel i samples input position i·(in/out), no half-pixel offset, edge-clamped), then
  (x − 128) / 128;
- conv units = conv (no bias) → batch norm without scale (γ = 1, ε = 0.001) → ReLU; the TF
  "SAME" paddings are the symmetric paddings below;
- pooling quirks of the graph: the average pools inside the blocks exclude padding
  (``count_include_pad=False``), and the last block (``mixed_10``) pools its fourth branch with a
  **max** pool; pool3 is an 8×8 average pool;
- outputs: ``pool3`` (N, 2048) for FID/P&R, ``logits`` (N, 1008) = pool3 @ softmax weights
  (no bias, as ADM computes IS), ``spatial`` (N, 2023) = first 7 channels of ``mixed_6/conv``
  (the 1×1 branch of the 7th mixed block, 17×17) flattened in TF's NHWC order, for sFID.
Module names follow the TF graph (``conv``, ``conv_1``, …, ``mixed_10``), so converted weights
(``benchmarks/convert_fid_helper_weights.py``) load with matching keys. Weights are read from a
local file only; nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffusabilityError, require

INPUT_SIZE = 299
NUM_LOGITS = 1008
SPATIAL_CHANNELS = 7
WEIGHTS_HINT = ("Put the FID Inception weights (a state dict converted from the TF 2015-12-05 graph, e.g. with "
                "benchmarks/convert_fid_helper_weights.py) at this path, or set the config's inception weights path.")


def tf1_resize_bilinear(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """TF1 ``ResizeBilinear`` (align_corners=False, half_pixel_centers=False).

    Output index i reads input position p = i·(in/out): rows/cols floor(p) and min(floor(p)+1, in−1),
    weighted by the fractional part. (N, C, H, W) → (N, C, size, size), same dtype.
    """
    def axis_weights(length: int):
        position = torch.arange(size, dtype=torch.float64) * (length / size)
        low = position.floor().long().clamp(max=length - 1)
        high = (low + 1).clamp(max=length - 1)
        frac = (position - low.double()).to(images.dtype)
        return low, high, frac

    top, bottom, fy = axis_weights(images.shape[-2])
    left, right, fx = axis_weights(images.shape[-1])
    rows = images[..., top, :] * (1 - fy)[:, None] + images[..., bottom, :] * fy[:, None]
    return rows[..., left] * (1 - fx) + rows[..., right] * fx


class ConvUnit(nn.Module):
    """TF conv unit: conv2d (no bias) → batch norm (no scale, ε 0.001, running stats) → ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel))
        self.beta = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("mean", torch.zeros(out_channels))
        self.register_buffer("var", torch.ones(out_channels))
        nn.init.kaiming_normal_(self.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        return F.relu(F.batch_norm(x, self.mean, self.var, None, self.beta, False, 0.0, 0.001))


class _Sequential(nn.Module):
    """Conv units applied in order, named conv, conv_1, conv_2, … as in the TF graph."""

    def __init__(self, *units: ConvUnit, pool: nn.Module | None = None):
        super().__init__()
        if pool is not None:
            self.pool = pool
        for i, unit in enumerate(units):
            setattr(self, "conv" if i == 0 else f"conv_{i}", unit)
        self.n_units = len(units)

    def forward(self, x):
        if hasattr(self, "pool"):
            x = self.pool(x)
        for i in range(self.n_units):
            x = getattr(self, "conv" if i == 0 else f"conv_{i}")(x)
        return x


def _avg_pool_same() -> nn.Module:
    # TF "SAME" average pooling divides by the number of real (non-padded) inputs.
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class MixedA(nn.Module):
    """35×35 block (mixed, mixed_1, mixed_2): 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avgpool→1×1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.conv = ConvUnit(in_channels, 64, 1)
        self.tower = _Sequential(ConvUnit(in_channels, 48, 1), ConvUnit(48, 64, 5, padding=2))
        self.tower_1 = _Sequential(ConvUnit(in_channels, 64, 1), ConvUnit(64, 96, 3, padding=1),
                                   ConvUnit(96, 96, 3, padding=1))
        self.tower_2 = _Sequential(ConvUnit(in_channels, pool_features, 1), pool=_avg_pool_same())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedB(nn.Module):
    """35→17 reduction (mixed_3): 3×3/2 | 1×1→3×3→3×3/2 | maxpool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.conv = ConvUnit(in_channels, 384, 3, stride=2)
        self.tower = _Sequential(ConvUnit(in_channels, 64, 1), ConvUnit(64, 96, 3, padding=1),
                                 ConvUnit(96, 96, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.pool(x)], 1)


class MixedC(nn.Module):
    """17×17 block (mixed_4 … mixed_7) with factorised 7×7 convolutions of width ``c7``."""

    def __init__(self, in_channels: int, c7: int):
        super().__init__()
        self.conv = ConvUnit(in_channels, 192, 1)
        self.tower = _Sequential(ConvUnit(in_channels, c7, 1), ConvUnit(c7, c7, (1, 7), padding=(0, 3)),
                                 ConvUnit(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = _Sequential(ConvUnit(in_channels, c7, 1), ConvUnit(c7, c7, (7, 1), padding=(3, 0)),
                                   ConvUnit(c7, c7, (1, 7), padding=(0, 3)), ConvUnit(c7, c7, (7, 1), padding=(3, 0)),
                                   ConvUnit(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = _Sequential(ConvUnit(in_channels, 192, 1), pool=_avg_pool_same())

    def forward(self, x):
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedD(nn.Module):
    """17→8 reduction (mixed_8): 1×1→3×3/2 | 1×1→1×7→7×1→3×3/2 | maxpool/2."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.tower = _Sequential(ConvUnit(in_channels, 192, 1), ConvUnit(192, 320, 3, stride=2))
        self.tower_1 = _Sequential(ConvUnit(in_channels, 192, 1), ConvUnit(192, 192, (1, 7), padding=(0, 3)),
                                   ConvUnit(192, 192, (7, 1), padding=(3, 0)), ConvUnit(192, 192, 3, stride=2))
        self.pool = nn.MaxPool2d(3, stride=2)

    def forward(self, x):
        return torch.cat([self.tower(x), self.tower_1(x), self.pool(x)], 1)


class MixedE(nn.Module):
    """8×8 block (mixed_9, mixed_10) with split 1×3 / 3×1 branches; ``max_pool`` is the mixed_10 quirk."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__()
        self.conv = ConvUnit(in_channels, 320, 1)
        self.tower_conv = ConvUnit(in_channels, 384, 1)
        self.tower_mixed_conv = ConvUnit(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = ConvUnit(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = ConvUnit(in_channels, 448, 1)
        self.tower_1_conv_1 = ConvUnit(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = ConvUnit(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = ConvUnit(384, 384, (3, 1), padding=(1, 0))
        self.tower_2_pool = nn.MaxPool2d(3, stride=1, padding=1) if max_pool else _avg_pool_same()
        self.tower_2_conv = ConvUnit(in_channels, 192, 1)

    def forward(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        return torch.cat([self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                          self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                          self.tower_2_conv(self.tower_2_pool(x))], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3; see the module docstring. ``softmax_weight`` (1008, 2048) is optional."""

    def __init__(self):
        super().__init__()
        self.conv = ConvUnit(3, 32, 3, stride=2)
        self.conv_1 = ConvUnit(32, 32, 3)
        self.conv_2 = ConvUnit(32, 64, 3, padding=1)
        self.pool0 = nn.MaxPool2d(3, stride=2)
        self.conv_3 = ConvUnit(64, 80, 1)
        self.conv_4 = ConvUnit(80, 192, 3)
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.mixed = MixedA(192, 32)
        self.mixed_1 = MixedA(256, 64)
        self.mixed_2 = MixedA(288, 64)
        self.mixed_3 = MixedB(288)
        self.mixed_4 = MixedC(768, 128)
        self.mixed_5 = MixedC(768, 160)
        self.mixed_6 = MixedC(768, 160)
        self.mixed_7 = MixedC(768, 192)
        self.mixed_8 = MixedD(768)
        self.mixed_9 = MixedE(1280, max_pool=False)
        self.mixed_10 = MixedE(2048, max_pool=True)
        # The graph's final MatMul (softmax/weights, transposed); NaN until real weights are loaded.
        self.register_buffer("softmax_weight", torch.full((NUM_LOGITS, 2048), float("nan")))

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, H, W, 3) or float 0..255 (N, 3, H, W) → float (N, 3, 299, 299) in [-1, 1]."""
        images = torch.as_tensor(images)
        if images.dtype == torch.uint8:
            require(images.ndim == 4 and images.shape[-1] == 3, f"inception input: expected uint8 (N, H, W, 3), got {tuple(images.shape)}")
            images = images.permute(0, 3, 1, 2).float()
        require(images.ndim == 4 and images.shape[1] == 3 and images.is_floating_point(),
                f"inception input: expected uint8 (N, H, W, 3) or float 0..255 (N, 3, H, W), got "
                f"{images.dtype} {tuple(images.shape)}")
        return (tf1_resize_bilinear(images, INPUT_SIZE) - 128.0) / 128.0

    def forward_preprocessed(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(N, 3, 299, 299) in [-1, 1] → {"pool3": (N, 2048), "spatial": (N, 2023), "logits": (N, 1008)}."""
        x = self.pool0(self.conv_2(self.conv_1(self.conv(x))))
        x = self.pool1(self.conv_4(self.conv_3(x)))
        x = self.mixed_5(self.mixed_4(self.mixed_3(self.mixed_2(self.mixed_1(self.mixed(x))))))
        # sFID: the 1×1 branch ("mixed_6/conv") of block mixed_6, first 7 channels, NHWC flattening.
        spatial = self.mixed_6.conv(x)[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).flatten(1)
        x = self.mixed_10(self.mixed_9(self.mixed_8(self.mixed_7(self.mixed_6(x)))))
        pool3 = F.avg_pool2d(x, 8).flatten(1)
        return {"pool3": pool3, "spatial": spatial, "logits": pool3 @ self.softmax_weight.T}

    def forward(self, images) -> dict[str, torch.Tensor]:
        """Images (see :meth:`preprocess`) → dict of pool3, spatial and logits features."""
        return self.forward_preprocessed(self.preprocess(images))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same interface as the domain network: x float (N, 3, H, W) in [-1, 1] → (pool3, logits)."""
        outputs = self.forward((x + 1.0) * 127.5)
        return outputs["pool3"], outputs["logits"]


def load_fid_inception(path, sha256: str | None = None) -> FIDInceptionV3:
    """Build the network and load weights from a local state dict (.safetensors or .pt).

    Args:
        path: weights file with the keys of :class:`FIDInceptionV3` (``softmax_weight`` optional).
        sha256: expected SHA-256 of the file; checked when given.
    """
    from ..io import file_sha256

    path = Path(path)
    require(path.is_file(), f"{path}: FID Inception weights not found. {WEIGHTS_HINT}")
    if sha256 is not None:
        actual = file_sha256(path)
        require(actual.lower() == sha256.lower(),
                f"{path}: SHA-256 {actual} does not match the expected {sha256}; wrong or corrupted weights. {WEIGHTS_HINT}")
    if path.suffix == ".safetensors":
        from ..io import load_tensors

        state = load_tensors(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    model = FIDInceptionV3()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "softmax_weight"]
    if missing or unexpected:
        raise DiffusabilityError(f"{path}: not an FID Inception state dict (missing {missing[:5]}…, "
                                 f"unexpected {unexpected[:5]}…). {WEIGHTS_HINT}")
    model.eval()
    model.requires_grad_(False)
    return model


def load_adm_reference_statistics(path) -> dict[str, np.ndarray]:
    """``mu``, ``sigma``, ``mu_s``, ``sigma_s`` of an ADM reference batch (VIRTUAL_imagenet256_labeled.npz)."""
    path = Path(path)
    require(path.is_file(), f"{path}: ADM reference batch not found (download VIRTUAL_imagenet256_labeled.npz "
                            "from the guided-diffusion evaluations page and put it here)")
    from ..io import reading
    with reading(path, ".npz file"), np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("mu", "sigma", "mu_s", "sigma_s") if k not in data.files]
        require(not missing, f"{path}: missing arrays {missing} (has {data.files})")
        return {k: data[k].astype(np.float64) for k in ("mu", "sigma", "mu_s", "sigma_s")}
