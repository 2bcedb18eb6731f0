"""rtnl.Rtnl, the plain-socket rtnetlink transport of the link plugins: every request it sends is
byte-for-byte the one pyroute2's IPRoute sends for the same call (only sequence number and port id
differ), its replies decode to the same messages, and kernel refusals surface as IPRoute's do."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402
from cni.net import link, ns  # noqa: E402
from cni.net import rtnl as rtnl_mod  # noqa: E402 - tests name their Rtnl sockets `rtnl`


def strip_header(data: bytes) -> bytes:
    """A request without its sequence number and port id (bytes 8..16 of the nlmsghdr)."""
    return data[:8] + bytes(8) + data[16:]


@pytest.fixture
def sent(monkeypatch):
    """Requests as sent, per transport: {"iproute": [...], "rtnl": [...]}."""
    from pyroute2.netlink.core import AsyncCoreSocket

    out = {"iproute": [], "rtnl": []}
    for cls, key in ((AsyncCoreSocket, "iproute"), (rtnl_mod.Rtnl, "rtnl")):
        original = cls.send

        def send(self, data, *flags, _original=original, _key=key):
            out[_key].append(bytes(data))
            return _original(self, data, *flags)

        monkeypatch.setattr(cls, "send", send)
    return out


def both(ipr, rtnl, sent, call):
    """Run `call` on IPRoute, then on Rtnl; the one request each sent must be the same bytes.
    Returns (IPRoute outcome, Rtnl outcome): the reply list, or the NetlinkError code."""
    outcomes = []
    for sock, key in ((ipr, "iproute"), (rtnl, "rtnl")):
        sent[key].clear()
        try:
            # IPRoute also returns the bare ACK of a change; Rtnl returns data replies only
            outcomes.append([m for m in call(sock) if m["header"]["type"] != 2])
        except Exception as exc:  # noqa: BLE001 - compared below
            code = rtnl_mod.netlink_error_code(exc)
            assert code is not None, exc
            outcomes.append(code)
        assert len(sent[key]) == 1, (key, len(sent[key]))
    assert strip_header(sent["iproute"][0]) == strip_header(sent["rtnl"][0])
    return outcomes


def plain(msgs):
    """Messages without their headers (sequence numbers and socket details differ)."""
    return [sorted((k, repr(v)) for k, v in dict(m).items() if k != "header") for m in msgs]


def test_requests_and_replies_match_iproute(netns_factory, sent):
    """The requests the link plugins make, on a bridge, a veth pair into a second netns, addresses
    and routes: same bytes out, same state changes, same replies (dumps) and refusals."""
    node, other = netns_factory(), netns_factory()
    with ns.in_netns(f"/run/netns/{node}"):
        ipr, rtnl = rtnl_mod.iproute(), rtnl_mod.Rtnl()
    fd = ns.open_netns(f"/run/netns/{other}")
    try:
        # created by IPRoute, then refused (EEXIST) to Rtnl: the same create request
        br = both(ipr, rtnl, sent, lambda s: s.link("add", ifname="br0", kind="bridge"))
        assert br == [[], 17]
        made = both(ipr, rtnl, sent, lambda s: s.link("add", ifname="v0", kind="veth", txqlen=0, mtu=1400,
                                                     peer={"ifname": "v1", "net_ns_fd": fd, "txqlen": 0}))
        assert made == [[], 17]
        got = both(ipr, rtnl, sent, lambda s: s.link("get", ifname="v0"))
        assert [link.iface_info(m) | {"linkinfo": None} for m in got[0]] == \
               [link.iface_info(m) | {"linkinfo": None} for m in got[1]]
        v0, br0 = got[1][0]["index"], link.get_link(rtnl, "br0")["index"]
        assert both(ipr, rtnl, sent, lambda s: s.link("get", index=v0))[1][0].get_attr("IFLA_IFNAME") == "v0"
        assert both(ipr, rtnl, sent, lambda s: s.link("get", ifname="nope")) == [19, 19]
        both(ipr, rtnl, sent, lambda s: s.link("set", index=v0, state="up"))
        both(ipr, rtnl, sent, lambda s: s.link("set", index=v0, master=br0))
        both(ipr, rtnl, sent, lambda s: s.brport("set", index=v0, mode=1))
        both(ipr, rtnl, sent, lambda s: s.link("set", index=br0, address="02:00:00:00:00:01"))
        both(ipr, rtnl, sent, lambda s: s.vlan_filter("add", index=v0,
                                                       vlan_info={"vid": 42, "flags": ["pvid", "untagged"]}))
        assert both(ipr, rtnl, sent, lambda s: s.addr("add", index=br0, address="10.5.0.1", prefixlen=24,
                                                       broadcast="10.5.0.255")) == [[], 17]
        both(ipr, rtnl, sent, lambda s: s.link("set", index=br0, state="up"))
        assert both(ipr, rtnl, sent, lambda s: s.route("append", dst="10.6.0.0", dst_len=16, oif=br0, family=2,
                                                        proto=3, gateway="10.5.0.9")) == [[], 17]
        assert both(ipr, rtnl, sent, lambda s: s.route("add", dst="10.7.0.1", dst_len=32, oif=br0, family=2,
                                                        proto=3, scope=253, prefsrc="10.5.0.1")) == [[], 17]
        addrs = both(ipr, rtnl, sent, lambda s: s.get_addr(index=br0, family=2))
        assert plain(addrs[0]) == plain(addrs[1]) and len(addrs[1]) == 1
        routes = both(ipr, rtnl, sent, lambda s: s.get_routes(family=2, table=254))
        assert plain(routes[0]) == plain(routes[1]) and len(routes[1]) == 3  # subnet, append, on-link
        assert both(ipr, rtnl, sent, lambda s: s.route("del", dst="10.6.0.0", dst_len=16, oif=br0, family=2,
                                                        proto=0, scope=255)) == [[], 3]  # ESRCH
        assert both(ipr, rtnl, sent, lambda s: s.link("del", ifname="v0")) == [[], 19]
    finally:
        os.close(fd)
        ipr.close()
        rtnl.close()
    state = cnitest.ip_json("link show", node)
    assert sorted(i["ifname"] for i in state) == ["br0", "lo"]
    br_state = next(i for i in state if i["ifname"] == "br0")
    assert br_state["address"] == "02:00:00:00:00:01" and "UP" in br_state["flags"]
    assert [i["ifname"] for i in cnitest.ip_json("link show", other)] == ["lo"]  # v1 went with v0


def test_refusal_leaves_no_reply_for_the_next_request(netns):
    """A refused request's error is consumed with it: the next request gets its own reply."""
    with ns.in_netns(f"/run/netns/{netns}"):
        with rtnl_mod.rtnl() as rtnl:
            with pytest.raises(Exception) as err:
                rtnl.link("set", index=9999, state="up")
            assert rtnl_mod.netlink_error_code(err.value) == 19
            assert link.get_link(rtnl, "lo")["index"] == 1
            assert link.delete_link(rtnl, "nope", addrs=False) is None
            assert link.delete_link(rtnl, "nope") is None
            assert link.get_link(rtnl, index=1)["name"] == "lo"


