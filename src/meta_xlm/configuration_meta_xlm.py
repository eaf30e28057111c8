"""MetaXLMConfig: a Transformer encoder (XLM-R layout) with language-specific modules.

The paper's model variants (Section 3.2, Appendix B) are two fields:

| paper name      | language_modules | shared_adapters |
|-----------------|------------------|-----------------|
| Mono / JointPair / JointTri | "none"  | False           |
| +ffn            | "ffn"            | False           |
| +attn           | "attention"      | False           |
| +adpt           | "adapters"       | False           |
| +share adpt     | "adapters"       | True            |
| +meta adpt      | "adapters"       | False (trained with `meta_learning=True`) |

`language_modules` may also be a list of kinds, e.g. `["ffn", "adapters"]`, and the kind "layernorm" gives every
layer language-specific LayerNorms (the paper's code's `lang_specific_LN`: the attention and FFN sublayers'
post-residual LayerNorms; the embedding LayerNorm and X-MOD's `adapter_layer_norm` stay shared). One kind is
stored as a plain string, so configs saved with a string load unchanged.

Where the feed-forward adapter sits (`ffn_adapter_*`, for importing X-MOD checkpoints). The default is the paper's
(Houlsby-style) placement: o = A(z) + z on the FFN output z, then LayerNorm(o + residual). With
`ffn_adapter_placement="after_residual"` the adapter runs on the residual sum x = z + residual instead, as in
transformers' `XmodOutput`: n = norm(x); o = A(n) + skip; output = LayerNorm(o). The X-MOD options map as:

| XmodConfig                                             | MetaXLMConfig                                   |
|--------------------------------------------------------|-------------------------------------------------|
| adapter_layer_norm=True (own LayerNorm before adapters) | ffn_adapter_input_norm="adapter_layer_norm"     |
| adapter_layer_norm=False, adapter_reuse_layer_norm=True | ffn_adapter_input_norm="block_layer_norm"       |
| adapter_layer_norm=False, adapter_reuse_layer_norm=False | ffn_adapter_input_norm="none"                  |
| ln_before_adapter=True  (skip = norm(x))               | ffn_adapter_skip="adapter_input"                |
| ln_before_adapter=False (skip = x)                     | ffn_adapter_skip="residual_sum"                 |
| hidden_act (the adapter's activation)                  | adapter_activation                              |
"""

from __future__ import annotations

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN

LANGUAGE_MODULE_KINDS = ("none", "ffn", "attention", "adapters", "layernorm")
FFN_ADAPTER_PLACEMENTS = ("sublayer", "after_residual")
FFN_ADAPTER_INPUT_NORMS = ("none", "block_layer_norm", "adapter_layer_norm")
FFN_ADAPTER_SKIPS = ("adapter_input", "residual_sum")


def normalize_language_modules(value: str | list[str] | tuple[str, ...]) -> str | list[str]:
    """One kind -> that string (the form every config saved so far holds); several -> a list in
    `LANGUAGE_MODULE_KINDS` order. Raises naming the field for an unknown kind, a repeat, or "none" in a list."""
    kinds = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    if not kinds or not all(isinstance(kind, str) for kind in kinds):
        raise ValueError(
            f"MetaXLMConfig.language_modules={value!r}: expected one of {LANGUAGE_MODULE_KINDS} or a non-empty "
            "list of them"
        )
    unknown = [kind for kind in kinds if kind not in LANGUAGE_MODULE_KINDS]
    if unknown:
        raise ValueError(
            f"MetaXLMConfig.language_modules has unknown kind(s) {unknown}: expected kinds from {LANGUAGE_MODULE_KINDS}"
        )
    if len(set(kinds)) != len(kinds) or (len(kinds) > 1 and "none" in kinds):
        raise ValueError(
            f"MetaXLMConfig.language_modules={value!r}: list each kind once, and 'none' only on its own"
        )
    if len(kinds) == 1:
        return kinds[0]
    return [kind for kind in LANGUAGE_MODULE_KINDS if kind in kinds]


