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

__all__ = [
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
