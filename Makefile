# make test / make demo work on a fresh clone: they create .venv and install everything once.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PURELIB = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

.PHONY: install test demo clean-venv

install: $(STAMP)

$(STAMP): requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==26.3
	$(PY) -m pip install -q -r requirements.txt
	# detectron2's Python code from sal-detectron2 (a cp310 wheel); its _C is ignored on 3.11.
	$(PY) -m pip install -q --no-deps --only-binary=:all: --python-version 3.10 \
		--implementation cp --upgrade --target "$(PURELIB)" sal-detectron2==0.7.2
	# The wheel also ships a top-level `tools` package that would shadow ours.
	rm -rf "$(PURELIB)/tools"
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

STYLED := randwire_d2 tools tests benchmarks setup.py

test: $(STAMP)
	$(VENV)/bin/black -l 100 --check -q $(STYLED)
	$(VENV)/bin/isort --check -q $(STYLED)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/demo.py

clean-venv:
	rm -rf $(VENV)
