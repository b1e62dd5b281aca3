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

.PHONY: install demo test test-lowest lint docs bench bench-venvs bench-smoke bench-zlib \
	clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# A regular (not editable) install: twistd finds plugins only in an installed
# twisted/plugins directory, and this is what users get. It is made again only
# when a file it is built from changed (the stamp is written last, so a failed
# install is tried again): make test installs once, not once per step.
SOURCES := setup.cfg pyproject.toml README.md $(shell find yadiskpush twisted -name '*.py' 2>/dev/null)

$(VENV)/installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check ".[test,docs]"
	rm -rf build
	touch $@

install: $(VENV)/installed

demo: install
	$(BIN)/twistd --nodaemon --pidfile= yadiskpush --demo

lint: install
	$(BIN)/ruff check --no-cache .

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
	rm -rf build
	$(LOWEST_BIN)/python -m pytest -q -p no:cacheprovider tests

# make bench: yadiskpush among its peers (the harness in benchmarks/peers/) on
# one stand-in server, each figure of issue 10's table next to its target, with
# the machine and the versions; about 15 minutes on 2 cores. The peers'
# virtualenvs, results and work files go to $(BENCH_DIR).
#   BENCH_SIZE=full|small|smoke  how much to run (smoke: seconds, run by CI)
#   BENCH_PEERS=DIR              another copy of the harness
#   BENCH_ARGS='--only idle'     more options: python3 benchmarks/run.py --help
# Nothing asserts timing: the status says only whether every client ran.
BENCH_DIR ?= .bench
BENCH_PEERS ?= benchmarks/peers
BENCH_SIZE ?= full
BENCH_ARGS ?=
BENCH_PIP := -m pip install --quiet --disable-pip-version-check

# Each peer's virtualenv is made once (the stamp is written last, so a failed
# install is tried again).
$(BENCH_DIR)/venv-slixmpp/installed:
	rm -rf $(BENCH_DIR)/venv-slixmpp
	$(PYTHON) -m venv $(BENCH_DIR)/venv-slixmpp
	$(BENCH_DIR)/venv-slixmpp/bin/python $(BENCH_PIP) "slixmpp==1.17.0"
	touch $@

$(BENCH_DIR)/venv-twisted/installed:
	rm -rf $(BENCH_DIR)/venv-twisted
	$(PYTHON) -m venv $(BENCH_DIR)/venv-twisted
	$(BENCH_DIR)/venv-twisted/bin/python $(BENCH_PIP) "twisted==26.10.0" \
		pyopenssl service-identity "wokkel==18.0.0"
	touch $@

$(BENCH_DIR)/venv-yadiskpush/bin/python:
	$(PYTHON) -m venv $(BENCH_DIR)/venv-yadiskpush

# yadiskpush as users get it: a regular (not editable) install of this tree,
# made again at every run (pip reinstalls a directory every time), so that
# the figures are of the code in front of you.
bench-venvs: $(BENCH_DIR)/venv-slixmpp/installed $(BENCH_DIR)/venv-twisted/installed \
		$(BENCH_DIR)/venv-yadiskpush/bin/python
	$(BENCH_DIR)/venv-yadiskpush/bin/python $(BENCH_PIP) .
	rm -rf build

bench: bench-venvs
	$(PYTHON) benchmarks/run.py --size $(BENCH_SIZE) --peers $(BENCH_PEERS) \
		--bench-dir $(BENCH_DIR) $(BENCH_ARGS)

bench-smoke:
	$(MAKE) --no-print-directory bench BENCH_SIZE=smoke

# The older benchmark: push round trip, burst and memory, plain against zlib.
bench-zlib: install
	$(BIN)/python benchmarks/pushes.py

# Everything the targets above make; the tests leave nothing behind themselves.
clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(BENCH_DIR) build dist docs/_build *.egg-info \
		_trial_temp* tests.* .hypothesis .ruff_cache .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
