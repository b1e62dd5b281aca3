# Two entry points for a fresh machine (Python 3.11, pip, make):
#   make demo   run the client against a local demo server, until Ctrl-C
#   make test   lint, the whole test suite, and the docs (warnings are errors)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint docs bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A regular (not editable) install: twistd finds plugins only in an installed
# twisted/plugins directory, and this is what users get.
install: $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check ".[test,docs]"

demo: install
	$(BIN)/twistd --nodaemon --pidfile= yadiskpush --demo

lint: install
	$(BIN)/ruff check .

docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider tests
	$(MAKE) --no-print-directory docs

bench: install
	$(BIN)/python benchmarks/pushes.py

clean:
	rm -rf $(VENV) build docs/_build *.egg-info _trial_temp
