"""Calling the cnikit-cluster IPAM the way a runtime does (skel.execute: env + stdin JSON)."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

from cni.protocol import skel
from cni.ipam.cluster import ClusterIpam


def netconf(etcd_conf, node: str, network: str = "podnet", subnet: str = "10.50.0.0/24",
            data_dir: str = "", extra: Optional[Dict[str, Any]] = None, **ipam: Any) -> Dict[str, Any]:
    conf = {"cniVersion": "1.1.0", "name": network, "type": "macvlan",
            "ipam": dict({"type": "cnikit-cluster", "subnet": subnet, "node": node,
                          "etcd": etcd_conf.to_dict(), "routes": [{"dst": "0.0.0.0/0"}]}, **ipam)}
    if data_dir:
        conf["ipam"]["dataDir"] = data_dir
    conf.update(extra or {})
    return conf


def call(command: str, conf: Dict[str, Any], cid: str = "", ifname: str = "eth0",
         args: str = "") -> Tuple[int, Any]:
    env = {"CNI_COMMAND": command, "CNI_PATH": "/nonexistent"}
    if cid:
        env.update(CNI_CONTAINERID=cid, CNI_NETNS="/run/netns/x", CNI_IFNAME=ifname)
    if args:
        env["CNI_ARGS"] = args
    rc, out, err = skel.execute(ClusterIpam, env, json.dumps(conf).encode())
    assert "Traceback" not in err, err
    return rc, (json.loads(out) if out.strip() else None)


def ips_of(result: Dict[str, Any]) -> List[str]:
    return [ip["address"] for ip in result["ips"]]
