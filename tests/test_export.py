"""Export and compilation: `torch.export` and ONNX for inference, `torch.compile` without graph breaks.

Routing that `torch.export` / `torch.compile` can trace is decided from Python-level facts (no `lang_ids`, a
`single_language` hint, a one-language model, no per-language modules); a mixed batch keeps its eager routing.
"""

from __future__ import annotations

import pytest
import torch

from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM, MetaXLMForTokenClassification, parameter_groups

LANGUAGES = ["en", "te", "sw"]
BATCH, LENGTH, VOCAB = 13, 7, 99


def tiny_config(**overrides) -> MetaXLMConfig:
    fields = dict(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=20, languages=LANGUAGES, num_labels=5,
    )  # fmt: skip
    fields.update(overrides)
    return MetaXLMConfig(**fields)


def make_inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (BATCH, LENGTH), generator=generator)
    lengths = torch.randint(2, LENGTH + 1, (BATCH,), generator=generator)
    attention_mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 1), "attention_mask": attention_mask}


@pytest.mark.parametrize("language_modules", ["none", "adapters", ["ffn", "adapters", "layernorm"]], ids=str)
def test_torch_export_of_a_default_language_model_matches_eager(language_modules):
    torch.manual_seed(0)
    model = MetaXLMForTokenClassification(tiny_config(language_modules=language_modules, default_language="te"))
    model.eval()
    inputs = make_inputs()
    exported = torch.export.export(model, args=(), kwargs=inputs, strict=True)
    expected = model(**inputs).logits
    torch.testing.assert_close(exported.module()(**inputs).logits, expected)
    # A different batch through the same program: nothing was specialised on the first batch's values.
    other = make_inputs(seed=1)
    torch.testing.assert_close(exported.module()(**other).logits, model(**other).logits)


def test_torch_export_of_a_one_language_batch_given_lang_ids_and_the_hint():
    torch.manual_seed(0)
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters", use_language_embeddings=True)).eval()
    inputs = {**make_inputs(), "lang_ids": torch.full((BATCH,), 2)}
    exported = torch.export.export(model, args=(), kwargs={**inputs, "single_language": "sw"}, strict=True)
    torch.testing.assert_close(exported.module()(**inputs, single_language="sw").logits, model(**inputs).logits)


def test_single_language_hint_that_contradicts_lang_ids_raises_eagerly():
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    with pytest.raises(ValueError, match="single_language='sw'"):
        model(**make_inputs(), lang_ids=torch.zeros(BATCH, dtype=torch.long), single_language="sw")


def test_onnx_export_of_token_classification_matches_eager(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime", reason="the [test] extra installs onnx, onnxscript, onnxruntime")
    torch.manual_seed(0)
    model = MetaXLMForTokenClassification(tiny_config(language_modules="adapters", default_language="sw")).eval()
    inputs = make_inputs()
    path = tmp_path / "token_classification.onnx"
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    torch.onnx.export(
        model, args=(), kwargs=inputs, f=str(path), input_names=["input_ids", "attention_mask"],
        output_names=["logits"], dynamic_shapes={name: {0: batch, 1: length} for name in inputs}, dynamo=True,
    )  # fmt: skip
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    other = make_inputs(seed=3)  # another batch than the one traced
    (logits,) = session.run(["logits"], {name: tensor.numpy() for name, tensor in other.items()})
    torch.testing.assert_close(torch.from_numpy(logits), model(**other).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("language_modules", ["none", "adapters"])
def test_one_language_training_forward_has_no_graph_break(language_modules):
    """What the pretraining trainer runs under `torch_compile=True`: one language per step (the collator's
    `single_language`), labels, dropout on, then backward."""
    torch.manual_seed(0)
    model = MetaXLMForMaskedLM(tiny_config(language_modules=language_modules)).train()
    inputs = make_inputs()
    labels = inputs["input_ids"].masked_fill(torch.rand(BATCH, LENGTH) > 0.3, -100)
    batch = {**inputs, "labels": labels, "lang_ids": torch.full((BATCH,), 1), "single_language": "te"}
    explanation = torch._dynamo.explain(model)(**batch)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="eager")
    torch.manual_seed(1)
    compiled_loss = compiled(**batch).loss
    torch.manual_seed(1)
    torch.testing.assert_close(compiled_loss, model(**batch).loss)
    compiled_loss.backward()
    groups = parameter_groups(model)
    assert all(p.grad is not None for p in groups.shared.values())
    assert all(p.grad is not None for p in groups.languages["te"].values())
    assert all(p.grad is None for code in ("en", "sw") for p in groups.languages[code].values())
