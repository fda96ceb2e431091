# Two commands on a fresh machine (see README):
#   make test   create .venv if missing, install rtlib with its test extras, run pytest
#   make book   create .venv if missing, install rtlib with its book extras, build the book
# and one that remakes the committed study (hours on two CPU cores; resumable):
#   make study  compute what study/ lacks and rewrite study/manifest.json
# Installs are redone only when pyproject.toml changes (stamp files in .venv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision must come from one install (DESIGN 5): a lone CPU torch breaks
# torchvision, which timm imports. Override for another platform, e.g.
#   make test TORCH="torch==2.9.1 torchvision==0.24.1"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=
# Notebook parameters for `make book`, e.g. PARAMS="-p eps 0.0078 -p steps 400"
PARAMS      ?=

.PHONY: test book study clean-book help browser

help:
	@echo "make test   install (into $(VENV)) and run the test suite"
	@echo "make book   install (into $(VENV)) and build the book into _build/html"
	@echo "make study  install (into $(VENV)) and compute what the committed study lacks"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch-installed: | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(TORCH)
	touch $@

$(VENV)/.test-installed: pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

$(VENV)/.book-installed: pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install --quiet -e '.[test,book]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

# The book test reads the built smoke book in Debian's Chromium (through chromedriver); the
# torch.compile test needs a C++ compiler (inductor's CPU backend).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v g++ >/dev/null; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium chromium-driver g++; \
	fi

test: $(VENV)/.test-installed browser
	$(BIN)/python -m pytest -q -n auto --dist loadfile --durations=15 $(PYTEST_ARGS)

book: $(VENV)/.book-installed
	$(BIN)/python -m rtlib book $(PARAMS)

# Options for `make study`, e.g. STUDY_ARGS="--workers 1 --device cuda"
STUDY_ARGS ?=

study: $(VENV)/.test-installed
	$(BIN)/python -m rtlib study $(STUDY_ARGS)

clean-book:
	rm -rf _build book/executed
