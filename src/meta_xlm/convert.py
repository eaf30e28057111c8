"""Import XLM-R and X-MOD masked-LM checkpoints into `MetaXLMForMaskedLM`.

XLM-R (`convert_xlmr`): the shared encoder and LM head are copied; new language-specific modules are added for
the chosen languages:
- adapters: new per-language (or shared) adapters with the up-projection `dense2` zero-initialised, so that
  A(z) + z = z and the converted model computes exactly what the source computes;
- ffn / attention: every language's copy starts as the source's shared weights.
Continued pretraining (e.g. with meta adapters) then starts from the strong multilingual model.

X-MOD (`convert_xmod`): the per-language FFN adapters of `XmodForMaskedLM` map one to one onto our FFN-side
adapters (`...output.adapter_modules[lang].dense{1,2}`, same names), with X-MOD's placement options mapped onto
`MetaXLMConfig.ffn_adapter_*` (table in configuration_meta_xlm.py) and `adapter_activation = hidden_act`. X-MOD has
no attention-side adapters: ours are added with `dense2 = 0` (neutral). Languages may be renamed
(`rename={"en_XX": "en"}`) and must exist in the source.

Sources are a loaded model or a local folder / Hub id; weights are read from safetensors only unless
`allow_pickle=True` (see `meta_xlm.hub.load_pretrained`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import yaml
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, XLMRobertaForMaskedLM, XmodForMaskedLM

from meta_xlm.configuration_meta_xlm import MetaXLMConfig
from meta_xlm.hub import load_pretrained
from meta_xlm.model_card import write_model_card
from meta_xlm.modeling_meta_xlm import LanguageModuleDict, MetaXLMAdapter, MetaXLMForMaskedLM

logger = logging.getLogger(__name__)

XLMR_MODEL_TYPES = ("xlm-roberta", "roberta")  # the same architecture; RoBERTa checkpoints convert as well
XMOD_MODEL_TYPES = ("xmod",)
# Fields copied verbatim from the source config (XLM-R and X-MOD share them).
SHARED_CONFIG_FIELDS = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
    "initializer_range", "layer_norm_eps", "pad_token_id", "bos_token_id", "eos_token_id", "classifier_dropout",
    "tie_word_embeddings",
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Loading a source model
# ----------------------------------------------------------------------------------------------------------------
def load_source(
    source: str | os.PathLike | PreTrainedModel,
    model_class: type[PreTrainedModel],
    model_types: tuple[str, ...],
    *,
    allow_pickle: bool,
    revision: str | None,
) -> PreTrainedModel:
    """A loaded `model_class` from a model, folder or Hub id; another architecture is a clear error."""
    if isinstance(source, PreTrainedModel):
        if not isinstance(source, model_class):
            raise TypeError(f"expected a {model_class.__name__}, got a {type(source).__name__}")
        return source
    config = AutoConfig.from_pretrained(source, revision=revision)
    if config.model_type not in model_types:
        raise ValueError(
            f"{source} is a {config.model_type!r} checkpoint (architectures {getattr(config, 'architectures', None)}); "
            f"expected a {model_class.__name__} checkpoint (model_type {' or '.join(map(repr, model_types))})"
        )
    model, loading_info = load_pretrained(
        model_class, source, revision=revision, allow_pickle=allow_pickle, output_loading_info=True
    )
    if loading_info["missing_keys"]:
        raise ValueError(
            f"{source} has no weights for {sorted(loading_info['missing_keys'])}: a {model_class.__name__} "
            "checkpoint (with its masked-LM head) is needed"
        )
    return model.eval()


def check_post_norm_encoder(config, source_name: str) -> None:
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValueError(
            f"{source_name}: is_decoder/add_cross_attention is set; only encoders can be converted"
        )
    if getattr(config, "pre_norm", False):
        raise ValueError(f"{source_name}: pre_norm=True; MetaXLM has XLM-R's post-LayerNorm layout only")


# ----------------------------------------------------------------------------------------------------------------
# State-dict mapping
# ----------------------------------------------------------------------------------------------------------------
def language_dict_names(model: nn.Module) -> list[str]:
    """Qualified names of every LanguageModuleDict (longest first, so nested names match before their parents)."""
    names = [name for name, module in model.named_modules() if isinstance(module, LanguageModuleDict)]
    return sorted(names, key=len, reverse=True)


def split_language_key(key: str, dict_names: list[str]) -> tuple[str, str, str] | None:
    """'a.b.DICT.<code>.rest' -> ('a.b.DICT', code, 'rest'); None for a key outside every LanguageModuleDict."""
    for name in dict_names:
        if key.startswith(name + "."):
            code, _, rest = key[len(name) + 1 :].partition(".")
            return name, code, rest
    return None


def new_adapter_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, MetaXLMAdapter)]


def zero_output_projection(model: nn.Module, adapter_names: list[str]) -> None:
    """dense2 = 0 makes an adapter the identity (o = W_h h + z = z): the converted model equals its source."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in adapter_names:
            modules[name].dense2.weight.zero_()
            modules[name].dense2.bias.zero_()


