# cnikit.cni — build, test, demo, bench. Every target that touches networking enters a private
# sandbox (tools/sandbox.sh: unshare --net --mount --uts) itself.
SHELL := /bin/bash
ROOT := $(abspath .)
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python3
BASE_PYTHON ?= $(shell $(ROOT)/tools/find-python.sh)
DEST ?= $(ROOT)/build/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=  # --ssh: reach the lab nodes over SSH (user ops, sudo) instead of nsenter
export PATH := $(VENV)/bin:$(PATH)

.PHONY: all deps venv plugins test test-fleet test-kernel kernel-image test-routed unit imports demo overlay-scale bench bench-cluster bench-cluster-scale lint sanity sanity-venvs clean

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

# The whole suite, inside the sandbox (the SSH lab fleet's install, coexistence, reset, upgrade under
# load, rollback and reboot included); then the stock-kernel part in a qemu guest when qemu is there.
test: deps venv plugins sanity-venvs
	tools/sandbox.sh $(PY) -m pytest -q -p no:cacheprovider tests $(PYTEST_ARGS)
	@if command -v qemu-system-x86_64 >/dev/null; then $(MAKE) --no-print-directory test-kernel; \
	else echo "make test: no qemu-system-x86_64, stock-kernel tests not run (make deps installs it)"; fi

# The rollout to an SSH-reached, air-gapped lab fleet: install, coexistence, reset, upgrade under load,
# rollback, reboot (tests/rollout/test_fleet*.py).
test-fleet: deps venv plugins
	tools/sandbox.sh $(PY) -m pytest -q -p no:cacheprovider tests/rollout/test_fleet.py tests/rollout/test_fleet_lifecycle.py $(PYTEST_ARGS)

# The tests that need link kinds this machine's kernel lacks (ipvlan, vlan, dummy, vrf, bridge VLAN
# filtering), on Debian's stock kernel in a qemu guest (tools/stock_kernel.py; docs/lab.md).
# kernel-image downloads the kernel .deb, so it runs outside the sandbox (which has no network).
KERNEL_TESTS ?= tests/integration/test_plugins_netlink.py tests/differential/test_diff_kernel.py
KERNEL_TIMEOUT ?= 900
kernel-image:
	$(PY) tools/stock_kernel.py prepare

test-kernel: venv plugins kernel-image
	$(PY) tools/stock_kernel.py run --timeout $(KERNEL_TIMEOUT) -- \
	  tools/sandbox.sh $(PY) -m pytest -q -p no:cacheprovider -rs --durations=10 $(KERNEL_TESTS) $(PYTEST_ARGS)

# The routed pod network's whole lab proof (make test runs it without the node-added and
# route-reflector rollouts, two more site.yml runs).
test-routed: deps venv plugins
	tools/sandbox.sh env CNIKIT_ROUTED_FULL=1 $(PY) -m pytest -q -p no:cacheprovider tests/integration/test_plugins_routed.py tests/rollout/test_routed.py $(PYTEST_ARGS)

# `make demo NET=overlay` shows the flannel-style overlay instead of the seed's macvlan network.
demo: deps venv plugins
	tools/sandbox.sh $(PY) -m tools.demo $(if $(NET),--net $(NET)) $(DEMO_ARGS)

# The overlay on a 50-node lab: exact per-node entry counts, join/leave and reconcile times (docs/overlay.md).
overlay-scale: deps venv plugins
	tools/sandbox.sh $(PY) -m bench.overlay_scale --nodes $(or $(NODES),50)

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
