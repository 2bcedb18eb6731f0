"""ipvlan, vlan and dummy (and the bridge's `vlan` option) on a kernel without those features:
checked at the netlink-request level — the RTM_NEWLINK each plugin really sends is captured on the
socket and decoded — and for failing cleanly here (error JSON, nothing left behind). None of these
link kinds is exercised live on this kernel (see docs/plugins.md)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402

RTM_NEWLINK = 16
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


@pytest.fixture
def captured(monkeypatch):
    """Every RTM_NEWLINK+CREATE request our in-process plugin sends, decoded."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    sent = capture_sends(monkeypatch)

    def creates():
        out = []
        for data in sent:
            msg_type, msg_flags = int.from_bytes(data[4:6], "little"), int.from_bytes(data[6:8], "little")
            if msg_type == RTM_NEWLINK and msg_flags & NLM_F_CREATE:
                msg = ifinfmsg(data)
                msg.decode()
                out.append(msg)
        return out

    return creates


@pytest.fixture
def world(netns_factory, tmp_path):
    cnitest.sh("ip link show m0 >/dev/null 2>&1 || ip link add m0 mtu 1400 type veth peer name m0p")
    yield {"netns": netns_factory(), "data": str(tmp_path / "data"), "master": cnitest.ip_json("link show m0")[0]}
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


def assert_clean_failure(out, world, want_msg):
    """An error JSON (no traceback), and neither a link in the container nor a lease left."""
    assert out.rc == 1 and "Traceback" not in out.stdout, out.stdout + out.stderr
    assert out.json["code"] == 999 and out.json["msg"] == want_msg
    assert [l["ifname"] for l in cnitest.ip_json("link show", world["netns"])] == ["lo"]
    assert leases(world) == []


@pytest.mark.parametrize("mode,code", [("l2", 0), ("l3", 1), ("l3s", 2), ("", 0)])
def test_ipvlan_request(captured, world, mode, code):
    conf = conf_for("ipvlan", world, master="m0", mtu=1300, **({"mode": mode} if mode else {}))
    out = cnitest.inproc("ipvlan", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert_clean_failure(out, world, "failed to create ipvlan: operation not supported")
    (msg,) = captured()
    kind, data = linkinfo(msg)
    assert kind == "ipvlan" and data.get_attr("IFLA_IPVLAN_MODE") == code
    assert msg.get_attr("IFLA_LINK") == world["master"]["ifindex"]
    assert msg.get_attr("IFLA_MTU") == 1300 and msg.get_attr("IFLA_NET_NS_FD") is not None
    assert msg.get_attr("IFLA_IFNAME").startswith("veth")  # temporary name, renamed in the netns


def test_ipvlan_chained_master_from_prev_result(captured, world):
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "m0"}], "ips": [{"address": "10.12.0.9/24"}]}
    conf = conf_for("ipvlan", world, prevResult=prev)
    del conf["ipam"]
    out = cnitest.inproc("ipvlan", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert_clean_failure(out, world, "failed to create ipvlan: operation not supported")
    assert captured()[0].get_attr("IFLA_LINK") == world["master"]["ifindex"]


def test_ipvlan_errors_before_any_request(captured, world):
    netns = f"/run/netns/{world['netns']}"
    out = cnitest.inproc("ipvlan", "ADD", conf_for("ipvlan", world, master="m0", mode="l4"), netns=netns)
    assert out.json["msg"] == 'unknown ipvlan mode: "l4"'
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "a"}, {"name": "b"}], "ips": []}
    out = cnitest.inproc("ipvlan", "ADD", conf_for("ipvlan", world, prevResult=prev), netns=netns)
    assert out.json["msg"] == "chained master failure. PrevResult lacks a single named interface"
    assert captured() == []


