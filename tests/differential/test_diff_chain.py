"""Whole chains through OUR runtime, once with the Go reference plugins (exec'd from CNI_PATH as
foreign plugins) and once with ours (in-process): final result, libcni cache file, kernel state
after ADD, and everything gone after the reverse-order DEL (with the cached prevResult).

Each side's runtime runs inside its world's "host" netns (difflib_cni), as a node's runtime would,
with the same container ID so that hash-derived names (portmap chains, bandwidth's ifb) agree."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from typing import Any, Dict

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cnitest  # noqa: E402
from difflib_cni import World, make_worlds  # noqa: E402

CID = "diffchain0123"
MASTER = "ip link add m0 type veth peer name m0p && ip link set m0 up && ip link set m0p up"
CAPS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                         {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}],
        "mac": "02:42:ac:11:00:07",
        "bandwidth": {"ingressRate": 1000000, "ingressBurst": 100000, "egressRate": 2000000, "egressBurst": 200000}}

# The driver: our runtime, run as a separate process inside the world's host netns.
DRIVER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from cni import runtime
from cni.protocol.spec import CNIError
req = json.load(sys.stdin)
rt = runtime.Runtime(cni_path=[req["bindir"]], cache_dir=req["cache"], environ={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
net = rt.network_from_dict(req["conf"])
att = runtime.RuntimeConf(container_id=req["cid"], netns=req["netns"], ifname="eth0",
                          args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", "web")], capability_args=req["caps"])
try:
    out = {"add": rt.add, "check": rt.check, "del": rt.delete}[req["verb"]](net, att)
    print(json.dumps({"ok": True, "result": out}))
except CNIError as err:
    print(json.dumps({"ok": False, "code": err.code, "msg": err.msg}))
"""


def drive(world: World, verb: str, conf: Dict[str, Any], caps: Dict[str, Any]) -> Dict[str, Any]:
    req = {"bindir": world.bindir, "cache": cache_dir(world), "conf": world.conf(conf), "cid": CID,
           "netns": world.cont_path, "verb": verb, "caps": caps}
    proc = subprocess.run(["ip", "netns", "exec", world.host, sys.executable, "-c", DRIVER, cnitest.LIB],
                          input=json.dumps(req), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def cache_dir(world: World) -> str:
    return os.path.join(world.datadir, "..", f"cache-{world.label}")


def cache_file(world: World, net: str) -> Dict[str, Any]:
    with open(os.path.join(cache_dir(world), "results", f"{net}-{CID}-eth0"), encoding="utf-8") as fh:
        return json.load(fh)


def view(state: Dict[str, Any]) -> Dict[str, Any]:
    """What a chain visibly sets up in a namespace; kernel timers and bridge IDs left out."""
    links = [(x["ifname"], x.get("mtu"), x.get("qdisc"), x.get("master"), sorted(x.get("flags", [])),
              x.get("linkinfo", {}).get("info_kind"), x.get("linkinfo", {}).get("info_slave_kind"),
              x.get("linkinfo", {}).get("info_slave_data", {}).get("hairpin")) for x in state["link"]]
    addrs = [(x["ifname"], sorted((a["family"], a["local"], a["prefixlen"]) for a in x.get("addr_info", [])))
             for x in state["addr"]]
    return {"link": links, "addr": addrs, "route": state["route"], "sysctl": state["sysctl"]}


CHAINS = {
    # the chain of the issue: every meta plugin after a main plugin with a host-side veth
    "bridge-portmap-firewall-tuning-bandwidth": {
        "setup": "",
        "conf": {"cniVersion": "1.0.0", "name": "chainnet", "plugins": [
            {"type": "bridge", "bridge": "cnichain0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "host-local", "subnet": "10.6.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
            {"type": "tuning", "capabilities": {"mac": True}, "mtu": 1400,
             "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]},
        "sysctls": ("net.ipv4.conf.eth0.arp_notify",),
        "compare": ("cont", "host", "data"),
    },
    # macvlan has no host-side veth, so bandwidth is left out of this one
    "macvlan-tuning-portmap": {
        "setup": MASTER,
        "conf": {"cniVersion": "1.0.0", "name": "chainnet", "plugins": [
            {"type": "macvlan", "master": "m0", "mode": "bridge",
             "ipam": {"type": "host-local", "subnet": "10.6.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "tuning", "capabilities": {"mac": True}, "mtu": 1400,
             "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]},
        "sysctls": ("net.ipv4.conf.eth0.arp_notify",),
        "compare": ("cont", "data"),
    },
}


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_chain_go_vs_ours(netns_factory, tmp_path, name):
    case = CHAINS[name]
    go, ours = make_worlds(netns_factory, tmp_path, setup=case["setup"])
    conf = case["conf"]
    net = conf["name"]
    before = {w.label: w.state(case["sysctls"]) for w in (go, ours)}

    adds = {w.label: drive(w, "add", conf, CAPS) for w in (go, ours)}
    assert adds["go"]["ok"] and adds["ours"]["ok"], adds
    g, o = go.normalise(adds["go"]["result"]), ours.normalise(adds["ours"]["result"])
    assert g == o, f"final results differ\ngo:   {json.dumps(g)}\nours: {json.dumps(o)}"
    eth0 = [i for i in adds["ours"]["result"]["interfaces"] if i["name"] == "eth0"]
    assert eth0[0]["mac"] == CAPS["mac"]  # tuning's runtimeConfig.mac
    gs, os_ = go.state(case["sysctls"]), ours.state(case["sysctls"])
    for key in case["compare"]:
        g_, o_ = (view(gs[key]), view(os_[key])) if key != "data" else (gs[key], os_[key])
        assert g_ == o_, f"{key} differs\ngo:   {json.dumps(g_)}\nours: {json.dumps(o_)}"

    # the cache file: same fields, same config bytes, same (normalised) result
    gc_, oc = cache_file(go, net), cache_file(ours, net)
    assert list(gc_) == list(oc)
    assert base64.b64decode(gc_["config"]) != b"" and oc["kind"] == "cniCacheV1"
    for key in ("containerId", "ifName", "networkName", "cniArgs", "capabilityArgs"):
        assert gc_[key] == oc[key], key
    assert go.normalise(gc_["netns"]) == ours.normalise(oc["netns"])
    assert go.normalise(gc_["result"]) == ours.normalise(oc["result"])
    assert gc_["result"] == json.loads(json.dumps(adds["go"]["result"], sort_keys=True))

    # CHECK (Go portmap 1.1.1 CHECK fails on IPv4-only ADDs, plugins#819: compare outcomes)
    checks = {w.label: drive(w, "check", conf, CAPS) for w in (go, ours)}
    assert checks["ours"]["ok"], checks["ours"]
    if not checks["go"]["ok"]:
        assert "could not check ipv6 dnat" in checks["go"]["msg"]

    for _ in range(2):  # DEL, then DEL again (idempotent)
        dels = {w.label: drive(w, "del", conf, None) for w in (go, ours)}
        assert dels["go"]["ok"] and dels["ours"]["ok"], dels
        for w in (go, ours):
            assert not os.path.exists(os.path.join(cache_dir(w), "results", f"{net}-{CID}-eth0"))
            after = w.state(case["sysctls"])
            assert after["cont"]["link"] == before[w.label]["cont"]["link"], f"{w.label}: container links left"
            assert after["data"] == before[w.label]["data"] or all(
                k.endswith(("lock", "last_reserved_ip.0")) for k in after["data"]), after["data"]
            rules = w.sh("nft list ruleset; iptables-save")
            assert CID not in rules and "10.6.0." not in rules, f"{w.label} left rules:\n{rules}"
