# The two commands a newcomer needs: `make demo` and `make test`. Each installs what it needs first.
VENV := .venv
PY := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: install demo test lint unit bench clean lock down image

install:
	@scripts/install.sh

demo: install
	$(PY) -m pyztunnel demo

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache --no-logo

test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not system" $(PYTEST_ARGS)

bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

image:
	@scripts/image.sh

down: install
	$(PY) -m pyztunnel cluster down --all

lock:
	$(PY) -m pip freeze --exclude-editable | sed '1i # Pinned runtime and development dependencies (DESIGN §7), transitive ones included. Regenerate with make lock.' > requirements.lock

clean:
	rm -rf $(VENV) build src/*.egg-info .mypy_cache .ruff_cache
