"""ipvlan, vlan and dummy (and the bridge's `vlan` option) live: ADD makes the link in the
container (checked in the kernel: kind, mode, VLAN id, MTU, addresses, and traffic through it),
CHECK passes, DEL leaves nothing. The RTM_NEWLINK each plugin sends is also captured on the socket
and decoded (temporary name, target-netns fd, parent ifindex).

These link kinds need kernel features this project's CI machines lack (no ipvlan, 8021q, dummy,
bridge VLAN filtering): there each test skips with the kernel's answer, and `make test-kernel`
runs them on Debian's stock kernel in a qemu guest (tools/stock_kernel.py), where a missing
feature fails instead. Config errors (caught before any request) run everywhere."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402

RTM_NEWLINK = 16
RTM_SETLINK = 19
AF_BRIDGE = 7
NLM_F_CREATE = 0x400


def capture_sends(monkeypatch):
    """Record every netlink request the engine sends, on both of its sockets (rtnl.Rtnl and
    pyroute2's IPRoute); returns the list the raw requests are appended to."""
    from cni.net import rtnl
    from pyroute2.netlink.core import AsyncCoreSocket

    sent = []
    for cls in (AsyncCoreSocket, rtnl.Rtnl):
        original = cls.send

        def send(self, data, *flags, _original=original):
            sent.append(bytes(data))
            return _original(self, data, *flags)

        monkeypatch.setattr(cls, "send", send)
    return sent


def decoded(sent, msg_type, want):
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    out = []
    for data in sent:
        if int.from_bytes(data[4:6], "little") == msg_type:
            msg = ifinfmsg(data)
            msg.decode()
            if want(msg, int.from_bytes(data[6:8], "little")):
                out.append(msg)
    return out


@pytest.fixture
def captured(monkeypatch):
    """Every RTM_NEWLINK+CREATE request our in-process plugin sends, decoded."""
    sent = capture_sends(monkeypatch)
    return lambda: decoded(sent, RTM_NEWLINK, lambda _msg, flags: flags & NLM_F_CREATE)


@pytest.fixture
def world(netns_factory, tmp_path):
    cnitest.sh("ip link show m0 >/dev/null 2>&1 || ip link add m0 mtu 1400 type veth peer name m0p")
    cnitest.sh("ip link set m0 up && ip link set m0p up")
    yield {"netns": netns_factory(), "data": str(tmp_path / "data"), "master": cnitest.ip_json("link show m0")[0],
           "factory": netns_factory}
    cnitest.sh("ip link del m0", check=False)


def conf_for(plugin, world, **extra):
    conf = {"cniVersion": "1.0.0", "name": f"{plugin}net", "type": plugin,
            "ipam": {"type": "host-local", "subnet": "10.12.0.0/24", "dataDir": world["data"]}}
    conf.update(extra)
    return conf


def linkinfo(msg):
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND"), info.get_attr("IFLA_INFO_DATA")


def leases(world):
    """Reservation files anywhere in the world's host-local store."""
    return [f for _d, _s, files in os.walk(world["data"]) for f in files if f[0].isdigit()]


def live_link(netns, ifname="eth0"):
    """`ip -d` of one link in a netns: its kind, kind data, MTU, state and IPv4 addresses."""
    (dev,) = cnitest.ip_json(f"-d addr show dev {ifname}", netns)
    info = dev.get("linkinfo", {})
    return {"kind": info.get("info_kind"), "data": info.get("info_data", {}), "mtu": dev["mtu"],
            "up": "UP" in dev["flags"],
            "addrs": [f"{a['local']}/{a['prefixlen']}" for a in dev["addr_info"] if a["family"] == "inet"]}


def ping(netns, addr):
    proc = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "1", "-W", "5", addr], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, f"{netns} -> {addr}: {proc.stdout}{proc.stderr}"


