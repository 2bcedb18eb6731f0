"""The overlay pod network on a lab, driven straight through the engine (no Ansible): node subnets
planned from the lab's nodes, one shared lease directory (what etcd's key space is to flannel:
every node's daemon reads it, a file appearing is a node joining), a `cnikit overlayd` per node,
and pods attached with the bridge plugin on the node's subnet.

`up_wide(count)` builds a lab with more nodes than `lab.up` allows (its /24 underlay stops at 20
nodes): the same holders and switch, on 172.30.0.0/16. Used by the 50-node measurement.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from . import LabError, UPLINK, BRIDGE, _save, _spawn, down, node_names, run_in, require_sandbox, nsenter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
from cni.cluster.leases import Lease, write_lease  # noqa: E402
from cni.state import subnets  # noqa: E402

BIN = os.path.join(ROOT, "build", "bin")
CLUSTER = "10.244.0.0/16"
CONF = "/etc/cni/cnikit/overlay.json"
NETCONF = "/etc/cni/net.d/10-overlay.conflist"
WIDE_SUBNET, WIDE_GATEWAY = "172.30.0.0/16", "172.30.0.1"


def up_wide(count: int, path: Optional[str] = None) -> Dict[str, Any]:
    """Like lab.up on a /16 underlay (no hairpin: the overlay needs none): up to ~60000 nodes."""
    require_sandbox()
    net = ipaddress.ip_network(WIDE_SUBNET)
    state: Dict[str, Any] = {"subnet": WIDE_SUBNET, "gateway": WIDE_GATEWAY, "uplink": UPLINK, "hairpin": False,
                             "underlay": {"name": "lab-underlay", "pid": 0}, "nodes": []}
    try:
        sw = state["underlay"]["pid"] = _spawn("lab-underlay")
        _save(state, path)
        run_in(sw, ["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
        run_in(sw, ["ip", "addr", "add", f"{WIDE_GATEWAY}/{net.prefixlen}", "dev", BRIDGE])
        run_in(sw, ["ip", "link", "set", BRIDGE, "up"])
        for i, name in enumerate(node_names(count)):
            pid = _spawn(name)
            node = {"name": name, "pid": pid, "ip": str(net.network_address + 256 + i + 1), "port": f"swp{i}"}
            state["nodes"].append(node)
            _save(state, path)
            run_in(sw, ["ip", "link", "add", node["port"], "type", "veth", "peer", "name", UPLINK, "netns", str(pid)])
            run_in(sw, ["ip", "link", "set", node["port"], "master", BRIDGE, "up"])
            run_in(pid, ["sh", "-c", f"ip addr add {node['ip']}/{net.prefixlen} dev {UPLINK} && "
                                     f"ip link set {UPLINK} up && ip route add default via {WIDE_GATEWAY}"])
    except BaseException:
        down(path)
        raise
    return state


def plan(nodes: List[Dict[str, Any]], backend: str = "vxlan") -> Dict[str, Lease]:
    return subnets.plan([n["name"] for n in nodes], {n["name"]: n["ip"] for n in nodes}, CLUSTER, 24,
                        backend=backend)


def write_file(pid: int, path: str, text: str) -> None:
    """A file in the node's own mount namespace (its private /etc/cni, /run)."""
    subprocess.run(nsenter(pid, ["sh", "-c", f'mkdir -p "$(dirname "$1")" && cat > "$1"', "-", path]),
                   input=text, text=True, check=True, capture_output=True)


def configure(node: Dict[str, Any], lease_dir: str, backend: str = "vxlan", resync: float = 10.0) -> None:
    conf = {"node": node["name"], "cluster_cidr": CLUSTER, "backend": {"type": backend, "vni": 1},
            "lease_dir": lease_dir, "resync": resync}
    write_file(node["pid"], CONF, json.dumps(conf))


def overlayd(pid: int, *args: str) -> Dict[str, Any]:
    """`cnikit overlayd --once|--check|--remove` on a node; its JSON answer."""
    proc = run_in(pid, [os.path.join(BIN, "cnikit"), "overlayd", "--config", CONF, *args], check=False)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise LabError(f"overlayd {' '.join(args)} failed: {proc.stderr.strip() or proc.stdout.strip()}") from None


def start_daemon(pid: int, log: str = "/run/cnikit/overlayd.log") -> None:
    """The daemon as a background process of the node (recorded in /run/cnikit/overlayd.pid)."""
    run_in(pid, ["sh", "-c", f"mkdir -p /run/cnikit; setsid {BIN}/cnikit overlayd --config {CONF} "
                             f"</dev/null >>{log} 2>&1 & echo $! > /run/cnikit/overlayd.pid"])


def stop_daemon(pid: int) -> None:
    run_in(pid, ["sh", "-c", "kill $(cat /run/cnikit/overlayd.pid) 2>/dev/null; rm -f /run/cnikit/overlayd.pid"],
           check=False)


def netconf(lease: Lease, mtu: int) -> Dict[str, Any]:
    """The pods' network: bridge cni0 (gateway .1) + host-local on the node's subnet, MTU from the daemon."""
    return {"cniVersion": "1.0.0", "name": "overlay", "plugins": [{
        "type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "ipMasq": False, "mtu": mtu,
        "hairpinMode": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": str(lease.subnet), "gateway": str(lease.gateway)}]],
                 "routes": [{"dst": CLUSTER}]}}]}


def add_pod(pid: int, pod: str, conf: Dict[str, Any]) -> str:
    """A netns `pod` on the node attached with `cnikit net add`; returns its IPv4 address."""
    write_file(pid, NETCONF, json.dumps(conf))
    run_in(pid, ["ip", "netns", "add", pod])
    env = f"CNI_PATH={BIN} NETCONFPATH=/etc/cni/net.d"
    out = run_in(pid, ["sh", "-c", f"{env} {BIN}/cnikit net add overlay /run/netns/{pod}"]).stdout
    return json.loads(out)["ips"][0]["address"].split("/")[0]


def wait_for(predicate: Any, timeout: float, step: float = 0.02) -> float:
    """Seconds until predicate() is true; raises LabError after `timeout`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise LabError(f"not reached within {timeout} s")
        time.sleep(step)


def entries(pid: int, device: str = "flannel.1") -> Dict[str, List[str]]:
    """What `ip`/`bridge` show on the node: our routes (proto 241), neighbours and FDB on the device."""
    def lines(argv: List[str]) -> List[str]:
        proc = run_in(pid, argv, check=False)
        return [l.strip() for l in proc.stdout.splitlines() if l.strip()]
    return {"routes": lines(["ip", "route", "show", "proto", "241"]),
            "neigh": lines(["ip", "neigh", "show", "dev", device, "nud", "permanent"]),
            "fdb": [l for l in lines(["bridge", "fdb", "show", "dev", device]) if " dst " in l]}


def put_lease(lease_dir: str, lease: Lease) -> None:
    write_lease(lease_dir, lease)
