# Every target creates the virtual environment first, so `make demo` and `make test` work on a fresh clone.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
TORCH   := torch==2.13.0

.PHONY: venv demo demo-quick demo-fashion-mnist demo-fashion-cnn test test-fast lint docs bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"  # dev = all extras (plots, data, progress) + test
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/valleys demo --out runs/demo --overwrite

demo-quick: $(STAMP)
	$(BIN)/valleys demo --quick --out runs/demo-quick --overwrite

demo-fashion-mnist: $(STAMP)  # needs the Fashion-MNIST files (Debian package dataset-fashion-mnist)
	$(BIN)/valleys demo --preset fashion-mnist --out runs/demo-fashion-mnist --overwrite

demo-fashion-cnn: $(STAMP)  # the BatchNorm CNN with augmentation, then its semi-supervised study (Fashion-MNIST files)
	$(BIN)/valleys demo --preset fashion-cnn --out runs/demo-fashion-cnn --overwrite
	$(BIN)/valleys semisup --preset fashion-cnn --seeds 0 1 2 --out runs/semisup-fashion-cnn --overwrite

# Two worker processes of one thread each (pytest-xdist): on two cores this beats one process of two threads,
# since most tests are short and bound by Python; TEST_JOBS=0 runs them in this process.
TEST_JOBS ?= 2

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n $(TEST_JOBS)

# The fast tier: everything except the tests marked slow (end-to-end CLI runs and training).
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest tests -n $(TEST_JOBS) -m "not slow"

# The habits: lint and format (ruff), types (mypy; zero errors outside tools/mypy_baseline.txt), layering.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/check_mypy.py
	$(BIN)/python tools/check_imports.py

# The documentation site (mkdocs-material, offline) into site/; the CLI page is regenerated from the parser first.
docs: $(STAMP)
	$(BIN)/python tools/gen_cli_docs.py docs/cli.md
	$(BIN)/mkdocs build --strict --site-dir site

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_swa.py

clean:
	rm -rf $(VENV) runs site
