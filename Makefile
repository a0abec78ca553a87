# Two entry points: `make demo` and `make test`. Both create the virtualenv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) examples/demo.py

test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
