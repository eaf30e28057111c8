"""Importing XLM-R and X-MOD masked LMs: identical outputs after conversion, X-MOD adapters per language, errors."""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from huggingface_hub import ModelCard
from transformers import (
    BertConfig,
    BertForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XmodConfig,
    XmodForMaskedLM,
)

from meta_xlm.convert import convert_xlmr, convert_xmod
from meta_xlm.data import train_shared_tokenizer
from meta_xlm.hub import UnsafeCheckpointError
from meta_xlm.modeling_meta_xlm import MetaXLMForMaskedLM, parameter_groups

BATCH, LENGTH, VOCAB = 13, 7, 99
TINY = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=37,
    max_position_embeddings=20,
    type_vocab_size=1,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
XMOD_LANGUAGES = ["en_XX", "te_IN", "de_DE"]


def make_inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, VOCAB, (BATCH, LENGTH), generator=generator)
    lengths = torch.randint(2, LENGTH + 1, (BATCH,), generator=generator)
    attention_mask = (torch.arange(LENGTH)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 1), "attention_mask": attention_mask}


def assert_same_logits(actual, expected, attention_mask):
    keep = attention_mask.bool()
    torch.testing.assert_close(actual[keep], expected[keep], rtol=1e-5, atol=1e-5)


def tiny_xlmr() -> XLMRobertaForMaskedLM:
    torch.manual_seed(1)
    return XLMRobertaForMaskedLM(XLMRobertaConfig(**TINY)).eval()


def tiny_xmod(**options) -> XmodForMaskedLM:
    torch.manual_seed(2)
    model = XmodForMaskedLM(XmodConfig(**TINY, languages=XMOD_LANGUAGES, **options)).eval()
    with (
        torch.no_grad()
    ):  # X-MOD initialises adapters like any Linear; make every language's adapter distinct
        for layer in model.roberta.encoder.layer:
            for adapter in layer.output.adapter_modules.values():
                adapter.dense2.weight.normal_(0, 0.5)
            if layer.output.adapter_layer_norm is not None:
                layer.output.adapter_layer_norm.weight.normal_(1, 0.2)
    return model


@pytest.mark.parametrize(
    ("language_modules", "shared_adapters"),
    [("none", False), ("ffn", False), ("attention", False), ("adapters", False), ("adapters", True)],
)
def test_converted_xlmr_equals_source_for_every_language(language_modules, shared_adapters):
    source = tiny_xlmr()
    batch = make_inputs()
    expected = source(**batch).logits
    model = convert_xlmr(source, ["en", "te", "pt"], language_modules, shared_adapters=shared_adapters)
    assert model.config.languages == ["en", "te", "pt"] and model.config.language_modules == language_modules
    for lang in range(3):
        actual = model(**batch, lang_ids=torch.full((BATCH,), lang)).logits
        assert_same_logits(actual, expected, batch["attention_mask"])


def test_converted_xlmr_adapters_are_neutral_but_trainable():
    model = convert_xlmr(tiny_xlmr(), ["en", "te"], "adapters")
    language_params = parameter_groups(model).languages["te"]
    down = [p for name, p in language_params.items() if name.endswith("dense1.weight")]
    up = [p for name, p in language_params.items() if name.endswith("dense2.weight")]
    assert up and all(p.abs().sum() == 0 for p in up)
    # A random down-projection: with dense2 = 0 the adapter is neutral yet still receives gradients.
    assert down and all(p.abs().sum() > 0 for p in down)
    batch = make_inputs()
    labels = batch["input_ids"].clone()
    model(**batch, lang_ids=torch.full((BATCH,), 1), labels=labels).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in up)


def test_converted_ffn_copies_are_independent_parameters():
    model = convert_xlmr(tiny_xlmr(), ["en", "te"], "ffn")
    dense = model.roberta.encoder.layer[0].intermediate.dense
    torch.testing.assert_close(dense["en"].weight, dense["te"].weight)
    assert dense["en"].weight.data_ptr() != dense["te"].weight.data_ptr()


XMOD_OPTIONS = {
    "defaults": dict(),
    "adapter_layer_norm": dict(adapter_layer_norm=True),
    "no_layer_norm": dict(adapter_reuse_layer_norm=False),
    "ln_after_adapter": dict(ln_before_adapter=False),
    "own_norm_ln_after": dict(adapter_layer_norm=True, ln_before_adapter=False),
}


