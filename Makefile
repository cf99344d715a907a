# Everything a fresh machine needs: `make demo` runs the main job, `make test` the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast cluster-test lint docs bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 is a CPU build here; a loose pin pulls CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,docs]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raylrec demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: everything that runs without starting Ray or killing a process (units, configs, plain-process
# training, DeepSpeed engines in-process); the full suite above is what CI runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not ray and not slow and not kill"

# A real 4-node Ray cluster on this machine, the README's cluster workflow submitted to it, a node
# lost mid-training (also part of `make test`; this runs it alone, printing placement and timings).
cluster-test: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/test_cluster.py

lint: $(STAMP)
	$(BIN)/ruff check .

# The docs site under site/; a broken link or a page missing from the nav fails the build.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/python bench/data_prepare.py

clean:
	rm -rf $(VENV) .raylrec-cache
