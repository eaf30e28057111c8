"""meta-xlm: multilingual masked LMs with language-specific modules and meta adapters.

Importing the package registers `MetaXLMConfig` (model_type "meta_xlm") and every head with the
transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .configuration_meta_xlm import MetaXLMConfig
from .modeling_meta_xlm import (
    LanguageModuleDict,
    MetaXLMForMaskedLM,
    MetaXLMForQuestionAnswering,
    MetaXLMForSequenceClassification,
    MetaXLMForTokenClassification,
    MetaXLMModel,
    MetaXLMPreTrainedModel,
    ParameterGroups,
    parameter_groups,
)

AutoConfig.register(MetaXLMConfig.model_type, MetaXLMConfig, exist_ok=True)
for _auto, _model in (
    (AutoModel, MetaXLMModel),
    (AutoModelForMaskedLM, MetaXLMForMaskedLM),
    (AutoModelForTokenClassification, MetaXLMForTokenClassification),
    (AutoModelForQuestionAnswering, MetaXLMForQuestionAnswering),
    (AutoModelForSequenceClassification, MetaXLMForSequenceClassification),
):
    _auto.register(MetaXLMConfig, _model, exist_ok=True)

__version__ = "0.1.0"

# The rest of the public API, imported on first use so `import meta_xlm` stays as light as transformers' own
# model imports (the trainer pulls in the whole Trainer stack, the tasks pull in seqeval and datasets).
_LAZY_EXPORTS = {
    "hypergradient": "meta",
    "MetaXLMTrainer": "trainer",
    "MetaXLMTrainingArguments": "trainer",
    "LanguageBatchSampler": "sampling",
    "MLMCollator": "data",
    "language_sampling_probabilities": "sampling",
    "train_shared_tokenizer": "data",
    "load_corpora": "data",
    "split_corpora": "data",
    "build_blocks": "data",
    "PretrainingData": "data",
    "CorpusError": "data",
    "latest_complete_checkpoint": "callbacks",
    "convert_xlmr": "convert",
    "convert_xmod": "convert",
    "push_to_hub": "hub",
    "load_pretrained": "hub",
    "UnsafeCheckpointError": "hub",
    "write_model_card": "model_card",
    "GradientConflictCallback": "analysis.gradient_conflict",
    "measure_gradient_conflict": "analysis.gradient_conflict",
    "pcgrad": "surgery",
    "GradVac": "surgery",
    "LanguageBalancedBatchSampler": "sampling",
}


def __getattr__(name: str):
    if name in _LAZY_EXPORTS:
        import importlib

        module = importlib.import_module(f".{_LAZY_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'meta_xlm' has no attribute {name!r}")


__all__ = [
    *_LAZY_EXPORTS,
    "LanguageModuleDict",
    "MetaXLMConfig",
    "MetaXLMForMaskedLM",
    "MetaXLMForQuestionAnswering",
    "MetaXLMForSequenceClassification",
    "MetaXLMForTokenClassification",
    "MetaXLMModel",
    "MetaXLMPreTrainedModel",
    "ParameterGroups",
    "parameter_groups",
]
