# dwsbridge: `make demo` and `make test` do all set-up themselves on a fresh Debian 12 machine.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Debian's interpreter: readable by every user (jobs run the copyoffload client as themselves).
BASE_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
DEBS := python3-venv slurmctld slurmd slurm-client munge curl e2fsprogs mount lua-socket lua5.1
# flux-core's build dependencies (DESIGN Part 8) and what the real-Flux tests run with (python3-jwt,
# python3-cryptography: the service runs under `flux python`, Debian's interpreter).
FLUX_DEBS := autoconf automake libtool make pkg-config libc6-dev libzmq3-dev uuid-dev libjansson-dev \
  liblz4-dev libarchive-dev libhwloc-dev libsqlite3-dev lua5.1 liblua5.1-0-dev lua-posix python3-dev \
  python3-cffi python3-ply python3-setuptools python3-yaml libsodium-dev libmunge-dev jq \
  python3-jwt python3-cryptography

.PHONY: install debs flux test lint typecheck unit demo bench clean proto

install: debs $(VENV)/.installed flux

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# Compiled once here: hook, mover and server processes (some as job users, who cannot write
	# __pycache__) would otherwise compile the project's modules at every start.
	$(PY) -m compileall -q dwsbridge copyoffload nnfdm
	touch $@

# Debian packages for the real-Slurm tests and kubectl; only when root, only what is missing.
debs:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(DEBS) $(FLUX_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	  fi; \
	fi

# A real flux-core for the Flux tests: reused from the cache (/var/cache/dwsbridge, or DWSB_FLUX_CACHE,
# or FLUX_PREFIX), else built from ../shared/vendor/flux-core-0.88.0.tar.gz (or DWSB_FLUX_TARBALL); only
# when root. Without a tarball the Flux tests skip (and .ci/run fails).
flux: $(VENV)/.installed
	@if [ "$$(id -u)" = 0 ]; then \
	  $(PY) -m testenv.flux_build --check >/dev/null 2>&1 || $(PY) -m testenv.flux_build || test $$? = 3; \
	fi

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest -q

test: install lint typecheck unit

demo: install
	bash examples/demo.sh

bench: install
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench.run

# Regenerate nnf-dm's gRPC code after editing nnfdm/api/datamovement.proto (the output is committed).
proto: install
	PATH=$(abspath $(VENV))/bin:$$PATH $(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
	  --grpc_python_out=. --grpclib_python_out=. nnfdm/api/datamovement.proto

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