@pytest.mark.parametrize("vid", [0, 7, 4094])
def test_vlan_request(captured, world, vid):
    conf = conf_for("vlan", world, master="m0", vlanId=vid, mtu=1400)
    out = cnitest.inproc("vlan", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert_clean_failure(out, world, "failed to create vlan: operation not supported")
    (msg,) = captured()
    kind, data = linkinfo(msg)
    assert kind == "vlan" and data.get_attr("IFLA_VLAN_ID") == vid
    assert msg.get_attr("IFLA_LINK") == world["master"]["ifindex"] and msg.get_attr("IFLA_MTU") == 1400


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


def test_dummy_request(captured, world):
    out = cnitest.inproc("dummy", "ADD", conf_for("dummy", world), netns=f"/run/netns/{world['netns']}")
    assert_clean_failure(out, world, "failed to create dummy: operation not supported")
    (msg,) = captured()
    assert linkinfo(msg)[0] == "dummy" and msg.get_attr("IFLA_IFNAME") == "eth0"
    assert msg.get_attr("IFLA_NET_NS_FD") is None  # created from inside the container netns


def test_dummy_requires_ipam(captured, world):
    conf = conf_for("dummy", world)
    conf["ipam"] = {}
    out = cnitest.inproc("dummy", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert out.rc == 1 and out.json["msg"] == "dummy interface requires an IPAM configuration"
    assert captured() == []


@pytest.mark.parametrize("plugin,extra", [("ipvlan", {"master": "m0"}), ("vlan", {"master": "m0", "vlanId": 3}),
                                          ("dummy", {})])
def test_del_is_idempotent_without_kernel_support(world, plugin, extra):
    netns = f"/run/netns/{world['netns']}"
    for _ in range(2):
        assert cnitest.run(plugin, "DEL", conf_for(plugin, world, **extra), netns=netns).rc == 0
    assert cnitest.run(plugin, "DEL", conf_for(plugin, world, **extra), netns="/run/netns/gone").rc == 0


def test_bridge_vlan_request(captured, world):
    """Bridge `vlan`: the bridge is created with vlan_filtering (this kernel refuses it)."""
    conf = conf_for("bridge", world, bridge="brv", vlan=42, isGateway=True)
    out = cnitest.inproc("bridge", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    assert out.rc == 1 and out.json["msg"] == 'failed to create bridge "brv": could not add "brv": operation not supported'
    (msg,) = captured()
    kind, data = linkinfo(msg)
    assert kind == "bridge" and data.get_attr("IFLA_BR_VLAN_FILTERING") == 1
    assert not [l for l in cnitest.ip_json("link show") if l["ifname"] == "brv"]


def test_bridge_vlan_port_request(captured, world, monkeypatch):
    """With vlan filtering unavailable, the port's VLAN request (PVID, untagged) is still checked:
    the bridge is pre-made without filtering, so the RTM_SETLINK AF_BRIDGE is sent and refused."""
    cnitest.sh("ip link add brv type bridge")
    sent = capture_sends(monkeypatch)
    conf = conf_for("bridge", world, bridge="brv", vlan=42)
    # the bridge exists (EEXIST is fine), so only the port VLAN can fail
    out = cnitest.inproc("bridge", "ADD", conf, netns=f"/run/netns/{world['netns']}")
    cnitest.sh("ip link del brv")
    assert out.rc == 1 and out.json["msg"].startswith("failed to setup vlan tag on interface")
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    setlinks = []
    for data in sent:
        if int.from_bytes(data[4:6], "little") == 19:  # RTM_SETLINK
            msg = ifinfmsg(data)
            msg.decode()
            if msg["family"] == 7:  # AF_BRIDGE
                setlinks.append(msg)
    spec = setlinks[-1].get_attr("IFLA_AF_SPEC")
    info = spec.get_attr("IFLA_BRIDGE_VLAN_INFO")
    assert info["vid"] == 42 and info["flags"] & 0x6 == 0x6  # PVID | UNTAGGED
    assert [l["ifname"] for l in cnitest.ip_json("link show", world["netns"])] == ["lo"]
    assert leases(world) == [] and not [l for l in cnitest.ip_json("link show") if l["ifname"].startswith("veth")]
