# fineplat: `make demo` runs the whole flow on embedded defaults; `make test` runs the checks.
# Both create or refresh .venv by themselves (torch==2.13.0 CPU first, then the pinned set).
PY := .venv/bin/python
STAMP := .venv/.installed
export FINEPLAT_HOME ?= $(CURDIR)/.fineplat
export DAGSTER_HOME ?= $(FINEPLAT_HOME)/dagster_home

.PHONY: install demo test lint ui bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip wheel
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev,quant,deepspeed]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m fineplat_assets.demo

ui: $(STAMP)
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp dagster.yaml $(DAGSTER_HOME)/dagster.yaml
	.venv/bin/dagster dev -w workspace.yaml

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy fineplat

test: $(STAMP) lint
	mkdir -p $(DAGSTER_HOME)
	.venv/bin/dagster definitions validate -w workspace.yaml
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for b in bench/*_bench.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf .fineplat
