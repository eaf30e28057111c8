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

.PHONY: setup demo test
setup: $(VENV)/.installed

demo: setup
	HF_HUB_OFFLINE=$${HF_HUB_OFFLINE:-0} $(BIN)/python recipes/demo.py

test: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 \
	  $(BIN)/python -m pytest -q --timeout 900 -n 2 --dist loadfile
