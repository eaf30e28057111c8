"""MetaXLM: an XLM-R style Transformer encoder with language-specific modules, and its task heads.

Wang, Lipton & Tsvetkov, "On Negative Interference in Multilingual Models" (EMNLP 2020), Section 3.2 and 4.
Submodule names follow XLM-R (as transformers' X-MOD does), so an `XLMRobertaModel` state dict loads into the
shared part. Every language-specific module lives in a `LanguageModuleDict` keyed by language code: "the
parameters of language X" is a key lookup (`parameter_groups`), never a substring match on names.

Routing: a batch whose rows all share one language runs each language module once on the whole batch; when that
is known from Python-level facts (no `lang_ids`, a `single_language` hint, one language) no tensor is read, so
`torch.export` and `torch.compile` trace it whole. In a mixed batch (found by reading `lang_ids`, eagerly) each
language module gathers its rows sorted by language, runs every language on its contiguous slice and scatters
the output back: the residual stream stays in the caller's order, so returned hidden states and attention maps
are on the path to the output (per-language attention, `language_modules` "attention", returns its maps
reassembled, off that path).

This file imports only torch, transformers and the configuration module, so checkpoints also load with
`trust_remote_code=True` where the package is not installed.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from safetensors.torch import load_file, save_file  # a dependency of transformers itself
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .configuration_meta_xlm import MetaXLMConfig


# ----------------------------------------------------------------------------------------------------------------
# Language routing
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LanguageRouting:
    """Which language owns which rows of a batch. The batch itself stays in the caller's order throughout.

    One language (`order` None): every language module runs once on the whole batch. Several: `order` sorts the
    rows by language, `languages[k]` owns the k-th contiguous block of `sizes[k]` sorted rows, and `restore`
    puts sorted rows back in the caller's order. Each language module gathers its rows and scatters its output
    back, so every hidden state and attention map the model returns is the tensor the next step computes from
    (on the autograd path to the output, as `retain_grad()` / attribution tools expect).
    """

    languages: tuple[str, ...]
    sizes: tuple[int, ...] = ()
    order: torch.Tensor | None = None
    restore: torch.Tensor | None = None

    @property
    def single_language(self) -> str | None:
        return self.languages[0] if self.order is None else None


def route_by_values(lang_ids: torch.Tensor, languages: list[str]) -> LanguageRouting:
    """Group a batch by reading `lang_ids` (one sort, never a loop over rows). Eager only: the reads are
    data-dependent, so `torch.export` cannot trace them and `torch.compile` breaks the graph here."""
    if lang_ids.numel() == 0:  # nothing to route (e.g. no predicted token in a batch)
        return LanguageRouting(languages=(languages[0],))
    first = int(lang_ids[0])
    if bool((lang_ids == first).all()):
        return LanguageRouting(languages=(languages[first],))
    order = torch.argsort(lang_ids, stable=True)
    counts = torch.bincount(lang_ids, minlength=len(languages)).tolist()
    present = [(languages[i], n) for i, n in enumerate(counts) if n > 0]
    return LanguageRouting(
        languages=tuple(code for code, _ in present),
        sizes=tuple(n for _, n in present),
        order=order,
        restore=torch.argsort(order),
    )


class LanguageModuleDict(nn.ModuleDict):
    """One module per language code; a forward call sends each language's rows to its own module.

    Positional tensor arguments are split along the batch dimension; `None` arguments and keyword options pass
    through to every language's module unchanged. A module that returns a tuple (attention with its
    probabilities) gets each element reassembled (None stays None). `make_module` builds a fresh module for a
    language added later (`add_language`).
    """

    def __init__(self, modules: dict[str, nn.Module], make_module=None):
        super().__init__(modules)
        self.make_module = make_module

    def forward(self, routing: LanguageRouting, *tensors: torch.Tensor | None, **options):
        code = routing.single_language
        if code is not None:
            return self[code](*tensors, **options)
        chunks_per_arg = [
            t[routing.order].split(routing.sizes) if t is not None else [None] * len(routing.sizes)
            for t in tensors
        ]  # one gather per argument: rows sorted by language, then a view per language
        outputs = [
            self[code](*(chunks[k] for chunks in chunks_per_arg), **options)
            for k, code in enumerate(routing.languages)
        ]
        if isinstance(outputs[0], tuple):
            return tuple(in_caller_order(list(parts), routing) for parts in zip(*outputs))
        return in_caller_order(outputs, routing)


def in_caller_order(parts: list[torch.Tensor | None], routing: LanguageRouting) -> torch.Tensor | None:
    """Concatenate per-language outputs (sorted order) and put the rows back in the caller's order."""
    return None if parts[0] is None else torch.cat(parts, dim=0)[routing.restore]


@dataclass(frozen=True)
class OutputPositions:
    """The positions of the last layer's output that the caller needs: `mask` (B, T) boolean, and the routing of
    those tokens flattened to (N,) in row-major order (one language, or each token's own)."""

    mask: torch.Tensor
    routing: LanguageRouting


def output_positions(mask: torch.Tensor, lang_ids: torch.Tensor, routing: LanguageRouting, languages) -> OutputPositions:
    if routing.single_language is not None:
        return OutputPositions(mask, routing)
    token_lang_ids = lang_ids[:, None].expand_as(mask)[mask]  # (N,)
    return OutputPositions(mask, route_by_values(token_lang_ids, list(languages)))


def per_language(config: MetaXLMConfig, make_module) -> LanguageModuleDict:
    return LanguageModuleDict({code: make_module() for code in config.languages}, make_module)


def run_module(module: nn.Module, routing: LanguageRouting, *tensors: torch.Tensor | None, **options):
    """Call a shared module, or route the rows of each language to its own copy."""
    if isinstance(module, LanguageModuleDict):
        return module(routing, *tensors, **options)
    return module(*tensors, **options)


