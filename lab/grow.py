"""Growing a running lab by one node (the routed network's "node added" proof): the next name
(k8s-node0N) and address (.100 + i), wired to the switch exactly as `lab.up` wires the others."""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, Optional

import lab


def add_node(path: Optional[str] = None) -> Dict[str, Any]:
    """Start one more node on the running lab at `path`; returns its state entry."""
    lab.require_sandbox()
    state = lab.load(path)
    if not state or not lab.alive(state["underlay"]["pid"]):
        raise lab.LabError("the lab is down")
    i = len(state["nodes"])
    if i >= lab.MAX_NODES:
        raise lab.LabError(f"at most {lab.MAX_NODES} nodes")
    name = lab.node_names(i + 1)[-1]
    net = ipaddress.ip_network(state["subnet"])
    pid = lab._spawn(name)  # noqa: SLF001 - the same holder `up` starts
    node = {"name": name, "pid": pid, "ip": str(ipaddress.ip_address(lab.FIRST_NODE_IP) + i), "port": f"swp{i}"}
    state["nodes"].append(node)
    lab._save(state, path)  # noqa: SLF001 - from here on `down` stops it with the rest
    sw = state["underlay"]["pid"]
    lab.run_in(sw, ["ip", "link", "add", node["port"], "type", "veth", "peer", "name", lab.UPLINK, "netns", str(pid)])
    lab.run_in(sw, ["ip", "link", "set", node["port"], "master", lab.BRIDGE, "up"])
    lab.run_in(sw, ["ip", "link", "set", node["port"], "type", "bridge_slave", "hairpin",
                    "on" if state["hairpin"] else "off"])
    lab.run_in(pid, ["ip", "addr", "add", f"{node['ip']}/{net.prefixlen}", "dev", lab.UPLINK])
    lab.run_in(pid, ["ip", "link", "set", lab.UPLINK, "up"])
    lab.run_in(pid, ["ip", "route", "add", "default", "via", state["gateway"]])
    return node