def lifecycle_tail(plugin, conf, world, add, netns=None):
    """CHECK passes on the ADD result; DEL (twice) leaves only lo and no lease."""
    netns = netns or world["netns"]
    conf = dict(conf, prevResult=add.json)
    check = cnitest.inproc(plugin, "CHECK", conf, netns=f"/run/netns/{netns}")
    assert check.rc == 0, check.stdout + check.stderr
    for _ in range(2):
        out = cnitest.inproc(plugin, "DEL", conf, netns=f"/run/netns/{netns}")
        assert out.rc == 0, out.stdout + out.stderr
    assert [l["ifname"] for l in cnitest.ip_json("link show", netns)] == ["lo"]
    assert leases(world) == []


def added(plugin, conf, netns, **kw):
    out = cnitest.inproc(plugin, "ADD", conf, netns=f"/run/netns/{netns}", **kw)
    assert out.rc == 0 and "Traceback" not in out.stdout, out.stdout + out.stderr
    return out


# --- ipvlan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,code", [("l2", 0), ("l3", 1), ("l3s", 2), ("", 0)])
def test_ipvlan_live(captured, world, mode, code):
    cnitest.require_kernel("ipvlan")
    conf = conf_for("ipvlan", world, master="m0", mtu=1300, **({"mode": mode} if mode else {}))
    add = added("ipvlan", conf, world["netns"])
    (msg,) = captured()
    kind, data = linkinfo(msg)
    assert kind == "ipvlan" and data.get_attr("IFLA_IPVLAN_MODE") == code
    assert msg.get_attr("IFLA_LINK") == world["master"]["ifindex"] and msg.get_attr("IFLA_NET_NS_FD") is not None
    assert msg.get_attr("IFLA_IFNAME").startswith("veth")  # temporary name, renamed in the netns
    eth0 = live_link(world["netns"])
    assert eth0["kind"] == "ipvlan" and eth0["data"]["mode"] == (mode or "l2")
    assert eth0["mtu"] == 1300 and eth0["up"] and eth0["addrs"] == ["10.12.0.2/24"]
    assert add.json["interfaces"][0]["name"] == "eth0" and add.json["ips"][0]["address"] == "10.12.0.2/24"
    lifecycle_tail("ipvlan", conf, world, add)


@pytest.mark.parametrize("mode", ["l2", "l3"])
def test_ipvlan_pods_ping_each_other(world, mode):
    """Two pods on one master reach each other through the ipvlan switch of the master."""
    cnitest.require_kernel("ipvlan")
    other = world["factory"]()
    conf = conf_for("ipvlan", world, master="m0", mode=mode)
    first = added("ipvlan", conf, world["netns"], cid="c1")
    second = added("ipvlan", conf, other, cid="c2")
    ping(world["netns"], second.json["ips"][0]["address"].split("/")[0])
    ping(other, first.json["ips"][0]["address"].split("/")[0])
    for netns, cid, add in ((world["netns"], "c1", first), (other, "c2", second)):
        out = cnitest.inproc("ipvlan", "DEL", dict(conf, prevResult=add.json), netns=f"/run/netns/{netns}", cid=cid)
        assert out.rc == 0
    assert leases(world) == []


def test_ipvlan_chained_master_from_prev_result(captured, world):
    """Without IPAM, the master is prevResult's single interface and its addresses are applied."""
    cnitest.require_kernel("ipvlan")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "m0"}], "ips": [{"address": "10.12.0.9/24"}]}
    conf = conf_for("ipvlan", world, prevResult=prev)
    del conf["ipam"]
    added("ipvlan", conf, world["netns"])
    assert captured()[0].get_attr("IFLA_LINK") == world["master"]["ifindex"]
    assert live_link(world["netns"])["addrs"] == ["10.12.0.9/24"]


def test_ipvlan_errors_before_any_request(captured, world):
    netns = f"/run/netns/{world['netns']}"
    out = cnitest.inproc("ipvlan", "ADD", conf_for("ipvlan", world, master="m0", mode="l4"), netns=netns)
    assert out.json["msg"] == 'unknown ipvlan mode: "l4"'
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "a"}, {"name": "b"}], "ips": []}
    out = cnitest.inproc("ipvlan", "ADD", conf_for("ipvlan", world, prevResult=prev), netns=netns)
    assert out.json["msg"] == "chained master failure. PrevResult lacks a single named interface"
    assert captured() == []


