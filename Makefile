# FlyteGPT developer entry points. Everything runs from a local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STORE  ?= .flytegpt/store
SAMPLE := ingest/sample/flytegpt.toml

.PHONY: venv demo test bench eval clean

# torch is installed first and pinned to the CPU build: an unpinned torch pulls several GB of CUDA.
$(BIN)/flytegpt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[dev,fast]"
	touch $@

venv: $(BIN)/flytegpt

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/flytegpt ingest --config $(SAMPLE) --store $(STORE)
	HF_HUB_OFFLINE=1 $(BIN)/flytegpt demo --config $(SAMPLE) --store $(STORE)

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_retrieval.py

clean:
	rm -rf $(VENV) .flytegpt .pytest_cache
