"""Language lifecycle (X-MOD / AdapterHub parity): default language, adding a language, freezing, training only
some languages, sharing one language's modules; and list-valued `language_modules` with the "layernorm" kind."""

import json

import pytest
import torch
from test_modeling import (
    AUTO_FOR,
    BATCH,
    HEADS,
    LANGUAGES,
    make_batch,
    reload_in_fresh_process,
    tiny_config,
)

from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM, MetaXLMModel, parameter_groups

KINDS = ["ffn", "adapters", "layernorm"]


def one_language_batch(code_index: int, seed: int = 0) -> dict:
    batch = make_batch(seed=seed)
    batch["lang_ids"] = torch.full((BATCH,), code_index)
    return batch


# ---------------------------------------------------------------- set_default_language
@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
def test_set_default_language_routes_calls_without_lang_ids(head):
    model = head(tiny_config(language_modules="adapters")).eval()
    model.set_default_language("pt")
    batch = make_batch()
    implicit = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    explicit = model(**one_language_batch(LANGUAGES.index("pt")))
    torch.testing.assert_close(implicit.to_tuple()[0], explicit.to_tuple()[0], rtol=0, atol=0)
    assert model.config.default_language == "pt"


def test_set_default_language_rejects_an_unknown_code():
    model = MetaXLMModel(tiny_config())
    with pytest.raises(ValueError, match=r"'kn' is not one of this model's languages \['en', 'te', 'pt'\]"):
        model.set_default_language("kn")
    assert model.config.default_language is None


# ---------------------------------------------------------------- add_language
@pytest.mark.parametrize("kinds", ["adapters", KINDS, "attention"], ids=str)
def test_add_language_keeps_old_languages_and_adds_fresh_or_copied_modules(kinds):
    model = MetaXLMForMaskedLM(tiny_config(language_modules=kinds, use_language_embeddings=True)).eval()
    batch = make_batch(seed=1)
    before = model(**batch).logits
    model.add_language("kn")
    model.add_language("sw", init_from="te")
    assert model.config.languages == [*LANGUAGES, "kn", "sw"] and model.language_id("sw") == 4
    torch.testing.assert_close(model(**batch).logits, before, rtol=0, atol=0)  # old lang_ids mean the same
    groups = parameter_groups(model).languages
    assert len(groups["kn"]) == len(groups["sw"]) == len(groups["te"]) > 0
    te, kn, sw = (model(**one_language_batch(model.language_id(c))).logits for c in ("te", "kn", "sw"))
    torch.testing.assert_close(sw, te, rtol=0, atol=0)  # a copy of te, its language embedding row included
    assert not torch.allclose(kn, te)  # fresh modules


def test_add_language_rejects_an_existing_code_and_an_unknown_source():
    model = MetaXLMModel(tiny_config(language_modules="adapters"))
    with pytest.raises(ValueError, match=r"'te' is already one of this model's languages"):
        model.add_language("te")
    with pytest.raises(ValueError, match=r"'xx' is not one of this model's languages"):
        model.add_language("kn", init_from="xx")
    assert model.config.languages == LANGUAGES


def test_added_language_survives_save_and_reload_through_auto_classes(tmp_path):
    """In this process with the package; in a fresh one without it (trust_remote_code)."""
    model = MetaXLMForMaskedLM(tiny_config(language_modules="adapters")).eval()
    model.add_language("kn")
    model.save_pretrained(tmp_path / "checkpoint")
    assert json.loads((tmp_path / "checkpoint" / "config.json").read_text())["languages"] == [*LANGUAGES, "kn"]
    batch = make_batch(seed=2)
    batch["lang_ids"][:5] = 3  # a mixed batch with kn rows
    auto, attribute = AUTO_FOR[MetaXLMForMaskedLM]
    expected = getattr(model(**batch), attribute)
    in_process = auto.from_pretrained(tmp_path / "checkpoint").eval()
    torch.testing.assert_close(getattr(in_process(**batch), attribute), expected, rtol=0, atol=0)
    reloaded, _ = reload_in_fresh_process(tmp_path, tmp_path / "checkpoint", auto.__name__, batch, remote=True)
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=0)


