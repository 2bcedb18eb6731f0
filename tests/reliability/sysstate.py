"""A normalised snapshot of what CNI code can change on a node: links, IPv4 addresses and routes
(root netns and the named ones), nftables and iptables rules, and files under given roots.

Stdlib only, so a playbook can take it between tasks: `python sysstate.py NETNS,... ROOT...`.
Volatile details are dropped (ifindex, counters, carrier/oper state, IPv6 autoconf) so that two
snapshots differ only when something was really changed.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List, Sequence


def _run(cmd: List[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout


def _ip(ns: str, *args: str) -> Any:
    out = _run(["ip", *(["-n", ns] if ns else []), "-j", *args])
    return json.loads(out) if out.strip() else []


def netns_state(ns: str = "") -> Dict[str, Any]:
    links = sorted((l["ifname"], l.get("mtu"), l.get("address"), "UP" in l.get("flags", []),
                    l.get("linkinfo", {}).get("info_kind"), l.get("master")) for l in _ip(ns, "-d", "link", "show"))
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in _ip(ns, "-4", "addr", "show")
                   for i in a.get("addr_info", []))
    routes = sorted(json.dumps(r, sort_keys=True) for r in _ip(ns, "-4", "route", "show", "table", "all"))
    return {"links": links, "addrs": addrs, "routes": routes}


def files(roots: Sequence[str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for root in roots:
        for dirpath, _, names in os.walk(root):
            out[dirpath] = "dir"
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    with open(path, "rb") as fh:
                        out[path] = fh.read(4096).decode("utf-8", "replace")
                except OSError:
                    out[path] = "?"
    return out


def state(netns: Sequence[str], roots: Sequence[str]) -> Dict[str, Any]:
    present = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    snap: Dict[str, Any] = {"netns": present, "root": netns_state()}
    snap.update({f"ns:{n}": netns_state(n) for n in netns if n in present})
    snap["nft"] = _run(["nft", "list", "ruleset"])
    snap["iptables"] = re.sub(r"^#.*$|\[\d+:\d+\]", "", _run(["iptables-save"]), flags=re.M)
    snap["files"] = files(roots)
    return snap


if __name__ == "__main__":
    print(json.dumps(state([n for n in sys.argv[1].split(",") if n], sys.argv[2:])))
