"""The default hypergradient stays accurate at a realistic width under bf16 autocast (issue 11).

At the paper's size, Eq. 8's probes θ ± εg move each weight by ~1e-6 against weights ~1e-2: rounding swamps the
difference (cosine 0.4-0.5 with the exact term, benchmarks/meta_step.py --accuracy). A tiny float64 model cannot
show this, so this test uses a model of 24M parameters (the paper's width and vocabulary, 2 of its 8 layers)."""

import torch

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.meta import (
    count_labels, double_backward_hvp, lookahead, meta_objective_gradients, mixed_hessian_vector_product,
    train_gradient, trainable_parameter_groups,
)
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM
from meta_xlm.trainer import MetaXLMTrainingArguments

VOCAB = 32000


def mlm_batch(language: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(5, VOCAB, (2, 32), generator=generator)
    masked = torch.rand(2, 32, generator=generator) < 0.15
    masked[:, 1] = True
    return {
        "input_ids": input_ids.masked_fill(masked, 4),
        "attention_mask": torch.ones_like(input_ids),
        "labels": input_ids.masked_fill(~masked, -100),
        "lang_ids": torch.full((2,), language),
    }


def test_default_higher_order_term_in_bf16_matches_exact_float32_at_realistic_width(tmp_path):
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=VOCAB, hidden_size=512, num_hidden_layers=2, num_attention_heads=8, intermediate_size=2048,
        max_position_embeddings=34, languages=["en", "te"], language_modules="adapters",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = MetaXLMForMaskedLM(config).train()
    assert sum(p.numel() for p in model.parameters()) >= 20_000_000
    generator = torch.Generator().manual_seed(0)
    train = [mlm_batch(1, generator)]
    val = {"en": mlm_batch(0, generator), "te": mlm_batch(1, generator)}
    groups = trainable_parameter_groups(model)
    shared, phi = groups.shared, groups.languages["te"]
    num_items = count_labels(train)
    gradient = train_gradient(model, train, shared, num_items, [0]).gradient
    outer, _, _ = meta_objective_gradients(
        model, val, lookahead(shared, gradient, 1e-4), "te", phi, {c: count_labels([b]) for c, b in val.items()}
    )
    reference = double_backward_hvp(model, train, shared, phi, outer, num_items, [0])  # exact, float32
    default = MetaXLMTrainingArguments(output_dir=str(tmp_path), use_cpu=True).hypergradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # as meta_step_gradients runs it: "exact" differentiates the lookahead's own (bf16) graph
        lookahead_pass = train_gradient(model, train, shared, num_items, [0], keep_graph=default == "exact")
        approx = mixed_hessian_vector_product(
            model, train, shared, phi, outer, num_items, [0], default, attached=lookahead_pass.attached
        )
    approx, exact = (torch.cat([t[n].double().reshape(-1) for n in phi]) for t in (approx, reference))
    assert torch.nn.functional.cosine_similarity(approx, exact, dim=0) >= 0.99
    assert abs(approx.norm() / exact.norm() - 1) < 0.02
