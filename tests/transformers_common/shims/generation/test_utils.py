"""Stands in for transformers' tests/generation/test_utils.py (not in the sdist). An encoder cannot generate:
the common suite only checks that its tester does NOT inherit this mixin."""


class GenerationTesterMixin:
    pass
