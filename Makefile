# `make test` and `make demo` work on a fresh clone: they create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PLUGINS := $(wildcard plugins/*)
STAMP := $(VENV)/.installed

.PHONY: test demo bench sweep docs install clean

$(STAMP): pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGINS),-e '$(p)[test]')
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/lwd-rules explain examples/finetune-convnext.yaml --model timm:convnext_atto

bench: $(STAMP)
	$(PY) benchmarks/bench.py

sweep: $(STAMP)
	$(PY) benchmarks/timm_sweep.py

docs: $(STAMP)
	$(PY) -m lwd_rules.docgen docs/reference.md

clean:
	rm -rf $(VENV) build *.egg-info