# --- vlan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("vid", [0, 7, 4094])
def test_vlan_live(captured, world, vid):
    cnitest.require_kernel("vlan")
    conf = conf_for("vlan", world, master="m0", vlanId=vid, mtu=1400)
    add = added("vlan", conf, world["netns"])
    (msg,) = captured()
    kind, data = linkinfo(msg)
    assert kind == "vlan" and data.get_attr("IFLA_VLAN_ID") == vid
    assert msg.get_attr("IFLA_LINK") == world["master"]["ifindex"] and msg.get_attr("IFLA_MTU") == 1400
    eth0 = live_link(world["netns"])
    assert eth0["kind"] == "vlan" and eth0["data"]["id"] == vid and eth0["data"]["protocol"] == "802.1Q"
    assert eth0["mtu"] == 1400 and eth0["up"] and eth0["addrs"] == ["10.12.0.2/24"]
    lifecycle_tail("vlan", conf, world, add)


def test_vlan_tagged_traffic(world):
    """The pod reaches a host on the same VLAN behind the master's wire, and only on that VLAN."""
    cnitest.require_kernel("vlan")
    cnitest.sh("ip link add link m0p name m0p.7 type vlan id 7 && ip addr add 10.12.0.200/24 dev m0p.7 && "
               "ip link set m0p.7 up")
    add = added("vlan", conf_for("vlan", world, master="m0", vlanId=7), world["netns"])
    ping(world["netns"], "10.12.0.200")
    cnitest.sh("ip link set m0p.7 down && ip link add link m0p name m0p.8 type vlan id 8 && "
               "ip addr add 10.12.0.201/24 dev m0p.8 && ip link set m0p.8 up")
    with pytest.raises(AssertionError):
        ping(world["netns"], "10.12.0.201")
    lifecycle_tail("vlan", conf_for("vlan", world, master="m0", vlanId=7), world, add)


@pytest.mark.parametrize("extra,msg", [
    ({"vlanId": 5}, '"master" field is required. It specifies the host interface name to create the VLAN for.'),
    ({"master": "m0", "vlanId": 4095}, "invalid VLAN ID 4095 (must be between 0 and 4095 inclusive)"),
    ({"master": "m0", "vlanId": 5, "mtu": 1500}, "invalid MTU 1500, must be [0, master MTU(1400)]"),
    ({"master": "nope0", "vlanId": 5}, "Link not found"),
])
def test_vlan_config_errors(captured, world, extra, msg):
    out = cnitest.inproc("vlan", "ADD", conf_for("vlan", world, **extra), netns=f"/run/netns/{world['netns']}")
    assert out.rc == 1 and out.json["msg"] == msg
    assert captured() == []


# --- dummy ------------------------------------------------------------------------------------

def test_dummy_live(captured, world):
    cnitest.require_kernel("dummy")
    conf = conf_for("dummy", world)
    add = added("dummy", conf, world["netns"])
    (msg,) = captured()
    assert linkinfo(msg)[0] == "dummy" and msg.get_attr("IFLA_IFNAME") == "eth0"
    assert msg.get_attr("IFLA_NET_NS_FD") is None  # created from inside the container netns
    eth0 = live_link(world["netns"])
    assert eth0["kind"] == "dummy" and eth0["up"] and eth0["addrs"] == ["10.12.0.2/24"]
    # CHECK sees the link go down
    cnitest.sh(f"ip -n {world['netns']} link set eth0 down")
    out = cnitest.inproc("dummy", "CHECK", dict(conf, prevResult=add.json), netns=f"/run/netns/{world['netns']}")
    assert out.rc == 1 and out.json["msg"] == "Interface eth0 is down"
    cnitest.sh(f"ip -n {world['netns']} link set eth0 up")
    lifecycle_tail("dummy", conf, world, add)


