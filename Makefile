# The two commands of the README: `make demo` and `make test`.
# torch==2.13.0 is installed first (a CPU build on this machine's disk) and repeated in the
# second install so that no dependency can pull a multi-GB CUDA build of torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test env lint clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/r1kit zero --config recipes/tiny/zero.yaml

test: $(STAMP)
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check r1kit tests benchmarks

clean:
	rm -rf $(VENV) runs
