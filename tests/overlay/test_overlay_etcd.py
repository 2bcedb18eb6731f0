"""The overlay's node subnets from etcd (issue 16 item 1): a real etcd member on a 3-node lab, each
node's `cnikit overlayd` on `lease_source: etcd` acquiring its own subnet lease and programming
exactly three vxlan entries per peer from the others' leases; a lease deleted in etcd takes its
entries away (a live daemon follows the watch); etcd stopped keeps the last good state."""
from __future__ import annotations

import json
import time

import pytest

import lab
from lab import overlay as ov
from lab.etcd import Cluster

from cni.cluster.leases import parse

NODES = ("k8s-master", "k8s-node01", "k8s-node02")
PREFIX = "/cnikit/network/subnets/"


def etcdctl(env, *args, check=True):
    """etcdctl from a node (the test's own namespace has no route to the lab)."""
    conf = env["etcd_conf"]
    argv = ["etcdctl", f"--endpoints={','.join(conf['endpoints'])}", f"--cacert={conf['caFile']}",
            f"--cert={conf['certFile']}", f"--key={conf['keyFile']}", "--command-timeout=2s", *args]
    return lab.run_in(env["nodes"][1]["pid"], argv, check=check)


def etcd_records(env):
    out = etcdctl(env, "get", "--prefix", PREFIX).stdout.splitlines()
    return {k[len(PREFIX):]: v for k, v in zip(out[::2], out[1::2])}


def etcd_leases(env):
    return {k: parse(k, v) for k, v in etcd_records(env).items()}


def counts(pid):
    e = ov.entries(pid)
    return len(e["routes"]), len(e["neigh"]), len(e["fdb"])


def status(pid):
    out = lab.run_in(pid, ["cat", "/run/cnikit/overlay/status.json"], check=False).stdout
    return json.loads(out) if out else {}


def daemon_log(pid):
    return lab.run_in(pid, ["cat", "/run/cnikit/overlayd.log"], check=False).stdout


def join_all(env):
    """`--once` passes on every node (the first holds its lease, the second sees all), then the
    live daemon on the first."""
    for n in list(env["nodes"]) * 2:
        ov.overlayd(n["pid"], "--once")
    a = env["nodes"][0]
    if lab.run_in(a["pid"], ["sh", "-c", "kill -0 $(cat /run/cnikit/overlayd.pid)"], check=False).returncode:
        ov.start_daemon(a["pid"])
    ov.wait_for(lambda: status(a["pid"]).get("leases") == 3 and "holding subnet" in daemon_log(a["pid"]), 20)


def assert_exact_entries(node, leases):
    """Per peer exactly its route, ARP and FDB entry (the seed's three), nothing else of ours."""
    others = [le for le in leases.values() if le.node != node["name"]]
    e = ov.entries(node["pid"])
    assert sorted(e["routes"]) == sorted(f"{le.subnet} via {le.vtep_ip} dev flannel.1 onlink" for le in others)
    assert sorted(e["neigh"]) == sorted(f"{le.vtep_ip} lladdr {le.vtep_mac} PERMANENT proto 241" for le in others)
    assert sorted(e["fdb"]) == sorted(f"{le.vtep_mac} dst {le.public_ip} self permanent" for le in others)


@pytest.fixture(scope="module")
def env(lab_state, tmp_path_factory):
    state = lab.up(3, path=lab_state)
    etcd = Cluster.in_lab(state, str(tmp_path_factory.mktemp("etcd")), nodes=["k8s-master"])
    nodes = state["nodes"]
    out = {"state": state, "etcd": etcd, "nodes": nodes, "etcd_conf": etcd.config(timeout=1.0).to_dict()}
    try:
        etcd.start(wait=False)
        ov.wait_for(lambda: etcdctl(out, "endpoint", "health", check=False).returncode == 0, 20, step=0.2)
        for n in nodes:
            conf = {"node": n["name"], "cluster_cidr": ov.CLUSTER, "backend": {"type": "vxlan", "vni": 1},
                    "lease_source": "etcd", "etcd": out["etcd_conf"], "public_ip": n["ip"], "subnet_len": 24,
                    "lease_ttl": 60, "resync": 2.0}
            ov.write_file(n["pid"], ov.CONF, json.dumps(conf))
        yield out
    finally:
        ov.stop_daemon(nodes[0]["pid"])
        etcd.stop()


