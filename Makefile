# The two commands of the README: `make demo` and `make test`.
# torch==2.13.0 is installed first (a CPU build on this machine's disk) and repeated in the
# second install so that no dependency can pull a multi-GB CUDA build of torch.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test env lint clean bwrap

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]" "$(TORCH)"
	touch $(STAMP)

env: $(STAMP) bwrap

# The code reward runs model-written programs in bubblewrap (r1kit/sandbox.py). Installed here
# only when missing and we are root with apt-get; otherwise skipped (the code reward then refuses
# to run, and the tests that need it skip).
bwrap:
	@command -v bwrap >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 \
	  && (apt-get update -qq && apt-get install -y -qq bubblewrap) >/dev/null 2>&1 \
	  && echo "installed bubblewrap (the code-execution sandbox)"; } || true

demo: $(STAMP)
	$(VENV)/bin/r1kit zero --config recipes/tiny/zero.yaml

test: $(STAMP) bwrap
	$(PY) -m pytest tests

lint: $(STAMP)
	$(VENV)/bin/ruff check r1kit tests benchmarks

clean:
	rm -rf $(VENV) runs
