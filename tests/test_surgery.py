"""meta_xlm.surgery: PCGrad and GradVac on hand-made vectors (the math, no trainer)."""

import pytest
import torch

from meta_xlm.model_card import training_rows
from meta_xlm.surgery import GradVac, cosines, gram_matrix, parse_language_loss_weights, pcgrad


def vectors(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)  # (L, n)


def vector(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)  # (n,)


def sequential_pcgrad(gradients: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Yu et al.'s Algorithm 1 written on the vectors themselves, drawing the same random orders as `pcgrad`."""
    projected = []
    for i in range(len(gradients)):
        g_i = gradients[i].clone()
        for j in [j for j in torch.randperm(len(gradients), generator=generator).tolist() if j != i]:
            dot = g_i @ gradients[j]
            if dot < 0:
                g_i = g_i - dot / (gradients[j] @ gradients[j]) * gradients[j]
        projected.append(g_i)
    return torch.stack(projected).sum(0)


def test_pcgrad_projects_a_conflicting_pair_by_hand():
    g1, g2 = vector(1.0, 0.0), vector(-1.0, 1.0)  # g1·g2 = -1
    # g1' = g1 - (-1/2) g2 = (0.5, 0.5);  g2' = g2 - (-1/1) g1 = (0, 1)
    torch.testing.assert_close(pcgrad([g1, g2]), vector(0.5, 1.5), rtol=0, atol=1e-15)


@pytest.mark.parametrize("pair", [([1.0, 0.0], [0.0, 2.0]), ([1.0, 1.0], [2.0, 0.5])], ids=["orthogonal", "aligned"])
def test_pcgrad_without_conflict_is_the_plain_sum(pair):
    gradients = vectors(*pair)
    assert torch.equal(pcgrad(gradients), gradients.sum(0))


def test_pcgrad_three_languages_by_hand():
    # Only g1 and g2 conflict (g1·g2 = -1); g3 is orthogonal to both, so the order of projections does not matter.
    gradients = vectors([1.0, 0.0, 0.0], [-1.0, 1.0, 0.0], [0.0, 0.0, 2.0])
    expected = vector(0.5, 0.5, 0.0) + vector(0.0, 1.0, 0.0) + vector(0.0, 0.0, 2.0)
    for seed in range(4):
        torch.testing.assert_close(pcgrad(gradients, torch.Generator().manual_seed(seed)), expected, rtol=0, atol=1e-15)


def test_pcgrad_equals_the_sequential_algorithm_on_random_vectors():
    """The Gram-matrix form equals projecting the vectors themselves, for the same random orders (4 languages,
    several conflicts, orders that matter)."""
    gradients = torch.randn(4, 11, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    assert (gram_matrix(gradients) < 0).sum() >= 4  # several conflicting pairs
    results = set()
    for seed in range(6):
        got = pcgrad(gradients, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(got, sequential_pcgrad(gradients, torch.Generator().manual_seed(seed)),
                                   rtol=1e-12, atol=1e-12)
        results.add(tuple(got.round(decimals=8).tolist()))
    assert len(results) > 1  # the order is random and it matters here


def test_gram_matrix_of_long_float32_gradients_is_accurate():
    """Chunked float32 products summed in float64: the cosine of 1M-long float32 gradients within 1e-9 of float64."""
    generator = torch.Generator().manual_seed(2)
    shared = torch.randn(1_000_003, generator=generator)
    gradients = torch.stack([shared + 3 * torch.randn(1_000_003, generator=generator),
                             -0.2 * shared + 3 * torch.randn(1_000_003, generator=generator)])  # (2, n) float32
    exact = cosines(gradients.double() @ gradients.double().T)
    torch.testing.assert_close(cosines(gram_matrix(gradients)), exact, rtol=0, atol=1e-9)


def test_pcgrad_needs_two_gradients():
    with pytest.raises(ValueError, match="at least two flat gradients"):
        pcgrad(vectors([1.0, 2.0]))


def test_gradvac_lifts_the_cosine_exactly_to_the_target():
    g1, g2 = vector(1.0, 0.0, 0.0), vector(0.1, 1.0, 0.3)
    gradvac = GradVac(num_languages=2, ema=0.01)
    gradvac.targets[0] = torch.tensor([[0.0, 0.5], [0.6, 0.0]], dtype=torch.float64)
    coefficients = gradvac.coefficients(gram_matrix(torch.stack([g1, g2])))
    g1_new = coefficients[0, 0] * g1 + coefficients[0, 1] * g2
    g2_new = coefficients[1, 0] * g1 + coefficients[1, 1] * g2
    assert coefficients[0, 0] == 1 and coefficients[1, 1] == 1  # g_i' = g_i + a g_j
    torch.testing.assert_close(cosines(gram_matrix(torch.stack([g1_new, g2])))[0, 1].item(), 0.5, rtol=0, atol=1e-12)
    torch.testing.assert_close(cosines(gram_matrix(torch.stack([g2_new, g1])))[0, 1].item(), 0.6, rtol=0, atol=1e-12)


def test_gradvac_leaves_gradients_above_their_target_alone_and_updates_the_ema():
    gradients = vectors([1.0, 0.2], [0.5, 1.0])
    cosine = cosines(gram_matrix(gradients))[0, 1].item()  # ~0.61
    gradvac = GradVac(num_languages=2, ema=0.1)
    gradvac.targets[0] = torch.tensor([[0.0, 0.3], [0.2, 0.0]], dtype=torch.float64)
    assert torch.equal(gradvac(gradients), gradients.sum(0))
    expected = torch.tensor([[0.0, 0.9 * 0.3 + 0.1 * cosine], [0.9 * 0.2 + 0.1 * cosine, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(gradvac.targets[0], expected, rtol=0, atol=1e-15)


def test_gradvac_with_target_zero_is_pcgrad():
    gradients = vectors([1.0, 0.0], [-1.0, 1.0])
    torch.testing.assert_close(GradVac(2)(gradients), pcgrad(gradients), rtol=0, atol=1e-12)


def test_gradvac_keeps_targets_per_group():
    gradvac = GradVac(num_languages=2, num_groups=3, ema=0.5)
    gradvac(vectors([1.0, 0.0], [1.0, 1.0]), group=1)
    assert torch.equal(gradvac.targets[[0, 2]], torch.zeros(2, 2, 2, dtype=torch.float64))
    assert gradvac.targets[1, 0, 1] > 0


def test_gradvac_state_round_trip_through_a_checkpoint(tmp_path):
    stream = torch.Generator().manual_seed(3)
    steps = [torch.randn(3, 6, dtype=torch.float64, generator=stream) for _ in range(4)]
    original = GradVac(num_languages=3, num_groups=2, ema=0.2)
    for gradients in steps[:2]:
        original(gradients, group=1)
    torch.save(original.state_dict(), tmp_path / "surgery_state.pt")
    restored = GradVac(num_languages=3, num_groups=2, ema=0.2)
    restored.load_state_dict(torch.load(tmp_path / "surgery_state.pt", weights_only=True))
    assert torch.equal(restored.targets, original.targets) and bool(original.targets.ne(0).any())
    for gradients in steps[2:]:  # the next steps continue identically
        first = original(gradients, group=1, generator=torch.Generator().manual_seed(0))
        second = restored(gradients, group=1, generator=torch.Generator().manual_seed(0))
        assert torch.equal(first, second)
    with pytest.raises(ValueError, match="same languages and surgery_granularity"):
        GradVac(num_languages=2, num_groups=2).load_state_dict(original.state_dict())


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"gradvac_ema must be in \(0, 1\]"):
        GradVac(2, ema=0.0)
    with pytest.raises(ValueError, match="holds targets for 3 languages"):
        GradVac(3)(vectors([1.0], [2.0]))
    with pytest.raises(ValueError, match="is not LANG=WEIGHT"):
        parse_language_loss_weights(["en:1"])
    with pytest.raises(ValueError, match="is not LANG=WEIGHT"):
        parse_language_loss_weights(["en=-1"])
    assert parse_language_loss_weights({"en": 1, "sw": 2.5}) == {"en": 1.0, "sw": 2.5}


def test_model_card_rows_name_the_surgery_and_the_loss_weights():
    settings = {"gradient_surgery": "gradvac", "surgery_granularity": "layer", "language_loss_weights": ["en=1.0", "sw=2.0"]}
    rows = dict(training_rows(settings, None, "CPU", None))
    assert rows["gradient surgery"] == "gradvac per layer" and rows["language loss weights"] == "en=1.0, sw=2.0"
    assert "gradient surgery" not in dict(training_rows({"gradient_surgery": None}, None, "CPU", None))
