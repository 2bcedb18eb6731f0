"""Crash safety: the runtime (`cnikit net`) is killed with SIGKILL at fault points inside ADD and
DEL (faults.point in the engine, armed by CNIKIT_FAULT — no sleeps, no races). Then either a DEL
or, with the container gone, `cnikit gc` must remove every interface, lease, rule and cache entry,
a retried ADD must succeed, and a live bystander attachment must come through untouched.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from typing import Dict, Optional

import pytest

import cnitest
import relutil

NET = "crashnet"
HOST_PORT = 18080
BRIDGE = "cnicrbr0"
# network -> (main plugin config, subnet); each network is that plugin + host-local → portmap
NETS = {"crashnet": ({"type": "macvlan", "master": "crm0", "mode": "bridge"}, "10.66.0.0/24"),
        "brnet": ({"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": True}, "10.67.0.0/24"),
        "ptpnet": ({"type": "ptp", "ipMasq": True}, "10.68.0.0/24"),
        "routednet": ({"type": "cnikit-routed"}, "10.69.0.0/24")}
ADD_POINTS = ["macvlan.after_link_create", "host_local.after_lease_write", "macvlan.after_ipam_add",
              "portmap.after_rules", "runtime.before_cache_write",
              "brnet:bridge.after_ipam_add", "brnet:bridge.after_masq", "ptpnet:ptp.after_veth",
              "routednet:routed.after_veth"]
DEL_POINTS = ["runtime.del_after_plugin", "macvlan.del_after_ipam", "host_local.after_release_one"]
# Reached only on paths this chain does not take; each is named with where it is exercised.
OTHER_POINTS = {"portmap.after_family": "iptables backend, dual-stack: not in this chain (see docs/reliability.md)",
                "net.restore_netns": "a failed switch back, not a crash: tests/security/test_security_netns.py"}


def engine_fault_points():
    """Point names in the engine; a per-plugin point written `f"{self.name}.x"` comes back as `*.x`."""
    found = set()
    for dirpath, _, files in os.walk(relutil.ENGINE):
        for name in files:
            if name.endswith(".py") and name != "faults.py":
                with open(os.path.join(dirpath, name), encoding="utf-8") as fh:
                    text = fh.read()
                found.update(re.findall(r'faults\.point\("([^"]+)"\)', text))
                found.update("*" + m for m in re.findall(r'faults\.point\(f"\{self\.name\}([^"{}]+)"\)', text))
    return found


def test_every_fault_point_is_exercised():
    covered = {p.split(":")[-1] for p in ADD_POINTS + DEL_POINTS} | set(OTHER_POINTS)
    points = engine_fault_points()
    assert len(points) >= 8
    missing = [p for p in points if not (p in covered or (p.startswith("*") and any(c.endswith(p[1:]) for c in covered)))]
    assert missing == []


class Node:
    """A private conf dir, cache dir and dataDir, a master link, and the chain macvlan+host-local
    → portmap run by our runtime through the `cnikit net` CLI (cnitool semantics)."""

    def __init__(self, tmp, netns_factory) -> None:
        self.conf_dir, self.cache_dir, self.data_dir = (str(tmp / d) for d in ("conf", "cache", "data"))
        os.makedirs(self.conf_dir)
        self.netns_factory = netns_factory
        for name, (main, subnet) in NETS.items():
            conflist = {"cniVersion": "1.0.0", "name": name, "plugins": [
                dict(main, ipam={"type": "host-local", "dataDir": self.data_dir, "ranges": [[{"subnet": subnet}]]}),
                {"type": "portmap", "capabilities": {"portMappings": True}}]}
            with open(os.path.join(self.conf_dir, f"10-{name}.conflist"), "w", encoding="utf-8") as fh:
                json.dump(conflist, fh)
        self.links_before = set(relutil.link_names())

    def env(self, fault: str = "", port: int = HOST_PORT) -> Dict[str, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH": self.conf_dir, "CNI_PATH": cnitest.OUR_BIN,
               "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})}
        if fault:
            env["CNIKIT_FAULT"] = fault
        return env

    def cnikit(self, *args: str, fault: str = "", port: int = HOST_PORT) -> subprocess.CompletedProcess:
        return subprocess.run([os.path.join(cnitest.OUR_BIN, "cnikit"), *args], env=self.env(fault, port),
                              capture_output=True, text=True, timeout=60, check=False)

    def net(self, verb: str, pod: str, fault: str = "", port: int = HOST_PORT,
            network: str = NET) -> subprocess.CompletedProcess:
        return self.cnikit("net", verb, network, f"/run/netns/{pod}", "--cache-dir", self.cache_dir,
                           fault=fault, port=port)

    def gc(self) -> subprocess.CompletedProcess:
        return self.cnikit("gc", "--cache-dir", self.cache_dir, "--data-dir", self.data_dir, "--conf-dir",
                           self.conf_dir, "--cni-path", cnitest.OUR_BIN, "--orphans", "--grace", "0")

    def cache_entries(self):
        results = os.path.join(self.cache_dir, "results")
        return sorted(os.listdir(results)) if os.path.isdir(results) else []

    def assert_clean(self, pod: Optional[str], bystander: Optional[str] = None, ports=(HOST_PORT,)) -> None:
        """Nothing of `pod` is left: interface, lease, cache entry, DNAT rule of any of `ports`."""
        leases = relutil.lease_files(self.data_dir)
        cache = self.cache_entries()
        rules = relutil.nft_ruleset() + subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
        assert [p for p in ports if re.search(rf"\b{p}\b", rules)] == [], rules
        assert not re.search(r"10\.6[78]\.0\.", rules), rules  # bridge/ptp masquerade
        for _ in range(100):  # host-side veths go with their netns, which the kernel frees async
            host_links = set(relutil.link_names()) - self.links_before - {BRIDGE}
            if not host_links:
                break
            time.sleep(0.05)
        assert host_links == set()
        if bystander is None:
            assert leases == {} and cache == [], (leases, cache)
        else:  # exactly the bystander's state remains
            assert len(leases) == 1 and len(cache) == 1, (leases, cache)
            assert cache[0].endswith(f"-{list(leases.values())[0].replace(chr(13) + chr(10), '-')}"), (leases, cache)
            assert re.search(rf"\b{HOST_PORT + 1}\b", rules), rules
        if pod is not None:
            assert relutil.link_names(pod) == ["lo"]


@pytest.fixture
def node(sandbox, tmp_path, netns_factory):
    cnitest.sh("ip link add crm0 type veth peer name crm1 && ip link set crm0 up && ip link set crm1 up")
    yield Node(tmp_path, netns_factory)
    cnitest.sh(f"ip link del crm0; ip link del {BRIDGE}", check=False)


def split(point: str):
    """`<network>:<point>` (or a bare point on crashnet) -> (network, point)."""
    network, _, name = point.rpartition(":")
    return network or NET, name


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -signal.SIGKILL


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("point", ADD_POINTS)
def test_killed_in_add_then_del_cleans_and_retry_succeeds(node, point):
    network, point = split(point)
    pod = node.netns_factory("crash")
    proc = node.net("add", pod, fault=point, network=network)
    assert killed(proc), f"fault point {point} not reached: {proc.returncode} {proc.stdout} {proc.stderr}"
    ok(node.net("del", pod, network=network))
    node.assert_clean(pod)
    ok(node.net("add", pod, network=network))  # the retried ADD succeeds on the cleaned node
    assert len(relutil.lease_files(node.data_dir)) == 1 and "eth0" in relutil.link_names(pod)
    ok(node.net("del", pod, network=network))
    node.assert_clean(pod)


@pytest.mark.parametrize("point", DEL_POINTS)
def test_killed_in_del_then_del_again_cleans(node, point):
    pod = node.netns_factory("crash")
    ok(node.net("add", pod))
    assert killed(node.net("del", pod, fault=point)), f"fault point {point} not reached"
    ok(node.net("del", pod))
    node.assert_clean(pod)


def test_gc_after_crashes_missed_del_and_reboot(node):
    """Containers die with ADDs killed at every ADD point, DELs killed at every DEL point, and one
    DEL never sent; `cnikit gc` reclaims all of them and leaves the live bystander alone. Then the
    node "reboots" (every netns gone, /var/lib/cni kept) and gc reclaims the bystander too."""
    live = node.netns_factory("live")
    ok(node.net("add", live, port=HOST_PORT + 1))
    dead, ports = [], []  # one host port each: a leaked mapping would block the next one's ADD
    for spec_ in ADD_POINTS:
        network, point = split(spec_)
        pod, port = node.netns_factory("crash"), HOST_PORT + 10 + len(dead)
        assert killed(node.net("add", pod, fault=point, port=port, network=network)), point
        dead.append(pod), ports.append(port)
    for point in DEL_POINTS:
        pod, port = node.netns_factory("crash"), HOST_PORT + 10 + len(dead)
        ok(node.net("add", pod, port=port))
        assert killed(node.net("del", pod, fault=point, port=port)), point
        dead.append(pod), ports.append(port)
    missed, port = node.netns_factory("missed"), HOST_PORT + 10 + len(dead)
    ok(node.net("add", missed, port=port, network="brnet"))
    dead.append(missed), ports.append(port)
    for pod in dead:
        cnitest.sh(f"ip netns del {pod}")
    report = node.gc()
    ok(report)
    assert json.loads(report.stdout)["errors"] == []
    node.assert_clean(None, bystander=live, ports=ports)
    ok(node.net("check", live, port=HOST_PORT + 1))

    cnitest.sh(f"ip netns del {live}")  # the reboot
    ok(node.gc())
    node.assert_clean(None, ports=ports + [HOST_PORT + 1])
