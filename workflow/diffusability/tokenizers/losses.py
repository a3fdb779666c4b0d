"""The VA-VAE training objective in the LDM convention (docs/models.md §1.2).

    nll  = Σ_{C,H,W} ( |x − x̂| + λp·d(x, x̂) ) / exp(logvar) + logvar,   averaged over the batch
    loss = nll + kl_weight·KL + [adaptive GAN term] + [regularizer]

The sum (not mean) over pixels is the LDM convention; every other weight's scale depends on it.
``d`` is a per-image perceptual distance broadcast onto every pixel; here it is an LPIPS-like
distance on the frozen teacher's feature pyramid (channel-normalised squared differences, averaged
spatially, summed over levels, no learned heads), or LPIPS-VGG itself when a ``perceptual_net``
(``lpips.LPIPSVGG``) is given. Without either the perceptual term is off.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn
from torch.nn import functional as F

ADAPTIVE_EPS = 1e-4


class FeatureTeacher(Protocol):
    """What the losses and regularizers need from a frozen teacher (the domain net or a VFM adapter)."""

    def feature_pyramid(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def feature_map(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor: ...


def unit_channels(features: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Divide each position's feature vector (dim 1) by its L2 norm, as LPIPS does."""
    return features / (features.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def pyramid_distance(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> torch.Tensor:
    """LPIPS-like distance without learned heads: (N,).

    Each level is (N,F,h,w) or (N,F); per level Σ_F (unit(a) − unit(b))², averaged over positions;
    the levels are summed.
    """
    total = None
    for a, b in zip(reference, other, strict=True):
        diff = (unit_channels(a) - unit_channels(b)).pow(2).sum(dim=1)
        level = diff.flatten(1).mean(dim=1) if diff.dim() > 1 else diff
        total = level if total is None else total + level
    return total


def adaptive_weight(primary: torch.Tensor, secondary: torch.Tensor, layer: torch.Tensor,
                    max_value: float) -> torch.Tensor:
    """‖∇primary‖ / (‖∇secondary‖ + 1e-4) w.r.t. ``layer``, clamped to [0, max_value], detached.

    Returns 0 when ``secondary`` does not depend on ``layer`` (nothing to balance).
    """
    if not secondary.requires_grad:
        return torch.zeros((), device=primary.device)
    (grad_primary,) = torch.autograd.grad(primary, layer, retain_graph=True)
    (grad_secondary,) = torch.autograd.grad(secondary, layer, retain_graph=True, allow_unused=True)
    if grad_secondary is None:
        return torch.zeros((), device=primary.device)
    ratio = grad_primary.norm() / (grad_secondary.norm() + ADAPTIVE_EPS)
    return ratio.clamp(0.0, max_value).detach()


class PatchDiscriminator(nn.Module):
    """taming's NLayerDiscriminator: a PatchGAN with BatchNorm and LeakyReLU 0.2, N(0, 0.02) init.

    (N,3,H,W) → patch logits (N,1,h',w').
    """

    def __init__(self, layers: int = 3, channels: int = 64):
        super().__init__()
        modules: list[nn.Module] = [nn.Conv2d(3, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        mult = 1
        for index in range(1, layers + 1):
            previous, mult = mult, min(2 ** index, 8)
            stride = 2 if index < layers else 1
            modules += [nn.Conv2d(channels * previous, channels * mult, 4, stride=stride, padding=1, bias=False),
                        nn.BatchNorm2d(channels * mult), nn.LeakyReLU(0.2)]
        modules.append(nn.Conv2d(channels * mult, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*modules)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """0.5·(mean ReLU(1 − real) + mean ReLU(1 + fake))."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


class VAEObjective(nn.Module):
    """Reconstruction nll (with learnable logvar), KL and the optional PatchGAN generator term.

    The teacher is held as a plain attribute, not a submodule, so it never enters the
    tokenizer's state dict or its optimizer.
    """

    def __init__(self, kl_weight: float = 1e-6, perceptual_weight: float = 1.0,
                 teacher: FeatureTeacher | None = None, learn_logvar: bool = True,
                 disc_weight: float = 0.0, disc_start: int = 5001, disc_layers: int = 3,
                 disc_channels: int = 64, image_size: int | None = None,
                 perceptual_net: nn.Module | None = None):
        super().__init__()
        self.image_size = image_size
        self.kl_weight = kl_weight
        self.perceptual_weight = perceptual_weight
        self.logvar = nn.Parameter(torch.zeros(()), requires_grad=learn_logvar)
        self.__dict__["teacher"] = teacher  # bypass nn.Module registration on purpose
        # frozen LPIPS network (x, y) → (N,); like the teacher, kept out of the state dict
        self.__dict__["perceptual_net"] = perceptual_net
        self.disc_weight = disc_weight
        self.disc_start = disc_start
        self.discriminator = PatchDiscriminator(disc_layers, disc_channels) if disc_weight > 0 else None

    @property
    def uses_perceptual(self) -> bool:
        return (self.teacher is not None or self.perceptual_net is not None) and self.perceptual_weight > 0

    def perceptual_distance(self, target: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
        """Per-image perceptual distance (N,) between target and reconstruction (both (N,3,H,W)).

        Images of another size than the training size (EQ's rescaled pairs) are resized bilinearly
        to it first, because the teacher accepts only its own input size.
        """
        if self.image_size is not None and target.shape[-1] != self.image_size:
            size = (self.image_size, self.image_size)
            target = F.interpolate(target, size=size, mode="bilinear", align_corners=False)
            reconstruction = F.interpolate(reconstruction, size=size, mode="bilinear", align_corners=False)
        if self.perceptual_net is not None:
            return self.perceptual_net(target.detach(), reconstruction)
        with torch.no_grad():
            reference = [f.detach() for f in self.teacher.feature_pyramid(target)]
        return pyramid_distance(reference, self.teacher.feature_pyramid(reconstruction))

    def nll(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Σ over C·H·W of (L1 + λp·d)/exp(logvar) + logvar, mean over the batch: a scalar."""
        per_pixel = (target - reconstruction).abs()
        if self.uses_perceptual:
            distance = self.perceptual_distance(target, reconstruction)
            per_pixel = per_pixel + self.perceptual_weight * distance.view(-1, 1, 1, 1)
        per_pixel = per_pixel / torch.exp(self.logvar) + self.logvar
        return per_pixel.sum() / per_pixel.shape[0]

    def gan_active(self, step: int) -> bool:
        return self.discriminator is not None and step >= self.disc_start

    def generator_gan_term(self, reconstruction: torch.Tensor, nll: torch.Tensor,
                           last_layer: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weighted generator loss, adaptive weight); zeros before ``disc_start`` or when off."""
        zero = torch.zeros((), device=reconstruction.device)
        if not self.gan_active(step):
            return zero, zero
        g_loss = -self.discriminator(reconstruction).mean()
        weight = adaptive_weight(nll, g_loss, last_layer, max_value=1e4) * self.disc_weight
        return weight * g_loss, weight

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """Hinge loss on detached inputs (the discriminator's own step)."""
        return hinge_discriminator_loss(self.discriminator(real.detach()), self.discriminator(fake.detach()))
