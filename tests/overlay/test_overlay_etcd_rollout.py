"""site.yml with cni_pod_network=overlay and overlay_lease_source=etcd on a 3-node lab: check mode on
the fresh lab changes nothing; the etcd role runs members on the nodes, every node's daemon acquires its subnet in etcd, the pods' conflist uses
that subnet, pods ping across nodes, a re-run and a check-mode run change nothing, and the reset releases every key."""
from __future__ import annotations

import json
import os
import shutil

import pytest

import lab
from lab import overlay as ov
from lab import play

SITE = os.path.join(play.ROOT, "playbooks", "site.yml")
PREFIX = "/cnikit/network/subnets/"


@pytest.fixture(scope="module")
def engine():
    path = play.engine_snapshot()
    yield path
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


# The nodes' engine needs etcd3gw (docs/cluster-state.md: the cni_plugins role does not install it
# yet; Debian's python3-etcd3gw is not on this machine): the project's venv interpreter has it.
VENV_PYTHON = os.path.join(play.ROOT, ".venv", "bin", "python3")


def site(lab_state, engine, pki, *args):
    return play.playbook(SITE, ["-e", f"cni_plugins_python={VENV_PYTHON}","-e", "cni_pod_network=overlay", "-e", "overlay_lease_source=etcd",
                                "-e", f"etcd_pki_dir={pki}", "-e", "etcd_member_group=k8s_cluster",
                                "-e", f"cni_plugins_engine_src={engine}", *args],
                         extra_env={"CNIKIT_LAB_STATE": lab_state})


def etcd_subnets(node):
    d = "/etc/cni/cnikit-etcd"
    out = lab.run_in(node["pid"], ["etcdctl", "--endpoints=https://192.168.80.100:2379", f"--cacert={d}/ca.crt",
                                   f"--cert={d}/client.crt", f"--key={d}/client.key", "--command-timeout=3s",
                                   "get", "--prefix", PREFIX]).stdout.splitlines()
    return {json.loads(v)["Node"]: k[len(PREFIX):] for k, v in zip(out[::2], out[1::2])}


def test_overlay_on_etcd_leases_rollout_rerun_and_reset(lab_state, engine, tmp_path_factory):
    state = lab.up(3, path=lab_state)
    nodes = state["nodes"]
    pki = str(tmp_path_factory.mktemp("etcd-pki"))
    fresh = site(lab_state, engine, pki, "--check")  # no etcd, no config yet: reports, changes nothing
    assert fresh.rc == 0 and fresh.changed > 0, fresh.output[-4000:]
    for n in nodes:
        assert lab.run_in(n["pid"], ["test", "-e", ov.CONF], check=False).returncode != 0
        assert "flannel.1" not in lab.run_in(n["pid"], ["ip", "-br", "link"]).stdout
    first = site(lab_state, engine, pki)
    assert first.rc == 0, first.output[-4000:]
    held = etcd_subnets(nodes[0])
    assert sorted(held.values()) == ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"], held
    for n in nodes:
        conf = json.loads(lab.run_in(n["pid"], ["cat", "/etc/cni/net.d/10-overlay.conflist"]).stdout)
        rng = conf["plugins"][0]["ipam"]["ranges"][0][0]
        assert rng["subnet"].replace("/", "-") == held[n["name"]] and rng["gateway"].endswith(".1")
        daemon_conf = json.loads(lab.run_in(n["pid"], ["cat", ov.CONF]).stdout)
        assert daemon_conf["lease_source"] == "etcd" and "lease_dir" not in daemon_conf
        ov.wait_for(lambda n=n: [len(v) for v in ov.entries(n["pid"]).values()] == [2, 2, 2], 15, step=0.1)
    ips = {}
    env = "CNI_PATH=/opt/cni/bin NETCONFPATH=/etc/cni/net.d"
    for n in nodes:
        lab.run_in(n["pid"], ["ip", "netns", "add", "p1"])
        out = lab.run_in(n["pid"], ["sh", "-c", f"{env} /opt/cni/bin/cnikit net add overlay /run/netns/p1"]).stdout
        ips[n["name"]] = json.loads(out)["ips"][0]["address"].split("/")[0]
    for a in nodes:
        for b in nodes:
            if a is not b:
                assert lab.run_in(a["pid"], ["ip", "netns", "exec", "p1", "ping", "-c1", "-W2", ips[b["name"]]],
                                  check=False).returncode == 0, (a["name"], b["name"])

    again = site(lab_state, engine, pki)
    assert again.rc == 0 and again.changed == 0, again.output[-4000:]
    assert etcd_subnets(nodes[0]) == held  # same subnets
    check = site(lab_state, engine, pki, "--check")  # --check reads the node's lease, writes nothing
    assert check.rc == 0 and check.changed == 0, check.output[-4000:]

    for n in nodes:
        lab.run_in(n["pid"], ["sh", "-c", f"{env} /opt/cni/bin/cnikit net del overlay /run/netns/p1 && ip netns del p1"])
    reset = site(lab_state, engine, pki, "-e", "overlay_state=absent")
    assert reset.rc == 0, reset.output[-4000:]
    assert etcd_subnets(nodes[0]) == {}  # every node gave its subnet back
    for n in nodes:
        assert "flannel.1" not in lab.run_in(n["pid"], ["ip", "-br", "link"]).stdout
        assert lab.run_in(n["pid"], ["ip", "route", "show", "proto", "241"]).stdout == ""
