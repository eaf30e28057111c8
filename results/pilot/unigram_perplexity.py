# PYTHONPATH=src python results/pilot/unigram_perplexity.py runs/pilot/lr1e-3_wu500/tokenizer
"""Unigram perplexity of the validation-like text under a tokenizer: the MLM 'plateau' a model sits on when it
predicts every masked token from the token frequencies alone (exp of the unigram entropy, per language)."""
import math, sys
from collections import Counter
from transformers import AutoTokenizer
from meta_xlm.data import load_corpora
tok = AutoTokenizer.from_pretrained(sys.argv[1])
corpora = load_corpora(["en", "sw"], text_dir="../shared/data/text")
for lang, ds in corpora.items():
    counts = Counter()
    for ids in tok(ds["text"][:20000], add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    total = sum(counts.values())
    h = -sum(c / total * math.log(c / total) for c in counts.values())
    print(lang, "unigram perplexity", round(math.exp(h), 1), "tokens", total)