def test_nodes_acquire_subnets_and_program_three_entries_per_peer(env):
    nodes = env["nodes"]
    first = [ov.overlayd(n["pid"], "--once") for n in nodes]  # each acquires its lease, sees those before it
    assert [s["subnet"] for s in first] == ["10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]
    assert [s["leases"] for s in first] == [1, 2, 3]
    leases = etcd_leases(env)
    assert sorted((le.node, str(le.subnet), str(le.public_ip), le.vni) for le in leases.values()) == [
        (n["name"], f"10.244.{i + 1}.0/24", n["ip"], 1) for i, n in enumerate(nodes)]
    # the record itself carries the subnet-derived VTEP MAC (parse would derive a missing one)
    assert [json.loads(v)["BackendData"] for v in etcd_records(env).values()] == [
        {"VNI": 1, "VtepMAC": f"0e:c1:0a:f4:0{i + 1}:00"} for i in range(3)]
    again = [ov.overlayd(n["pid"], "--once") for n in nodes]
    for n, st in zip(nodes, again):
        assert st["leases"] == 3 and st["entries"] == {"routes": 2, "neighbours": 2, "fdb": 2}
        assert_exact_entries(n, leases)
    # a restart keeps the node's subnet (its lease is found and refreshed) and changes nothing
    third = ov.overlayd(nodes[0]["pid"], "--once")
    assert third["subnet"] == "10.244.1.0/24" and third["changes"] == {"added": 0, "removed": 0}
    assert len(etcd_leases(env)) == 3


def test_a_lease_removed_in_etcd_takes_its_entries_away(env):
    a, b, c = env["nodes"]
    join_all(env)  # a's live daemon follows the etcd watch
    gone = etcd_leases(env)["10.244.3.0-24"]
    removed_at = time.time()
    etcdctl(env, "del", PREFIX + "10.244.3.0-24")
    ov.wait_for(lambda: counts(a["pid"]) == (1, 1, 1), 10, step=0.05)
    assert status(a["pid"])["changed_at"] - removed_at < 1.0  # the bound (the watch wakes the daemon)
    assert ov.overlayd(b["pid"], "--once")["entries"] == {"routes": 1, "neighbours": 1, "fdb": 1}
    for n in (a, b):
        assert gone.vtep_mac not in " ".join(sum(ov.entries(n["pid"]).values(), []))
        assert_exact_entries(n, etcd_leases(env))
    # the node comes back: acquires its subnet again, the live daemon adds it within the watch
    assert ov.overlayd(c["pid"], "--once")["subnet"] == "10.244.3.0/24"
    ov.wait_for(lambda: counts(a["pid"]) == (2, 2, 2), 10, step=0.05)
    assert_exact_entries(a, etcd_leases(env))


def test_etcd_stopped_keeps_the_last_good_state(env):
    nodes, etcd = env["nodes"], env["etcd"]
    a, b = nodes[0], nodes[1]
    join_all(env)
    snapshot = [ov.entries(n["pid"]) for n in nodes]
    assert [counts(n["pid"]) for n in nodes] == [(2, 2, 2)] * 3
    etcd.stop()
    try:
        st = ov.overlayd(b["pid"], "--once")
        assert "etcd" in (st.get("error") or ""), st
        time.sleep(3.0)  # longer than the live daemon's resync: it keeps trying, changes nothing
        assert [ov.entries(n["pid"]) for n in nodes] == snapshot
        assert "lease source unavailable, keeping the last good state" in daemon_log(a["pid"])
    finally:
        etcd.start(wait=False)
    ov.wait_for(lambda: "lease source back" in daemon_log(a["pid"]), 20, step=0.2)
    assert [ov.entries(n["pid"]) for n in nodes] == snapshot


def test_remove_releases_the_nodes_subnet_in_etcd(env):
    a, b, c = env["nodes"]
    join_all(env)
    out = ov.overlayd(c["pid"], "--remove")
    assert out["released"] is True and out["removed"] > 0, out
    assert "10.244.3.0-24" not in etcd_leases(env) and len(etcd_leases(env)) == 2
    assert "flannel.1" not in lab.run_in(c["pid"], ["ip", "link"]).stdout
    ov.wait_for(lambda: counts(a["pid"]) == (1, 1, 1), 10, step=0.05)  # peers drop it
    assert ov.overlayd(c["pid"], "--remove")["released"] is False  # twice: nothing left to give back
