# Two commands do everything on a fresh machine with Python 3.11: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
export HUABU_HOME ?= $(CURDIR)/.huabu

.PHONY: run test test-fast fuzz install bench lint clean

install: $(STAMP)

# torch first, alone and pinned: it must resolve to the CPU/CUDA wheel for this machine before
# anything else can ask for a different one. mediapipe (the mediapipe_face preprocessor) and
# spandrel (model upscalers) last, without their declared dependencies: what they need is in
# pyproject.toml (see there).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(BIN)/pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/pip install --disable-pip-version-check -q -e '.[test]'
	$(BIN)/pip install --disable-pip-version-check -q --no-deps mediapipe==0.10.21
	$(BIN)/pip install --disable-pip-version-check -q --no-deps spandrel==0.4.2
	touch $(STAMP)

# Serve on HOST:PORT with a worker inside; build the demo model if the library has no checkpoint.
# Bound to loopback, requests without credentials are accepted (as one anonymous user) unless
# HUABU_ANONYMOUS says otherwise; on any other address they need an API key.
LOOPBACK := $(filter 127.0.0.1 localhost ::1,$(HOST))
run: $(STAMP)
	$(BIN)/huabu models demo --if-missing
	HUABU_ANONYMOUS=$${HUABU_ANONYMOUS:-$(if $(LOOPBACK),true,false)} \
		$(BIN)/huabu serve --host $(HOST) --port $(PORT)

# The browser tests drive Debian's chromium (Playwright's own browser download needs the
# internet), with a CJK font so that the Chinese page's screenshots show its words; installed
# from apt when missing (as root, or through sudo).
CHROMIUM := /usr/bin/chromium
CJK_FONT := /usr/share/fonts/truetype/wqy/wqy-zenhei.ttc
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
$(CHROMIUM) $(CJK_FONT):
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium fonts-wqy-zenhei

test: $(STAMP) $(CHROMIUM) $(CJK_FONT)
	$(BIN)/python -m pytest -q

# The edit-test loop: no shared server, nothing marked slow.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not server"

# Deeper schema-driven fuzzing than make test's: 200 examples per operation and every check
# schemathesis has but positive_data_acceptance (see tests/test_fuzz.py; about 6 minutes).
fuzz: $(STAMP)
	HUABU_FUZZ_EXAMPLES=$${HUABU_FUZZ_EXAMPLES:-200} HUABU_FUZZ_CHECKS=all $(BIN)/python -m pytest -q tests/test_fuzz.py

bench: $(STAMP)
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/service.py
	$(BIN)/python bench/fleet.py
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/speed.py
	$(BIN)/python bench/annotators.py
	$(BIN)/python bench/abuse.py
	$(BIN)/python bench/prompts.py
	$(BIN)/python bench/upscalers.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache
