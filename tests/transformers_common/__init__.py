"""transformers' common model and config tests (`ModelTesterMixin`, `ConfigTester`) run against MetaXLM."""
