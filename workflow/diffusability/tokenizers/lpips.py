"""LPIPS-VGG (v0.1) in plain torch, loaded from one local file — no torchvision, no download.

    d(x, y) = Σ_l  mean_{h,w}  w_l · ( unit(φ_l(x)) − unit(φ_l(y)) )²

where φ_l are the five ReLU outputs relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of VGG16's
``features`` stack applied to the LPIPS-scaled input, ``unit`` divides each position's channel
vector by its L2 norm (+1e-10), and w_l ≥ 0 is the 1×1 linear head of level l (lpips' ``lin{l}``).
Inputs are images in [-1, 1], (N,3,H,W); the distance is (N,).

The weights file (``.safetensors`` or ``.pth``) holds VGG16's ``features.{i}.weight/bias`` under
torchvision's indices and the heads under lpips' names ``lin{l}.model.1.weight`` (1, C_l, 1, 1)
(``lin{l}.weight`` is accepted too). ``benchmarks/convert_lpips_weights.py`` writes one from
torchvision's ``vgg16-397923af.pth`` and the ``weights/v0.1/vgg.pth`` inside the lpips wheel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import require

#: VGG16 ``features`` plan: conv widths, "M" = 2×2 max-pool (torchvision's configuration "D")
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: indices in ``features`` of the ReLUs whose outputs LPIPS compares (relu1_2 … relu5_3)
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
#: lpips' ScalingLayer: (x − shift) / scale maps [-1, 1] images to ImageNet-normalised ones
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10

WHERE_TO_GET = ("write it with `python benchmarks/convert_lpips_weights.py --vgg vgg16-397923af.pth "
                "--heads vgg.pth --out PATH` (vgg.pth: weights/v0.1/vgg.pth inside the lpips wheel, "
                "`pip download --no-deps lpips`; vgg16-397923af.pth: torchvision's VGG16 ImageNet weights)")


def vgg16_features() -> nn.Sequential:
    """VGG16's ``features`` up to relu5_3 (indices 0…29), with torchvision's module indices."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_PLAN:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            channels = item
    return nn.Sequential(*layers)


def unit_channels(features: torch.Tensor) -> torch.Tensor:
    """Each position's channel vector (dim 1) divided by its L2 norm + 1e-10, as lpips does."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPSVGG(nn.Module):
    """LPIPS v0.1 with the VGG16 backbone. forward(x, y): (N,3,H,W) × 2 in [-1, 1] → (N,) distances."""

    def __init__(self):
        super().__init__()
        self.features = vgg16_features()
        self.heads = nn.ParameterList([nn.Parameter(torch.ones(1, c, 1, 1)) for c in TAP_CHANNELS])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs (N, C_l, H/2^l, W/2^l) of the scaled input."""
        h = (x - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in TAP_INDICES:
                outputs.append(h)
        return outputs

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        require(x.shape == y.shape and x.dim() == 4 and x.shape[1] == 3,
                f"LPIPS: expected two image batches (N,3,H,W) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for head, a, b in zip(self.heads, self.taps(x), self.taps(y), strict=True):
            squared = (unit_channels(a) - unit_channels(b)).pow(2)
            total = total + (squared * head).sum(dim=1).mean(dim=(1, 2))
        return total

    def load_lpips_state(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load VGG ``features.*`` and the heads (lpips' ``lin{l}.model.1.weight`` or ``lin{l}.weight``)."""
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        expected = self.features.state_dict()
        missing = sorted(set(expected) - set(features))
        require(not missing, f"{source}: VGG16 weights missing (features.{missing[0] if missing else ''} …); "
                             + WHERE_TO_GET)
        self.features.load_state_dict({k: features[k] for k in expected})
        for level, channels in enumerate(TAP_CHANNELS):
            head = state.get(f"lin{level}.model.1.weight", state.get(f"lin{level}.weight"))
            require(head is not None, f"{source}: LPIPS head lin{level} missing; " + WHERE_TO_GET)
            require(tuple(head.shape) == (1, channels, 1, 1),
                    f"{source}: lin{level} has shape {tuple(head.shape)}, expected (1, {channels}, 1, 1)")
            with torch.no_grad():
                self.heads[level].copy_(head)


def read_weight_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch ``.pth`` (tensors only)."""
    path = Path(path)
    require(path.is_file(), f"LPIPS weights {path}: file not found; " + WHERE_TO_GET)
    if path.suffix == ".safetensors":
        from ..io import load_tensors

        return load_tensors(path)
    from ..io import reading

    with reading(path, "torch state dict"):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    require(isinstance(state, Mapping), f"{path}: expected a state dict, got {type(state).__name__}")
    return dict(state)


def load_lpips_vgg(path: str | Path) -> LPIPSVGG:
    """The frozen LPIPS-VGG network from the weights file at ``path`` (eval mode, no gradients to its weights)."""
    model = LPIPSVGG()
    model.load_lpips_state(read_weight_file(path), str(path))
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model
