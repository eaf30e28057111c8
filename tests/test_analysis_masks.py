"""Per-language Hard Concrete masks on a frozen model: gate map, masked forward, π comparison."""

import pytest
import torch
from test_analysis_gradient_conflict import mlm_batch, tiny_model
from torch.func import functional_call

from meta_xlm.analysis.masks import (
    DEFAULT_MASK_GROUPS,
    MaskGroupSpec,
    centered_cosine,
    extreme_groups,
    learn_language_mask,
    load_pi,
    masked_weights,
    pi_similarity,
    resolve_gate_map,
    save_pi,
)

HEADS, INTERMEDIATE, HEAD_SIZE = 4, 37, 8


def test_layout_has_one_gate_per_head_and_per_ffn_neuron():
    gate_map = resolve_gate_map(tiny_model(), DEFAULT_MASK_GROUPS)
    assert gate_map.num_gates == 2 * HEADS + 2 * INTERMEDIATE
    assert gate_map.layers() == [0, 1] and gate_map.sublayers() == ["attention", "ffn"]
    sizes = gate_map.group_sizes()
    assert sizes[0] == 32 * HEAD_SIZE and sizes[-1] == 32  # a head: 32 rows x 8 columns; a neuron: one column


def test_closing_a_head_equals_zeroing_its_output_projection_columns():
    model = tiny_model()
    model.eval()
    gate_map = resolve_gate_map(model)
    batch = mlm_batch("en", 0)
    gates = torch.ones(gate_map.num_gates)
    open_loss = functional_call(model, masked_weights(model, gate_map, gates), args=(), kwargs=batch).loss
    assert open_loss.item() == pytest.approx(model(**batch).loss.item(), abs=1e-6)

    gates[2] = 0.0  # layer 0, head 2
    masked_loss = functional_call(model, masked_weights(model, gate_map, gates), args=(), kwargs=batch).loss
    with torch.no_grad():
        model.roberta.encoder.layer[0].attention.output.dense.weight[:, 2 * HEAD_SIZE : 3 * HEAD_SIZE] = 0
    assert masked_loss.item() == pytest.approx(model(**batch).loss.item(), abs=1e-6)
    assert masked_loss.item() != pytest.approx(open_loss.item(), abs=1e-6)


def test_group_spec_matching_no_parameter_is_a_clear_error():
    spec = MaskGroupSpec("ffn", r"roberta\.encoder\.layer\.(?P<layer>\d+)\.mlp\.weight", "neuron")
    with pytest.raises(
        ValueError, match=r"mask group 'ffn': pattern .*mlp.* matches no parameter of MetaXLMForMaskedLM"
    ):
        resolve_gate_map(tiny_model(), [spec])
    with pytest.raises(ValueError, match="unit='row', expected one of"):
        resolve_gate_map(tiny_model(), [MaskGroupSpec("ffn", DEFAULT_MASK_GROUPS[1].pattern, "row")])


def test_learning_a_mask_leaves_the_model_frozen_and_saves_round_trip(tmp_path):
    model = tiny_model()
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    gate_map = resolve_gate_map(model)
    batches = iter([mlm_batch("en", seed) for seed in range(5)])
    pi = learn_language_mask(model, gate_map, batches, steps=5, l0_lambda=0.1, seed=0)
    assert (
        pi.shape == (gate_map.num_gates,)
        and torch.isfinite(pi).all()
        and not torch.equal(pi, torch.zeros_like(pi))
    )
    assert all(torch.equal(param, before[name]) for name, param in model.named_parameters())
    save_pi(tmp_path / "pi_en.safetensors", pi, gate_map, {"language": "en"})
    loaded, loaded_gate_map = load_pi(tmp_path / "pi_en.safetensors")
    assert torch.equal(loaded, pi) and loaded_gate_map == gate_map


def test_similarity_and_extremes():
    gate_map = resolve_gate_map(tiny_model())
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(gate_map.num_gates, generator=generator)
    rows = pi_similarity({"en": a, "en#2": a.clone(), "sw": -a}, gate_map, [("en", "en#2"), ("en", "sw")])
    by_key = {(r["pair"], r["layer"], r["sublayer"]): r for r in rows}
    assert by_key[("en-en#2", 1, "ffn")]["cosine"] == pytest.approx(1.0)
    assert by_key[("en-sw", "all", "attention")]["cosine"] == pytest.approx(-1.0)
    # A shared offset leaves the centred cosine unchanged but pulls the plain one towards 1.
    assert centered_cosine(a + 100, a.flip(0) + 100) == pytest.approx(centered_cosine(a, a.flip(0)))

    extremes = extreme_groups(a, 2 * a, gate_map, count=3)
    assert len(extremes) == 6
    assert [row["pi"] for row in extremes[:3]] == sorted(row["pi"] for row in extremes[:3])
    assert extremes[0]["pi"] == pytest.approx(-(a.min() / a.abs().max()).abs().item())
    assert all(
        row["pi"] == pytest.approx(row["pi_other"]) for row in extremes
    )  # each normalised by its own max
