# The README's two commands. Both create .venv on first use (torch pinned to the CPU wheel, see pyproject).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Re-installs when pyproject.toml changes (a new dependency reaches existing environments too).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0" -e '.[test]'
	touch $@

# transformers' common model tests (tests/transformers_common) ship in the sdist of the installed version, not
# in the wheel: fetched once here (PyPI), so the test run itself stays offline. Refetched when transformers changes.
UPSTREAM_TESTS := $(VENV)/transformers-tests
$(UPSTREAM_TESTS)/VERSION: $(VENV)/.installed
	rm -rf $(UPSTREAM_TESTS) && mkdir -p $(UPSTREAM_TESTS)/sdist
	version=$$($(BIN)/python -c "import transformers; print(transformers.__version__)") && \
	$(BIN)/pip download -q --no-deps --no-binary :all: -d $(UPSTREAM_TESTS)/sdist "transformers==$$version" && \
	tar -xzf $(UPSTREAM_TESTS)/sdist/transformers-$$version.tar.gz -C $(UPSTREAM_TESTS) --strip-components=2 \
	  transformers-$$version/tests/test_modeling_common.py transformers-$$version/tests/test_configuration_common.py && \
	tar -xzf $(UPSTREAM_TESTS)/sdist/transformers-$$version.tar.gz -C $(UPSTREAM_TESTS) --strip-components=1 \
	  transformers-$$version/LICENSE && \
	rm -rf $(UPSTREAM_TESTS)/sdist && touch $(UPSTREAM_TESTS)/__init__.py && echo "$$version" > $@

.PHONY: setup demo test
setup: $(VENV)/.installed $(UPSTREAM_TESTS)/VERSION

demo: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(BIN)/python recipes/demo.py

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \
	  $(BIN)/python -m pytest -q --timeout 900 -n 2 --dist loadfile
