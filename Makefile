# Two commands on a fresh machine:  make run   (the page on :7860, the API on :7871)
#                                   make test  (lint, then the offline test suite)
# Each creates .venv and installs what it needs the first time: a CPU build of torch when the
# machine has no NVIDIA GPU (override with TORCH_SPEC="torch==..."), then requirements*.txt.
# Extra arguments go through ARGS, e.g.  make run ARGS="--host 0.0.0.0"  or  make test ARGS="-k api".

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= $(shell if command -v nvidia-smi >/dev/null 2>&1 || [ "$$(uname)" = Darwin ]; \
	then echo torch; else echo "torch==2.13.0+cpu --extra-index-url https://download.pytorch.org/whl/cpu"; fi)

.PHONY: run test screenshot

run: $(VENV)/.runtime
	$(BIN)/python webui.py $(ARGS)

test: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(ARGS)

# The README's picture: the real default page, made on purpose (tests never rewrite it).
screenshot: $(VENV)/.dev
	UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest tests/test_browser.py -k default_page

$(VENV)/.runtime: requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@
