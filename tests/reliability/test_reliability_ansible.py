"""Ansible side: check_mode never changes the system (links, addresses, routes, rules and files are
snapshotted before and after), in both directions (creating and tearing down); a play interrupted
mid-way converges on re-run and is idempotent afterwards."""
from __future__ import annotations

import json
import os
import sys

import pytest

import cnitest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ansible"))
from ansible_harness import make_collections_root, run_playbook  # noqa: E402

NS = "relpod"
SYSSTATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sysstate.py")


def snap(tmp, name: str) -> dict:
    """A task taking a system snapshot (sysstate.py) between module tasks."""
    return {"name": name, "changed_when": False, "check_mode": False,
            "ansible.builtin.command": {"argv": [sys.executable, SYSSTATE, NS, str(tmp / "work"), "/var/lib/cni",
                                                 "/etc/cni"]}}


def tasks(tmp, present: bool = True, fail_at: int = -1) -> list:
    """One desired state over every module: a netns, a veth pair into it, a macvlan, a portmap, a
    conflist written by cni_config and attached by cni_network. `fail_at` inserts a failing task."""
    work = tmp / "work"
    state = "present" if present else "absent"
    conflist = {"cniVersion": "1.0.0", "name": "relnet", "plugins": [
        {"type": "macvlan", "master": "relv0", "mode": "bridge",
         "ipam": {"type": "host-local", "dataDir": str(work / "ipam"), "ranges": [[{"subnet": "10.93.0.0/24"}]]}}]}
    net = {"name": "relnet", "conf_dir": str(work / "conf"), "cache_dir": str(work / "cache"),
           "cni_path": [cnitest.OUR_BIN], "container_id": "relctr", "netns": NS, "ifname": "net2",
           "state": state}
    steps = [
        {"name": "netns", "cnikit.cni.netns": {"name": NS, "state": "present"}},
        {"name": "veth", "cnikit.cni.veth": {"name": "relv0", "addresses": ["10.91.0.1/24"], "state": state,
                                             "peer": {"name": "eth1", "netns": NS, "addresses": ["10.91.0.2/24"]}}},
        {"name": "macvlan", "cnikit.cni.macvlan": {"name": "relmv", "master": "relv0", "netns": NS,
                                                   "addresses": ["10.92.0.5/24"], "state": state}},
        {"name": "portmap", "cnikit.cni.portmap": {"network": "relnet", "container_id": "relctr",
                                                   "container_ip": ["10.91.0.2"], "state": state,
                                                   "mappings": [{"host_port": 28080, "container_port": 80}]}},
        {"name": "config", "cnikit.cni.cni_config": {"name": "relnet", "config": conflist, "conf_dir": str(work / "conf"),
                                                     "cni_path": [cnitest.OUR_BIN], "state": state}},
        {"name": "attach", "cnikit.cni.cni_network": net},
    ]
    if not present:  # tear down in reverse; the netns goes last
        steps = steps[1:][::-1] + [{"name": "netns gone", "cnikit.cni.netns": {"name": NS, "state": "absent"}}]
    if fail_at >= 0:
        steps.insert(fail_at, {"name": "interrupted", "ansible.builtin.fail": {"msg": "interrupted mid-way"}})
    return steps


@pytest.fixture
def ansible_play(sandbox, tmp_path):
    root = make_collections_root(str(tmp_path / "colls"))
    (tmp_path / "work" / "conf").mkdir(parents=True)
    done = {"clean": False}

    def run(steps):
        book = tmp_path / "play.yml"
        book.write_text(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": steps}]))
        return run_playbook(root, str(book))

    yield run, done
    if not done["clean"]:  # the test stopped early: take its state down
        run(tasks(tmp_path, present=False))
        cnitest.sh(f"ip netns del {NS}; ip link del relv0", check=False)


def state(play, name: str) -> dict:
    return json.loads(play[name]["stdout"])


def renamed(steps, prefix: str, **keywords) -> list:
    return [dict(t, name=f"{prefix} {t['name']}", **keywords) for t in steps]


def test_check_mode_never_changes_the_system_and_interrupted_play_converges(ansible_play, tmp_path):
    run, done = ansible_play
    # 1. check mode on a clean node, then a play interrupted after the portmap task
    first = run([snap(tmp_path, "s0"), *renamed(tasks(tmp_path)[:1], "predict", check_mode=True),
                 snap(tmp_path, "s1"), *tasks(tmp_path, fail_at=4)])
    assert first["predict netns"]["changed"] is True
    assert state(first, "s1") == state(first, "s0"), "check mode changed the system"
    assert first.rc != 0 and first["interrupted"]["_status"] == "failed"
    assert "config" not in first.results and "attach" not in first.results

    # 2. re-run converges; then: again (idempotent), check mode of the teardown (every module predicts
    #    a change, none acts), and the real teardown
    up, down = tasks(tmp_path), tasks(tmp_path, present=False)
    second = run([*up, snap(tmp_path, "converged"),
                  *renamed(up, "again"), snap(tmp_path, "s2"),
                  *renamed(down, "predict teardown", check_mode=True), snap(tmp_path, "s4"),
                  *down, snap(tmp_path, "s5")]).ok()
    converged = state(second, "converged")
    assert "10.91.0.2" in json.dumps(converged[f"ns:{NS}"]["addrs"]) and "28080" in converged["nft"]
    assert sum("/ipam/relnet/10.93." in p for p in converged["files"]) == 1  # the attachment's lease
    for prefix, snap_name, expect in (("again", "s2", False), ("predict teardown", "s4", True)):
        got = {n: r["changed"] for n, r in second.results.items() if n.startswith(prefix + " ")}
        assert got and all(v is expect for v in got.values()), (prefix, got)
        assert state(second, snap_name) == converged, f"{prefix}: the system changed"
    gone = state(second, "s5")
    done["clean"] = True
    assert NS not in gone["netns"] and "relv0" not in json.dumps(gone["root"]["links"])
    assert "28080" not in gone["nft"] and not any("/ipam/relnet/10.93." in p for p in gone["files"])