def maybe_per_language(config: MetaXLMConfig, kind: str, make_module) -> nn.Module:
    """A per-language `LanguageModuleDict` when `kind` is one of `config.language_module_kinds`, else one module."""
    return per_language(config, make_module) if config.has_language_module(kind) else make_module()


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------
class MetaXLMEmbeddings(nn.Module):
    """Word + position (+ token type) (+ optional XLM language) embeddings, then LayerNorm and dropout."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(
            config.max_position_embeddings, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.language_embeddings = (
            nn.Embedding(len(config.languages), config.hidden_size) if config.use_language_embeddings else None
        )
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.padding_idx = config.pad_token_id

    def position_ids_from_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        # XLM-R/fairseq convention: positions start at padding_idx + 1, padding keeps position padding_idx.
        not_pad = input_ids.ne(self.padding_idx).long()
        return torch.cumsum(not_pad, dim=1) * not_pad + self.padding_idx

    def position_ids_from_inputs_embeds(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        # Embeddings cannot tell padding apart: sequential positions from padding_idx + 1, as XLM-R does.
        batch, length = inputs_embeds.shape[:2]
        positions = torch.arange(length, dtype=torch.long, device=inputs_embeds.device) + self.padding_idx + 1
        return positions.unsqueeze(0).expand(batch, length)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        lang_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Exactly one of `input_ids` (B, T) and `inputs_embeds` (B, T, H) (checked by `MetaXLMModel`)."""
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)  # (B, T, H)
        if position_ids is None:
            position_ids = (
                self.position_ids_from_input_ids(input_ids)
                if input_ids is not None
                else self.position_ids_from_inputs_embeds(inputs_embeds)
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(position_ids)
        embeddings = inputs_embeds + self.token_type_embeddings(token_type_ids)
        embeddings = embeddings + self.position_embeddings(position_ids)  # (B, T, H)
        if self.language_embeddings is not None:
            embeddings = embeddings + self.language_embeddings(lang_ids)[:, None, :]
        return self.dropout(self.LayerNorm(embeddings))


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------
class MetaXLMSelfAttention(nn.Module):
    """Bidirectional multi-head self-attention through transformers' attention interface (SDPA by default).

    Q, K and V keep XLM-R's three Linear modules (checkpoint compatibility). When all three are plain
    `nn.Linear` without hooks they run as one matmul; otherwise (a PEFT LoRA layer, a quantised Linear, a
    forward hook) each module is called, so whatever wraps it takes part.
    """

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob
        self.is_causal = False  # an encoder: SDPA must never apply a causal mask
        self.config = config

    def project_qkv(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q, K, V as (B, heads, T, head_size) each."""
        batch, length, _ = hidden.shape
        projections = (self.query, self.key, self.value)
        if all(is_plain_linear(module) for module in projections):
            weight = torch.cat([m.weight for m in projections])  # (3H, H)
            bias = torch.cat([m.bias for m in projections])
            qkv = F.linear(hidden, weight, bias).view(batch, length, 3, self.num_heads, self.head_size)
            return tuple(qkv.permute(2, 0, 3, 1, 4).unbind(0))
        return tuple(
            module(hidden).view(batch, length, self.num_heads, self.head_size).transpose(1, 2)
            for module in projections
        )

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context (B, T, H), attention probabilities (B, heads, T, T) when `output_attentions`, else None).
        SDPA returns no probabilities, so `output_attentions` runs the eager path."""
        batch, length, width = hidden.shape
        query, key, value = self.project_qkv(hidden)
        implementation = "eager" if output_attentions else self.config._attn_implementation
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        context, probs = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.dropout_prob if self.training else 0.0,
            scaling=self.head_size**-0.5,
        )  # (B, T, heads, head_size)
        return context.reshape(batch, length, width), (probs if output_attentions else None)


def is_plain_linear(module: nn.Module) -> bool:
    """An `nn.Linear` itself (not a subclass such as a LoRA or quantised layer) with no forward hooks."""
    return type(module) is nn.Linear and not (module._forward_hooks or module._forward_pre_hooks)


def eager_attention_forward(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0, **kwargs):
    """softmax(Q K^T * scaling) V written out; `attention_mask` is boolean (B, 1, 1, T), True = attend."""
    scores = (query @ key.transpose(-1, -2)) * scaling  # (B, heads, T, T)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    probs = F.dropout(scores.softmax(dim=-1), p=dropout, training=module.training)
    return (probs @ value).transpose(1, 2), probs  # (B, T, heads, head_size)


class MetaXLMAdapter(nn.Module):
    """Residual bottleneck adapter (Section 3.2): h = g(W_z z), o = W_h h + z, g = ReLU, b = d / r.

    `skip` replaces z in the residual term (X-MOD's ln_before_adapter=False adds the un-normalised sum)."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense1 = nn.Linear(config.hidden_size, config.adapter_size)  # W_z: d -> b
        self.dense2 = nn.Linear(config.adapter_size, config.hidden_size)  # W_h: b -> d
        self.activation = ACT2FN[config.adapter_activation]  # g (paper: ReLU)

    def forward(self, z: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        return self.dense2(self.activation(self.dense1(z))) + (z if skip is None else skip)


def build_adapters(config: MetaXLMConfig) -> tuple[LanguageModuleDict | None, MetaXLMAdapter | None]:
    """(per-language adapters, shared adapter): at most one of them exists."""
    if not config.has_language_module("adapters"):
        return None, None
    if config.shared_adapters:
        return None, MetaXLMAdapter(config)
    return per_language(config, lambda: MetaXLMAdapter(config)), None


def apply_adapter(
    module: nn.Module, z: torch.Tensor, routing: LanguageRouting, skip: torch.Tensor | None = None
) -> torch.Tensor:
    if module.adapter_modules is not None:
        return module.adapter_modules(routing, z, skip)
    if module.adapter is not None:
        return module.adapter(z, skip)
    return z if skip is None else skip


class MetaXLMSelfOutput(nn.Module):
    """Attention output projection, adapter, then residual + LayerNorm (XLM-R's post-LN layout)."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense = maybe_per_language(
            config, "attention", lambda: nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.LayerNorm = maybe_per_language(config, "layernorm", lambda: layer_norm(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapter_modules, self.adapter = build_adapters(config)

    def forward(self, context: torch.Tensor, residual: torch.Tensor, routing: LanguageRouting) -> torch.Tensor:
        z = run_module(self.dense, routing, context)
        z = apply_adapter(self, self.dropout(z), routing)
        return run_module(self.LayerNorm, routing, z + residual)


def layer_norm(config: MetaXLMConfig) -> nn.LayerNorm:
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class MetaXLMAttention(nn.Module):
    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.self = maybe_per_language(config, "attention", lambda: MetaXLMSelfAttention(config))
        self.output = MetaXLMSelfOutput(config)

    def forward(
        self, hidden, attention_mask, routing: LanguageRouting, output_attentions: bool = False,
        kept: OutputPositions | None = None,
    ):  # fmt: skip
        """(output (B, T, H), attention probabilities or None). With `kept`, every position is attended to but
        the output is computed at the kept positions only: (N, H), routed by `kept.routing`."""
        context, probs = run_module(
            self.self, routing, hidden, attention_mask, output_attentions=output_attentions
        )
        if kept is not None:
            return self.output(context[kept.mask], hidden[kept.mask], kept.routing), probs
        return self.output(context, hidden, routing), probs


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward
# ----------------------------------------------------------------------------------------------------------------
class MetaXLMIntermediate(nn.Module):
    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense = maybe_per_language(
            config, "ffn", lambda: nn.Linear(config.hidden_size, config.intermediate_size)
        )
        self.intermediate_act_fn = ACT2FN[config.hidden_act]

    def forward(self, hidden: torch.Tensor, routing: LanguageRouting) -> torch.Tensor:
        return self.intermediate_act_fn(run_module(self.dense, routing, hidden))  # (B, T, FFN)


class MetaXLMOutput(nn.Module):
    """FFN output projection, adapter, then residual + LayerNorm.

    With `config.ffn_adapter_placement="after_residual"` the adapter runs on the residual sum instead, as in
    transformers' `XmodOutput` (see the mapping in configuration_meta_xlm.py)."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense = maybe_per_language(
            config, "ffn", lambda: nn.Linear(config.intermediate_size, config.hidden_size)
        )
        self.LayerNorm = maybe_per_language(config, "layernorm", lambda: layer_norm(config))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.adapter_modules, self.adapter = build_adapters(config)
        self.adapter_placement = config.ffn_adapter_placement
        self.adapter_input_norm = config.ffn_adapter_input_norm
        self.adapter_skip = config.ffn_adapter_skip
        # X-MOD's adapter_layer_norm: one LayerNorm before the adapters, shared by all languages (same name).
        self.adapter_layer_norm = (
            layer_norm(config) if config.ffn_adapter_input_norm == "adapter_layer_norm" else None
        )

    def forward(self, intermediate, residual, routing: LanguageRouting) -> torch.Tensor:
        z = run_module(self.dense, routing, intermediate)
        if self.adapter_placement == "sublayer":
            z = apply_adapter(self, self.dropout(z), routing)
            return run_module(self.LayerNorm, routing, z + residual)
        # X-MOD: x = z + residual; n = norm(x); output = LayerNorm(A(n) + skip), skip = n or x.
        summed = self.dropout(z) + residual  # (B, T, H)
        if self.adapter_layer_norm is not None:
            normed = self.adapter_layer_norm(summed)
        elif self.adapter_input_norm == "block_layer_norm":
            normed = run_module(self.LayerNorm, routing, summed)
        else:
            normed = summed
        skip = summed if self.adapter_skip == "residual_sum" else None
        return run_module(self.LayerNorm, routing, apply_adapter(self, normed, routing, skip))


class MetaXLMLayer(GradientCheckpointingLayer):
    """Attention then feed-forward sublayer. `GradientCheckpointingLayer` recomputes this forward in the
    backward pass after `model.gradient_checkpointing_enable()` (transformers' mechanism, non-reentrant)."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.attention = MetaXLMAttention(config)
        self.intermediate = MetaXLMIntermediate(config)
        self.output = MetaXLMOutput(config)

    def forward(
        self, hidden, attention_mask, routing: LanguageRouting, output_attentions: bool = False,
        kept: OutputPositions | None = None,
    ):  # fmt: skip
        """(output (B, T, H), or (N, H) at `kept` positions; attention probabilities (B, heads, T, T) or None).
        Past attention every token is computed on its own, so the rest of the layer runs on kept tokens only."""
        attended, probs = self.attention(hidden, attention_mask, routing, output_attentions, kept)
        routing = routing if kept is None else kept.routing
        return self.output(self.intermediate(attended, routing), attended, routing), probs


class MetaXLMEncoder(nn.Module):
    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.layer = nn.ModuleList([MetaXLMLayer(config) for _ in range(config.num_hidden_layers)])

    def forward(
        self, hidden, attention_mask, routing, output_hidden_states: bool, output_attentions: bool,
        kept: OutputPositions | None = None,
    ):  # fmt: skip
        """(last hidden state, every layer's input and the output or None, every layer's probabilities or None).
        With `kept`, the last layer computes only those positions of its output (N, H)."""
        all_hidden = [hidden] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        for index, layer in enumerate(self.layer):
            last = index == len(self.layer) - 1
            hidden, probs = layer(hidden, attention_mask, routing, output_attentions, kept if last else None)
            if output_hidden_states:
                all_hidden.append(hidden)
            if output_attentions:
                all_attentions.append(probs)
        return hidden, all_hidden, all_attentions


class MetaXLMPooler(nn.Module):
    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


# ----------------------------------------------------------------------------------------------------------------
# Pretrained model base
# ----------------------------------------------------------------------------------------------------------------
# Every Auto class a checkpoint can be loaded with when only its remote code is available.
AUTO_MAP = {
    "AutoConfig": "configuration_meta_xlm.MetaXLMConfig",
    "AutoModel": "modeling_meta_xlm.MetaXLMModel",
    "AutoModelForMaskedLM": "modeling_meta_xlm.MetaXLMForMaskedLM",
    "AutoModelForTokenClassification": "modeling_meta_xlm.MetaXLMForTokenClassification",
    "AutoModelForQuestionAnswering": "modeling_meta_xlm.MetaXLMForQuestionAnswering",
    "AutoModelForSequenceClassification": "modeling_meta_xlm.MetaXLMForSequenceClassification",
}


class MetaXLMPreTrainedModel(PreTrainedModel):
    config_class = MetaXLMConfig
    config: MetaXLMConfig
    base_model_prefix = "roberta"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["MetaXLMLayer"]

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, MetaXLMLMHead):
            init.zeros_(module.bias)

    def language_id(self, code: str) -> int:
        """Index of a language code in `config.languages` (the value `lang_ids` holds for it)."""
        return self.config.language_id(code)

    # -- Language lifecycle (X-MOD / AdapterHub style); the work is done by the functions at the end of the file.
    def set_default_language(self, code: str | None) -> None:
        """The language used when a forward call gives no `lang_ids` (X-MOD's `set_default_language`);
        None requires `lang_ids` again."""
        if code is not None:
            self.config.language_id(code)  # raises naming the code and this model's languages
        self.config.default_language = code

    def add_language(self, code: str, init_from: str | None = None) -> None:
        """Add language `code` after the existing ones (their `lang_ids` keep their values): new modules in every
        `LanguageModuleDict` (freshly initialised, or copies of language `init_from`), a new row in the XLM
        language embedding if there is one, and `config.languages` extended, so `save_pretrained` stores it."""
        add_language_modules(self, code, init_from)

    def freeze_embeddings_and_language_adapters(self) -> None:
        """X-MOD's freezing before fine-tuning: the embeddings (and so the tied MLM decoder), every
        language-specific module, the shared adapters and X-MOD's shared `adapter_layer_norm` stop training."""
        base = self.base_model
        frozen = [base.embeddings]
        frozen += [m for m in base.modules() if isinstance(m, (LanguageModuleDict, MetaXLMAdapter))]
        frozen += [layer.output.adapter_layer_norm for layer in base.encoder.layer]
        for module in frozen:
            if module is not None:
                module.requires_grad_(False)

    def train_only_languages(self, languages: list[str], embeddings: bool = False) -> list[str]:
        """Freeze everything except the modules of `languages` (X-MOD's post-hoc extension to a new language:
        every shared weight frozen), plus the word and language embeddings with `embeddings=True`.
        Returns the names of the parameters left trainable."""
        return train_only_language_modules(self, languages, embeddings)

    def save_language_modules(self, directory: str | Path, languages: list[str]) -> Path:
        """Write only `languages`' parameters (safetensors) and a small JSON describing them: module kinds,
        shapes, and a fingerprint of the shared weights they were trained with. Returns the directory."""
        return save_language_modules(self, Path(directory), list(languages))

    def load_language_modules(self, directory: str | Path, check_base: bool = True) -> list[str]:
        """Load modules written by `save_language_modules`, adding languages this model lacks. Refused, with
        what differs, when module kinds, architecture or (with `check_base`) the shared weights do not match.
        Returns the languages loaded."""
        return load_language_modules(self, Path(directory), check_base)

    def as_requested(self, outputs, return_dict: bool | None):
        """The ModelOutput, or its tuple (None fields dropped) with `return_dict=False` (or config.return_dict)."""
        return outputs if pick(return_dict, self.config.return_dict) else outputs.to_tuple()

    def save_pretrained(self, save_directory, *args, **kwargs):
        # transformers records only the saved class in auto_map; a checkpoint of any head should load with
        # every Auto class under trust_remote_code, so the whole map is written.
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def resolve_languages(
        self, lang_ids: torch.Tensor | None, single_language: str | None, batch: int, device: torch.device
    ) -> tuple[torch.Tensor, LanguageRouting]:
        """(`lang_ids` (B,), routing). The routing of a default-language batch, a `single_language` batch or a
        model without per-language modules is decided from Python-level facts, so `torch.export` and
        `torch.compile` trace it without reading tensor values; only a multi-language model given bare
        `lang_ids` reads them (eagerly) to find out whether the batch is mixed."""
        languages = self.config.languages
        if single_language is not None:
            code = single_language
        else:
            code = self.default_language_code() if lang_ids is None else None
        if lang_ids is None:
            index = self.config.language_id(code)  # raises naming an unknown code and the model's languages
            return torch.full((batch,), index, dtype=torch.long, device=device), LanguageRouting(languages=(code,))
        lang_ids = checked_lang_ids(lang_ids, batch, languages, device)
        if code is not None:
            index = self.config.language_id(code)
            if not is_tracing():
                check_single_language(lang_ids, code, index)
            return lang_ids, LanguageRouting(languages=(code,))
        if len(languages) == 1 or not routes_languages(self.config):
            return lang_ids, LanguageRouting(languages=(languages[0],))  # no module reads the routing
        return lang_ids, route_by_values(lang_ids, languages)

    def default_language_code(self) -> str:
        """`config.default_language`, or the only language; raises when `lang_ids` is required."""
        languages = self.config.languages
        if self.config.default_language is not None:
            return self.config.default_language
        if len(languages) == 1:
            return languages[0]
        raise ValueError(
            f"lang_ids is required: this model has languages {languages} and config.default_language is None. "
            "Pass lang_ids (LongTensor[batch], indices into config.languages), single_language (a code) or set "
            "config.default_language."
        )


def is_tracing() -> bool:
    """Under `torch.compile` / `torch.export`: value checks that read tensors would break the graph or fail."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def routes_languages(config: MetaXLMConfig) -> bool:
    """Whether any module is per language (shared adapters are one module for all languages)."""
    return any(kind != "adapters" or not config.shared_adapters for kind in config.language_module_kinds)


def checked_lang_ids(lang_ids, batch: int, languages: list[str], device: torch.device) -> torch.Tensor:
    """`lang_ids` as LongTensor (B,) (a scalar is broadcast); its shape and dtype are always checked, its
    values only eagerly (reading them is data-dependent)."""
    lang_ids = torch.as_tensor(lang_ids, device=device)
    if lang_ids.dim() == 0:
        lang_ids = lang_ids.expand(batch)
    if lang_ids.shape != (batch,) or lang_ids.dtype.is_floating_point:
        raise ValueError(
            f"lang_ids must be an integer tensor of shape ({batch},) (one language per row), got "
            f"shape {tuple(lang_ids.shape)} and dtype {lang_ids.dtype}"
        )
    if not is_tracing():
        low, high = int(lang_ids.min()), int(lang_ids.max())
        if low < 0 or high >= len(languages):
            raise ValueError(
                f"lang_ids contains {low if low < 0 else high}, outside 0..{len(languages) - 1} "
                f"(config.languages = {languages})"
            )
    return lang_ids.long()


def check_single_language(lang_ids: torch.Tensor, code: str, index: int) -> None:
    if not bool((lang_ids == index).all()):
        raise ValueError(
            f"single_language={code!r} (lang id {index}) but lang_ids holds other languages: "
            f"{sorted(set(lang_ids.tolist()))}; pass single_language only for one-language batches"
        )


# ----------------------------------------------------------------------------------------------------------------
# Base model
# ----------------------------------------------------------------------------------------------------------------
class MetaXLMModel(MetaXLMPreTrainedModel):
    _auto_class = "AutoModel"  # save_pretrained copies this file beside the weights
    def __init__(self, config: MetaXLMConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        self.embeddings = MetaXLMEmbeddings(config)
        self.encoder = MetaXLMEncoder(config)
        self.pooler = MetaXLMPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        single_language: str | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        output_positions_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling | tuple:
        """`input_ids` (B, T) or `inputs_embeds` (B, T, H). `lang_ids` (B,) index `config.languages`; without
        them every row is `config.default_language`. `single_language` (a code) promises that every row is that
        language: routing then needs no look at `lang_ids` (what `torch.compile` / `torch.export` need; checked
        eagerly). `hidden_states`: the embeddings and every layer's output, (B, T, H) each; `attentions`: every
        layer's attention probabilities (B, heads, T, T), computed eagerly (SDPA gives none); both in the
        caller's row order and on the path to the output. Defaults come from the config as in transformers.
        `output_positions_mask` (B, T) boolean: the caller needs only these positions of the output (masked-LM
        sparse prediction); every position is still attended to, the last layer's attention output and FFN run on
        those tokens alone, and `last_hidden_state` is (N, H) in row-major order (no pooler output)."""
        output_hidden_states = pick(output_hidden_states, self.config.output_hidden_states)
        output_attentions = pick(output_attentions, self.config.output_attentions)
        reference = require_one_input(input_ids, inputs_embeds)
        lang_ids, routing = self.resolve_languages(lang_ids, single_language, reference.shape[0], reference.device)
        kept = None
        if output_positions_mask is not None:
            if output_hidden_states:
                raise ValueError("output_positions_mask computes part of the last layer: no output_hidden_states")
            kept = output_positions(output_positions_mask, lang_ids, routing, self.config.languages)
        hidden = self.embeddings(input_ids, lang_ids, token_type_ids, position_ids, inputs_embeds)  # (B, T, H)
        hidden, all_hidden, all_attentions = self.encoder(
            hidden, attention_bias(attention_mask), routing, output_hidden_states, output_attentions, kept
        )
        pooled = self.pooler(hidden) if self.pooler is not None and kept is None else None
        outputs = BaseModelOutputWithPooling(
            last_hidden_state=hidden,
            pooler_output=pooled,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return self.as_requested(outputs, return_dict)


def require_one_input(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> torch.Tensor:
    """The one of `input_ids` / `inputs_embeds` given (raises unless exactly one is)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids (B, T) and inputs_embeds (B, T, H)")
    return input_ids if input_ids is not None else inputs_embeds


def pick(value: bool | None, default: bool) -> bool:
    """A forward flag, or the config's default when the caller gave None."""
    return bool(default) if value is None else bool(value)


def attention_bias(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 padding mask -> boolean (B, 1, 1, T), True = attend; None when nothing is padded, so SDPA may
    take its fastest (mask-free) kernel. That test reads tensor values, which `torch.export` cannot trace and
    `torch.compile` turns into a graph break: traced, the mask is always passed on."""
    if attention_mask is None or (not is_tracing() and bool(attention_mask.all())):
        return None
    return attention_mask.bool()[:, None, None, :]


# ----------------------------------------------------------------------------------------------------------------
# Heads
# ----------------------------------------------------------------------------------------------------------------
class MetaXLMLMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> vocabulary projection (tied to the input embeddings)."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.layer_norm(F.gelu(self.dense(features))))


def at_least_fp32(tensor: torch.Tensor) -> torch.Tensor:
    """Losses in fp32 under bf16/fp16 autocast; float64 models (hypergradient checks) keep float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def cross_entropy_loss(
    logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch: torch.Tensor | int | None
) -> torch.Tensor:
    """Mean cross-entropy over labels != -100, or the sum divided by `num_items_in_batch` when the Trainer gives
    it: the label count of all micro-batches of one optimizer step, so gradient accumulation weights every
    label equally (as one large batch would)."""
    loss = F.cross_entropy(at_least_fp32(logits), labels, ignore_index=-100, reduction="sum")
    if num_items_in_batch is None:
        return loss / labels.ne(-100).sum().clamp(min=1)
    return loss / num_items_in_batch


class MetaXLMForMaskedLM(MetaXLMPreTrainedModel):
    _auto_class = "AutoModelForMaskedLM"  # save_pretrained copies this file beside the weights
    _tied_weights_keys = {
        "lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
        "lm_head.decoder.bias": "lm_head.bias",
    }

    def __init__(self, config: MetaXLMConfig):
        super().__init__(config)
        self.roberta = MetaXLMModel(config, add_pooling_layer=False)
        self.lm_head = MetaXLMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        single_language: str | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedLMOutput | tuple:
        """`logits` is (B, T, V). With `config.sparse_prediction` and `labels`, only positions whose label is not
        `config.sparse_pred_ignore_index` are predicted (as XLM and ModernBERT do) and `logits` is
        (N_predicted, V), its rows those positions in row-major order; the loss is the same either way. The
        vocabulary projection then runs on those positions (about a quarter of the model's FLOPs at vocab 8k /
        hidden 256), and so does the last layer past its attention (as MLPerf's BERT does; another ~15 % at 4
        layers), unless hidden states are requested."""
        predicted = None
        if labels is not None and self.config.sparse_prediction:
            predicted = labels.ne(self.config.sparse_pred_ignore_index)  # (B, T)
            labels = labels[predicted]  # (N_predicted,)
        whole_last_layer = pick(output_hidden_states, self.config.output_hidden_states)
        outputs = self.roberta(
            input_ids, attention_mask, lang_ids, token_type_ids, position_ids, inputs_embeds, single_language,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
            output_positions_mask=None if whole_last_layer else predicted,
        )  # fmt: skip
        hidden = outputs.last_hidden_state  # (B, T, H), or (N_predicted, H)
        extras = dict(hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        if labels is None:
            return self.as_requested(MaskedLMOutput(logits=self.lm_head(hidden), **extras), return_dict)
        if predicted is not None and whole_last_layer:
            hidden = hidden[predicted]  # (N_predicted, H)
        logits = self.lm_head(hidden)  # (B, T, V), or (N_predicted, V)
        loss = cross_entropy_loss(
            logits.view(-1, logits.shape[-1]), labels.reshape(-1), kwargs.get("num_items_in_batch")
        )
        return self.as_requested(MaskedLMOutput(loss=loss, logits=logits, **extras), return_dict)


class MetaXLMForTokenClassification(MetaXLMPreTrainedModel):
    _auto_class = "AutoModelForTokenClassification"  # save_pretrained copies this file beside the weights
    def __init__(self, config: MetaXLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = MetaXLMModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        single_language: str | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> TokenClassifierOutput | tuple:
        outputs = self.roberta(
            input_ids, attention_mask, lang_ids, token_type_ids, position_ids, inputs_embeds, single_language,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
        )  # fmt: skip
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            loss = cross_entropy_loss(
                logits.view(-1, self.num_labels), labels.view(-1), kwargs.get("num_items_in_batch")
            )
        outputs = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return self.as_requested(outputs, return_dict)


class MetaXLMForQuestionAnswering(MetaXLMPreTrainedModel):
    _auto_class = "AutoModelForQuestionAnswering"  # save_pretrained copies this file beside the weights
    def __init__(self, config: MetaXLMConfig):
        super().__init__(config)
        self.roberta = MetaXLMModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)  # start / end span logits
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        single_language: str | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> QuestionAnsweringModelOutput | tuple:
        outputs = self.roberta(
            input_ids, attention_mask, lang_ids, token_type_ids, position_ids, inputs_embeds, single_language,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
        )  # fmt: skip
        start_logits, end_logits = self.qa_outputs(outputs.last_hidden_state).unbind(dim=-1)  # (B, T) each
        loss = None
        if start_positions is not None and end_positions is not None:
            # Positions outside the sequence are ignored, as in transformers' QA heads.
            length = start_logits.shape[1]
            start = start_positions.clamp(0, length)
            end = end_positions.clamp(0, length)
            loss = (
                F.cross_entropy(at_least_fp32(start_logits), start, ignore_index=length)
                + F.cross_entropy(at_least_fp32(end_logits), end, ignore_index=length)
            ) / 2
        outputs = QuestionAnsweringModelOutput(
            loss=loss, start_logits=start_logits, end_logits=end_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )  # fmt: skip
        return self.as_requested(outputs, return_dict)


class MetaXLMClassificationHead(nn.Module):
    """Sentence classification from the <s> token: dropout -> dense -> tanh -> dropout -> projection."""

    def __init__(self, config: MetaXLMConfig):
        super().__init__()
        dropout = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(hidden[:, 0])  # (B, H)
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


class MetaXLMForSequenceClassification(MetaXLMPreTrainedModel):
    _auto_class = "AutoModelForSequenceClassification"  # save_pretrained copies this file beside the weights

    def classification_loss(self, logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """The loss of `config.problem_type`, inferred as transformers' heads infer it when unset: one label ->
        "regression" (MSE), integer labels -> "single_label_classification" (cross-entropy over labels != -100),
        float labels (B, num_labels) -> "multi_label_classification" (BCE with logits)."""
        if self.config.problem_type is None:
            if self.num_labels == 1:
                self.config.problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                self.config.problem_type = "single_label_classification"
            else:
                self.config.problem_type = "multi_label_classification"
        logits = at_least_fp32(logits)
        if self.config.problem_type == "regression":
            if self.num_labels == 1:
                return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype))
            return F.mse_loss(logits, labels.to(logits.dtype))
        if self.config.problem_type == "single_label_classification":
            return cross_entropy_loss(logits.view(-1, self.num_labels), labels.view(-1), num_items_in_batch)
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    def __init__(self, config: MetaXLMConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.roberta = MetaXLMModel(config, add_pooling_layer=False)
        self.classifier = MetaXLMClassificationHead(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        lang_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        single_language: str | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput | tuple:
        outputs = self.roberta(
            input_ids, attention_mask, lang_ids, token_type_ids, position_ids, inputs_embeds, single_language,
            output_hidden_states=output_hidden_states, output_attentions=output_attentions, return_dict=True,
        )  # fmt: skip
        logits = self.classifier(outputs.last_hidden_state)  # (B, num_labels)
        loss = None if labels is None else self.classification_loss(logits, labels, kwargs.get("num_items_in_batch"))
        outputs = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return self.as_requested(outputs, return_dict)


# ----------------------------------------------------------------------------------------------------------------
# Parameter groups: shared θ vs language-specific φ
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class ParameterGroups:
    """The shared parameters θ and each language's parameters φ_lang, by qualified parameter name."""

    shared: dict[str, nn.Parameter]
    languages: dict[str, dict[str, nn.Parameter]]


def parameter_groups(model: nn.Module) -> ParameterGroups:
    """Split a model's parameters into shared ones and per-language ones.

    A parameter is language X's when it sits under the entry X of a `LanguageModuleDict` — found by walking
    modules, so language codes that are substrings of module names ("te" in "intermediate") cannot confuse it.
    Names are `model.named_parameters()` names; tied parameters appear once, under their first name.
    """
    owner_of: dict[int, str] = {}
    language_codes: list[str] = []
    for module in model.modules():
        if isinstance(module, LanguageModuleDict):
            for code, child in module.items():
                if code not in language_codes:
                    language_codes.append(code)
                for param in child.parameters():
                    owner_of[id(param)] = code
    config_languages = getattr(getattr(model, "config", None), "languages", None) or []
    codes = list(config_languages) + [code for code in language_codes if code not in config_languages]
    groups = ParameterGroups(shared={}, languages={code: {} for code in codes})
    for name, param in model.named_parameters():
        code = owner_of.get(id(param))
        if code is None:
            groups.shared[name] = param
        else:
            groups.languages[code][name] = param
    return groups


# ----------------------------------------------------------------------------------------------------------------
# Language lifecycle: add a language, train only some languages, share one language's modules
# ----------------------------------------------------------------------------------------------------------------
LANGUAGE_MODULES_WEIGHTS = "language_modules.safetensors"
LANGUAGE_MODULES_DESCRIPTION = "language_modules.json"
# Fields that fix the shapes and the computation of language modules: they must agree to load modules.
ARCHITECTURE_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "adapter_reduction_factor", "adapter_activation", "shared_adapters", "use_language_embeddings",
    "ffn_adapter_placement", "ffn_adapter_input_norm", "ffn_adapter_skip",
)  # fmt: skip


def add_language_modules(model: MetaXLMPreTrainedModel, code: str, init_from: str | None) -> None:
    languages = model.config.languages
    if not isinstance(code, str) or not code:
        raise ValueError(f"add_language: code must be a non-empty string, got {code!r}")
    if code in languages:
        raise ValueError(f"add_language: {code!r} is already one of this model's languages {languages}")
    source = None if init_from is None else model.config.language_id(init_from)
    for module_dict in [m for m in model.modules() if isinstance(m, LanguageModuleDict)]:
        module_dict[code] = new_language_module(model, module_dict, init_from)
    embeddings = model.base_model.embeddings
    if embeddings.language_embeddings is not None:
        embeddings.language_embeddings = grown_language_embedding(
            embeddings.language_embeddings, source, model.config.initializer_range
        )
    model.config.languages = [*languages, code]


def new_language_module(model, module_dict: LanguageModuleDict, init_from: str | None) -> nn.Module:
    """A copy of language `init_from`'s module, or a fresh one initialised as `post_init` initialises weights."""
    template = next(iter(module_dict.values()))
    if init_from is not None:  # the copy shares the model's config (attention reads its implementation there)
        return copy.deepcopy(module_dict[init_from], memo={id(model.config): model.config})
    module = module_dict.make_module()
    module.apply(model._init_weights)
    reference = next(template.parameters())
    return module.to(device=reference.device, dtype=reference.dtype)


def grown_language_embedding(old: nn.Embedding, source: int | None, std: float) -> nn.Embedding:
    """The XLM language embedding with one more row: a copy of row `source`, or drawn as at initialisation."""
    new = nn.Embedding(old.num_embeddings + 1, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight[:-1] = old.weight
        if source is None:
            new.weight[-1].normal_(0.0, std)
        else:
            new.weight[-1] = old.weight[source]
    return new


def modules_of(model: nn.Module, languages: list[str]) -> dict[str, dict[str, nn.Parameter]]:
    """Each language's parameters; raises naming codes that are unknown or own no parameters."""
    own = parameter_groups(model).languages
    bad = [code for code in languages if not own.get(code)]
    if not languages or bad:
        raise ValueError(
            f"languages {bad or languages!r}: expected a non-empty list of this model's languages "
            f"{model.config.languages} that have language-specific modules "
            f"(config.language_modules={model.config.language_modules!r})"
        )
    return {code: own[code] for code in languages}


def train_only_language_modules(model: MetaXLMPreTrainedModel, languages: list[str], embeddings: bool) -> list[str]:
    chosen = modules_of(model, list(languages))
    model.requires_grad_(False)
    for params in chosen.values():
        for param in params.values():
            param.requires_grad_(True)
    if embeddings:
        base_embeddings = model.base_model.embeddings
        base_embeddings.word_embeddings.requires_grad_(True)
        if base_embeddings.language_embeddings is not None:
            base_embeddings.language_embeddings.requires_grad_(True)
    return [name for name, param in model.named_parameters() if param.requires_grad]


def shared_fingerprint(base: nn.Module) -> dict:
    """SHA-256 of every shared weight of the base model (bytes, shape, dtype), and of all of them together.
    The pooler (absent under task heads) and the language embedding (grows with each language) are left out."""
    digests = {}
    for name, param in sorted(parameter_groups(base).shared.items()):
        if name.startswith("pooler.") or name == "embeddings.language_embeddings.weight":
            continue
        data = param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        header = f"{tuple(param.shape)}|{param.dtype}|".encode()
        digests[name] = hashlib.sha256(header + data).hexdigest()[:16]
    total = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    return {"sha256": total, "parameters": digests}


def save_language_modules(model: MetaXLMPreTrainedModel, directory: Path, languages: list[str]) -> Path:
    base = model.base_model
    chosen = modules_of(base, languages)
    tensors = {name: p.detach().cpu().contiguous() for params in chosen.values() for name, p in params.items()}
    owner = {name: code for code, params in chosen.items() for name in params}
    language_embeddings = base.embeddings.language_embeddings
    if language_embeddings is not None:
        for code in languages:
            name = f"embeddings.language_embeddings.{code}"
            tensors[name] = language_embeddings.weight[model.config.language_id(code)].detach().cpu().clone()
            owner[name] = code
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / LANGUAGE_MODULES_WEIGHTS), metadata={"format": "pt"})
    description = {
        "format": "meta_xlm.language_modules",
        "version": 1,
        "languages": languages,
        "language_modules": list(model.config.language_module_kinds),
        "architecture": {field: getattr(model.config, field) for field in ARCHITECTURE_FIELDS},
        "parameters": {name: {"language": owner[name], "shape": list(t.shape)} for name, t in tensors.items()},
        "shared_fingerprint": shared_fingerprint(base),
    }
    (directory / LANGUAGE_MODULES_DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")
    return directory


def base_mismatches(model: MetaXLMPreTrainedModel, description: dict, check_base: bool) -> list[str]:
    """What differs between the model the modules were saved from and this one, in words."""
    problems = []
    saved_kinds, kinds = description["language_modules"], list(model.config.language_module_kinds)
    if saved_kinds != kinds:
        problems.append(f"module kinds differ: saved {saved_kinds}, this model {kinds}")
    for field, saved in description["architecture"].items():
        if getattr(model.config, field) != saved:
            problems.append(f"{field} differs: saved {saved!r}, this model {getattr(model.config, field)!r}")
    if check_base and not problems:
        saved = description["shared_fingerprint"]["parameters"]
        current = shared_fingerprint(model.base_model)["parameters"]
        differing = sorted(name for name in saved.keys() | current.keys() if saved.get(name) != current.get(name))
        if differing:
            problems.append(
                f"the shared weights differ from the base the modules were trained with: {len(differing)} of "
                f"{len(saved)} tensors, e.g. {differing[:3]} (check_base=False loads them anyway)"
            )
    return problems


def load_language_modules(model: MetaXLMPreTrainedModel, directory: Path, check_base: bool) -> list[str]:
    description_path = directory / LANGUAGE_MODULES_DESCRIPTION
    if not description_path.is_file():
        raise ValueError(f"{directory} has no {LANGUAGE_MODULES_DESCRIPTION}: not written by save_language_modules")
    description = json.loads(description_path.read_text())
    problems = base_mismatches(model, description, check_base)
    if problems:
        raise ValueError(f"cannot load the language modules in {directory} into this model: " + "; ".join(problems))
    for code in description["languages"]:
        if code not in model.config.languages:
            model.add_language(code)
    tensors = load_file(str(directory / LANGUAGE_MODULES_WEIGHTS))
    base = model.base_model
    chosen = modules_of(base, description["languages"])
    targets = {name: p for params in chosen.values() for name, p in params.items()}
    for code in description["languages"]:
        if base.embeddings.language_embeddings is not None:
            targets[f"embeddings.language_embeddings.{code}"] = base.embeddings.language_embeddings.weight[
                model.config.language_id(code)
            ]
    if targets.keys() != tensors.keys() or any(targets[n].shape != t.shape for n, t in tensors.items()):
        raise ValueError(
            f"the language modules in {directory} do not fit this model: names or shapes differ, e.g. "
            f"{sorted(targets.keys() ^ tensors.keys())[:3]}"
        )
    with torch.no_grad():
        for name, tensor in tensors.items():
            targets[name].copy_(tensor)
    return list(description["languages"])


__all__ = [
    "LanguageModuleDict",
    "LanguageRouting",
    "MetaXLMAdapter",
    "MetaXLMForMaskedLM",
    "MetaXLMForQuestionAnswering",
    "MetaXLMForSequenceClassification",
    "MetaXLMForTokenClassification",
    "MetaXLMModel",
    "MetaXLMPreTrainedModel",
    "ParameterGroups",
    "parameter_groups",
]
