"""LPIPS-VGG without torchvision: VGG16 layout, the lpips v0.1 distance, weight loading, the loss switch."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from diffusability.errors import DiffusabilityError
from diffusability.io import save_tensors
from diffusability.tokenizers.losses import VAEObjective, pyramid_distance
from diffusability.tokenizers.lpips import LPIPSVGG, load_lpips_vgg
from diffusability.tokenizers.spec import TokenizerSpec

REPO = Path(__file__).resolve().parent.parent
# torchvision's vgg16().features has 14,714,688 parameters (13 convs, 3×3)
VGG16_FEATURE_PARAMETERS = 14_714_688


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return LPIPSVGG().eval()


def _images(n=2, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=generator) * 2 - 1


def test_vgg16_layout_matches_torchvision(net):
    assert sum(p.numel() for p in net.features.parameters()) == VGG16_FEATURE_PARAMETERS
    conv_indices = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)]
    assert conv_indices == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    shapes = [tuple(t.shape[1:]) for t in net.taps(_images(1, 32))]
    assert shapes == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]


def test_distance_is_zero_for_identical_images_symmetric_and_non_negative(net):
    x, y = _images(seed=0), _images(seed=1)
    with torch.no_grad():
        assert net(x, x).abs().max().item() < 1e-10
        d_xy, d_yx = net(x, y), net(y, x)
    torch.testing.assert_close(d_xy, d_yx)
    assert d_xy.shape == (2,) and (d_xy > 0).all()


def test_unit_heads_give_the_headless_pyramid_distance_and_heads_act_linearly(net):
    x, y = _images(seed=2), _images(seed=3)
    with torch.no_grad():
        expected = pyramid_distance(net.taps(x), net.taps(y))  # Σ_levels mean_positions ‖unit a − unit b‖²
        torch.testing.assert_close(net(x, y), expected, rtol=1e-5, atol=1e-7)
        # a one-hot head on channel 5 of level 0 (others zero) reads that channel's squared difference alone
        for level, head in enumerate(net.heads):
            head.zero_()
        net.heads[0][0, 5] = 3.0
        a, b = net.taps(x)[0], net.taps(y)[0]
        unit = lambda t: t / (t.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # noqa: E731
        one_channel = 3.0 * (unit(a)[:, 5] - unit(b)[:, 5]).pow(2).mean(dim=(1, 2))
        torch.testing.assert_close(net(x, y), one_channel, rtol=1e-5, atol=1e-9)
        for head in net.heads:
            head.fill_(1.0)


def _lpips_heads() -> dict[str, torch.Tensor] | None:
    wheels = sorted((REPO / ".weights").glob("lpips-*.whl"))
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return torch.load(io.BytesIO(wheel.read("lpips/weights/v0.1/vgg.pth")), map_location="cpu", weights_only=True)


def test_weight_file_round_trip_and_clear_errors(tmp_path, net):
    heads = _lpips_heads()
    if heads is None:  # no lpips wheel here: hand-built heads in lpips' naming
        heads = {f"lin{l}.model.1.weight": torch.rand(1, c, 1, 1) for l, c in enumerate((64, 128, 256, 512, 512))}
    torch.manual_seed(1)
    vgg = {f"features.{k}": v for k, v in LPIPSVGG().features.state_dict().items()}
    save_tensors(tmp_path / "lpips.safetensors", {**vgg, **heads})
    loaded = load_lpips_vgg(tmp_path / "lpips.safetensors")
    for level in range(5):
        assert torch.equal(loaded.heads[level].detach(), heads[f"lin{level}.model.1.weight"])
    for key, value in vgg.items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not any(p.requires_grad for p in loaded.parameters())
    torch.save({**vgg, **heads}, tmp_path / "lpips.pth")
    assert torch.equal(load_lpips_vgg(tmp_path / "lpips.pth").heads[2].detach(), heads["lin2.model.1.weight"])
    with pytest.raises(DiffusabilityError, match="convert_lpips_weights"):
        load_lpips_vgg(tmp_path / "absent.safetensors")
    save_tensors(tmp_path / "heads_only.safetensors", heads)
    with pytest.raises(DiffusabilityError, match="VGG16 weights missing"):
        load_lpips_vgg(tmp_path / "heads_only.safetensors")


def test_objective_uses_lpips_per_image_broadcast_on_every_pixel(net):
    objective = VAEObjective(perceptual_weight=2.0, perceptual_net=net, image_size=16)
    x, y = _images(seed=4), _images(seed=5)
    with torch.no_grad():
        distance = net(x, y)
        nll = objective.nll(y, x)
    l1 = (x - y).abs().sum(dim=(1, 2, 3))
    assert nll.item() == pytest.approx(((l1 + 2.0 * distance * 3 * 16 * 16).sum() / 2).item(), rel=1e-5)
    # frozen and outside the tokenizer's state dict (so never in its optimizer or checkpoint weights)
    assert not any(key.startswith(("perceptual_net", "features")) for key in objective.state_dict())


def test_spec_requires_weights_for_lpips():
    with pytest.raises(DiffusabilityError, match="lpips_weights"):
        TokenizerSpec.from_dict({"perceptual": "lpips"})
    with pytest.raises(DiffusabilityError, match="perceptual"):
        TokenizerSpec.from_dict({"perceptual": "vgg"})
    assert TokenizerSpec.from_dict({"perceptual": "lpips", "lpips_weights": "w.safetensors"}).perceptual == "lpips"
