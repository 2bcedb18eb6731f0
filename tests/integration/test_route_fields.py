"""CNI 1.1 route fields (and the interface `mtu`) on the live kernel: `mtu`, `advmss`, `priority`, `table`, `scope` of the
IPAM routes are set on the container's routes, CHECK finds them (in their table, with those
values) and fails when the kernel's route drifts. No Go 1.1.1 oracle exists for these fields (Go
applies them from plugins v1.5 / libcni 1.1): the expected kernel state is the spec's."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402

ROUTES = [
    {"dst": "0.0.0.0/0", "mtu": 1300, "advmss": 1200, "priority": 50},
    {"dst": "10.30.0.0/16", "gw": "10.21.0.254", "table": 100, "priority": 7},
    {"dst": "fd00:31::/64", "gw": "fd00:21::1", "mtu": 1280, "table": 200},
]


@pytest.fixture
def pod(netns_factory, tmp_path):
    cnitest.sh("ip link add m0 type veth peer name m0p && ip link set m0 up && ip link set m0p up")
    conf = {"cniVersion": "1.1.0", "name": "rtnet", "type": "macvlan", "master": "m0",
            "ipam": {"type": "host-local", "dataDir": str(tmp_path / "data"), "routes": ROUTES,
                     "ranges": [[{"subnet": "10.21.0.0/24", "gateway": "10.21.0.1"}],
                                [{"subnet": "fd00:21::/64"}]]}}
    ns = netns_factory("rt")
    add = cnitest.inproc("macvlan", "ADD", conf, netns=f"/run/netns/{ns}")
    assert add.rc == 0, add.stdout + add.stderr
    yield ns, dict(conf, prevResult=add.json), add
    cnitest.inproc("macvlan", "DEL", dict(conf, prevResult=add.json), netns=f"/run/netns/{ns}")
    cnitest.sh("ip link del m0", check=False)


def routes(ns, family="-4", table="all"):
    return cnitest.ip_json(f"{family} route show table {table}", ns)


def find(rows, dst):
    return [r for r in rows if r["dst"] == dst]


def check(ns, conf):
    return cnitest.inproc("macvlan", "CHECK", conf, netns=f"/run/netns/{ns}")


def test_route_fields_are_set_on_the_kernel(pod):
    ns, _conf, add = pod
    # the 1.1.0 result carries them back
    assert [r for r in add.json["routes"] if r["dst"] == "10.30.0.0/16"] == [ROUTES[1]]
    (default,) = find(routes(ns, table="main"), "default")
    assert default["gateway"] == "10.21.0.1" and default["metric"] == 50
    assert default["metrics"] == [{"mtu": 1300, "advmss": 1200}]
    (tabled,) = find(routes(ns, table="100"), "10.30.0.0/16")
    assert tabled["gateway"] == "10.21.0.254" and tabled["metric"] == 7
    assert find(routes(ns, table="main"), "10.30.0.0/16") == []
    (v6,) = find(routes(ns, "-6", table="200"), "fd00:31::/64")
    assert v6["metrics"] == [{"mtu": 1280}]


def test_check_passes_then_sees_each_field_drift(pod):
    ns, conf, _add = pod
    out = check(ns, conf)
    assert out.rc == 0, out.stdout + out.stderr
    drifts = [  # (break it, message, put it back)
        ("ip route change default via 10.21.0.1 dev eth0 metric 50 mtu 1400 advmss 1200 proto boot",
         "Expected Route {Dst:{IP:0.0.0.0 Mask:00000000} GW:<nil>} advmss 1200 mtu 1300 priority 50 not found in "
         "routing table",
         "ip route change default via 10.21.0.1 dev eth0 metric 50 mtu 1300 advmss 1200 proto boot"),
        ("ip route del 10.30.0.0/16 table 100 && ip route add 10.30.0.0/16 via 10.21.0.254 dev eth0 metric 7",
         "Expected Route {Dst:{IP:10.30.0.0 Mask:ffff0000} GW:10.21.0.254} priority 7 not found in routing "
         "table 100",
         "ip route del 10.30.0.0/16 && ip route add 10.30.0.0/16 via 10.21.0.254 dev eth0 metric 7 table 100"),
        ("ip route change 10.30.0.0/16 via 10.21.0.254 dev eth0 metric 7 table 100 mtu 1000",
         "", "ip route change 10.30.0.0/16 via 10.21.0.254 dev eth0 metric 7 table 100"),  # extra mtu: fine
        ("ip -6 route change fd00:31::/64 via fd00:21::1 dev eth0 table 200 mtu 1300",
         "Expected Route {Dst:{IP:fd00:31:: Mask:ffffffffffffffff0000000000000000} GW:fd00:21::1} mtu 1280 not "
         "found in routing table 200", ""),
    ]
    for broken, msg, restore in drifts:
        cnitest.sh(f"ip netns exec {ns} sh -c '{broken}'")
        out = check(ns, conf)
        if msg:
            assert out.rc == 1 and out.json["msg"] == msg, out.stdout
        else:
            assert out.rc == 0, out.stdout
        if restore:
            cnitest.sh(f"ip netns exec {ns} sh -c '{restore}'")
            assert check(ns, conf).rc == 0


def test_scope_link_route(netns_factory, tmp_path):
    """`scope: 253` (link) on a gateway-less route (static IPAM has no gateway to default to)."""
    cnitest.sh("ip link add m0 type veth peer name m0p && ip link set m0 up")
    try:
        conf = {"cniVersion": "1.1.0", "name": "rtnet", "type": "macvlan", "master": "m0",
                "ipam": {"type": "static", "addresses": [{"address": "10.21.0.5/24"}],
                         "routes": [{"dst": "10.31.0.0/24", "scope": 253}, {"dst": "10.32.0.0/24"}]}}
        ns = netns_factory("rt")
        add = cnitest.inproc("macvlan", "ADD", conf, netns=f"/run/netns/{ns}")
        assert add.rc == 0, add.stdout
        (linkscope,) = find(routes(ns, table="main"), "10.31.0.0/24")
        assert linkscope["scope"] == "link" and "gateway" not in linkscope
        assert "scope" not in find(routes(ns, table="main"), "10.32.0.0/24")[0]  # universe
        conf = dict(conf, prevResult=add.json)
        assert check(ns, conf).rc == 0
        cnitest.sh(f"ip -n {ns} route change 10.31.0.0/24 dev eth0 scope global proto boot")
        out = check(ns, conf)
        assert out.rc == 1 and out.json["msg"] == ("Expected Route {Dst:{IP:10.31.0.0 Mask:ffffff00} GW:<nil>} "
                                                   "scope 253 not found in routing table"), out.stdout
        assert cnitest.inproc("macvlan", "DEL", conf, netns=f"/run/netns/{ns}").rc == 0
    finally:
        cnitest.sh("ip link del m0", check=False)


@pytest.mark.parametrize("field,value", [("mtu", "1300"), ("table", -1), ("scope", 300), ("priority", True)])
def test_bad_route_field_is_a_config_error_and_nothing_is_left(netns_factory, tmp_path, field, value):
    cnitest.sh("ip link add m0 type veth peer name m0p && ip link set m0 up")
    try:
        conf = {"cniVersion": "1.1.0", "name": "rtnet", "type": "macvlan", "master": "m0",
                "ipam": {"type": "host-local", "dataDir": str(tmp_path), "subnet": "10.21.0.0/24",
                         "routes": [{"dst": "10.30.0.0/16", field: value}]}}
        ns = netns_factory("rt")
        out = cnitest.inproc("macvlan", "ADD", conf, netns=f"/run/netns/{ns}")
        assert out.rc == 1 and out.json["code"] == 7 and out.json["msg"].startswith(f"invalid route {field}")
        assert [l["ifname"] for l in cnitest.ip_json("link show", ns)] == ["lo"]
        assert [f for _d, _s, files in os.walk(tmp_path) for f in files if f[0].isdigit()] == []
    finally:
        cnitest.sh("ip link del m0", check=False)


def test_interface_mtu_field(pod):
    """CNI 1.1 interface `mtu`: the 1.1.0 result reports the container link's MTU, CHECK compares
    it with the kernel's; a 1.0.0 result has no such field."""
    ns, conf, add = pod
    assert add.json["interfaces"][0]["mtu"] == cnitest.ip_json("link show eth0", ns)[0]["mtu"] == 1500
    cnitest.sh(f"ip -n {ns} link set eth0 mtu 1400")
    out = check(ns, conf)
    assert out.rc == 1 and out.json["msg"] == "Interface eth0 MTU 1500 doesn't match container MTU: 1400"
    cnitest.sh(f"ip -n {ns} link set eth0 mtu 1500")
    assert check(ns, conf).rc == 0
    old = cnitest.inproc("macvlan", "ADD", dict(conf, cniVersion="1.0.0", prevResult=None), netns=f"/run/netns/{ns}",
                         ifname="eth1")
    assert old.rc == 0 and "mtu" not in old.json["interfaces"][0], old.stdout
    cnitest.inproc("macvlan", "DEL", dict(conf, cniVersion="1.0.0", prevResult=None), netns=f"/run/netns/{ns}",
                   ifname="eth1")
