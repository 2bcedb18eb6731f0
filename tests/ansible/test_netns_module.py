"""cnikit.cni.netns through ansible-playbook: create, idempotence, check mode, diff, absent, bad input."""
from __future__ import annotations

import os
import subprocess


def _ns(name: str) -> str:
    return f"/run/netns/{name}"


def _lo_up(name: str) -> bool:
    out = subprocess.run(["ip", "-n", name, "-o", "link", "show", "lo"], capture_output=True, text=True, check=True)
    return ",UP" in out.stdout


def test_netns_lifecycle(play):
    name = f"anns{os.getpid()}"

    def t(**kw):
        return {"cnikit.cni.netns": {"name": name, **kw}}
    r = play([
        {"name": "predict", "check_mode": True, **t()},
        {"name": "after predict", "command": f"test ! -e {_ns(name)}", "changed_when": False},
        {"name": "create", "diff": True, **t()},
        {"name": "again", **t()},
        {"name": "lo down predicted", "check_mode": True, **t(loopback_up=False)},
        {"name": "lo down", **t(loopback_up=False)},
        {"name": "lo down again", **t(loopback_up=False)},
        {"name": "remove predicted", "check_mode": True, **t(state="absent")},
        {"name": "still there", "command": f"ip netns exec {name} true", "changed_when": False},
        {"name": "remove", "diff": True, **t(state="absent")},
        {"name": "remove again", **t(state="absent")},
        {"name": "bad name", "ignore_errors": True, **{"cnikit.cni.netns": {"name": "../etc"}}},
    ]).ok()
    assert r["predict"]["changed"] is True and r["predict"]["state"]["state"] == "present"
    assert r["create"]["changed"] is True
    assert r["create"]["diff"]["before"] == {"name": name, "state": "absent"}
    assert r["create"]["diff"]["after"] == {"name": name, "state": "present", "path": _ns(name), "loopback": "up"}
    assert r["create"]["path"] == _ns(name)
    assert r["again"]["changed"] is False
    assert r["lo down predicted"]["changed"] is True
    assert r["lo down"]["changed"] is True and r["lo down again"]["changed"] is False
    assert r["remove predicted"]["changed"] is True
    assert r["remove"]["changed"] is True and r["remove"]["diff"]["after"]["state"] == "absent"
    assert r["remove again"]["changed"] is False
    assert not os.path.exists(_ns(name))
    assert "invalid network namespace name '../etc'" in r.failure("bad name")
    assert r["bad name"]["cni_code"] == 7


def test_netns_stale_file_replaced(play):
    """A bare file left by a failed `ip netns add` is not a namespace: present replaces it."""
    name = f"ansst{os.getpid()}"
    with open(_ns(name), "w", encoding="ascii"):
        pass
    try:
        r = play([{"name": "fix", "cnikit.cni.netns": {"name": name}}]).ok()
        assert r["fix"]["changed"] is True
        assert _lo_up(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
