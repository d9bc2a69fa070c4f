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

# -rs: every skipped test is listed with its reason at the end of the run.
test: venv lint prometheus-bin
	$(BIN)/python -m pytest -q -rs $(PYTEST_ARGS)

# The signal-source tests run a real Prometheus (Debian's package). Installed here when it can be (root and
# apt-get, as .ci/run does); otherwise the tests that need it are skipped and listed with the reason.
.PHONY: prometheus-bin
prometheus-bin:
	@if ! command -v prometheus >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: installing Debian's prometheus package (apt-get install --no-install-recommends prometheus)"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
	      || echo "make: installing prometheus failed: the tests that need it are skipped (listed at the end)"; \
	    (systemctl stop prometheus || service prometheus stop) >/dev/null 2>&1 || true; \
	  else \
	    echo "make: prometheus is not installed and cannot be here (needs root and apt-get):" \
	         "the tests that need it are skipped (listed at the end with the reason)"; \
	  fi; \
	fi

# helm, for the chart tests (tests/e2e/test_helm_chart.py calls this target): built from Go modules into
# .cache/bin (git-ignored) at the version pinned here; about 2 minutes on 2 cores the first time (module downloads included).
HELM_VERSION := v3.16.4
HELM         := .cache/bin/helm
.PHONY: helm-bin
helm-bin:
	@{ test -x $(HELM) && test "$$(cat $(HELM).version 2>/dev/null)" = $(HELM_VERSION); } || { \
	  command -v go >/dev/null 2>&1 || { echo "make helm-bin: needs a Go toolchain (go on PATH)"; exit 1; }; \
	  echo "make helm-bin: building helm $(HELM_VERSION) from Go modules into .cache/bin"; \
	  mkdir -p .cache/bin && rm -f $(HELM).version \
	  && GOFLAGS=-mod=mod GOBIN=$(CURDIR)/.cache/bin go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION) \
	  && echo $(HELM_VERSION) > $(HELM).version; }

# A real Kubernetes control plane for tests/k8s: kube-apiserver, kube-controller-manager, kube-scheduler (from the
# k8s.io/kubernetes module) and kwok (sigs.k8s.io/kwok) built into .cache/k8s/bin (git-ignored) at the versions pinned
# in tests/k8s/build/go.mod, and Debian's etcd-server. The first build takes about 5 minutes on 2 cores.
.PHONY: k8s-bin test-k8s
k8s-bin:
	@bash tests/k8s/build/build.sh

# Builds what is missing, prints the versions, and runs tests/k8s in a private network namespace (tests/k8s/run.sh).
# `make test` skips those tests (they say why) unless run this way.
test-k8s: venv
	@bash tests/k8s/run.sh $(PYTEST_ARGS)

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
	rm -rf $(VENV) .cache .pytest_cache .hypothesis .benchmarks build *.egg-info
