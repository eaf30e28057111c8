"""Downstream suite of the paper (Section 3.2, Appendix A): WikiAnn NER, UD POS, TyDiQA-GoldP QA and XNLI.

- `loaders`: benchmark files (plain or .gz) or Hub datasets -> `datasets.Dataset` with one documented schema
  per task family (tagging, extractive QA, NLI).
- `splits`: where each task's split lives in a data folder laid out as ../shared/data; loading a split.
- `preprocessing`: tokenisation with first-subword labels, QA features with document stride and n-best span
  post-processing, NLI pair encoding, per-example `lang_ids` for MetaXLM models.
- `metrics`: offline seqeval span F1, POS accuracy (= micro F1), MLQA-style SQuAD F1/EM, XNLI accuracy.
- `evaluate_module`: the same metrics as an `evaluate` module that loads offline from the package.
- `reference`: the paper's per-language numbers (Tables 2, 3, 6, 7).
- `records`: the metrics record of a fine-tuning run (metrics.json): format, writer, validating reader.
- `tables`: results of several models in the paper's table layout (Markdown, CSV, JSON).
- `finetuning`: Appendix A's protocol (epochs, grid, dev-set selection, per-epoch checkpoints) on the
  transformers Trainer; recipes/finetune.py wires it, recipes/results_table.py wires `tables`.
"""
