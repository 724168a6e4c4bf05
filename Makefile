# Set-up is part of each target: a fresh machine needs only `make demo` or `make test`.
# The virtual environment lives in .venv; where no torch is installed, the CPU build comes first,
# so that resolving `torch` for sdekit does not pull a CUDA build.  Use any recent torch you like:
# install it into .venv before the first `make`, and it is kept.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_CPU ?= torch==2.13.0

.PHONY: demo test test-all install clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_CPU)"
	$(PY) -m pip install -q -e ".[test,diffusers,dask]"
	touch $@

install: $(VENV)/.installed

# The main job: `sdekit study` (docs/study.md); results, summary and plots go to sdekit-study/.
demo: $(VENV)/.installed
	$(VENV)/bin/sdekit study

# The tests' tensors are small: one OpenMP thread a worker is the fast path (tests/conftest.py also sets torch's
# count), and two workers (pytest-xdist) use both cores of a small machine.
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2

test-all: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 -m "slow or not slow"

clean:
	rm -rf $(VENV)
