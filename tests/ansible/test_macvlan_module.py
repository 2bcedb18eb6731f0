"""cnikit.cni.macvlan through ansible-playbook: the host shim and a pod-side macvlan on a veth master."""
from __future__ import annotations

import json
import os
import subprocess


def _routes(ns: str) -> list:
    return json.loads(subprocess.run(["ip", "-j", "-n", ns, "route"], capture_output=True, text=True, check=True).stdout)


def test_macvlan_lifecycle(play):
    tag = os.getpid()
    master, ns, shim = f"mm{tag}", f"mvns{tag}", f"mh{tag}"

    def m(name, **kw):
        return {"cnikit.cni.macvlan": {"name": name, "master": master, **kw}}
    shim_args = dict(addresses=["10.60.0.50/32"], routes=[{"dst": "10.60.0.16/28"}])
    pod = dict(netns=ns, mode="vepa", mtu=1400, addresses=["10.60.0.21/24"],
               routes=[{"dst": "default", "gw": "10.60.0.1"}])
    subprocess.run(["ip", "link", "add", master, "type", "veth", "peer", "name", master + "p"], check=True)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = play([
            {"name": "shim predicted", "check_mode": True, **m(shim, **shim_args)},
            {"name": "shim", "diff": True, **m(shim, **shim_args)},
            {"name": "shim again", **m(shim, **shim_args)},
            {"name": "shim changed predicted", "check_mode": True, "diff": True,
             **m(shim, mode="private", mtu=1450, addresses=["10.60.0.51/32"])},
            {"name": "shim changed", "diff": True, **m(shim, mode="private", mtu=1450, addresses=["10.60.0.51/32"])},
            {"name": "shim kernel view", "command": f"ip -j -d addr show dev {shim}", "changed_when": False},
            {"name": "pod", **m("eth0", **pod)},
            {"name": "pod again", **m("eth0", **pod)},
            {"name": "pod kernel view", "command": f"ip -j -d -n {ns} addr show dev eth0", "changed_when": False},
            {"name": "pod kernel view", "command": f"ip -j -d -n {ns} addr show dev eth0", "changed_when": False,
             "register": "pod_view"},
            {"name": "passthru blocked by the shim", "ignore_errors": True, **m("p0", netns=ns, mode="passthru")},
            {"name": "shim removed", **m(shim, state="absent")},
            {"name": "pod passthru", **m("eth0", **{**pod, "mode": "passthru"})},
            {"name": "pod removed predicted", "check_mode": True, **m("eth0", netns=ns, state="absent")},
            {"name": "pod removed", **m("eth0", netns=ns, state="absent")},
            {"name": "pod removed again", **m("eth0", netns=ns, state="absent")},
            {"name": "missing master", "ignore_errors": True, **m("x1", master=f"nomaster{tag}")},
            {"name": "name too long", "ignore_errors": True, **m("a-very-long-name0")},
            {"name": "ns not found", "ignore_errors": True, **m("x1", netns=f"nons{tag}")},
            {"name": "mtu above master", "ignore_errors": True, **m("x1", mtu=9000)},
            {"name": "bad address", "ignore_errors": True, **m("x1", addresses=["10.60.0.300/24"])},
        ]).ok()
        assert r["shim predicted"]["changed"] is True
        assert r["shim"]["changed"] is True and r["shim"]["diff"]["before"]["state"] == "absent"
        after = r["shim"]["diff"]["after"]
        assert (after["kind"], after["mode"], after["master"], after["addresses"]) == \
            ("macvlan", "bridge", master, ["10.60.0.50/32"])
        assert r["shim again"]["changed"] is False
        pred = r["shim changed predicted"]
        assert pred["changed"] is True and pred["diff"]["after"]["mtu"] == 1450 and pred["diff"]["after"]["mode"] == "private"
        done = r["shim changed"]
        assert done["changed"] is True and done["diff"]["before"]["mtu"] == 1500
        assert (done["state"]["mtu"], done["state"]["mode"], done["state"]["addresses"]) == (1450, "private", ["10.60.0.51/32"])
        host = json.loads(r["shim kernel view"]["stdout"])[0]
        assert host["mtu"] == 1450 and host["linkinfo"]["info_data"]["mode"] == "private"
        assert [a["local"] for a in host["addr_info"] if a["family"] == "inet"] == ["10.60.0.51"]
        assert r["pod"]["changed"] is True and r["pod again"]["changed"] is False
        podv = json.loads(r["pod kernel view"]["stdout"])[0]
        assert (podv["mtu"], podv["linkinfo"]["info_data"]["mode"], "UP" in podv["flags"]) == (1400, "vepa", True)
        assert [a["local"] + "/" + str(a["prefixlen"]) for a in podv["addr_info"] if a["family"] == "inet"] == ["10.60.0.21/24"]
        assert r["pod"]["state"]["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.60.0.1"}]
        assert "passthru needs the master to itself" in r.failure("passthru blocked by the shim")
        assert r["shim removed"]["changed"] is True and r["shim removed"]["state"]["state"] == "absent"
        assert r["pod passthru"]["changed"] is True and r["pod passthru"]["state"]["mode"] == "passthru"
        assert r["pod removed predicted"]["changed"] is True
        assert r["pod removed"]["changed"] is True and r["pod removed again"]["changed"] is False
        assert _routes(ns) == []
        assert "p0" not in subprocess.run(["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert f"master interface 'nomaster{tag}' not found" in r.failure("missing master")
        assert "interface name is too long" in r.failure("name too long")
        assert f"network namespace 'nons{tag}' not found" in r.failure("ns not found")
        assert "larger than master" in r.failure("mtu above master")
        assert "invalid address '10.60.0.300/24'" in r.failure("bad address")
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert "x1" not in links and "a-very-long" not in links
    finally:
        subprocess.run(["ip", "link", "del", master], check=False)
        subprocess.run(["ip", "link", "del", shim], check=False)
        subprocess.run(["ip", "netns", "del", ns], check=False)