def test_delete_by_name_without_addresses(netns):
    """DEL's single request: the link goes, [] is returned; the address-returning form still
    reports the global addresses (for the masquerade teardown)."""
    ns = f"/run/netns/{netns}"
    cnitest.sh(f"ip -n {netns} link add d0 type veth peer name d1 && ip -n {netns} addr add 10.9.0.2/24 dev d0 "
               f"&& ip -n {netns} link add e0 type veth peer name e1 && ip -n {netns} addr add 10.9.1.2/24 dev e0")
    assert link.delete_link_in_netns(ns, "d0", addrs=False) == []
    assert link.delete_link_in_netns(ns, "e0") == ["10.9.1.2/24"]
    assert [i["ifname"] for i in cnitest.ip_json("link show", netns)] == ["lo"]
    assert link.delete_link_in_netns(ns, "d0", addrs=False) is None
    assert link.delete_link_in_netns("/run/netns/gone", "d0", addrs=False) is None


def test_bridge_add_sets_an_existing_down_bridge_up(netns, tmp_path):
    """The bridge is looked up before it is created and set up only when down: a pre-made bridge
    that is down is still brought up, as Go's unconditional LinkSetUp does."""
    cnitest.sh("ip link add brdn type bridge")
    try:
        conf = {"cniVersion": "1.0.0", "name": "brdn", "type": "bridge", "bridge": "brdn", "isGateway": True,
                "ipam": {"type": "host-local", "subnet": "10.13.0.0/24", "dataDir": str(tmp_path)}}
        out = cnitest.inproc("bridge", "ADD", conf, netns=f"/run/netns/{netns}")
        assert out.rc == 0, out.stderr
        br = cnitest.ip_json("link show brdn")[0]
        assert "UP" in br["flags"] and out.json["interfaces"][0]["mac"] == br["address"]
        assert cnitest.inproc("bridge", "DEL", conf, netns=f"/run/netns/{netns}").rc == 0
        assert [i["ifname"] for i in cnitest.ip_json("link show", netns)] == ["lo"]
    finally:
        cnitest.sh("ip link del brdn", check=False)


