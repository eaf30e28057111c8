"""recipes/pretrain.py --extend_model: add kn to an en-te model; only kn's modules train (X-MOD's post-hoc
extension). kn's validation loss falls while en and te compute bit-identical outputs."""

import json

import datasets
import pytest
import torch
from fixtures.tiny_checkpoint import read_lines
from test_pretrain import recipe_args, run

from meta_xlm import MetaXLMConfig, MetaXLMForMaskedLM
from meta_xlm.data import train_shared_tokenizer

EN_TE_TEXT = {"en": ("text", "en", "ud_ewt_train_text.txt.gz"), "te": ("text", "te", "ud_mtg_train_text.txt.gz")}
KN_TEXT = ("text", "kn", "vaddaradhane_old_kannada_prose.txt.gz")


def make_en_te_model(directory, shared_data) -> MetaXLMForMaskedLM:
    corpora = {
        code: datasets.Dataset.from_dict({"text": read_lines(shared_data(*parts), 300)})
        for code, parts in EN_TE_TEXT.items()
    }
    tokenizer = train_shared_tokenizer(corpora, vocab_size=600, temperature=1.0, num_sentences=600, seed=0,
                                       show_progress=False)  # fmt: skip
    torch.manual_seed(0)
    config = MetaXLMConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=130, languages=["en", "te"], language_modules="adapters",
    )  # fmt: skip
    model = MetaXLMForMaskedLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def eval_losses(output_dir, language: str) -> list[float]:
    state = json.loads((output_dir / "trainer_state.json").read_text())
    return [entry[f"eval_{language}_loss"] for entry in state["log_history"] if f"eval_{language}_loss" in entry]


@pytest.mark.slow
def test_extending_an_en_te_model_with_kn_trains_only_kn(shared_data, tmp_path, accelerate_launch):
    base = make_en_te_model(tmp_path / "en_te", shared_data)
    one_file_each = [f"{code}={shared_data(*parts)}" for code, parts in {**EN_TE_TEXT, "kn": KN_TEXT}.items()]
    output_dir = tmp_path / "en_te_kn"
    extend = ["--extend_model", str(tmp_path / "en_te"), "--languages", "en", "te", "kn", "--subsample", "en=100",
              "te=100", "kn=400", "--validation_sentences", "60", "--max_steps", "40", "--learning_rate", "0.01", "--eval_on_start", "true",
              "--eval_steps", "40", "--save_strategy", "no", "--report_to", "none", "--output_dir", str(output_dir),
              "--corpus_files", *one_file_each]  # fmt: skip
    result = run([*accelerate_launch(1), *recipe_args(shared_data, tmp_path, *extend)])
    assert result.returncode == 0, result.stderr[-4000:]

    extended = MetaXLMForMaskedLM.from_pretrained(output_dir).eval()
    assert extended.config.languages == ["en", "te", "kn"]
    input_ids = torch.randint(3, base.config.vocab_size, (5, 20), generator=torch.Generator().manual_seed(0))
    for code in ("en", "te"):
        lang_ids = torch.full((5,), base.language_id(code))
        torch.testing.assert_close(
            extended(input_ids, lang_ids=lang_ids).logits, base(input_ids, lang_ids=lang_ids).logits, rtol=0, atol=0
        )
    kn_losses = eval_losses(output_dir, "kn")
    assert len(kn_losses) >= 2 and kn_losses[-1] < kn_losses[0] - 0.1, kn_losses


@pytest.mark.slow
def test_extension_needs_the_models_languages_first(shared_data, tmp_path, accelerate_launch):
    MetaXLMConfig(languages=["en", "te"]).save_pretrained(tmp_path / "en_te")  # checked before data or weights
    extend = ["--extend_model", str(tmp_path / "en_te"), "--languages", "te", "kn", "--max_steps", "1",
              "--output_dir", str(tmp_path / "out")]  # fmt: skip
    result = run([*accelerate_launch(1), *recipe_args(shared_data, tmp_path, *extend)])
    assert result.returncode != 0
    assert "must be the model's languages ['en', 'te'] followed by at least one new language" in result.stderr
