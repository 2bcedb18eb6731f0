"""Overlay node subnets (the ranges planner cutting the cluster CIDR) and the lease model/sources (pure)."""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "plugins", "module_utils"))
from cni.cluster import leases  # noqa: E402
from cni.state import subnets  # noqa: E402

NODES = ["k8s-master", "k8s-node01", "k8s-node02"]
IPS = {n: f"192.168.80.{100 + i}" for i, n in enumerate(NODES)}


def layout(plan):
    return {n: str(l.subnet) for n, l in plan.items()}


def test_flannel_layout_second_subnet_first():
    plan = subnets.plan(NODES, IPS)
    assert layout(plan) == {"k8s-master": "10.244.1.0/24", "k8s-node01": "10.244.2.0/24",
                            "k8s-node02": "10.244.3.0/24"}
    lease = plan["k8s-node01"]
    assert lease.key == "10.244.2.0-24" and str(lease.gateway) == "10.244.2.1" and str(lease.vtep_ip) == "10.244.2.0"
    assert lease.vtep_mac == "0e:c1:0a:f4:02:00"
    assert json.loads(lease.text()) == {"PublicIP": "192.168.80.101", "BackendType": "vxlan", "Node": "k8s-node01",
                                        "BackendData": {"VNI": 1, "VtepMAC": "0e:c1:0a:f4:02:00"}}


def test_stable_join_and_leave_through_persisted_files():
    first = subnets.plan(NODES, IPS)
    texts = {n: subnets.dump_persisted("overlay", "10.244.0.0/16", n, l) for n, l in first.items()}
    # node01 leaves; a new control-plane node sorting first joins: nobody moves, it takes the free subnet
    nodes = ["k8s-master2", "k8s-master", "k8s-node02"]
    ips = dict(IPS, **{"k8s-master2": "192.168.80.110"})
    kept = {n: subnets.persisted_subnet(texts.get(n, ""), "overlay", "10.244.0.0/16", 24) for n in nodes}
    again = subnets.plan(nodes, ips, persisted=kept)
    assert layout(again) == {"k8s-master2": "10.244.2.0/24", "k8s-master": "10.244.1.0/24",
                             "k8s-node02": "10.244.3.0/24"}


def test_persisted_of_another_size_or_network_is_replanned():
    text = subnets.dump_persisted("overlay", "10.244.0.0/16", "a", subnets.plan(["a"], {"a": "1.1.1.1"})["a"])
    assert subnets.persisted_subnet(text, "overlay", "10.244.0.0/16", 24) == "10.244.1.0/24"
    assert subnets.persisted_subnet(text, "overlay", "10.244.0.0/16", 25) is None
    assert subnets.persisted_subnet(text, "other", "10.244.0.0/16", 24) is None
    assert subnets.persisted_subnet("garbage", "overlay", "10.244.0.0/16", 24) is None


def test_whole_cidr_is_usable_to_the_last_subnet():
    nodes = [f"n{i}" for i in range(255)]
    plan = subnets.plan(nodes, {n: f"192.168.{i // 200}.{i % 200 + 1}" for i, n in enumerate(nodes)})
    assert str(plan["n254"].subnet) == "10.244.255.0/24"  # the last /24, broadcast address included
    with pytest.raises(subnets.PlanError, match="pool exhausted"):
        subnets.plan(nodes + ["one-more"], dict({n: l.public_ip for n, l in plan.items()}, **{"one-more": "9.9.9.9"}))


@pytest.mark.parametrize("kwargs, message", [
    (dict(overrides={"k8s-master": "10.244.2.0/24", "k8s-node01": "10.244.2.0/24"}), "overlap"),
    (dict(overrides={"k8s-master": "10.245.2.0/24"}), "not a /24 of the cluster network"),
    (dict(overrides={"k8s-master": "10.244.2.0/25"}), "not a /24"),
    (dict(subnet_len=16), "must be longer"),
    (dict(cluster_cidr="10.244.0.1/16"), "invalid cluster CIDR"),
    (dict(backend="ipip"), "unknown backend"),
    (dict(backend="host-gw", uplink_cidr="192.168.80.100/31"), r"host-gw needs every node on one L2 segment.*k8s-node02 \(192.168.80.102\)"),
])
def test_conflicts_are_refused_with_a_message(kwargs, message):
    with pytest.raises(subnets.PlanError, match=message):
        subnets.plan(NODES, IPS, **kwargs)


def test_node_ip_checks():
    with pytest.raises(subnets.PlanError, match="same node IP"):
        subnets.plan(NODES, dict(IPS, **{"k8s-node02": IPS["k8s-master"]}))
    with pytest.raises(subnets.PlanError, match="inside the cluster network"):
        subnets.plan(NODES, dict(IPS, **{"k8s-node02": "10.244.9.9"}))
    with pytest.raises(subnets.PlanError, match="no usable node IP"):
        subnets.plan(NODES, {"k8s-master": "x"})


def test_lease_parse_round_trip_and_errors():
    lease = subnets.plan(["a"], {"a": "192.168.80.100"})["a"]
    assert leases.parse(lease.key, lease.text()) == lease
    # a flannel-written lease (no Node, kernel MAC) parses too
    other = leases.parse("10.244.7.0-24", '{"PublicIP":"10.0.0.7","BackendType":"vxlan",'
                                          '"BackendData":{"VNI":1,"VtepMAC":"AA:BB:CC:00:11:22"}}')
    assert other.vtep_mac == "aa:bb:cc:00:11:22" and other.node == ""
    with pytest.raises(leases.LeaseError, match="not <subnet ip>-<prefix length>"):
        leases.parse("10.244.7.1-24", lease.text())
    with pytest.raises(leases.LeaseError, match="unknown BackendType"):
        leases.parse("10.244.7.0-24", '{"PublicIP":"10.0.0.7","BackendType":"ipip"}')
    with pytest.raises(leases.LeaseError, match="not a lease document"):
        leases.parse("10.244.7.0-24", "{")


def test_dir_source_reads_waits_and_reports_outage(tmp_path):
    src = leases.DirLeaseSource(str(tmp_path / "l"))
    with pytest.raises(leases.LeaseSourceError):
        src.leases()
    plan = subnets.plan(NODES, IPS)
    for lease in plan.values():
        assert leases.write_lease(src.path, lease)
    assert not leases.write_lease(src.path, plan["k8s-master"])  # same text: untouched
    assert sorted(src.leases()) == ["10.244.1.0-24", "10.244.2.0-24", "10.244.3.0-24"]
    # wait() returns as soon as the directory changes
    t = threading.Timer(0.2, src.remove, args=("10.244.2.0-24",))
    start = time.monotonic()
    t.start()
    src.wait(5)
    assert time.monotonic() - start < 2
    assert sorted(src.leases()) == ["10.244.1.0-24", "10.244.3.0-24"]
    start = time.monotonic()
    src.wait(0.2)  # nothing changed: the whole timeout
    assert time.monotonic() - start >= 0.19
