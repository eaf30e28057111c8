"""Stands in for transformers' tests/utils/test_configuration_utils.py (not in the sdist): `ConfigTester`'s
`check_config_arguments_init` builds a config from these `PreTrainedConfig` base arguments (each set away from
its default) and checks every one is kept."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "architectures": ["MetaXLMForMaskedLM"],
    "finetuning_task": "translation",
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
    "tokenizer_class": "XLMRobertaTokenizer",
    "bos_token_id": 5,
    "eos_token_id": 6,
    "pad_token_id": 7,
}