def test_dummy_requires_ipam(captured, world):
    conf = conf_for("dummy", world)
    conf["ipam"] = {}
    out = cnitest.inproc("dummy", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert out.rc == 1 and out.json["msg"] == "dummy interface requires an IPAM configuration"
    assert captured() == []


@pytest.mark.parametrize("plugin,extra", [("ipvlan", {"master": "m0"}), ("vlan", {"master": "m0", "vlanId": 3}),
                                          ("dummy", {})])
def test_del_is_idempotent_when_nothing_was_made(world, plugin, extra):
    netns = f"/run/netns/{world['netns']}"
    for _ in range(2):
        assert cnitest.run(plugin, "DEL", conf_for(plugin, world, **extra), netns=netns).rc == 0
    assert cnitest.run(plugin, "DEL", conf_for(plugin, world, **extra), netns="/run/netns/gone").rc == 0


# --- bridge `vlan` ----------------------------------------------------------------------------

def port_vlans(dev):
    """`bridge vlan show dev` of one port: [(vid, flags)]."""
    out = cnitest.sh(f"bridge -j vlan show dev {dev}")
    import json  # noqa: PLC0415

    rows = json.loads(out) if out.strip() else []
    return [(v["vlan"], sorted(v.get("flags", []))) for row in rows for v in row["vlans"]]


def test_bridge_vlan_live(captured, world):
    """`vlan` + isGateway: a VLAN-filtering bridge, the pod's port untagged in VLAN 42 (PVID), the
    gateway on `<bridge>.<vlan>` (a veth whose peer is a VLAN-42 port); the pod pings it."""
    cnitest.require_kernel("bridge-vlan")
    conf = conf_for("bridge", world, bridge="brv", vlan=42, isGateway=True)
    try:
        bridge_vlan_checks(captured, world, conf)
    finally:
        cnitest.sh("ip link del brv.42; ip link del brv", check=False)


def bridge_vlan_checks(captured, world, conf):
    add = added("bridge", conf, world["netns"])
    kind, data = linkinfo(captured()[0])
    assert kind == "bridge" and data.get_attr("IFLA_BR_VLAN_FILTERING") == 1
    (brv,) = cnitest.ip_json("-d link show brv")
    assert brv["linkinfo"]["info_data"]["vlan_filtering"] == 1
    host_veth = add.json["interfaces"][1]["name"]
    # VLAN 1 is the bridge's default_pvid, left on the port as by Go
    assert port_vlans(host_veth) == [(1, ["Egress Untagged"]), (42, ["Egress Untagged", "PVID"])]
    gw = cnitest.ip_json("-d addr show dev brv.42")[0]
    assert gw["linkinfo"]["info_kind"] == "veth"
    assert [a["local"] for a in gw["addr_info"] if a["family"] == "inet"] == ["10.12.0.1"]
    ping(world["netns"], "10.12.0.1")
    lifecycle_tail("bridge", conf, world, add)


def test_bridge_vlan_on_premade_bridge(world, monkeypatch):
    """A bridge made beforehand without VLAN filtering is reused as it is (as Go): the port still
    gets PVID 42 untagged through RTM_SETLINK AF_BRIDGE."""
    cnitest.require_kernel("bridge-vlan")
    cnitest.sh("ip link add brv type bridge")
    sent = capture_sends(monkeypatch)
    conf = conf_for("bridge", world, bridge="brv", vlan=42)
    add = added("bridge", conf, world["netns"])
    try:
        setlinks = decoded(sent, RTM_SETLINK, lambda msg, _flags: msg["family"] == AF_BRIDGE)
        info = setlinks[-1].get_attr("IFLA_AF_SPEC").get_attr("IFLA_BRIDGE_VLAN_INFO")
        assert info["vid"] == 42 and info["flags"] & 0x6 == 0x6  # PVID | UNTAGGED
        assert port_vlans(add.json["interfaces"][1]["name"]) == [(1, ["Egress Untagged"]),
                                                                 (42, ["Egress Untagged", "PVID"])]
        lifecycle_tail("bridge", conf, world, add)
    finally:
        cnitest.sh("ip link del brv")