# ---------------------------------------------------------------- freezing
def trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_freeze_embeddings_and_language_adapters_has_xmods_meaning():
    config = tiny_config(
        language_modules="adapters", ffn_adapter_placement="after_residual", ffn_adapter_input_norm="adapter_layer_norm"
    )
    model = MetaXLMForMaskedLM(config)
    model.freeze_embeddings_and_language_adapters()
    left = trainable(model)
    assert not any(".embeddings." in n or ".adapter_modules." in n or "adapter_layer_norm" in n for n in left)
    assert "roberta.encoder.layer.0.attention.self.query.weight" in left and "lm_head.dense.weight" in left
    assert "roberta.encoder.layer.1.output.dense.weight" in left


def test_train_only_new_language_leaves_other_languages_bit_identical():
    model = MetaXLMForMaskedLM(tiny_config(language_modules=["ffn", "adapters"]))
    model.add_language("kn")
    kn = model.language_id("kn")
    names = model.train_only_languages(["kn"])
    assert set(names) == set(parameter_groups(model).languages["kn"]) and names
    others = {code: model.eval()(**one_language_batch(model.language_id(code))).logits for code in LANGUAGES}
    kn_before = model(**one_language_batch(kn)).logits
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    batch = one_language_batch(kn, seed=3)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(3):
        model.train()(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    for code, logits in others.items():
        torch.testing.assert_close(model(**one_language_batch(model.language_id(code))).logits, logits, rtol=0, atol=0)
    assert not torch.allclose(model(**one_language_batch(kn)).logits, kn_before)
    with_embeddings = model.train_only_languages(["kn"], embeddings=True)
    assert "roberta.embeddings.word_embeddings.weight" in with_embeddings


def test_train_only_languages_rejects_unknown_or_module_less_languages():
    with pytest.raises(ValueError, match=r"\['xx'\].*language-specific modules"):
        MetaXLMModel(tiny_config(language_modules="adapters")).train_only_languages(["xx"])
    with pytest.raises(ValueError, match="language_modules='none'"):
        MetaXLMModel(tiny_config()).train_only_languages(["en"])


# ---------------------------------------------------------------- save / load one language's modules
def test_language_modules_round_trip_into_a_base_without_that_language(tmp_path):
    torch.manual_seed(1)
    base = MetaXLMForMaskedLM(tiny_config(language_modules=KINDS, use_language_embeddings=True)).eval()
    extended = MetaXLMForMaskedLM(base.config.__class__.from_dict(base.config.to_dict())).eval()
    extended.load_state_dict(base.state_dict())
    extended.add_language("kn")
    kn_batch = one_language_batch(3)
    expected = extended(**kn_batch).logits
    extended.save_language_modules(tmp_path / "kn", ["kn"])
    description = json.loads((tmp_path / "kn" / "language_modules.json").read_text())
    assert description["languages"] == ["kn"] and description["language_modules"] == KINDS
    assert all(entry["language"] == "kn" for entry in description["parameters"].values())
    assert all(".kn." in name or name == "embeddings.language_embeddings.kn" for name in description["parameters"])
    assert base.load_language_modules(tmp_path / "kn") == ["kn"]
    assert base.config.languages == [*LANGUAGES, "kn"]
    torch.testing.assert_close(base(**kn_batch).logits, expected, rtol=0, atol=0)


def test_language_modules_are_refused_by_a_base_with_other_shared_weights(tmp_path):
    model = MetaXLMModel(tiny_config(language_modules="adapters"))
    model.save_language_modules(tmp_path / "te", ["te"])
    other = MetaXLMModel(tiny_config(language_modules="adapters"))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.encoder.layer[1].attention.self.value.weight.add_(1e-3)
    with pytest.raises(ValueError, match=r"shared weights differ.*1 of .*encoder\.layer\.1\.attention\.self\.value"):
        other.load_language_modules(tmp_path / "te")
    assert other.load_language_modules(tmp_path / "te", check_base=False) == ["te"]


def test_language_modules_are_refused_by_a_base_with_other_module_kinds(tmp_path):
    MetaXLMModel(tiny_config(language_modules="adapters")).save_language_modules(tmp_path / "te", ["te"])
    with pytest.raises(ValueError, match=r"module kinds differ: saved \['adapters'\], this model \['ffn'\]"):
        MetaXLMModel(tiny_config(language_modules="ffn")).load_language_modules(tmp_path / "te")
    with pytest.raises(ValueError, match="hidden_size differs: saved 32, this model 48"):
        MetaXLMModel(tiny_config(language_modules="adapters", hidden_size=48)).load_language_modules(tmp_path / "te")
    with pytest.raises(ValueError, match="not written by save_language_modules"):
        MetaXLMModel(tiny_config(language_modules="adapters")).load_language_modules(tmp_path)


# ---------------------------------------------------------------- module kinds
def test_language_modules_list_builds_every_kind_and_groups_parameters_by_language():
    model = MetaXLMForMaskedLM(tiny_config(language_modules=["layernorm", "adapters", "ffn"]))
    assert model.config.language_modules == KINDS  # stored in canonical order
    te = set(parameter_groups(model).languages["te"])
    layer = "roberta.encoder.layer.0"
    for name in (f"{layer}.intermediate.dense.te.weight", f"{layer}.output.dense.te.weight",
                 f"{layer}.output.adapter_modules.te.dense1.weight", f"{layer}.attention.output.LayerNorm.te.weight",
                 f"{layer}.output.LayerNorm.te.bias"):  # fmt: skip
        assert name in te, name
    assert not any(".en." in name or ".pt." in name for name in te)


def test_language_specific_layernorm_changes_only_its_languages_output():
    model = MetaXLMModel(tiny_config(language_modules="layernorm")).eval()
    outputs = {code: model(**one_language_batch(i)).last_hidden_state for i, code in enumerate(LANGUAGES)}
    with torch.no_grad():
        model.encoder.layer[0].output.LayerNorm["te"].weight.mul_(2.0)
    assert not torch.allclose(model(**one_language_batch(1)).last_hidden_state, outputs["te"])
    for i in (0, 2):
        torch.testing.assert_close(model(**one_language_batch(i)).last_hidden_state, outputs[LANGUAGES[i]])


def test_single_kind_stays_a_string_and_old_configs_load_unchanged():
    assert tiny_config(language_modules=["adapters"]).language_modules == "adapters"
    saved = tiny_config(language_modules="ffn").to_dict()
    reloaded = MetaXLMConfig.from_dict(saved)
    assert reloaded.language_modules == "ffn" and reloaded.language_module_kinds == ("ffn",)
    assert MetaXLMConfig.from_dict(tiny_config(language_modules=KINDS).to_dict()).language_modules == KINDS
    assert tiny_config().language_module_kinds == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [(["ffn", "lora"], r"unknown kind\(s\) \['lora'\]"), (["ffn", "ffn"], "each kind once"),
     (["none", "ffn"], "'none' only on its own"), ([], "non-empty list")],
)  # fmt: skip
def test_bad_language_module_lists_raise_naming_the_field(value, message):
    with pytest.raises(ValueError, match=message) as error:
        tiny_config(language_modules=value)
    assert "language_modules" in str(error.value)


def test_convert_xlmr_with_a_list_of_kinds_equals_its_source_for_every_language():
    from test_convert import BATCH as CONVERT_BATCH, assert_same_logits, make_inputs, tiny_xlmr

    from meta_xlm import convert_xlmr

    source = tiny_xlmr()
    batch = make_inputs()
    expected = source(**batch).logits
    model = convert_xlmr(source, ["en", "te"], ["layernorm", "ffn", "adapters"])
    assert model.config.language_modules == KINDS
    assert "roberta.encoder.layer.0.output.LayerNorm.te.weight" in parameter_groups(model).languages["te"]
    for lang in range(2):
        actual = model(**batch, lang_ids=torch.full((CONVERT_BATCH,), lang)).logits
        assert_same_logits(actual, expected, batch["attention_mask"])
