"""The Hard Concrete distribution of Louizos, Welling and Kingma (2017), "Learning Sparse Neural Networks
through L0 Regularization", used by the paper's parameter-sharing analysis (Section 3.1, Eq. 1).

A gate z in [0, 1] with parameter log_alpha (the paper's π):
    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / β)          binary Concrete, temperature β
    s̄ = s (ζ - γ) + γ                                          stretched to (γ, ζ) = (-0.1, 1.1)
    z = min(1, max(0, s̄))                                     hard-clipped: exact 0 and 1 have mass
Closed forms (Louizos et al., Eq. 12 and the CDF of the binary Concrete):
    P(z > 0) = sigmoid(log_alpha - β log(-γ / ζ))               -> the expected L0 norm is Σ_j P(z_j > 0)
    P(s̄ ≤ t) = sigmoid(β (log(t - γ) - log(ζ - t)) - log_alpha),  γ < t < ζ
"""

from __future__ import annotations

import math

import torch

STRETCH_LOW = -0.1  # γ
STRETCH_HIGH = 1.1  # ζ
TEMPERATURE = 2.0 / 3.0  # β


def sample_gates(
    log_alpha: torch.Tensor,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One reparameterised draw z ~ HardConcrete(log_alpha) per element (differentiable in log_alpha)."""
    # u kept away from 0 and 1 so that log u and log(1 - u) stay finite.
    u = torch.rand(log_alpha.shape, generator=generator, dtype=log_alpha.dtype, device=log_alpha.device)
    u = u.clamp(1e-6, 1 - 1e-6)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / temperature)
    return (s * (high - low) + low).clamp(0.0, 1.0)


def deterministic_gates(
    log_alpha: torch.Tensor, low: float = STRETCH_LOW, high: float = STRETCH_HIGH
) -> torch.Tensor:
    """The test-time gate of Louizos et al. (Eq. 13): min(1, max(0, sigmoid(log_alpha) (ζ - γ) + γ))."""
    return (torch.sigmoid(log_alpha) * (high - low) + low).clamp(0.0, 1.0)


def probability_open(
    log_alpha: torch.Tensor,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> torch.Tensor:
    """P(z > 0) = sigmoid(log_alpha - β log(-γ / ζ)) (Louizos et al., Eq. 12)."""
    return torch.sigmoid(log_alpha - temperature * math.log(-low / high))


def stretched_cdf(
    t: torch.Tensor | float,
    log_alpha: torch.Tensor,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> torch.Tensor:
    """P(s̄ ≤ t) for γ < t < ζ; P(z = 0) = P(s̄ ≤ 0) and P(z = 1) = 1 - P(s̄ ≤ 1)."""
    t = torch.as_tensor(t, dtype=log_alpha.dtype, device=log_alpha.device)
    return torch.sigmoid(temperature * (torch.log(t - low) - torch.log(high - t)) - log_alpha)


def expected_gate(
    log_alpha: torch.Tensor,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
    num_points: int = 20001,
) -> torch.Tensor:
    """E[z] = ∫_0^1 P(z > t) dt = ∫_0^1 (1 - P(s̄ ≤ t)) dt, the closed-form CDF integrated by the trapezoid rule
    (there is no elementary antiderivative). Returns one value per element of log_alpha."""
    grid = torch.linspace(0.0, 1.0, num_points, dtype=torch.float64)  # (P,)
    survival = 1 - stretched_cdf(
        grid[:, None], log_alpha.double().reshape(1, -1), temperature, low, high
    )  # (P, N)
    return torch.trapezoid(survival, grid, dim=0).reshape(log_alpha.shape).to(log_alpha.dtype)


def expected_l0(
    log_alpha: torch.Tensor,
    group_sizes: torch.Tensor | None = None,
    temperature: float = TEMPERATURE,
    low: float = STRETCH_LOW,
    high: float = STRETCH_HIGH,
) -> torch.Tensor:
    """E‖θ ⊙ z‖_0 = Σ_j |θ_j| P(z_j > 0): each gate counts the parameters it switches (1 when no sizes are given)."""
    p_open = probability_open(log_alpha, temperature, low, high)
    if group_sizes is None:
        return p_open.sum()
    return (p_open * group_sizes.to(p_open.dtype)).sum()


__all__ = [
    "STRETCH_HIGH",
    "STRETCH_LOW",
    "TEMPERATURE",
    "deterministic_gates",
    "expected_gate",
    "expected_l0",
    "probability_open",
    "sample_gates",
    "stretched_cdf",
]
