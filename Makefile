# Two entry points for a fresh machine (Python 3.11, pip, make):
#   make demo   run the client against a local demo server, until Ctrl-C
#   make test   lint, the whole test suite, and the docs (warnings are errors)
# and one for CI: make test-lowest runs the suite against the lowest dependency
# versions setup.cfg allows (pinned in constraints-lowest.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
LOWEST_VENV ?= .venv-lowest
LOWEST_BIN := $(LOWEST_VENV)/bin

.PHONY: install demo test test-lowest lint docs bench clean

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

# The same suite as make test, in its own virtualenv, with every runtime
# dependency at the floor setup.cfg declares: a floor nothing tests is a guess.
# The test tools (pytest, hypothesis, ruff) need not be lowest.
$(LOWEST_BIN)/python:
	$(PYTHON) -m venv $(LOWEST_VENV)

test-lowest: $(LOWEST_BIN)/python
	$(LOWEST_BIN)/python -m pip install --quiet --disable-pip-version-check \
		-c constraints-lowest.txt ".[test]"
	$(LOWEST_BIN)/python -m pytest -q -p no:cacheprovider tests

bench: install
	$(BIN)/python benchmarks/pushes.py

clean:
	rm -rf $(VENV) $(LOWEST_VENV) build docs/_build *.egg-info _trial_temp
