"""site.yml with cni_pod_network=overlay on a 3-node lab: a host-gw plan across L2 segments fails
before any node changes, check mode changes nothing, the rollout works (pods ping across nodes),
a re-run changes nothing, and state=absent takes every trace of the overlay off the nodes."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import lab
from lab import overlay as ov
from lab import play

SITE = os.path.join(play.ROOT, "playbooks", "site.yml")


@pytest.fixture(scope="module")
def engine():
    """A frozen copy of the engine (as the demo and molecule use): an edit to the tree during the run
    must not look like an engine upgrade between two runs."""
    path = play.engine_snapshot()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def site(lab_state, engine, *args):
    return play.playbook(SITE, ["-e", "cni_pod_network=overlay", "-e", f"cni_plugins_engine_src={engine}", *args],
                         extra_env={"CNIKIT_LAB_STATE": lab_state})


def snapshot(state):
    out = {}
    for n in state["nodes"]:
        files = lab.run_in(n["pid"], ["sh", "-c", "find /etc/cni /var/lib/cni /run/cnikit 2>/dev/null | sort"]).stdout
        links = lab.run_in(n["pid"], ["ip", "-br", "link"]).stdout
        routes = lab.run_in(n["pid"], ["ip", "route"]).stdout
        nft = lab.run_in(n["pid"], ["nft", "list", "ruleset"]).stdout
        out[n["name"]] = (files, links, routes, nft)
    return out


def test_overlay_rollout_check_idempotence_and_reset(lab_state, engine):
    state = lab.up(3, path=lab_state)
    nodes = state["nodes"]
    before = snapshot(state)
    wrong = site(lab_state, engine, "-e", "cni_pod_network=calico")  # the later -e wins
    assert wrong.rc != 0 and "cni_pod_network must be macvlan, overlay or routed, not calico" in wrong.output
    # host-gw with a node off the segment: refused in the plan, nothing on any node changes
    bad = site(lab_state, engine, "-e", "overlay_backend=host-gw", "-e", '{"overlay_node_ip": "10.9.9.9"}',
               "--limit", "all")
    text = " ".join(bad.output.split())
    assert bad.rc != 0 and "node subnet plan for network 'overlay' rejected, no node changed" in text, text[-3000:]
    assert "same node IP" in text  # every node claims 10.9.9.9: caught before the segment check
    assert snapshot(state) == before

    check = site(lab_state, engine, "--check")
    assert check.rc == 0, check.output[-4000:]
    assert check.changed > 0 and snapshot(state) == before

    first = site(lab_state, engine)
    assert first.rc == 0, first.output[-4000:]
    for n in nodes:
        conf = json.loads(lab.run_in(n["pid"], ["cat", "/etc/cni/net.d/10-overlay.conflist"]).stdout)
        assert conf["plugins"][0]["mtu"] == 1450 and conf["plugins"][0]["bridge"] == "cni0"
        assert [len(v) for v in ov.entries(n["pid"]).values()] == [2, 2, 2]
    subnets = {n["name"]: json.loads(lab.run_in(n["pid"], ["cat", "/run/cnikit/overlay/status.json"]).stdout)["subnet"]
               for n in nodes}
    assert subnets == {"k8s-master": "10.244.1.0/24", "k8s-node01": "10.244.2.0/24", "k8s-node02": "10.244.3.0/24"}
    ips = {}
    for n in nodes:
        lab.run_in(n["pid"], ["ip", "netns", "add", "p1"])
        env = f"CNI_PATH=/opt/cni/bin NETCONFPATH=/etc/cni/net.d"
        out = lab.run_in(n["pid"], ["sh", "-c", f"{env} /opt/cni/bin/cnikit net add overlay /run/netns/p1"]).stdout
        ips[n["name"]] = json.loads(out)["ips"][0]["address"].split("/")[0]
    for a in nodes:
        for b in nodes:
            if a is not b:
                assert lab.run_in(a["pid"], ["ip", "netns", "exec", "p1", "ping", "-c1", "-W2", ips[b["name"]]],
                                  check=False).returncode == 0, (a["name"], b["name"])

    again = site(lab_state, engine)
    assert again.rc == 0 and again.changed == 0, again.output[-4000:]

    for n in nodes:  # the pods go first, as a drain would take them
        env = f"CNI_PATH=/opt/cni/bin NETCONFPATH=/etc/cni/net.d"
        lab.run_in(n["pid"], ["sh", "-c", f"{env} /opt/cni/bin/cnikit net del overlay /run/netns/p1 && ip netns del p1"])
    daemons = [int(lab.run_in(n["pid"], ["cat", "/run/cnikit/overlay/overlayd.pid"]).stdout.split()[0]) for n in nodes]
    assert all(os.path.exists(f"/proc/{pid}") for pid in daemons)
    reset = site(lab_state, engine, "-e", "overlay_state=absent")
    assert reset.rc == 0, reset.output[-4000:]
    for n in nodes:
        links = lab.run_in(n["pid"], ["ip", "-br", "link"]).stdout
        assert "flannel.1" not in links and "cni0" not in links
        assert lab.run_in(n["pid"], ["ip", "route", "show", "proto", "241"]).stdout == ""
        assert "cnikit_overlay" not in lab.run_in(n["pid"], ["nft", "list", "tables"]).stdout
        left = lab.run_in(n["pid"], ["sh", "-c", "find /etc/cni /var/lib/cni /run 2>/dev/null | grep -e overlay -e cnikit"],
                          check=False).stdout
        # the node agent's socket, pid and log belong to role cni_plugins (on by default), which stays
        agent = {"/run/cni/cnikit.sock", "/run/cni/cnikit-agent.pid", "/run/cni/cnikit-agent.log"}
        left = "".join(line + "\n" for line in left.splitlines() if line not in agent)
        assert left == "", left  # no file, and no directory the role made
    ov.wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") and not _zombie(pid) for pid in daemons), 10)


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
