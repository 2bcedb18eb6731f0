"""The overlay datapath on one node (a fresh netns with a veth uplink): exactly three entries per
remote node for vxlan, one route for host-gw, idempotence, join/leave/change, entries we did not
write left alone, refusals, removal."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402,F401 - puts the engine on sys.path
from cni.cluster import leases  # noqa: E402
from cni.net.ns import in_netns  # noqa: E402
from cni.net.rtnl import rtnl  # noqa: E402
from cni.node.overlay import datapath  # noqa: E402
from cni.state import subnets  # noqa: E402

NODES = [f"n{i}" for i in range(5)]
IPS = {n: f"192.168.80.{100 + i}" for i, n in enumerate(NODES)}
VXLAN = datapath.Backend("vxlan", 1, 8472)


def ip(ns, *argv, check=True):
    return subprocess.run(["ip", "-n", ns, *argv], check=check, capture_output=True, text=True).stdout


@pytest.fixture
def node(netns):
    """netns `node`: ens33 192.168.80.100/24 (a veth with its peer in the same netns), mtu 1500."""
    ip(netns, "link", "add", "ens33", "type", "veth", "peer", "name", "ens33p")
    ip(netns, "addr", "add", "192.168.80.100/24", "dev", "ens33")
    ip(netns, "link", "set", "ens33", "up")
    ip(netns, "link", "set", "ens33p", "up")
    return netns


def reconcile(ns, own, lset, backend=VXLAN):
    with in_netns(f"/run/netns/{ns}"):
        ipr = rtnl()
        try:
            done = datapath.reconcile(ipr, own, lset, backend)
            return done.changes, done.refused, done.node
        finally:
            ipr.close()


def shown(ns):
    routes = ip(ns, "route", "show", "proto", "241").splitlines()
    neigh = ip(ns, "neigh", "show", "dev", "flannel.1", "nud", "permanent", check=False).splitlines()
    fdb = [l for l in subprocess.run(["ip", "netns", "exec", ns, "bridge", "fdb", "show", "dev", "flannel.1"],
                                     capture_output=True, text=True).stdout.splitlines() if " dst " in l]
    return sorted(r.strip() for r in routes), sorted(n.strip() for n in neigh), sorted(f.strip() for f in fdb)


def test_vxlan_three_entries_per_remote_node_exactly(node):
    plan = subnets.plan(NODES, IPS)
    changes, refused, dp = reconcile(node, plan["n0"], plan.values())
    assert refused == [] and changes == {"added": 12, "removed": 0} and dp.mtu == 1450
    routes, neigh, fdb = shown(node)
    assert routes == [f"10.244.{i}.0/24 via 10.244.{i}.0 dev flannel.1 onlink" for i in range(2, 6)]
    assert neigh == [f"10.244.{i}.0 lladdr 0e:c1:0a:f4:0{i}:00 PERMANENT proto 241" for i in range(2, 6)]
    assert fdb == sorted(f"0e:c1:0a:f4:0{i}:00 dst 192.168.80.{99 + i} self permanent" for i in range(2, 6))
    detail = ip(node, "-d", "link", "show", "flannel.1")
    for part in ("mtu 1450", "link/ether 0e:c1:0a:f4:01:00", "vxlan id 1 local 192.168.80.100 dev ens33",
                 "dstport 8472", "nolearning"):
        assert part in detail
    assert "inet 10.244.1.0/32" in ip(node, "addr", "show", "dev", "flannel.1")
    # a second pass (a daemon restart) changes nothing; the kernel state is byte-identical
    before = shown(node), ip(node, "-d", "link", "show", "flannel.1")
    assert reconcile(node, plan["n0"], plan.values())[0] == {"added": 0, "removed": 0}
    assert (shown(node), ip(node, "-d", "link", "show", "flannel.1")) == before


def test_join_leave_and_changed_peer(node):
    plan = subnets.plan(NODES, IPS)
    reconcile(node, plan["n0"], [plan["n0"], plan["n1"]])
    assert [len(x) for x in shown(node)] == [1, 1, 1]
    reconcile(node, plan["n0"], plan.values())  # three join
    assert [len(x) for x in shown(node)] == [4, 4, 4]
    moved = leases.Lease(plan["n2"].subnet, plan["n2"].public_ip + 50, "vxlan", 1, plan["n2"].vtep_mac, "n2")
    lset = [plan["n0"], plan["n1"], moved]  # n3, n4 leave; n2's node IP changes
    assert reconcile(node, plan["n0"], lset)[0] == {"added": 1, "removed": 7}
    routes, neigh, fdb = shown(node)
    assert len(routes) == len(neigh) == 2 and fdb == sorted(["0e:c1:0a:f4:02:00 dst 192.168.80.101 self permanent",
                                                             "0e:c1:0a:f4:03:00 dst 192.168.80.152 self permanent"])


def test_entries_we_did_not_write_are_never_touched(node):
    plan = subnets.plan(NODES, IPS)
    reconcile(node, plan["n0"], plan.values())
    # foreign: a static route, a neighbour without our protocol, an FDB entry with another MAC, a route
    # to a remote pod subnet someone else owns (so ours cannot be added: reported, not replaced)
    ip(node, "route", "add", "10.99.0.0/16", "via", "192.168.80.2")
    ip(node, "neigh", "add", "10.244.77.0", "lladdr", "02:00:00:00:00:77", "dev", "flannel.1", "nud", "permanent")
    subprocess.run(["ip", "netns", "exec", node, "bridge", "fdb", "append", "02:00:00:00:00:77", "dev", "flannel.1",
                    "dst", "192.168.80.77", "self", "permanent"], check=True)
    foreign = shown(node), ip(node, "route", "show", "10.99.0.0/16")
    assert reconcile(node, plan["n0"], [plan["n0"]])[0] == {"added": 0, "removed": 12}  # everyone left
    routes, neigh, fdb = shown(node)
    assert routes == [] and neigh == ["10.244.77.0 lladdr 02:00:00:00:00:77 PERMANENT"]
    assert fdb == ["02:00:00:00:00:77 dst 192.168.80.77 self permanent"]
    assert ip(node, "route", "show", "10.99.0.0/16") == foreign[1] != ""


def test_host_gw_one_route_per_peer_and_refuses_off_segment_peers(node):
    plan = subnets.plan(NODES, dict(IPS, n4="10.0.0.4"), backend="host-gw")
    changes, refused, dp = reconcile(node, plan["n0"], plan.values(), datapath.Backend("host-gw"))
    assert dp.mtu == 1500 and dp.device_index == 0 and changes == {"added": 3, "removed": 0}
    assert shown(node)[0] == [f"10.244.{i}.0/24 via 192.168.80.{99 + i} dev ens33" for i in range(2, 5)]
    assert refused == ["host-gw: peer n4 (10.0.0.4) is not on this node's L2 segment (192.168.80.0/24): "
                       "no route to 10.244.5.0/24; use backend vxlan"]
    assert "flannel.1" not in ip(node, "link")
    # switching the backend replaces the routes (vxlan ones are ours too) and builds the device
    reconcile(node, plan["n0"], plan.values(), VXLAN)
    assert [len(x) for x in shown(node)] == [4, 4, 4]


def test_refuses_a_foreign_flannel_device_and_rebuilds_a_changed_one(node):
    plan = subnets.plan(NODES, IPS)
    ip(node, "link", "add", "flannel.1", "type", "bridge")
    with pytest.raises(datapath.DatapathError, match="flannel.1 exists and is a bridge link, not ours"):
        reconcile(node, plan["n0"], plan.values())
    ip(node, "link", "del", "flannel.1")
    reconcile(node, plan["n0"], plan.values())
    reconcile(node, plan["n0"], plan.values(), datapath.Backend("vxlan", 1, 4789))  # port changed: rebuilt
    assert "dstport 4789" in ip(node, "-d", "link", "show", "flannel.1")
    assert [len(x) for x in shown(node)] == [4, 4, 4]


def test_no_uplink_is_a_clear_error(node):
    plan = subnets.plan(["n0", "x"], {"n0": "192.168.81.1", "x": "192.168.81.2"})
    with pytest.raises(datapath.DatapathError, match="no link holds this node's PublicIP 192.168.81.1"):
        reconcile(node, plan["n0"], plan.values())


def test_remove_takes_only_ours(node):
    plan = subnets.plan(NODES, IPS)
    reconcile(node, plan["n0"], plan.values())
    ip(node, "route", "add", "10.99.0.0/16", "via", "192.168.80.2")
    with in_netns(f"/run/netns/{node}"):
        ipr = rtnl()
        assert datapath.remove(ipr, VXLAN) == 4 + 1  # 4 routes, the device (masq table was never made)
        ipr.close()
    assert "flannel.1" not in ip(node, "link") and ip(node, "route", "show", "proto", "241") == ""
    assert ip(node, "route", "show", "10.99.0.0/16") != ""


def test_a_foreign_route_to_a_pod_subnet_is_reported_not_replaced(node):
    plan = subnets.plan(NODES, IPS)
    ip(node, "route", "add", "10.244.3.0/24", "via", "192.168.80.2")
    changes, refused, _ = reconcile(node, plan["n0"], plan.values())
    assert changes == {"added": 11, "removed": 0}
    assert refused == ["a route to 10.244.3.0/24 exists and is not ours: left alone, 10.244.3.0/24 stays "
                       "unreachable through the overlay until it is removed"]
    assert ip(node, "route", "show", "10.244.3.0/24").strip() == "10.244.3.0/24 via 192.168.80.2 dev ens33"


def test_incremental_pass_and_drift_repaired_by_a_full_pass(node):
    """What the daemon does: a lease change is applied against what the last pass left (3 requests for a
    join, no kernel read); a deleted route (drift) is put back by the next full pass (its resync)."""
    plan = subnets.plan(NODES, IPS)
    four = [plan[n] for n in NODES[:4]]
    with in_netns(f"/run/netns/{node}"):
        ipr = rtnl()
        try:
            first = datapath.reconcile(ipr, plan["n0"], four, VXLAN)
            assert first.changes == {"added": 9, "removed": 0}
            sent = []
            real_send = ipr.send
            ipr.send = lambda data: (sent.append(data), real_send(data))[1]
            step = datapath.reconcile(ipr, plan["n0"], plan.values(), VXLAN, first.node, first.want)
            assert step.changes == {"added": 3, "removed": 0} and len(sent) == 3  # no dump, no link lookups
            ipr.send = real_send
            ip(node, "route", "del", "10.244.3.0/24")  # drift
            assert datapath.reconcile(ipr, plan["n0"], plan.values(), VXLAN, step.node, step.want).changes == \
                {"added": 0, "removed": 0}  # an incremental pass does not read the kernel
            assert datapath.reconcile(ipr, plan["n0"], plan.values(), VXLAN).changes == {"added": 1, "removed": 0}
        finally:
            ipr.close()
    assert [len(x) for x in shown(node)] == [4, 4, 4]
