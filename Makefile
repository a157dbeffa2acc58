# Quickstart:  make run   (set up + main job on the built-in cohort)
#              make test  (set up + the test suite)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real users get the torch build pip picks for their platform. Machines that carry a local CPU wheel
# (CI, the dev boxes) take it instead of downloading a multi-GB CUDA build.
LOCAL_CPU_TORCH := $(shell ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1 && echo yes)
TORCH_SPEC ?= $(if $(LOCAL_CPU_TORCH),torch==2.13.0,torch)
# With the local CPU torch, the study's packages install beside it under a constraint that keeps it; the
# torchvision they pull (through timm) is built for CUDA torch and breaks every torchvision import
# (torchmetrics' included), so it is removed there. Nothing of ours or theirs on our paths needs it.
PIP_CONSTRAINTS := $(if $(LOCAL_CPU_TORCH),-c .ci/constraints-cpu-torch.txt)
EXPERIMENT ?= zero_shot_pet
PYTEST_ARGS ?=

.PHONY: install run test bench clean

$(VENV)/.installed: pyproject.toml .ci/constraints-cpu-torch.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(PIP_CONSTRAINTS) -e ".[dev]"
	$(if $(LOCAL_CPU_TORCH),$(PY) -m pip uninstall -q -y torchvision)
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
