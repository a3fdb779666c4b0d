"""Flow-matching transport: interpolant, time laws and the loss against closed forms."""

import pytest
import torch

from diffusability.diffusion.transport import cosine_loss, flow_matching_loss, interpolate, sample_time
from diffusability.errors import DiffusabilityError


class PointMassVelocity(torch.nn.Module):
    """The exact optimal velocity when all data sit at mu: v*(x, t) = (mu − x) / (1 − t)."""

    def __init__(self, mu):
        super().__init__()
        self.mu = mu

    def forward(self, x, t, y):
        return (self.mu - x) / (1 - t).reshape(-1, 1, 1, 1)


class GaussianPosteriorVelocity(torch.nn.Module):
    """Optimal velocity for x1 ~ N(0, s²I), x0 ~ N(0, I): E[x1 − x0 | x_t] = (t·s² − (1 − t)) / Var(x_t) · x_t."""

    def __init__(self, s):
        super().__init__()
        self.s2 = s * s

    def forward(self, x, t, y):
        t = t.reshape(-1, 1, 1, 1).double()
        var = (1 - t) ** 2 + t ** 2 * self.s2
        return ((t * self.s2 - (1 - t)) / var * x.double()).float()


def test_interpolant_endpoints_and_midpoint():
    x0, x1 = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    assert torch.equal(interpolate(x0, x1, torch.zeros(2)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(2)), x1)
    assert torch.allclose(interpolate(x0, x1, torch.tensor([0.5, 0.25]))[1], 0.75 * x0[1] + 0.25 * x1[1])


@pytest.mark.parametrize("loss", ["mse", "mse+cosine"])
def test_optimal_velocity_of_a_point_mass_has_zero_loss(loss):
    mu = torch.randn(1, 4, 3, 3)
    x1 = mu.expand(64, -1, -1, -1).clone()
    g = torch.Generator().manual_seed(0)
    t = torch.rand(64, generator=g) * 0.98  # keep away from the t = 1 singularity of (mu − x)/(1 − t)
    terms = flow_matching_loss(PointMassVelocity(mu), x1, torch.zeros(64, dtype=torch.long), g, loss=loss, t=t,
                               return_terms=True)
    assert float(terms["loss"]) < 1e-8
    assert float(terms["mse"]) < 1e-8


def test_loss_of_the_optimal_gaussian_velocity_is_the_irreducible_variance():
    s, t_value, n = 2.0, 0.3, 20000
    g = torch.Generator().manual_seed(1)
    x1 = s * torch.randn(n, 2, 2, 2, generator=g)
    t = torch.full((n,), t_value)
    value = float(flow_matching_loss(GaussianPosteriorVelocity(s), x1, torch.zeros(n, dtype=torch.long), g, t=t))
    cov = t_value * s * s - (1 - t_value)
    var_xt = (1 - t_value) ** 2 + t_value ** 2 * s * s
    expected = (s * s + 1) - cov ** 2 / var_xt  # Var(v) − Cov(v, x_t)² / Var(x_t)
    assert value == pytest.approx(expected, rel=0.03)
    # a zero model pays the full variance of v = x1 − x0
    zero = float(flow_matching_loss(lambda x, t, y: torch.zeros_like(x), x1, torch.zeros(n, dtype=torch.long), g, t=t))
    assert zero == pytest.approx(s * s + 1, rel=0.03)


def test_cosine_term_is_along_channels():
    target = torch.randn(3, 5, 2, 2)
    assert float(cosine_loss(2 * target, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(cosine_loss(-target, target)) == pytest.approx(2.0, abs=1e-6)
    # orthogonal in channels at every position: cos = 0 → loss 1
    a = torch.zeros(1, 2, 2, 2)
    b = torch.zeros(1, 2, 2, 2)
    a[:, 0], b[:, 1] = 1.0, 3.0
    assert float(cosine_loss(a, b)) == pytest.approx(1.0, abs=1e-6)


def test_time_law_moments():
    g = torch.Generator().manual_seed(0)
    n = 200_000
    uniform = sample_time(n, "uniform", g)
    assert 0 <= float(uniform.min()) and float(uniform.max()) <= 1
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.005)
    assert float(uniform.var()) == pytest.approx(1 / 12, abs=0.002)
    ln = sample_time(n, "logit_normal", g, mean=0.0, std=1.0).double()
    logits = torch.log(ln / (1 - ln))
    assert float(ln.mean()) == pytest.approx(0.5, abs=0.005)  # symmetric around 1/2
    assert float(logits.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(logits.std()) == pytest.approx(1.0, abs=0.01)
    shifted = torch.logit(sample_time(n, "logit_normal", g, mean=0.5, std=0.5).double())
    assert float(shifted.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(shifted.std()) == pytest.approx(0.5, abs=0.01)


def test_bad_choices_are_named():
    with pytest.raises(DiffusabilityError, match="time_sampling"):
        sample_time(3, "beta")
    with pytest.raises(DiffusabilityError, match="loss"):
        flow_matching_loss(lambda x, t, y: x, torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long), loss="l1")
