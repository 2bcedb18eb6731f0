"""cnikit.cni.veth through ansible-playbook: a pair between two namespaces, corrected drift, absent."""
from __future__ import annotations

import os
import subprocess


def test_veth_lifecycle(play):
    tag = os.getpid()
    na, nb = f"vA{tag}", f"vB{tag}"
    end = {"name": "va", "netns": na, "addresses": ["10.70.0.1/24"], "mtu": 1400}
    peer = {"name": "vb", "netns": nb, "addresses": ["10.70.0.2/24"], "mtu": 1400, "mac": "02:00:00:00:70:02",
            "routes": [{"dst": "10.71.0.0/16", "gw": "10.70.0.1"}]}

    def v(e=None, p=None, **kw):
        return {"cnikit.cni.veth": {**(e or end), "peer": p or peer, **kw}}
    for ns in (na, nb):
        subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        r = play([
            {"name": "predict", "check_mode": True, **v()},
            {"name": "create", "diff": True, **v()},
            {"name": "again", **v()},
            {"name": "ping", "command": f"ip netns exec {na} ping -c1 -W2 10.70.0.2", "changed_when": False},
            {"name": "drift", "command": f"ip -n {nb} link set vb mtu 1300"},
            {"name": "drift addr", "command": f"ip -n {na} addr add 10.70.0.9/24 dev va"},
            {"name": "correct predicted", "check_mode": True, "diff": True, **v()},
            {"name": "correct", "diff": True, **v()},
            {"name": "corrected again", **v()},
            {"name": "remove predicted", "check_mode": True, **v(state="absent")},
            {"name": "remove", **v(state="absent")},
            {"name": "remove again", **v(state="absent")},
            {"name": "foreign name", "ignore_errors": True, **v(e={"name": "lo", "netns": na})},
            {"name": "bad mac", "ignore_errors": True, **v(p={**peer, "mac": "01:00:00:00:00:01"})},
        ]).ok()
        assert r["predict"]["changed"] is True
        assert r["create"]["changed"] is True
        assert r["create"]["diff"]["before"]["end"]["state"] == "absent"
        assert r["create"]["state"]["peer"]["mac"] == "02:00:00:00:70:02"
        assert r["again"]["changed"] is False
        assert r["correct predicted"]["changed"] is True
        diff = r["correct"]["diff"]
        assert diff["before"]["peer"]["mtu"] == 1300 and diff["after"]["peer"]["mtu"] == 1400
        assert diff["before"]["end"]["addresses"] == ["10.70.0.1/24", "10.70.0.9/24"]
        assert diff["after"]["end"]["addresses"] == ["10.70.0.1/24"]
        assert r["corrected again"]["changed"] is False
        assert r["remove predicted"]["changed"] is True
        assert r["remove"]["changed"] is True and r["remove again"]["changed"] is False
        assert "already exists and is a device without link kind, not a veth" in r.failure("foreign name")
        assert "multicast" in r.failure("bad mac")
        for ns, dev in ((na, "va"), (nb, "vb")):
            assert subprocess.run(["ip", "-n", ns, "link", "show", "dev", dev], capture_output=True, check=False).returncode != 0
    finally:
        for ns in (na, nb):
            subprocess.run(["ip", "netns", "del", ns], check=False)
