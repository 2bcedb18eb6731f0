"""The overlay pod network on a 4-node lab with a live `cnikit overlayd` on every node: three nodes
from the start, the fourth joins and leaves. Cross-node ping matrices through vxlan and host-gw,
encapsulation seen on the uplink, MTU, masquerade only out of the cluster CIDR, join/leave within
1 s everywhere, a restart that changes nothing, a lease-source outage that keeps the last state."""
from __future__ import annotations

import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import lab
from lab import overlay as ov

JOIN_LIMIT = 1.0  # seconds: the bound for a join/leave to show on every other node


def pod_ping(pid, dst, pod="p1", size=None, df=False):
    argv = ["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "2"]
    if size is not None:
        argv += ["-s", str(size)]
    if df:
        argv += ["-M", "do"]
    return lab.run_in(pid, argv + [dst], check=False).returncode == 0


def matrix(nodes, ips):
    """{(src, dst): ok} for every ordered pair of distinct nodes, pinged pod to pod."""
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = {(a["name"], b["name"]): pool.submit(pod_ping, a["pid"], ips[b["name"]])
                for a in nodes for b in nodes if a is not b}
        return {k: f.result() for k, f in jobs.items()}


def status(pid):
    out = lab.run_in(pid, ["cat", "/run/cnikit/overlay/status.json"], check=False).stdout
    return json.loads(out) if out else None


def counts(pid):
    e = ov.entries(pid)
    return len(e["routes"]), len(e["neigh"]), len(e["fdb"])


def dev_counter(pid, dev, which):
    """A link counter (/sys is the sandbox's, not the node's: ask netlink)."""
    stats = json.loads(lab.run_in(pid, ["ip", "-s", "-j", "link", "show", dev]).stdout)[0]["stats64"]
    return stats[which]["packets"]


@pytest.fixture(scope="module")
def cluster(lab_state, tmp_path_factory):
    state = lab.up(4, path=lab_state)
    lease_dir = str(tmp_path_factory.mktemp("leases"))
    leases = ov.plan(state["nodes"])
    first3, fourth = state["nodes"][:3], state["nodes"][3]
    for node in first3:
        ov.put_lease(lease_dir, leases[node["name"]])
    for node in state["nodes"]:
        ov.configure(node, lease_dir, resync=2.0)
    for node in first3:
        ov.start_daemon(node["pid"])
    for node in first3:
        ov.wait_for(lambda: (status(node["pid"]) or {}).get("leases") == 3, 20)
    ips = {n["name"]: ov.add_pod(n["pid"], "p1", ov.netconf(leases[n["name"]], status(n["pid"])["mtu"]))
           for n in first3}
    return {"state": state, "nodes": first3, "fourth": fourth, "leases": leases, "dir": lease_dir, "ips": ips}


def test_vxlan_ping_matrix_and_exact_entries(cluster):
    nodes, ips, leases = cluster["nodes"], cluster["ips"], cluster["leases"]
    assert ips == {"k8s-master": "10.244.1.2", "k8s-node01": "10.244.2.2", "k8s-node02": "10.244.3.2"}
    result = matrix(nodes, ips)
    assert all(result.values()), result
    for node in nodes:
        e = ov.entries(node["pid"])
        others = [leases[n["name"]] for n in nodes if n is not node]
        assert sorted(e["routes"]) == sorted(f"{l.subnet} via {l.vtep_ip} dev flannel.1 onlink" for l in others)
        assert sorted(e["neigh"]) == sorted(f"{l.vtep_ip} lladdr {l.vtep_mac} PERMANENT proto 241" for l in others)
        assert sorted(e["fdb"]) == sorted(f"{l.vtep_mac} dst {l.public_ip} self permanent" for l in others)


def test_traffic_is_encapsulated_in_udp_8472(cluster):
    a, b = cluster["nodes"][0], cluster["nodes"][1]
    tx0, rx0 = dev_counter(a["pid"], "flannel.1", "tx"), dev_counter(b["pid"], "flannel.1", "rx")
    # on b's uplink: UDP to 8472 carrying the inner ICMP; inside b's pod: the source is a's pod (no NAT)
    dump = subprocess.Popen(lab.nsenter(b["pid"], ["timeout", "10", "tcpdump", "-l", "-nn", "-i", "ens33", "-c", "2",
                                                    "udp", "dst", "port", "8472"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    inner = subprocess.Popen(lab.nsenter(b["pid"], ["ip", "netns", "exec", "p1", "timeout", "10", "tcpdump", "-l",
                                                    "-nn", "-i", "eth0", "-c", "1", "icmp"]),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # tcpdump attaches
    for _ in range(3):
        assert pod_ping(a["pid"], cluster["ips"]["k8s-node01"])
    out, inner_out = dump.communicate(timeout=15)[0], inner.communicate(timeout=15)[0]
    assert "192.168.80.100." in out and "192.168.80.101.8472" in out, out
    assert "10.244.1.2 > 10.244.2.2: ICMP echo request" in out, out  # tcpdump decodes the inner packet
    assert "10.244.1.2 > 10.244.2.2: ICMP echo request" in inner_out, inner_out
    assert dev_counter(a["pid"], "flannel.1", "tx") >= tx0 + 3
    assert dev_counter(b["pid"], "flannel.1", "rx") >= rx0 + 3


def test_pod_mtu_is_uplink_minus_50_and_masquerade_only_leaves_the_cluster(cluster):
    a = cluster["nodes"][0]
    assert "mtu 1450" in lab.run_in(a["pid"], ["ip", "-n", "p1", "link", "show", "eth0"]).stdout
    dst = cluster["ips"]["k8s-node02"]
    assert pod_ping(a["pid"], dst, size=1422, df=True)  # 1422 + 28 = 1450
    assert not pod_ping(a["pid"], dst, size=1423, df=True)
    # the underlay gateway has no route to 10.244/16: it answers only because the pod is masqueraded
    assert pod_ping(a["pid"], "192.168.80.2")
    rules = lab.run_in(a["pid"], ["nft", "list", "table", "ip", "cnikit_overlay"]).stdout
    assert "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade" in rules


def test_restart_changes_nothing(cluster):
    a = cluster["nodes"][0]
    before = ov.entries(a["pid"]), lab.run_in(a["pid"], ["ip", "-d", "link", "show", "flannel.1"]).stdout
    at = status(a["pid"])["at"]
    ov.stop_daemon(a["pid"])
    ov.start_daemon(a["pid"])
    ov.wait_for(lambda: status(a["pid"])["at"] > at, 20)
    assert status(a["pid"])["changes"] == {"added": 0, "removed": 0}
    assert (ov.entries(a["pid"]), lab.run_in(a["pid"], ["ip", "-d", "link", "show", "flannel.1"]).stdout) == before


def test_a_node_joins_and_leaves_everywhere_within_a_second(cluster):
    """The time is each daemon's `changed_at` (stamped right after the pass that changed its kernel)
    minus the lease file's write: the `ip` polling that checks the entries would itself take a good
    part of a second on this loaded 2-CPU machine."""
    nodes, new, leases = cluster["nodes"], cluster["fourth"], cluster["leases"]
    lease = leases[new["name"]]
    path = os.path.join(cluster["dir"], f"{lease.key}.json")
    try:
        written = time.time()
        ov.put_lease(cluster["dir"], lease)
        for n in nodes:
            ov.wait_for(lambda n=n: counts(n["pid"]) == (3, 3, 3), 10, step=0.05)
        joined = max(status(n["pid"])["changed_at"] for n in nodes) - written
        assert 0 < joined < JOIN_LIMIT, f"join in every kernel after {joined:.2f} s"
        ov.start_daemon(new["pid"])
        ov.wait_for(lambda: (status(new["pid"]) or {}).get("leases") == 4, 20)
        assert counts(new["pid"]) == (3, 3, 3)
        ip = ov.add_pod(new["pid"], "p1", ov.netconf(lease, status(new["pid"])["mtu"]))
        ips = dict(cluster["ips"], **{new["name"]: ip})
        result = matrix(nodes + [new], ips)
        assert all(result.values()), result
        # leave: its lease goes; every other node drops exactly its three entries
        written = time.time()
        os.unlink(path)
        for n in nodes:
            ov.wait_for(lambda n=n: counts(n["pid"]) == (2, 2, 2), 10, step=0.05)
        left = max(status(n["pid"])["changed_at"] for n in nodes) - written
        assert 0 < left < JOIN_LIMIT, f"leave in every kernel after {left:.2f} s"
        assert not any(lease.vtep_mac in " ".join(sum(ov.entries(n["pid"]).values(), [])) for n in nodes)
    finally:
        ov.stop_daemon(new["pid"])
        if os.path.exists(path):
            os.unlink(path)


def test_lease_source_outage_keeps_the_last_good_state(cluster):
    nodes, lease_dir = cluster["nodes"], cluster["dir"]
    snapshot = [ov.entries(n["pid"]) for n in nodes]
    hidden = lease_dir + ".away"
    os.rename(lease_dir, hidden)  # the source is gone (an etcd outage)
    try:
        time.sleep(3.0)  # longer than the resync period: the daemons keep trying
        assert [ov.entries(n["pid"]) for n in nodes] == snapshot
        assert all(matrix(nodes, cluster["ips"]).values())
        log = lab.run_in(nodes[0]["pid"], ["cat", "/run/cnikit/overlayd.log"]).stdout
        assert "lease source unavailable, keeping the last good state" in log
    finally:
        os.rename(hidden, lease_dir)
    ov.wait_for(lambda: "lease source back" in lab.run_in(nodes[0]["pid"], ["cat", "/run/cnikit/overlayd.log"]).stdout, 5)
    assert [ov.entries(n["pid"]) for n in nodes] == snapshot


def test_host_gw_ping_matrix_without_encapsulation(cluster):
    nodes, leases = cluster["nodes"], ov.plan(cluster["state"]["nodes"], backend="host-gw")
    for n in nodes:
        ov.stop_daemon(n["pid"])
        ov.overlayd(n["pid"], "--remove")
        ov.put_lease(cluster["dir"], leases[n["name"]])
        ov.configure(n, cluster["dir"], backend="host-gw", resync=2.0)
    for n in nodes:
        st = ov.overlayd(n["pid"], "--once")
        assert st["mtu"] == 1500 and st["refused"] == [] and st["entries"] == {"routes": 2, "neighbours": 0, "fdb": 0}
        assert "flannel.1" not in lab.run_in(n["pid"], ["ip", "link"]).stdout
        routes = ov.entries(n["pid"])["routes"]
        assert sorted(routes) == sorted(f"{leases[m['name']].subnet} via {m['ip']} dev ens33"
                                        for m in nodes if m is not n)
    a = nodes[0]
    dump = subprocess.Popen(lab.nsenter(nodes[1]["pid"], ["timeout", "8", "tcpdump", "-l", "-nn", "-i", "ens33",
                                                           "-c", "1", "icmp", "or", "udp", "port", "8472"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert pod_ping(a["pid"], cluster["ips"]["k8s-node01"])
    out = dump.communicate(timeout=15)[0]
    assert "10.244.1.2 > 10.244.2.2: ICMP echo request" in out and "8472" not in out, out
    # the pods' MTU was set for vxlan (1450); host-gw pods would get 1500 — pinging across still works
    result = matrix(nodes, cluster["ips"])
    assert all(result.values()), result


def test_udp_backend_relays_through_userspace(cluster):
    """flannel's first mode: flannel0 (tun), one route (the cluster CIDR into it), the daemon's relay
    carrying bare IP packets in UDP 8285 — and nothing of vxlan/host-gw left."""
    nodes, leases = cluster["nodes"], ov.plan(cluster["state"]["nodes"], backend="udp")
    for n in nodes:
        ov.stop_daemon(n["pid"])
        ov.overlayd(n["pid"], "--remove")
        ov.put_lease(cluster["dir"], leases[n["name"]])
        ov.configure(n, cluster["dir"], backend="udp", resync=2.0)
    for n in nodes:
        ov.start_daemon(n["pid"])
    for n in nodes:
        ov.wait_for(lambda n=n: (status(n["pid"]) or {}).get("backend") == "udp", 20)
        st = status(n["pid"])
        assert st["mtu"] == 1472 and st["entries"] == {"routes": 1, "neighbours": 0, "fdb": 0}
        assert ov.entries(n["pid"])["routes"] == ["10.244.0.0/16 dev flannel0"]
        assert "tun" in lab.run_in(n["pid"], ["ip", "-d", "link", "show", "flannel0"]).stdout
    b = nodes[1]
    dump = subprocess.Popen(lab.nsenter(b["pid"], ["timeout", "8", "tcpdump", "-l", "-nn", "-i", "ens33", "-c", "1",
                                                    "udp", "dst", "port", "8285"]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    assert pod_ping(nodes[0]["pid"], cluster["ips"]["k8s-node01"])
    out = dump.communicate(timeout=15)[0]
    assert "192.168.80.100." in out and "192.168.80.101.8285: UDP" in out, out
    result = matrix(nodes, cluster["ips"])
    assert all(result.values()), result
    for n in nodes:
        ov.stop_daemon(n["pid"])
