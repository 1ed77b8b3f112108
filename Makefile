# The two quick-start commands: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
MINUTES ?= 30

.PHONY: demo test lint typecheck deploy-checks unit bench bench-scale soak

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/reconciler demo

lint: $(VENV)/.installed
	$(BIN)/ruff check .

typecheck: $(VENV)/.installed
	$(BIN)/mypy reconciler

deploy-checks: $(VENV)/.installed
	bash .ci/deploy-checks.sh

unit: $(VENV)/.installed
	$(BIN)/pytest -q

test: lint typecheck deploy-checks unit

bench: $(VENV)/.installed
	$(PY) benchmarks/bench_pass.py --instances 1000
	$(PY) benchmarks/bench_pass.py --instances 1000 --probes
	$(PY) benchmarks/bench_pass.py --instances 10000
	$(PY) benchmarks/bench_pass.py --instances 10000 --probes
	$(PY) benchmarks/bench_pass.py --deletions 1000 --latency 0.02
	$(PY) benchmarks/bench_read.py
	$(PY) benchmarks/bench_consumer.py
	$(PY) benchmarks/bench_hints.py --instances 1000
	$(PY) benchmarks/bench_hints.py --instances 10000

bench-scale: $(VENV)/.installed
	$(PY) benchmarks/bench_scale.py

# Not part of `make test`: two replicas under churn and faults for $(MINUTES) minutes, then checks.
soak: $(VENV)/.installed
	$(PY) benchmarks/soak.py --minutes $(MINUTES)
