# Quickstart:  make run   (set up + main job on the built-in cohort)
#              make test  (set up + the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real users get the torch build pip picks for their platform. Machines that carry a local CPU wheel
# (CI, the dev boxes) take it instead of downloading a multi-GB CUDA build.
TORCH_SPEC ?= $(shell ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 && echo torch==2.13.0 || echo torch)
EXPERIMENT ?= zero_shot_pet
PYTEST_ARGS ?=

.PHONY: install run test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m umd_lightning +experiment=$(EXPERIMENT)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/metrics_bench.py
	$(PY) benchmarks/inference_bench.py
	$(PY) benchmarks/train_bench.py

clean:
	rm -rf $(VENV) runs multirun .pytest_cache
