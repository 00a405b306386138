# cmmc: set-up, tests, the book, the browser check, CI.
#   make setup           .venv with requirements.txt and the package (the README's install step)
#   make book            set up .venv if needed, then jupyter-book build book/ (records mode:
#                        missing or stale notebooks are executed first), warnings as errors
#   make test            set up .venv if needed, ruff check + ruff format --check + the book's
#                        pages linted as Python (scripts/lint_pages.py) + the fast
#                        tier of pytest (no test marked slow or records: minutes on 2 cores)
#   make check           the same lint, then the whole suite (slow tests and record audits too)
#   make book MODE=full  the full reproduction (writes results/; PROFILE= is the former name)
#   make book BOOK_ARGS="--only autoencoders -p dataset BDGP"    see scripts/build_book.py
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
MODE    ?= $(or $(PROFILE),records)
JOBS    ?= 1
BOOK_ARGS ?=
STAMP   := $(VENV)/.cmmc-installed

.PHONY: setup test check lint readme book book-only check-site architecture ci clean

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
	$(BIN)/python scripts/build_book.py --mode $(MODE) --jobs $(JOBS) $(BOOK_ARGS)

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
