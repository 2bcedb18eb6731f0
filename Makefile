# cnikit.cni — build, test, demo, bench. Every target that touches networking enters a private
# sandbox (tools/sandbox.sh: unshare --net --mount --uts) itself.
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python3
BASE_PYTHON ?= $(shell $(ROOT)/tools/find-python.sh)
DEST ?= $(ROOT)/build/bin
PYTEST_ARGS ?=
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all deps venv plugins test unit imports demo bench bench-cluster bench-cluster-scale lint sanity sanity-venvs clean

all: plugins

# Debian packages (Go reference plugins, podman, containerd, busybox, nft/iptables, dnsmasq), when missing.
deps:
	tools/install-deps.sh

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements.txt requirements-dev.txt
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

# Write every CNI executable (bridge, macvlan, host-local, ...) into $(DEST): the compiled exec relay built
# with $(CC) (make's default: cc), or with `make plugins CC=` the dash + Python launchers.
plugins: venv
	$(PY) -c 'import sys; sys.path.insert(0, "$(ROOT)/plugins/module_utils"); from cni.node.main import main; sys.exit(main(["cnikit", "install-plugins", "$(DEST)", "--python", "$(PY)", "--cc", "$(CC)"]))'

unit: venv
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

# The engine's import contracts (.importlinter: layers, pyroute2 only in net/, no cycles); also a unit
# test (tests/unit/test_import_contracts.py), so `make unit` and `make test` fail on a violation.
imports: venv
	cd plugins/module_utils && PYTHONPATH=. $(VENV)/bin/lint-imports --config $(ROOT)/.importlinter

# ansible-test's sanity virtualenvs (tests/ansible/test_packaging.py), made once outside the sandbox:
# inside it there is no network to install them from.
sanity-venvs: build/ansible-test-home/.stamp

build/ansible-test-home/.stamp: $(VENV)/.stamp
	$(PY) tests/ansible/test_packaging.py prime
	touch $@

# ansible-test sanity and ansible-lint (production profile) on the collection.
sanity: venv sanity-venvs
	$(PY) -m pytest -q -p no:cacheprovider tests/ansible/test_packaging.py -k sanity $(PYTEST_ARGS)

lint: venv
	$(PY) -m pytest -q -p no:cacheprovider tests/ansible/test_packaging.py -k lint $(PYTEST_ARGS)

# The whole suite, inside the sandbox.
test: deps venv plugins sanity-venvs
	tools/sandbox.sh $(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)

demo: deps venv plugins
	tools/sandbox.sh $(PY) -m tools.demo

bench: deps venv plugins
	tools/sandbox.sh $(PY) -m bench.run

# The cluster IPAM under load (docs/cluster-state.md): 500 parallel ADDs over 3 lab nodes against
# a real etcd, next to host-local and Go's host-local; and the simulated clients of the scaling model.
bench-cluster: deps venv plugins
	tools/sandbox.sh $(PY) -m bench.cluster_load --count 500 --concurrency 8 --modes agent
	tools/sandbox.sh $(PY) -m bench.cluster_load --count 60 --concurrency 4 --modes exec

bench-cluster-scale: deps venv
	tools/sandbox.sh $(PY) -m bench.cluster_scale

clean:
	rm -rf build .venv
