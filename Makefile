# Two commands do everything on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export HUABU_HOME ?= $(CURDIR)/.huabu

.PHONY: run test install bench lint clean

install: $(STAMP)

# torch first, alone and pinned: it must resolve to the CPU/CUDA wheel for this machine before
# anything else can ask for a different one.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

# Until the HTTP service lands (issue #3), `make run` proves the engine end to end.
run: $(STAMP)
	$(BIN)/huabu models demo --if-missing
	$(BIN)/huabu models list
	$(BIN)/huabu generate "a red fox in the snow" --size 256x256 --steps 20 --seed 42 -o out/

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/engine.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

clean:
	rm -rf $(VENV) .pytest_cache