def test_macvlan_check_reads_the_mode(netns, tmp_path):
    """CHECK decodes the kind's data only when it needs it (link.info_data): the macvlan mode of
    the container link is compared with the config, with Go's message on a mismatch."""
    cnitest.sh("ip link add m9 type veth peer name m9p")
    try:
        conf = {"cniVersion": "1.0.0", "name": "mvc", "type": "macvlan", "master": "m9", "mode": "vepa",
                "ipam": {"type": "host-local", "subnet": "10.14.0.0/24", "dataDir": str(tmp_path)}}
        out = cnitest.run("macvlan", "ADD", conf, netns=f"/run/netns/{netns}")
        assert out.rc == 0, out.stdout
        prev = dict(conf, prevResult=out.json)
        assert cnitest.run("macvlan", "CHECK", prev, netns=f"/run/netns/{netns}").rc == 0
        ours = cnitest.run("macvlan", "CHECK", dict(prev, mode="bridge"), netns=f"/run/netns/{netns}")
        go = cnitest.run("macvlan", "CHECK", dict(prev, mode="bridge"), go=True, netns=f"/run/netns/{netns}")
        assert ours.json["msg"] == go.json["msg"] == "Container macvlan mode vepa does not match expected value: bridge"
        assert (ours.rc, ours.code) == (go.rc, go.code)
        assert cnitest.run("macvlan", "DEL", conf, netns=f"/run/netns/{netns}").rc == 0
    finally:
        cnitest.sh("ip link del m9", check=False)


def test_remove_link_returns_with_the_link_and_its_state_gone(netns_factory):
    """link.del_link_and_wait answers at the kernel's RTM_DELLINK notification, before the request's ACK
    (which waits for rcu_barrier): by then nothing in either namespace may still show the link —
    not the name, not its addresses or routes, not the veth's host end, not the bridge port — and
    the name can be taken again at once."""
    cont, host = netns_factory(), netns_factory()
    cnitest.sh(f"ip -n {host} link add br9 type bridge && ip -n {host} link set br9 up "
               f"&& ip -n {host} link add h0 type veth peer name eth0 netns {cont} "
               f"&& ip -n {host} link set h0 master br9 up && ip -n {cont} link set eth0 up "
               f"&& ip -n {cont} addr add 10.9.0.2/24 dev eth0 && ip -n {cont} route add 10.77.0.0/16 via 10.9.0.1")
    with ns.in_netns(f"/run/netns/{cont}"):
        link.del_link_and_wait("eth0")
    assert [i["ifname"] for i in cnitest.ip_json("link show", cont)] == ["lo"]
    assert "10.9.0.2" not in cnitest.sh(f"ip -n {cont} addr show")
    assert cnitest.sh(f"ip -n {cont} route show").strip() == ""
    assert "h0" not in [i["ifname"] for i in cnitest.ip_json("link show", host)]
    assert cnitest.ip_json("link show master br9", host) == []
    cnitest.sh(f"ip -n {cont} link add eth0 type veth peer name p0")
    assert "eth0" in [i["ifname"] for i in cnitest.ip_json("link show", cont)]


def test_remove_link_raises_the_request_error(netns):
    """A refused delete is the request's own error (the plugins map ENODEV to "already gone"), and
    a name that is not there answers at once, with no notification to wait for."""
    with ns.in_netns(f"/run/netns/{netns}"):
        with pytest.raises(Exception) as err:
            link.del_link_and_wait("nope")
        assert rtnl_mod.is_enodev(err.value)
        with pytest.raises(Exception) as err:
            link.del_link_and_wait("lo")  # the loopback cannot be deleted
        assert rtnl_mod.netlink_error_code(err.value) is not None and not rtnl_mod.is_enodev(err.value)
    assert [i["ifname"] for i in cnitest.ip_json("link show", netns)] == ["lo"]


def test_remove_link_answers_before_the_ack(netns):
    """The point of it: the call returns while the request is still in the kernel's deferred
    freeing. Measured, not assumed: over 10 deletes, most return before the request's thread ends
    (on this kernel the ACK comes ~15 ms after the notification)."""
    import threading

    early = 0
    for i in range(10):
        cnitest.sh(f"ip -n {netns} link add v{i} type veth peer name w{i}")
        with ns.in_netns(f"/run/netns/{netns}"):
            link.del_link_and_wait(f"v{i}")
        early += any(t.name == f"cnikit-dellink-v{i}" for t in threading.enumerate())
    assert early >= 5, early
