"""MetaXLM's five heads under transformers' own common suite, as a model contributed to transformers is tested.

`MetaXLMModelTester` builds tiny odd-sized configs and mixed-language batches; one test class per set of
language modules ("adapters", "ffn", and a list of kinds) runs every test of `ModelTesterMixin` and
`ConfigTester` from the sdist of the installed transformers (see `upstream.py`). The Auto name mappings are
extended as they would be for an in-tree model: several common tests choose what to check from them.
"""

from __future__ import annotations

import unittest
from unittest import mock

import pytest
import torch
from transformers.models.auto import modeling_auto

from meta_xlm import (
    MetaXLMConfig,
    MetaXLMForMaskedLM,
    MetaXLMForQuestionAnswering,
    MetaXLMForSequenceClassification,
    MetaXLMForTokenClassification,
    MetaXLMModel,
)

from .upstream import load

modeling_common = load("test_modeling_common")
ModelTesterMixin, ids_tensor, random_attention_mask = (
    modeling_common.ModelTesterMixin, modeling_common.ids_tensor, modeling_common.random_attention_mask
)
ConfigTester = load("test_configuration_common").ConfigTester

AUTO_NAMES = {
    "MODEL_MAPPING_NAMES": "MetaXLMModel",
    "MODEL_FOR_MASKED_LM_MAPPING_NAMES": "MetaXLMForMaskedLM",
    "MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES": "MetaXLMForTokenClassification",
    "MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES": "MetaXLMForQuestionAnswering",
    "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES": "MetaXLMForSequenceClassification",
}
LANGUAGES = ["en", "te", "sw"]


@pytest.fixture(autouse=True, scope="module")
def meta_xlm_in_auto_name_mappings():
    """"meta_xlm" in transformers' model-class name mappings for this module's tests only."""
    patches = [
        mock.patch.dict(getattr(modeling_auto, mapping), {"meta_xlm": name}) for mapping, name in AUTO_NAMES.items()
    ]
    for patch in patches:
        patch.start()
    yield
    for patch in reversed(patches):
        patch.stop()


class MetaXLMModelTester:
    """Tiny MetaXLM configs (vocab 99, hidden 32, 2 layers, 4 heads, FFN 37) and batches of 13 x 7 whose rows
    mix all languages."""

    def __init__(self, parent, language_modules, batch_size=13, seq_length=7):
        self.parent = parent
        self.language_modules = language_modules
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.intermediate_size = 37
        self.num_labels = 3
        self.is_training = True

    def get_config(self) -> MetaXLMConfig:
        return MetaXLMConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            intermediate_size=self.intermediate_size,
            hidden_dropout_prob=0.1,
            attention_probs_dropout_prob=0.1,
            max_position_embeddings=512,
            languages=LANGUAGES,
            default_language="te",  # for the common tests that build inputs of their own (as X-MOD's tester does)
            language_modules=self.language_modules,
            num_labels=self.num_labels,
        )

    def mixed_lang_ids(self) -> torch.Tensor:
        """Every language present, rows interleaved (never sorted), so routing has to regroup them."""
        lang_ids = torch.arange(self.batch_size) % len(LANGUAGES)
        return lang_ids[torch.randperm(self.batch_size)].to(torch.long)

    def prepare_config_and_inputs_for_common(self):
        inputs = {
            "input_ids": ids_tensor([self.batch_size, self.seq_length], self.vocab_size),
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            "lang_ids": self.mixed_lang_ids(),
        }
        return self.get_config(), inputs

    def check_head(self, model_class, labels: dict, expected: dict[str, tuple[int, ...]]):
        """One head on a mixed-language batch with labels: output shapes (logits line up with the inputs, as
        transformers' heads promise) and a finite loss."""
        config, inputs = self.prepare_config_and_inputs_for_common()
        model = model_class(config).eval()
        outputs = model(**inputs, **labels)
        for field, shape in expected.items():
            self.parent.assertEqual(tuple(getattr(outputs, field).shape), shape, msg=field)
        if labels:
            self.parent.assertTrue(torch.isfinite(outputs.loss))


class MetaXLMCommonTests(ModelTesterMixin):
    """The suite for one set of language modules; subclasses name it."""

    language_modules = None
    all_model_classes = (
        MetaXLMModel,
        MetaXLMForMaskedLM,
        MetaXLMForTokenClassification,
        MetaXLMForQuestionAnswering,
        MetaXLMForSequenceClassification,
    )

    def setUp(self):
        self.model_tester = MetaXLMModelTester(self, self.language_modules)
        self.config_tester = ConfigTester(
            self, config_class=MetaXLMConfig, hidden_size=36, num_attention_heads=6, languages=LANGUAGES
        )  # a non-default width; 37 would not divide into heads

    def test_config(self):
        self.config_tester.run_common_tests()

    def test_model(self):
        t = self.model_tester
        self.model_tester.check_head(MetaXLMModel, {}, {"last_hidden_state": (t.batch_size, t.seq_length, 32)})

    def test_for_masked_lm(self):
        t = self.model_tester
        labels = {"labels": ids_tensor([t.batch_size, t.seq_length], t.vocab_size)}
        t.check_head(MetaXLMForMaskedLM, labels, {"logits": (t.batch_size, t.seq_length, t.vocab_size)})

    def test_for_token_classification(self):
        t = self.model_tester
        labels = {"labels": ids_tensor([t.batch_size, t.seq_length], t.num_labels)}
        t.check_head(MetaXLMForTokenClassification, labels, {"logits": (t.batch_size, t.seq_length, t.num_labels)})

    def test_for_question_answering(self):
        t = self.model_tester
        spans = {name: ids_tensor([t.batch_size], t.seq_length) for name in ("start_positions", "end_positions")}
        shape = (t.batch_size, t.seq_length)
        t.check_head(MetaXLMForQuestionAnswering, spans, {"start_logits": shape, "end_logits": shape})

    def test_for_sequence_classification(self):
        t = self.model_tester
        labels = {"labels": ids_tensor([t.batch_size], t.num_labels)}
        t.check_head(MetaXLMForSequenceClassification, labels, {"logits": (t.batch_size, t.num_labels)})

    def test_inputs_embeds_matches_input_ids(self):
        # XLM-R's convention: positions skip padding tokens in input_ids but are sequential from inputs_embeds
        # (padding cannot be seen there); with explicit positions both must agree, as the suite's hook intends.
        tester = self.model_tester
        positions = torch.arange(tester.seq_length) + self.model_tester.get_config().pad_token_id + 1
        super().test_inputs_embeds_matches_input_ids(position_ids=positions.expand(tester.batch_size, -1))


class MetaXLMAdaptersTest(MetaXLMCommonTests, unittest.TestCase):
    language_modules = "adapters"


class MetaXLMFfnTest(MetaXLMCommonTests, unittest.TestCase):
    language_modules = "ffn"


class MetaXLMSeveralKindsTest(MetaXLMCommonTests, unittest.TestCase):
    language_modules = ["ffn", "adapters", "layernorm"]
