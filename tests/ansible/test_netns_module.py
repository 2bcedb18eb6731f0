"""cnikit.cni.netns through ansible-playbook: create, idempotence, check mode, diff, absent, a stale
mount point replaced, bad input."""
from __future__ import annotations

import os
import subprocess


def _ns(name: str) -> str:
    return f"/run/netns/{name}"


def test_netns_lifecycle(play):
    name, stale = f"anns{os.getpid()}", f"ansst{os.getpid()}"
    with open(_ns(stale), "w", encoding="ascii"):
        pass  # what a failed `ip netns add` leaves: a bare file, not a namespace

    def t(**kw):
        return {"cnikit.cni.netns": {"name": name, **kw}}

    try:
        r = play([
            {"name": "predict", "check_mode": True, **t()},
            {"name": "after predict", "command": f"test ! -e {_ns(name)}", "changed_when": False},
            {"name": "create", "diff": True, **t()},
            {"name": "again", **t()},
            {"name": "lo down predicted", "check_mode": True, **t(loopback_up=False)},
            {"name": "lo down", **t(loopback_up=False)},
            {"name": "lo down again", **t(loopback_up=False)},
            {"name": "lo in the kernel", "command": f"ip -n {name} -o link show lo", "changed_when": False},
            {"name": "remove predicted", "check_mode": True, **t(state="absent")},
            {"name": "still there", "command": f"ip netns exec {name} true", "changed_when": False},
            {"name": "remove", "diff": True, **t(state="absent")},
            {"name": "remove again", **t(state="absent")},
            {"name": "bad name", "ignore_errors": True, **{"cnikit.cni.netns": {"name": "../etc"}}},
            {"name": "stale replaced", "cnikit.cni.netns": {"name": stale}},
            {"name": "stale lo", "command": f"ip -n {stale} -o link show lo", "changed_when": False},
        ]).ok()
    finally:
        subprocess.run(["ip", "netns", "del", stale], check=False)
    assert r["predict"]["changed"] is True and r["predict"]["state"]["state"] == "present"
    assert r["create"]["changed"] is True
    assert r["create"]["diff"]["before"] == {"name": name, "state": "absent"}
    assert r["create"]["diff"]["after"] == {"name": name, "state": "present", "path": _ns(name), "loopback": "up"}
    assert r["create"]["path"] == _ns(name)
    assert r["again"]["changed"] is False
    assert r["lo down predicted"]["changed"] is True
    assert r["lo down"]["changed"] is True and r["lo down again"]["changed"] is False
    assert "<LOOPBACK>" in r["lo in the kernel"]["stdout"]  # flags without UP
    assert r["remove predicted"]["changed"] is True
    assert r["remove"]["changed"] is True and r["remove"]["diff"]["after"]["state"] == "absent"
    assert r["remove again"]["changed"] is False
    assert not os.path.exists(_ns(name))
    assert "invalid network namespace name '../etc'" in r.failure("bad name")
    assert r["bad name"]["cni_code"] == 7
    assert r["stale replaced"]["changed"] is True and ",UP" in r["stale lo"]["stdout"]
