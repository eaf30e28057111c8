"""Ecosystem parity: Transformers output conventions and pipelines, PEFT LoRA, gradient checkpointing."""

import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from test_meta import flat, mlm_batch, tiny_model, val_batches
from test_modeling import BATCH, HEADS, LENGTH, VOCAB, labels_for, make_batch, tiny_config
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, pipeline

from meta_xlm import MetaXLMForMaskedLM, MetaXLMForTokenClassification, MetaXLMModel
from meta_xlm.meta import meta_step_gradients


# ---------------------------------------------------------------- outputs
@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_return_dict_false_gives_the_model_outputs_tuple(head):
    model = head(tiny_config(language_modules="adapters")).eval()
    batch = {**make_batch(seed=1), **labels_for(head, make_batch(seed=1))}
    as_dict = model(**batch)
    as_tuple = model(**batch, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple()):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    model.config.return_dict = False
    assert isinstance(model(**batch), tuple)


@pytest.mark.parametrize("variant", ["adapters", "attention"])
def test_output_attentions_and_hidden_states_in_the_callers_row_order(variant):
    model = MetaXLMModel(tiny_config(language_modules=variant)).eval()
    batch = make_batch(seed=2)  # mixed languages: rows are sorted by language inside and must come back
    out = model(**batch, output_attentions=True, output_hidden_states=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (BATCH, 4, LENGTH, LENGTH)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (BATCH, LENGTH, 32)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state, rtol=0, atol=0)
    row = 5
    alone = model(**{k: v[row : row + 1] for k, v in batch.items()}, output_attentions=True)
    torch.testing.assert_close(out.attentions[1][row : row + 1], alone.attentions[1], rtol=1e-5, atol=1e-6)
    probabilities = out.attentions[0].sum(-1)
    torch.testing.assert_close(probabilities, torch.ones_like(probabilities))
    padded = batch["attention_mask"][row] == 0
    assert (out.attentions[0][row][..., padded] == 0).all()  # no weight on padding


def word_level_tokenizer() -> PreTrainedTokenizerFast:
    """XLM-R's special tokens (<s>=0, <pad>=1, </s>=2, <unk>=3) plus <mask> and words w5..w98."""
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, **{f"w{i}": i for i in range(5, VOCAB)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        mask_token="<mask>", cls_token="<s>", sep_token="</s>",
    )  # fmt: skip


def test_fill_mask_pipeline_uses_the_default_language():
    tokenizer = word_level_tokenizer()
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    model.set_default_language("te")
    fill = pipeline("fill-mask", model=model, tokenizer=tokenizer)
    best = fill("w5 <mask> w7", top_k=1)[0]
    input_ids = tokenizer("w5 <mask> w7", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probabilities = model(input_ids, lang_ids=torch.tensor([1])).logits[0, 2].softmax(-1)
    assert best["token"] == int(probabilities.argmax())
    assert best["score"] == pytest.approx(float(probabilities.max()), rel=1e-5)
    model.set_default_language("pt")
    assert fill("w5 <mask> w7", top_k=1)[0]["score"] != pytest.approx(best["score"], rel=1e-6)


def test_token_classification_pipeline_uses_the_default_language():
    tokenizer = word_level_tokenizer()
    labels = {i: f"TAG{i}" for i in range(5)}
    model = MetaXLMForTokenClassification(
        tiny_config(language_modules="adapters", default_language="pt", id2label=labels)
    ).eval()
    tagger = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="none")
    tags = [entity["entity"] for entity in tagger("w5 w6 w7 w8")]
    input_ids = tokenizer("w5 w6 w7 w8", return_tensors="pt")["input_ids"]
    expected = model(input_ids, lang_ids=torch.tensor([2])).logits[0, 1:-1].argmax(-1)
    assert tags == [labels[int(i)] for i in expected]


# ---------------------------------------------------------------- PEFT
def lora(model, modules=("query", "value", "intermediate.dense")):
    config = LoraConfig(r=4, lora_alpha=8, target_modules=list(modules), init_lora_weights="gaussian")
    return get_peft_model(model, config)


def test_lora_on_fused_attention_trains_and_changes_outputs(capsys):
    torch.manual_seed(3)
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    batch = make_batch(seed=3)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    before = model(**batch).logits.detach()
    peft_model = lora(model)
    peft_model.print_trainable_parameters()
    assert "trainable params" in capsys.readouterr().out
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # "gaussian" init keeps lora_B = 0: outputs are unchanged until a step is taken
    torch.testing.assert_close(peft_model(**batch).logits, before, rtol=0, atol=0)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    peft_model.train()(**batch).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    # with lora_B = 0 only lora_B gets a gradient first; every wrapped module's (query, value, FFN) must
    lora_b = {n: g for n, g in grads.items() if "lora_B" in n}
    assert len(lora_b) == 6 and all(g is not None and g.abs().sum() > 0 for g in lora_b.values()), lora_b.keys()
    optimizer.step()
    assert not torch.allclose(peft_model.eval()(**batch).logits, before)
    with peft_model.disable_adapter():
        torch.testing.assert_close(peft_model(**batch).logits, before, rtol=0, atol=0)


def test_lora_adapter_only_save_and_load_round_trip(tmp_path):
    torch.manual_seed(4)
    base_state = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).state_dict()
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    model.load_state_dict(base_state)
    peft_model = lora(model)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    batch = make_batch(seed=4)
    expected = peft_model(**batch).logits
    peft_model.save_pretrained(tmp_path / "lora")
    saved = sorted(p.name for p in (tmp_path / "lora").iterdir())
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    fresh = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "lora").eval()
    torch.testing.assert_close(reloaded(**batch).logits, expected, rtol=0, atol=0)


def test_attention_calls_its_modules_when_they_are_not_plain_linears():
    model = MetaXLMModel(tiny_config()).eval()
    batch = make_batch(seed=5)
    fused = model(**batch).last_hidden_state
    seen = []
    model.encoder.layer[0].attention.self.value.register_forward_hook(lambda module, args, out: seen.append(1))
    torch.testing.assert_close(model(**batch).last_hidden_state, fused, rtol=1e-5, atol=1e-6)
    assert seen == [1]  # the hooked module ran: the fused path was left


# ---------------------------------------------------------------- gradient checkpointing
def gradients(model, batch) -> torch.Tensor:
    model.zero_grad()
    model(**batch).loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("kinds", ["adapters", ["attention", "layernorm"]], ids=str)
def test_gradient_checkpointing_gives_the_same_gradients(kinds):
    model = MetaXLMForMaskedLM(tiny_config(language_modules=kinds)).train()
    batch = make_batch(seed=6)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    plain = gradients(model, batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers 5.x renames it activation_checkpointing_*
        model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing and model.roberta.encoder.layer[0].gradient_checkpointing
    torch.testing.assert_close(gradients(model, batch), plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["finite_difference", "exact"])
def test_meta_step_under_gradient_checkpointing_matches_and_keeps_it_enabled(method):
    model = tiny_model().train()
    train, vals = mlm_batch("te"), val_batches()
    expected = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.1, method=method, seeds=[7])
    model.activation_checkpointing_enable()
    got = meta_step_gradients(model, [train], vals, "te", lookahead_lr=0.1, method=method, seeds=[7])
    torch.testing.assert_close(flat(got.hypergradient), flat(expected.hypergradient), rtol=0, atol=0)
    assert all(layer.gradient_checkpointing for layer in model.roberta.encoder.layer)

