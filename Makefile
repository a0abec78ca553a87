# Two entry points: `make demo` and `make test`. Both create the virtualenv on first use.
# `make docs` builds the docs site (docs/, mkdocs.yml) into site/, offline; `make gpu-check` runs on a GPU.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs house gpu-check mutation-check study study-isometry study-channels install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) examples/demo.py

# Two workers, one per core, each taking whole test files (module fixtures launch their processes once).
test: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# The package's house: modules, import arrows, cycles, floors, wings and upward imports (tools/house.py).
house:
	$(PYTHON) tools/house.py

# What only a GPU can show (at most 5 minutes; report in results/gpu_check/). Options through GPU_CHECK_ARGS, e.g.
# GPU_CHECK_ARGS="--authors-code /tmp/Synaptic-Flow". `make test` runs its --quick mode on CPU. Without network
# (no virtualenv can be built): PYTHONPATH=. python3 benchmarks/gpu_check.py --out-dir DIR
gpu-check: $(STAMP)
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Deliberate bugs of the core, put one at a time into a copy of the code: each must fail the tests it names
# (tools/mutation_check.py; about 5-8 min on 2 cores). Not part of `make test`.
mutation-check: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) tools/mutation_check.py

# The CPU-scale accuracy-vs-sparsity study (about 45-55 min on 2 cores; resumable): needs Debian's
# dataset-fashion-mnist (apt-get install dataset-fashion-mnist). Not part of `make test`.
STUDY := docs/results/fashion_mnist_lenet5
study: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) examples/sweep.py --preset fashion-mnist --out $(STUDY).csv --jobs 2
	$(PY) examples/plot_sweep.py $(STUDY).csv --isometry without --out $(STUDY).png --table $(STUDY).md

# The same study with approximate isometry after pruning as one more axis (same CSV; resumable).
study-isometry: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) examples/sweep.py --preset fashion-mnist-isometry --out $(STUDY).csv --jobs 2
	$(PY) examples/plot_sweep.py $(STUDY).csv --out $(STUDY)_isometry.png --table $(STUDY)_isometry.md

# Channel pruning at 2x, 4x and 8x fewer FLOPs (its own CSV), and the unstructured study's protocol at the
# parameter counts those keep (the study's CSV); resumable.
study-channels: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) examples/sweep.py --preset fashion-mnist-channels --out $(STUDY)_channels.csv --no-dense --jobs 2
	OMP_NUM_THREADS=1 $(PY) examples/sweep.py --preset fashion-mnist-equal-params --out $(STUDY).csv --no-dense --jobs 2
	$(PY) examples/plot_sweep.py $(STUDY)_channels.csv --no-reference --out $(STUDY)_channels.png --table $(STUDY)_channels.md

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache site