def copy_weights(
    target: MetaXLMForMaskedLM,
    source_state: Mapping[str, torch.Tensor],
    source_key_of,
    source_name: str,
) -> list[str]:
    """Copy every target weight that `source_key_of(key)` maps to a source key; returns the new (unmapped) keys.

    A target key mapped to a key the source lacks is an error, and so is a source key nothing was mapped from
    (`source_key_of` returns None for new modules; source keys it deliberately drops are not in `source_state`).
    """
    target_state = target.state_dict()
    used, new_keys = set(), []
    with torch.no_grad():
        for key, tensor in target_state.items():
            source_key = source_key_of(key)
            if source_key is None:
                new_keys.append(key)
                continue
            if source_key not in source_state:
                raise ValueError(f"{source_name} has no weight {source_key!r} (needed for {key!r})")
            value = source_state[source_key]
            if value.shape != tensor.shape:
                raise ValueError(
                    f"{source_name}: {source_key!r} has shape {tuple(value.shape)}, {key!r} needs {tuple(tensor.shape)}"
                )
            tensor.copy_(value)
            used.add(source_key)
    unused = sorted(set(source_state) - used)
    if unused:
        raise ValueError(f"{source_name} has weights the converted model has no place for: {unused[:8]}")
    return new_keys


# ----------------------------------------------------------------------------------------------------------------
# XLM-R
# ----------------------------------------------------------------------------------------------------------------
def convert_xlmr(
    source: str | os.PathLike | XLMRobertaForMaskedLM,
    languages: Sequence[str],
    language_modules: str | Sequence[str] = "adapters",
    *,
    shared_adapters: bool = False,
    adapter_reduction_factor: int = 4,
    default_language: str | None = None,
    use_language_embeddings: bool = False,
    seed: int = 0,
    allow_pickle: bool = False,
    revision: str | None = None,
) -> MetaXLMForMaskedLM:
    """An `XLMRobertaForMaskedLM` (model, folder or Hub id) as a `MetaXLMForMaskedLM` with new language modules.

    New adapters have `dense2 = 0` and new ffn/attention copies equal the source's shared weights, so the result
    computes the source's outputs for every language. `seed` draws the new adapters' down-projections.
    """
    if use_language_embeddings:
        raise ValueError(
            "use_language_embeddings=True would add untrained language embeddings: the converted model would no "
            "longer equal its source; add them after conversion if wanted"
        )
    model = load_source(
        source, XLMRobertaForMaskedLM, XLMR_MODEL_TYPES, allow_pickle=allow_pickle, revision=revision
    )
    source_name = str(source) if not isinstance(source, PreTrainedModel) else type(source).__name__
    check_post_norm_encoder(model.config, source_name)
    config = MetaXLMConfig(
        **{name: getattr(model.config, name) for name in SHARED_CONFIG_FIELDS},
        languages=list(languages),
        default_language=default_language,
        language_modules=language_modules,
        shared_adapters=shared_adapters,
        adapter_reduction_factor=adapter_reduction_factor,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        target = MetaXLMForMaskedLM(config)
    dict_names = language_dict_names(target)
    adapter_names = new_adapter_names(target)

    def source_key_of(key: str) -> str | None:
        if any(key.startswith(name + ".") for name in adapter_names):
            return None  # a new adapter
        split = split_language_key(key, dict_names)
        if split is None:
            return key
        dict_name, _code, rest = split
        return f"{dict_name}.{rest}"  # every language's ffn/attention copy starts from the shared weights

    new_keys = copy_weights(target, model.state_dict(), source_key_of, source_name)
    zero_output_projection(target, adapter_names)
    logger.info(
        "converted %s: %d new language-module tensors for %s", source_name, len(new_keys), list(languages)
    )
    return target.eval()


# ----------------------------------------------------------------------------------------------------------------
# X-MOD
# ----------------------------------------------------------------------------------------------------------------
def xmod_ffn_adapter_settings(config) -> dict:
    """X-MOD's adapter options as MetaXLMConfig fields (the table in configuration_meta_xlm.py)."""
    if config.adapter_layer_norm:
        input_norm = "adapter_layer_norm"
    elif config.adapter_reuse_layer_norm:
        input_norm = "block_layer_norm"
    else:
        input_norm = "none"
    if not isinstance(config.hidden_act, str):
        raise TypeError(
            f"X-MOD hidden_act must be an activation name to be saved in a config, got {config.hidden_act!r}"
        )
    return dict(
        ffn_adapter_placement="after_residual",
        ffn_adapter_input_norm=input_norm,
        ffn_adapter_skip="adapter_input" if config.ln_before_adapter else "residual_sum",
        adapter_activation=config.hidden_act,
    )


def choose_xmod_languages(
    source_languages: list[str],
    languages: Sequence[str] | None,
    rename: Mapping[str, str] | None,
    source_name: str,
) -> dict[str, str]:
    """{our code: X-MOD code} in the chosen order; every chosen language must have an adapter in the source."""
    chosen = list(languages) if languages is not None else list(source_languages)
    missing = [code for code in chosen if code not in source_languages]
    if missing:
        raise ValueError(
            f"language(s) {missing} not in the source X-MOD model {source_name}: it has adapters for {source_languages}"
        )
    rename = dict(rename or {})
    unknown = sorted(set(rename) - set(chosen))
    if unknown:
        raise ValueError(
            f"rename has entries {unknown} for languages that are not converted (chosen: {chosen})"
        )
    return {rename.get(code, code): code for code in chosen}


def xmod_target_config(
    model: XmodForMaskedLM, code_map: Mapping[str, str], default_language: str | None, source_name: str
) -> MetaXLMConfig:
    """The MetaXLMConfig that holds an X-MOD model's kept languages: its shared fields, the adapter width read off
    the first layer's adapter, and X-MOD's FFN-adapter placement."""
    source_config = model.config
    bottleneck = (
        model.roberta.encoder.layer[0]
        .output.adapter_modules[next(iter(code_map.values()))]
        .dense1.out_features
    )
    if source_config.hidden_size % bottleneck != 0:
        raise ValueError(
            f"{source_name}: adapter width {bottleneck} does not divide hidden_size {source_config.hidden_size}; "
            "MetaXLMConfig needs an integer adapter_reduction_factor"
        )
    return MetaXLMConfig(
        **{name: getattr(source_config, name) for name in SHARED_CONFIG_FIELDS},
        languages=list(code_map),
        default_language=default_language,
        language_modules="adapters",
        adapter_reduction_factor=source_config.hidden_size // bottleneck,
        **xmod_ffn_adapter_settings(source_config),
    )


def copy_xmod_weights(
    target: MetaXLMForMaskedLM, model: XmodForMaskedLM, code_map: Mapping[str, str], source_name: str
) -> None:
    """Copy X-MOD's shared weights and the kept languages' FFN adapters into `target`; X-MOD has no
    attention-side adapters, so ours start as the identity (zeroed output projection)."""
    config = target.config
    ffn_adapter_dicts = {
        f"roberta.encoder.layer.{i}.output.adapter_modules" for i in range(config.num_hidden_layers)
    }
    dict_names = language_dict_names(target)

    def source_key_of(key: str) -> str | None:
        split = split_language_key(key, dict_names)
        if split is None:
            return key
        dict_name, code, rest = split
        if dict_name in ffn_adapter_dicts:
            return f"{dict_name}.{code_map[code]}.{rest}"
        return None  # attention-side adapters: X-MOD has none

    dropped = {code for code in model.config.languages if code not in code_map.values()}
    source_state = {
        key: value
        for key, value in model.state_dict().items()
        if (split := split_language_key(key, sorted(ffn_adapter_dicts))) is None or split[1] not in dropped
    }
    copy_weights(target, source_state, source_key_of, source_name)
    zero_output_projection(
        target,
        [
            f"roberta.encoder.layer.{i}.attention.output.adapter_modules.{code}"
            for i in range(config.num_hidden_layers)
            for code in config.languages
        ],
    )


def convert_xmod(
    source: str | os.PathLike | XmodForMaskedLM,
    languages: Sequence[str] | None = None,
    *,
    rename: Mapping[str, str] | None = None,
    default_language: str | None = None,
    seed: int = 0,
    allow_pickle: bool = False,
    revision: str | None = None,
) -> MetaXLMForMaskedLM:
    """An `XmodForMaskedLM` (model, folder or Hub id) as a `MetaXLMForMaskedLM` with its language adapters.

    `languages`: X-MOD codes to keep, in the new model's order (default: all). `rename`: X-MOD code -> new code.
    `default_language` is a new code (default: the source's default language when it is kept).
    """
    model = load_source(
        source, XmodForMaskedLM, XMOD_MODEL_TYPES, allow_pickle=allow_pickle, revision=revision
    )
    source_name = str(source) if not isinstance(source, PreTrainedModel) else type(source).__name__
    source_config = model.config
    check_post_norm_encoder(source_config, source_name)
    code_map = choose_xmod_languages(list(source_config.languages), languages, rename, source_name)
    if default_language is None and source_config.default_language in code_map.values():
        default_language = next(
            ours for ours, theirs in code_map.items() if theirs == source_config.default_language
        )
    config = xmod_target_config(model, code_map, default_language, source_name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        target = MetaXLMForMaskedLM(config)
    copy_xmod_weights(target, model, code_map, source_name)
    logger.info(
        "converted %s: languages %s (X-MOD codes %s)", source_name, list(code_map), list(code_map.values())
    )
    return target.eval()


__all__ = ["convert_xlmr", "convert_xmod", "xmod_ffn_adapter_settings"]


def save_converted(
    model: MetaXLMForMaskedLM,
    source: str,
    output_dir: str | os.PathLike,
    settings: Mapping,
    revision: str | None = None,
) -> Path:
    """Write a converted model as a complete checkpoint folder: weights and config, the source's tokenizer,
    `convert_config.yaml` (the conversion's settings) and a model card naming the source as base model when
    it is a Hub id."""
    output_dir = Path(output_dir)
    model.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(source, revision=revision).save_pretrained(output_dir)
    (output_dir / "convert_config.yaml").write_text(yaml.safe_dump(dict(settings), sort_keys=False), encoding="utf-8")
    write_model_card(output_dir, base_model=None if Path(source).exists() else source)
    return output_dir
