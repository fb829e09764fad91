# One entry point for people and CI. Every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROTO_VENV := .venv-proto
# On this project's machines torch 2.13.0 is a CPU build on local disk; elsewhere pick the build
# you want, e.g. TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu'.
TORCH_SPEC ?= torch==2.13.0
# grpcio-tools 1.64 emits protobuf 5.26 gencode: the stubs then run on protobuf 5.26 to 6.x.
GRPC_TOOLS := grpcio-tools==1.64.3
PYTEST_ARGS ?=

.PHONY: install test test-quick lint proto proto-env etcd browser kubectl demo bench clean

install: $(BIN)/.installed
	@echo "mesh is installed in $(VENV)/: run $(BIN)/mesh, or put it on PATH with: . $(BIN)/activate"

# Debian's etcd-server, for the cluster tests (installed when missing and we are root).
etcd:
	@command -v etcd >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server; \
	  else echo "etcd is missing: install Debian's etcd-server (or an etcd 3.4+ binary on PATH)"; exit 1; fi; }
	@# iproute2's `ip` for the partition tests (network namespaces), util-linux's setpriv for
	@# `mesh up`'s children dying with it.
	@command -v ip >/dev/null && command -v setpriv >/dev/null || { 	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then 	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 util-linux; 	  else echo "ip or setpriv is missing: install Debian's iproute2 and util-linux"; exit 1; fi; }

# Debian's chromium and its chromedriver, for the capacity page's browser test (as etcd).
browser:
	@{ command -v chromium >/dev/null && command -v chromedriver >/dev/null; } || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "chromium is missing: install Debian's chromium and chromium-driver"; exit 1; fi; }

# kubectl (with kustomize v5), for rendering the deploy/ overlays in the tests: the `kubectl`
# package where the package sources have it (Debian's own kubernetes-client is 1.20, too old).
# Missing and not installable is an error here, never a skipped test.
kubectl:
	@command -v kubectl >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubectl; \
	  else echo "kubectl is missing: install a kubectl 1.27+ (kustomize v5) on PATH"; exit 1; fi; }

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e '.[all,test]'
	touch $@

proto-env: $(PROTO_VENV)/.installed

$(PROTO_VENV)/.installed:
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/pip install -q '$(GRPC_TOOLS)'
	touch $@

# Regenerate mesh/gen/ from proto/ (commit the result; tests fail on stale stubs).
proto: proto-env
	$(PROTO_VENV)/bin/python scripts/gen_proto.py

lint: install
	$(BIN)/ruff check mesh tests bench scripts
	$(BIN)/ruff format --check mesh tests bench scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite, lint and types included.
test: install proto-env etcd browser kubectl lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The quick subset: no end-to-end processes, no large payloads.
test-quick: install proto-env etcd browser kubectl
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Start a pod with example models, query it with tritonclient, print what it holds.
demo: install etcd
	$(BIN)/python scripts/demo.py

bench: install
	$(BIN)/python bench/pod.py

clean:
	rm -rf $(VENV) $(PROTO_VENV) .mypy_cache .pytest_cache .ruff_cache demo-models
