"""A fleet's life after the install (make test-fleet; also in CI): an upgrade under a CNI ADD/DEL loop
(0 failed calls), rollback to the previous release without the controller's old collection, and a
node reboot (fresh /run and netns, same disk) - the agent and the macv-host shim come back, leases of
pods lost in the reboot are reclaimed, new pods work. Over SSH, like tests/rollout/test_fleet.py."""
from __future__ import annotations

import json
import os
import shutil
import threading
import time

import pytest

from fleet import DEMO, SITE, cni, expect_ok, lab, node, play, run, sh, summary, version

AGENT = ["-e", "cni_plugins_agent=systemd"]


@pytest.fixture(scope="module")
def engines():
    """Two releases: A (the tree as it is) and B (A plus one changed line: a new digest)."""
    a = play.engine_snapshot()
    b = play.engine_snapshot()
    with open(os.path.join(b, "__init__.py"), "a", encoding="utf-8") as fh:
        fh.write("# release B (tests/rollout/test_fleet_lifecycle.py)\n")
    yield a, b
    for path in (a, b):
        shutil.rmtree(os.path.dirname(path), ignore_errors=True)


@pytest.fixture(scope="module")
def fleet(lab_state, engines):
    state = lab.up(3, path=lab_state, ssh=True)
    state["_path"] = lab_state
    expect_ok(run(lab_state, SITE, *AGENT, engine=engines[0]))
    return state


class Loop(threading.Thread):
    """ADD then DEL through /opt/cni/bin/macvlan on one node, again and again, as a runtime would."""

    def __init__(self, state, name):
        super().__init__(daemon=True)
        self.state, self.name, self.stop, self.calls, self.failures = state, name, threading.Event(), 0, []

    def run(self):
        i = 0
        while not self.stop.is_set():
            n = node(self.state, self.name)
            ns = f"load{i}"
            lab.run_in(n["pid"], ["ip", "netns", "add", ns])
            for command in ("ADD", "DEL"):
                proc = cni(n, command, f"load-{i}", ns)
                self.calls += 1
                if proc.returncode != 0:
                    self.failures.append((command, i, proc.stdout + proc.stderr))
            lab.run_in(n["pid"], ["ip", "netns", "del", ns])
            i += 1


def test_upgrade_under_load_fails_no_call(fleet, lab_state, engines):
    n1 = node(fleet, "k8s-node01")
    old = version(n1)["release"]["name"]
    loop = Loop(fleet, "k8s-node01")
    loop.start()
    try:
        time.sleep(2)
        result = run(lab_state, SITE, "-e", "cni_serial=1", *AGENT, engine=engines[1])
        time.sleep(2)
    finally:
        loop.stop.set()
        loop.join(120)
    expect_ok(result)
    assert loop.failures == [] and loop.calls >= 10, (loop.calls, loop.failures[:3])
    new = version(n1)["release"]["name"]
    assert new != old and new.startswith("1.1.0-")
    assert result.output.count("PLAY [Install the CNI plugins") == 3  # serial: one node per batch
    for line in summary(result):
        assert f"engine {new}, previous {old}" in line, line
    for n in fleet["nodes"]:
        n = node(fleet, n["name"])
        assert sorted(sh(n, "ls /opt/cni/lib/cnikit/releases").split()) == sorted([old, new])
        assert sh(n, "cat /run/cni/cnikit-agent.pid").split()[1] == new  # the agent runs the new engine


def test_rollback_needs_no_controller_copy(fleet, lab_state, engines):
    n1 = node(fleet, "k8s-node01")
    before = version(n1)["release"]["name"]
    kept = sh(n1, "ls /opt/cni/lib/cnikit/releases").split()
    # the controller's engine source is gone: the rollback uses only what the nodes keep
    result = expect_ok(run(lab_state, SITE, "-e", "cni_plugins_release=previous", *AGENT,
                           engine="/nonexistent/cni"))
    assert "Pack the release on the controller" not in result.output or "skipping" in result.output
    for n in fleet["nodes"]:
        n = node(fleet, n["name"])
        now = version(n)["release"]["name"]
        assert now != before and now in kept
        assert f"/opt/cni/lib/cnikit/releases/{now}" in sh(n, "cat /opt/cni/bin/cnikit")
        assert sh(n, "cat /run/cni/cnikit-agent.pid").split()[1] == now
        proc = cni(n, "VERSION", "x", "x")
        assert proc.returncode == 0 and "supportedVersions" in proc.stdout


def test_reboot_brings_back_the_agent_and_shim_and_reclaims_leases(fleet, lab_state, engines):
    expect_ok(run(lab_state, DEMO))
    n1 = node(fleet, "k8s-node01")
    pod_ip = json.loads(sh(n1, "ip -n busybox-k8s-node01 -j -4 addr show dev eth0"))[0]["addr_info"][0]["local"]
    lease = f"/var/lib/cni/networks/macvlannet/{pod_ip}"
    assert sh(n1, f"cat {lease}").startswith("busybox-k8s-node01")
    old_pid = n1["pid"]
    lab.reboot("k8s-node01", lab_state)
    n1 = node(fleet, "k8s-node01")
    assert n1["pid"] != old_pid
    # came back by the units the roles wrote (the lab's init runs what is enabled, like systemd at boot)
    shim = json.loads(sh(n1, "ip -j -4 addr show dev macv-host"))[0]
    assert shim["addr_info"][0]["local"] == "192.168.80.91" and "UP" in shim["flags"]
    routes = sh(n1, "ip route")
    for cidr in ("192.168.80.130/31", "192.168.80.132/30", "192.168.80.136/30"):  # .130-.139, fewest CIDRs
        assert f"{cidr} dev macv-host" in routes, routes
    deadline = time.monotonic() + 30
    while sh(n1, "test -S /run/cni/cnikit.sock && echo up", check=False).strip() != "up":
        assert time.monotonic() < deadline, "the agent did not come back"
        time.sleep(0.2)
    assert sh(n1, "ls /run/netns", check=False).strip() == ""  # the pod died with the node
    assert sh(n1, f"test -e {lease} && echo stale || echo reclaimed").strip() == "reclaimed"
    # new pods work, and the rollout is still converged
    expect_ok(run(lab_state, DEMO))
    new_ip = json.loads(sh(n1, "ip -n busybox-k8s-node01 -j -4 addr show dev eth0"))[0]["addr_info"][0]["local"]
    n2 = node(fleet, "k8s-node02")
    assert lab.run_in(n2["pid"], ["ip", "netns", "exec", "busybox-k8s-node02", "busybox", "ping", "-c", "1", "-W", "2",
                                  new_ip], check=False).returncode == 0
    assert lab.run_in(n1["pid"], ["ping", "-c", "1", "-W", "2", new_ip], check=False).returncode == 0  # via the shim
    again = expect_ok(run(lab_state, SITE, *AGENT, engine=engines[0]))  # A: active after the rollback
    assert again.changed == 0, again.output[-5000:]