@pytest.mark.parametrize("options", list(XMOD_OPTIONS))
def test_converted_xmod_adapters_give_xmods_outputs_per_language(options):
    source = tiny_xmod(**XMOD_OPTIONS[options])
    model = convert_xmod(source, ["te_IN", "en_XX"], rename={"en_XX": "en"})
    assert model.config.languages == ["te_IN", "en"]
    assert model.config.ffn_adapter_placement == "after_residual"
    batch = make_inputs(seed=1)
    outputs = {}
    for ours, theirs in [("te_IN", "te_IN"), ("en", "en_XX")]:
        source_ids = torch.full((BATCH,), XMOD_LANGUAGES.index(theirs))
        expected = source(**batch, lang_ids=source_ids).logits
        actual = model(**batch, lang_ids=torch.full((BATCH,), model.language_id(ours))).logits
        assert_same_logits(actual, expected, batch["attention_mask"])
        outputs[ours] = actual
        # The same through X-MOD's default language
        source.set_default_language(theirs)
        assert_same_logits(actual, source(**batch).logits, batch["attention_mask"])
    # The languages' adapters really differ, so a wrong mapping could not pass.
    assert (outputs["te_IN"] - outputs["en"]).abs().max() > 1e-3
    mixed_ids = torch.arange(BATCH) % 2
    mixed = model(**batch, lang_ids=mixed_ids).logits
    source_mixed = source(
        **batch, lang_ids=torch.tensor([XMOD_LANGUAGES.index("te_IN"), 0])[mixed_ids]
    ).logits
    assert_same_logits(mixed, source_mixed, batch["attention_mask"])


def test_converted_xmod_saves_and_reloads_with_its_adapter_layout(tmp_path):
    model = convert_xmod(tiny_xmod(adapter_layer_norm=True, ln_before_adapter=False))
    model.save_pretrained(tmp_path / "converted")
    reloaded = MetaXLMForMaskedLM.from_pretrained(tmp_path / "converted").eval()
    assert reloaded.config.ffn_adapter_input_norm == "adapter_layer_norm"
    assert reloaded.config.ffn_adapter_skip == "residual_sum"
    assert reloaded.config.adapter_activation == "gelu"
    batch = make_inputs(seed=2)
    lang_ids = torch.full((BATCH,), 2)
    torch.testing.assert_close(
        reloaded(**batch, lang_ids=lang_ids).logits, model(**batch, lang_ids=lang_ids).logits
    )


def test_conversion_from_a_folder(tmp_path):
    source = tiny_xlmr()
    source.save_pretrained(tmp_path / "xlmr")
    model = convert_xlmr(tmp_path / "xlmr", ["en", "sw"], "adapters")
    batch = make_inputs(seed=3)
    expected = source(**batch).logits
    assert_same_logits(
        model(**batch, lang_ids=torch.ones(BATCH, dtype=torch.long)).logits, expected, batch["attention_mask"]
    )


def test_another_architecture_is_refused(tmp_path):
    bert = BertForMaskedLM(BertConfig(**{**TINY, "type_vocab_size": 2}))
    bert.save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="'bert' checkpoint.*XLMRobertaForMaskedLM"):
        convert_xlmr(tmp_path / "bert", ["en"])
    with pytest.raises(ValueError, match="'bert' checkpoint.*XmodForMaskedLM"):
        convert_xmod(tmp_path / "bert")
    with pytest.raises(TypeError, match="XmodForMaskedLM"):
        convert_xmod(tiny_xlmr())


def test_xlmr_folder_given_to_the_xmod_converter_is_refused(tmp_path):
    tiny_xlmr().save_pretrained(tmp_path / "xlmr")
    with pytest.raises(ValueError, match="'xlm-roberta' checkpoint"):
        convert_xmod(tmp_path / "xlmr")


def test_language_missing_from_the_xmod_source_is_an_error():
    with pytest.raises(ValueError, match=r"\['sw_KE'\] not in the source X-MOD model.*en_XX"):
        convert_xmod(tiny_xmod(), ["en_XX", "sw_KE"])
    with pytest.raises(ValueError, match="rename"):
        convert_xmod(tiny_xmod(), ["en_XX"], rename={"de_DE": "de"})