class MetaXLMConfig(PreTrainedConfig):
    """Configuration of a MetaXLM model.

    Defaults are the paper's pretraining model (Appendix B): 8 layers, hidden 512, FFN 2048, 32k shared BPE
    vocabulary. The paper says "12 heads", which does not divide 512; 8 is XLM's choice at this width.

    Args:
        languages: ordered language codes; `lang_ids` given to the model index this list.
        default_language: the language used when a forward call gives no `lang_ids` (None: `lang_ids` required
            whenever the model has more than one language).
        language_modules: which part of every layer is copied per language: "none", "ffn", "attention",
            "adapters" (residual bottleneck adapters after the attention and the feed-forward sublayers),
            "layernorm" (the sublayers' LayerNorms), or a list of several kinds such as ["ffn", "adapters"].
        adapter_reduction_factor: adapter bottleneck b = hidden_size / adapter_reduction_factor (paper: 4).
        shared_adapters: one copy of the adapters shared by all languages (the paper's "+share adpt").
        use_language_embeddings: add an XLM-style learned language embedding to the token embeddings.
        adapter_activation: the adapters' nonlinearity g (paper: "relu"; X-MOD: its hidden_act).
        ffn_adapter_placement: "sublayer" (paper, default) or "after_residual" (X-MOD); see the module docstring.
        ffn_adapter_input_norm: with "after_residual": "none", "block_layer_norm" (reuse the block's LayerNorm)
            or "adapter_layer_norm" (a LayerNorm of its own, shared by all languages).
        ffn_adapter_skip: with "after_residual": the adapter's residual is its (normalised) input,
            "adapter_input", or the un-normalised residual sum, "residual_sum".
        sparse_prediction: with labels, `MetaXLMForMaskedLM` projects only the predicted positions onto the
            vocabulary and returns logits (N_predicted, V) instead of (B, T, V) (ModernBERT's option; the loss is
            the same). Off by default, so logits line up with labels as transformers' MaskedLM heads promise;
            the pretraining recipe turns it on.
        sparse_pred_ignore_index: the label value of positions `sparse_prediction` leaves out (-100).
    """

    model_type = "meta_xlm"
    _auto_class = "AutoConfig"  # save_pretrained copies this file beside the config (trust_remote_code)

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 512,
        num_hidden_layers: int = 8,
        num_attention_heads: int = 8,
        intermediate_size: int = 2048,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 514,
        type_vocab_size: int = 1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        classifier_dropout: float | None = None,
        languages: list[str] | tuple[str, ...] = ("en",),
        default_language: str | None = None,
        language_modules: str | list[str] | tuple[str, ...] = "none",
        adapter_reduction_factor: int = 4,
        shared_adapters: bool = False,
        use_language_embeddings: bool = False,
        adapter_activation: str = "relu",
        ffn_adapter_placement: str = "sublayer",
        ffn_adapter_input_norm: str = "none",
        ffn_adapter_skip: str = "adapter_input",
        tie_word_embeddings: bool = True,
        sparse_prediction: bool = False,
        sparse_pred_ignore_index: int = -100,
        **kwargs,
    ):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.classifier_dropout = classifier_dropout
        self.languages = list(languages)
        self.default_language = default_language
        self.language_modules = normalize_language_modules(language_modules)
        self.adapter_reduction_factor = adapter_reduction_factor
        self.shared_adapters = shared_adapters
        self.use_language_embeddings = use_language_embeddings
        self.adapter_activation = adapter_activation
        self.ffn_adapter_placement = ffn_adapter_placement
        self.ffn_adapter_input_norm = ffn_adapter_input_norm
        self.ffn_adapter_skip = ffn_adapter_skip
        self.tie_word_embeddings = tie_word_embeddings  # not a 5.x base field: without it the head is untied
        self.sparse_prediction = sparse_prediction
        self.sparse_pred_ignore_index = sparse_pred_ignore_index
        self.pad_token_id = pad_token_id
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        super().__init__(**kwargs)
        self._validate_meta_xlm_fields()

    def _validate_meta_xlm_fields(self) -> None:
        if not self.languages:
            raise ValueError("MetaXLMConfig.languages is empty: give at least one language code, e.g. ['en']")
        if not all(isinstance(code, str) and code for code in self.languages):
            raise ValueError(f"MetaXLMConfig.languages must be non-empty strings, got {self.languages!r}")
        duplicates = sorted({code for code in self.languages if self.languages.count(code) > 1})
        if duplicates:
            raise ValueError(f"MetaXLMConfig.languages has duplicate codes {duplicates}: each language once")
        if self.default_language is not None and self.default_language not in self.languages:
            raise ValueError(
                f"MetaXLMConfig.default_language={self.default_language!r} is not in languages={self.languages}"
            )
        if self.shared_adapters and not self.has_language_module("adapters"):
            raise ValueError(
                "MetaXLMConfig.shared_adapters=True needs language_modules='adapters', "
                f"got language_modules={self.language_modules!r}"
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"MetaXLMConfig.hidden_size={self.hidden_size} is not divisible by "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.adapter_reduction_factor < 1 or self.hidden_size % self.adapter_reduction_factor != 0:
            raise ValueError(
                f"MetaXLMConfig.hidden_size={self.hidden_size} is not divisible by "
                f"adapter_reduction_factor={self.adapter_reduction_factor} (a positive integer)"
            )
        self._validate_ffn_adapter_layout()
        self._validate_sparse_prediction()

    def _validate_sparse_prediction(self) -> None:
        if not isinstance(self.sparse_prediction, bool):
            raise ValueError(f"MetaXLMConfig.sparse_prediction={self.sparse_prediction!r}: expected True or False")
        if isinstance(self.sparse_pred_ignore_index, bool) or not isinstance(self.sparse_pred_ignore_index, int):
            raise ValueError(
                f"MetaXLMConfig.sparse_pred_ignore_index={self.sparse_pred_ignore_index!r}: expected an integer "
                "label value (transformers' ignore index is -100)"
            )

    def _validate_ffn_adapter_layout(self) -> None:
        for name, value, allowed in (
            ("ffn_adapter_placement", self.ffn_adapter_placement, FFN_ADAPTER_PLACEMENTS),
            ("ffn_adapter_input_norm", self.ffn_adapter_input_norm, FFN_ADAPTER_INPUT_NORMS),
            ("ffn_adapter_skip", self.ffn_adapter_skip, FFN_ADAPTER_SKIPS),
        ):
            if value not in allowed:
                raise ValueError(f"MetaXLMConfig.{name}={value!r}: expected one of {allowed}")
        if self.adapter_activation not in ACT2FN:
            raise ValueError(
                f"MetaXLMConfig.adapter_activation={self.adapter_activation!r} is not a transformers activation "
                "name (e.g. 'relu', 'gelu')"
            )
        if self.ffn_adapter_placement == "sublayer" and (
            self.ffn_adapter_input_norm != "none" or self.ffn_adapter_skip != "adapter_input"
        ):
            raise ValueError(
                "MetaXLMConfig.ffn_adapter_input_norm / ffn_adapter_skip apply only with "
                f"ffn_adapter_placement='after_residual'; got ffn_adapter_input_norm={self.ffn_adapter_input_norm!r}, "
                f"ffn_adapter_skip={self.ffn_adapter_skip!r} with ffn_adapter_placement='sublayer'"
            )
        if self.ffn_adapter_placement != "sublayer" and not self.has_language_module("adapters"):
            raise ValueError(
                f"MetaXLMConfig.ffn_adapter_placement={self.ffn_adapter_placement!r} needs language_modules='adapters', "
                f"got language_modules={self.language_modules!r}"
            )

    @property
    def language_module_kinds(self) -> tuple[str, ...]:
        """The kinds of language-specific modules, in `LANGUAGE_MODULE_KINDS` order; () for "none"."""
        kinds = [self.language_modules] if isinstance(self.language_modules, str) else self.language_modules
        return tuple(kind for kind in LANGUAGE_MODULE_KINDS if kind in kinds and kind != "none")

    def has_language_module(self, kind: str) -> bool:
        """Whether every layer has language-specific modules of this kind ("ffn", "adapters", ...)."""
        return kind in self.language_module_kinds

    @property
    def adapter_size(self) -> int:
        """Adapter bottleneck width b = d / reduction factor (paper: b = d/4)."""
        return self.hidden_size // self.adapter_reduction_factor

    def language_id(self, code: str) -> int:
        """Index of a language code in `languages` (what `lang_ids` holds)."""
        if code not in self.languages:
            raise ValueError(f"language {code!r} is not one of this model's languages {self.languages}")
        return self.languages.index(code)


__all__ = [
    "FFN_ADAPTER_INPUT_NORMS",
    "FFN_ADAPTER_PLACEMENTS",
    "FFN_ADAPTER_SKIPS",
    "LANGUAGE_MODULE_KINDS",
    "MetaXLMConfig",
    "normalize_language_modules",
]
