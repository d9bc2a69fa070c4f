# Two commands on a fresh machine: `make demo` and `make test`. Every target is idempotent.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test demo bench lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
	$(BIN)/python -m pip install -q -e '.[dev]' 2>&1 | grep -v -e "is ignored" -e "^ *$$" || true
	$(BIN)/python -m xds_control.admin.proto >/dev/null   # admin API stubs from admin.proto (grpcio-tools)
	@$(BIN)/python -c "import xds_control, envoy.service.discovery.v3.ads_pb2, grpc, pytest" \
		|| (echo "make venv: the install failed (see above)"; exit 1)
	@touch $(STAMP)

lint: venv
	$(BIN)/lint-imports
	$(BIN)/ruff check xds_control tests bench eval
	$(BIN)/mypy

test: venv lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: venv
	$(BIN)/xds-control demo

# Fault injection, full forms (make test runs the short ones); figures -> out/faults/*.json -> RELIABILITY.md.
.PHONY: faults
faults: venv
	@rm -rf out/faults
	XDS_FAULTS_FULL=1 XDS_FAULTS_OUT=out/faults $(BIN)/python -m pytest -q tests/faults $(PYTEST_ARGS); \
		rc=$$?; $(BIN)/python tests/faults/report.py out/faults RELIABILITY.md; exit $$rc

bench: venv
	$(BIN)/python bench/bench_fanout.py
	$(BIN)/python bench/bench_envoy_push.py
	$(BIN)/python bench/bench_decide.py
	$(BIN)/python bench/bench_sim.py
	$(BIN)/python bench/bench_config_reload.py --compare

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .benchmarks build *.egg-info
