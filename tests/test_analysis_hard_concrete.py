"""Hard Concrete gates (Louizos et al. 2017) and the L0-penalised gate fitting of the mask analysis."""

import pytest
import torch

from meta_xlm.analysis.hard_concrete import (
    deterministic_gates,
    expected_gate,
    expected_l0,
    probability_open,
    sample_gates,
    stretched_cdf,
)
from meta_xlm.analysis.masks import fit_gates

# Monte Carlo with n = 200k draws per gate: the standard error of a probability or a mean in [0, 1] is at most
# 0.5 / sqrt(n) ≈ 1.1e-3, so a tolerance of 5e-3 is > 4 standard errors.
DRAWS = 200_000
TOLERANCE = 5e-3
LOG_ALPHAS = torch.tensor([-3.0, -1.0, 0.0, 0.7, 2.5], dtype=torch.float64)


def draws() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return sample_gates(LOG_ALPHAS.repeat(DRAWS, 1), generator=generator)  # (DRAWS, 5)


def test_sample_mean_matches_closed_form():
    z = draws()
    torch.testing.assert_close(z.mean(0), expected_gate(LOG_ALPHAS), atol=TOLERANCE, rtol=0)


def test_probability_of_exact_zero_and_one_match_closed_form():
    z = draws()
    torch.testing.assert_close(
        (z == 0).double().mean(0), 1 - probability_open(LOG_ALPHAS), atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        (z == 0).double().mean(0), stretched_cdf(0.0, LOG_ALPHAS), atol=TOLERANCE, rtol=0
    )
    torch.testing.assert_close(
        (z == 1).double().mean(0), 1 - stretched_cdf(1.0, LOG_ALPHAS), atol=TOLERANCE, rtol=0
    )


def test_expected_l0_is_sum_of_open_probabilities_and_matches_sampled_count():
    sizes = torch.tensor([3.0, 1.0, 7.0, 2.0, 5.0], dtype=torch.float64)
    assert expected_l0(LOG_ALPHAS).item() == pytest.approx(probability_open(LOG_ALPHAS).sum().item())
    assert expected_l0(LOG_ALPHAS, sizes).item() == pytest.approx(
        (probability_open(LOG_ALPHAS) * sizes).sum().item()
    )
    sampled_count = (draws() > 0).double().sum(1).mean()  # E[number of non-zero gates]
    assert sampled_count.item() == pytest.approx(expected_l0(LOG_ALPHAS).item(), abs=5 * TOLERANCE)


def test_deterministic_gate_is_clipped_stretched_sigmoid():
    gates = deterministic_gates(torch.tensor([-10.0, 0.0, 10.0]))
    torch.testing.assert_close(gates, torch.tensor([0.0, 0.5, 1.0]))


def needs_first_gate(gates: torch.Tensor) -> torch.Tensor:
    """A loss that only the first of three groups can lower: (1 - z_0)^2."""
    return (1 - gates[0]) ** 2


def test_large_lambda_closes_every_gate():
    log_alpha = fit_gates(needs_first_gate, num_gates=3, steps=300, l0_lambda=100.0, seed=0)
    assert (probability_open(log_alpha) < 0.05).all(), log_alpha


def test_zero_lambda_keeps_the_needed_group_open():
    log_alpha = fit_gates(needs_first_gate, num_gates=3, steps=300, l0_lambda=0.0, seed=0)
    assert probability_open(log_alpha)[0] > 0.99, log_alpha
    # The other two gates get no gradient at all: they stay where they started.
    torch.testing.assert_close(log_alpha[1:], torch.zeros(2))


def test_moderate_lambda_keeps_needed_group_and_closes_the_rest():
    log_alpha = fit_gates(needs_first_gate, num_gates=3, steps=400, l0_lambda=0.5, seed=0)
    p_open = probability_open(log_alpha)
    assert p_open[0] > 0.9 and (p_open[1:] < 0.1).all(), p_open