def test_pickle_only_checkpoint_needs_opt_in(tmp_path):
    source = tiny_xlmr()
    folder = tmp_path / "pickled"
    source.config.save_pretrained(folder)
    torch.save(source.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="pytorch_model.bin.*allow_pickle=True"):
        convert_xlmr(folder, ["en"])
    model = convert_xlmr(folder, ["en"], allow_pickle=True)
    batch = make_inputs(seed=4)
    assert_same_logits(model(**batch).logits, source(**batch).logits, batch["attention_mask"])


def test_pre_norm_xmod_is_refused():
    source = XmodForMaskedLM(XmodConfig(**TINY, languages=["en_XX"], pre_norm=True))
    with pytest.raises(ValueError, match="pre_norm"):
        convert_xmod(source)


def test_ffn_adapter_layout_fields_are_validated():
    from meta_xlm.configuration_meta_xlm import MetaXLMConfig

    base = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4, language_modules="adapters")
    with pytest.raises(ValueError, match="ffn_adapter_placement='after_residual'"):
        MetaXLMConfig(**base, ffn_adapter_input_norm="block_layer_norm")
    with pytest.raises(ValueError, match="ffn_adapter_placement"):
        MetaXLMConfig(**base, ffn_adapter_placement="before")
    with pytest.raises(ValueError, match="needs language_modules='adapters'"):
        MetaXLMConfig(**{**base, "language_modules": "ffn"}, ffn_adapter_placement="after_residual")
    with pytest.raises(ValueError, match="adapter_activation"):
        MetaXLMConfig(**base, adapter_activation="swishy")


# ----------------------------------------------------------------------------------------------------------------
# Command-line entry points (run as subprocesses)
# ----------------------------------------------------------------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parents[1]


def save_source_with_tokenizer(directory: Path, model_class, config_class, **options):
    corpora = {
        "en": datasets.Dataset.from_dict({"text": [f"the cat {i} sat on mat {i % 3}" for i in range(80)]})
    }
    tokenizer = train_shared_tokenizer(corpora, vocab_size=280, temperature=1.0, num_sentences=80, seed=0,
                                       show_progress=False)  # fmt: skip
    torch.manual_seed(3)
    model = model_class(config_class(**{**TINY, "vocab_size": len(tokenizer)}, **options)).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model, tokenizer


def run_recipe(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "recipes" / name), *args],
        capture_output=True, text=True, check=False, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip


@pytest.mark.slow
def test_convert_xlmr_recipe_writes_an_equivalent_checkpoint_with_card(tmp_path):
    source, tokenizer = save_source_with_tokenizer(tmp_path / "xlmr", XLMRobertaForMaskedLM, XLMRobertaConfig)
    result = run_recipe("convert_xlmr.py", "--source", str(tmp_path / "xlmr"), "--output_dir", str(tmp_path / "out"),
                        "--languages", "en", "te", "--language_modules", "ffn", "adapters")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    model = MetaXLMForMaskedLM.from_pretrained(tmp_path / "out").eval()
    batch = tokenizer(["the cat sat", "on mat 2"], padding=True, return_tensors="pt")
    expected = source(**batch).logits
    actual = model(**batch, lang_ids=torch.tensor([1, 1])).logits
    assert_same_logits(actual, expected, batch["attention_mask"])
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert model.config.language_modules == ["ffn", "adapters"]  # a list from the command line
    assert card.data.language == ["en", "te"] and "JointPair + ffn + adpt" in card.text
    assert (tmp_path / "out" / "tokenizer.json").is_file() and (
        tmp_path / "out" / "convert_config.yaml"
    ).is_file()


@pytest.mark.slow
def test_convert_xmod_recipe_renames_and_rejects_unknown_languages(tmp_path):
    save_source_with_tokenizer(tmp_path / "xmod", XmodForMaskedLM, XmodConfig, languages=XMOD_LANGUAGES)
    result = run_recipe("convert_xmod.py", "--source", str(tmp_path / "xmod"), "--output_dir", str(tmp_path / "out"),
                        "--languages", "te_IN", "en_XX", "--rename", "te_IN=te", "en_XX=en")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert MetaXLMForMaskedLM.from_pretrained(tmp_path / "out").config.languages == ["te", "en"]
    bad = run_recipe("convert_xmod.py", "--source", str(tmp_path / "xmod"), "--output_dir", str(tmp_path / "bad"),
                     "--languages", "sw_KE")  # fmt: skip
    assert bad.returncode != 0 and "['sw_KE'] not in the source X-MOD model" in bad.stderr
