# cmmc: set-up, tests, the book, the browser check, CI.
#   make setup           .venv with requirements.txt and the package (the README's install step)
#   make book            set up .venv if needed, then jupyter-book build book/ (records profile:
#                        missing or stale notebooks are executed first), warnings as errors
#   make test            set up .venv if needed, ruff check + ruff format --check + the book's
#                        pages linted as Python (scripts/lint_pages.py) + the fast
#                        tier of pytest (no test marked slow or records: minutes on 2 cores)
#   make check           the same lint, then the whole suite (slow tests and record audits too)
#   PROFILE=paper make book    the full reproduction (writes results/)
#   make book BOOK_ARGS="--only autoencoders -p dataset BDGP"    see scripts/build_book.py
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
PROFILE ?= records
JOBS    ?= 1
BOOK_ARGS ?=
STAMP   := $(VENV)/.cmmc-installed

.PHONY: setup test check lint readme book book-only check-site architecture ci clean devdata

setup: $(STAMP)

# torch is pinned to 2.13.0 in requirements.txt. Where pip would fetch a CUDA build, set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu for the CPU-only wheel (2.13.0+cpu).
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet -e . --no-deps
	$(BIN)/python -c "import torch, sys; print('torch', torch.__version__); sys.exit('a CUDA build of torch was installed; see the Makefile' if torch.version.cuda else 0)"
	touch $@

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/lint_pages.py

test: lint
	$(BIN)/python -m pytest -m "not slow and not records"

check: lint
	$(BIN)/python -m pytest

# the README's findings, computed from the committed records (tests/test_readme.py checks them)
readme: setup
	$(BIN)/python scripts/readme_findings.py

book: setup
	$(BIN)/python scripts/build_book.py --profile $(PROFILE) --jobs $(JOBS) $(BOOK_ARGS)

book-only: setup
	$(BIN)/python scripts/build_book.py --skip-execute $(BOOK_ARGS)

# the built site from the file system, then served over HTTP under /cmmc/ (as on GitHub Pages)
check-site: setup
	$(BIN)/python scripts/check_site.py
	$(BIN)/python scripts/check_site.py --serve /cmmc/

architecture: setup
	$(BIN)/python scripts/draw_architecture.py

ci:
	bash .ci/run

clean:
	rm -rf book/_build book/*.ipynb

# The data files a GPU machine without network access needs: every file of the data sets in
# DATASETS (default: those of the experiment grids), into .devdata/ (git-ignored; read by
# scripts/device_run.sh). The tree and .devdata together must stay under CARRY_MIB, the size of
# the copy the GPU machine accepts: as results/ grows, copy fewer data sets per job
# (device_grid.py skips the others).
CARRY_MIB ?= 64
DATASETS ?= MNIST-USPS BDGP Fashion Hdigit Prokaryotic Synthetic3d Scene-15 LandUse-21 HW Reuters-1200 CCV
devdata: setup
	rm -rf .devdata && mkdir -p .devdata
	$(BIN)/python -c "import sys; from cmmc.data import copy_data_files; copy_data_files('.devdata', sys.argv[1:])" $(DATASETS)
	git rev-parse HEAD > .devdata/COMMIT
	git diff --quiet HEAD -- cmmc && echo 0 > .devdata/DIRTY || echo 1 > .devdata/DIRTY
	du -sh .devdata
	@tree=$$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1); data=$$(du -sb .devdata | cut -f1); \
	total=$$(( (tree + data) / 1048576 )); \
	echo "copy: tracked tree + .devdata = $$total MiB of $(CARRY_MIB) MiB"; \
	if [ $$total -ge $$(( $(CARRY_MIB) - 1 )) ]; then echo "too big: choose fewer DATASETS" >&2; exit 1; fi
