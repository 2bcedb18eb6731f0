"""Differential tests, Go reference plugins (1.1.1) vs ours, for the veth plugins (bridge, ptp) and
host-device: every option, result JSON, kernel state (links, addresses, routes, sysctls), the
iptables nat rules of ipMasq (backend "iptables" = Go's chains) and the host-local store."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from difflib_cni import (assert_same, assert_same_state, lifecycle, make_worlds, step, step_after, tree,  # noqa: E402
                         with_prev)

BR_SYSCTLS = ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding", "net.ipv6.conf.cni0.accept_ra")
CONT_SYSCTLS = ("net.ipv4.conf.eth0.arp_notify", "net.ipv6.conf.eth0.accept_dad")


def br_conf(version="1.0.0", ipam=None, **extra):
    conf = {"cniVersion": version, "name": "brnet", "type": "bridge",
            "ipam": ipam if ipam is not None else {"type": "host-local", "subnet": "10.6.0.0/24"}}
    conf.update(extra)
    return conf


@pytest.fixture
def worlds(netns_factory, tmp_path):
    return make_worlds(netns_factory, tmp_path)


BRIDGE_CASES = {
    "plain": {},
    "gateway": {"isGateway": True},
    "default-gw-masq-mtu-hairpin": {"isDefaultGateway": True, "ipMasq": True, "ipMasqBackend": "iptables",
                                    "mtu": 1400, "hairpinMode": True},
    "promisc-named-bridge": {"promiscMode": True, "bridge": "br-test", "isGateway": True},
    "enabledad": {"enabledad": True},
    "dns": {"dns": {"nameservers": ["10.6.0.53"], "domain": "cluster.local"}},
}


@pytest.mark.parametrize("case", sorted(BRIDGE_CASES))
def test_bridge_options(worlds, case):
    go, ours = worlds
    conf = br_conf(**BRIDGE_CASES[case])
    add = lifecycle(go, ours, "bridge", conf, sysctls=BR_SYSCTLS, nat=True)
    res = add.ours.json
    assert [i.get("sandbox") is not None for i in res["interfaces"]] == [False, False, True]
    assert res["ips"][0]["interface"] == 2


def test_bridge_dual_stack_gateway(worlds):
    go, ours = worlds
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.6.0.0/24"}], [{"subnet": "fd00:6::/64"}]]}
    lifecycle(go, ours, "bridge", br_conf(ipam=ipam, isDefaultGateway=True), sysctls=BR_SYSCTLS + CONT_SYSCTLS)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_bridge_versions(worlds, version):
    go, ours = worlds
    lifecycle(go, ours, "bridge", br_conf(version, isGateway=True))


def test_bridge_l2_only(worlds):
    """`ipam: {}`: container side up, no addresses. (Go's CHECK fails here looking for an IPAM
    plugin named ""; ours passes — deliberate, so CHECK is not compared.)"""
    go, ours = worlds
    lifecycle(go, ours, "bridge", br_conf(ipam={}), check=False)


@pytest.mark.parametrize("source", ["cni_args", "args_cni", "runtime"])
def test_bridge_mac(worlds, source):
    go, ours = worlds
    conf, args = br_conf(), ""
    if source == "cni_args":
        args = "IgnoreUnknown=1;MAC=02:00:00:00:00:01"
    elif source == "args_cni":
        conf["args"] = {"cni": {"mac": "02:00:00:00:00:02"}}
        args = "IgnoreUnknown=1;MAC=02:00:00:00:00:01"
    else:
        conf["args"] = {"cni": {"mac": "02:00:00:00:00:02"}}
        conf["runtimeConfig"] = {"mac": "02:00:00:00:00:03"}
    add = step(go, ours, "bridge", "ADD", conf, args=args)
    assert_same(add)
    assert add.go.json["interfaces"][2]["mac"] == add.ours.json["interfaces"][2]["mac"]


ERROR_CASES = {
    "hairpin-and-promisc": ({"hairpinMode": True, "promiscMode": True}, ""),
    "vlan-out-of-range": ({"vlan": 4095}, ""),
    "not-a-bridge": ({"bridge": "notbr"}, "ip link add notbr type veth peer name notbr1"),
    "mtu-type": ({"mtu": "1400"}, ""),
    "bad-mac": ({"runtimeConfig": {"mac": "nope"}}, ""),
    "ifname-taken": ({}, "ip netns exec {cont} ip link add eth0 type veth peer name p0"),
    "ipam-exhausted": ({"ipam": {"type": "host-local", "subnet": "10.6.0.0/30"}}, ""),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bridge_errors(worlds, case):
    """Same error code and message; nothing of ours is left behind (Go 1.1.1 leaves the veth when
    IPAM fails after it, plugins#29: there the container state is compared with the start)."""
    go, ours = worlds
    extra, setup = ERROR_CASES[case]
    for w in (go, ours):
        if setup:
            w.sh(setup.format(cont=w.cont))
    conf = br_conf(**extra)
    if case == "ipam-exhausted":  # /30 has one usable address: take it first
        first = step(go, ours, "bridge", "ADD", conf, cid="first", ifname="eth1")
        assert_same(first)
    before = ours.state()
    res = step(go, ours, "bridge", "ADD", conf)
    assert res.go.rc == 1
    assert_same(res, msg=case != "bad-mac")
    after = ours.state()
    assert [l["ifname"] for l in after["cont"]["link"]] == [l["ifname"] for l in before["cont"]["link"]]
    assert [l["ifname"] for l in after["host"]["link"] if "<veth>" in l["ifname"]] == \
        [l["ifname"] for l in before["host"]["link"] if "<veth>" in l["ifname"]]
    assert leases(after["data"]) == leases(before["data"])


def leases(store):
    """The reservation files of a host-local store tree (not lock / last_reserved_ip.N)."""
    return sorted(k for k in store if os.path.basename(k)[0].isdigit() or ":" in os.path.basename(k))


def test_bridge_force_address(worlds):
    go, ours = worlds
    for w in (go, ours):
        # an explicit MAC: a port-less bridge made by `ip` has 00:00:00:00:00:00 on this kernel, which
        # Go's "pin the bridge MAC" step cannot write back (plugins#620; ours refetches first)
        w.sh("ip link add cni0 address 02:00:00:00:06:01 type bridge && ip addr add 10.6.0.99/24 dev cni0")
    before = ours.state()
    assert_same(step(go, ours, "bridge", "ADD", br_conf(isGateway=True)), msg=True)  # refused
    # Go leaves its veth and lease behind (plugins#29) until the runtime's DEL; ours left nothing
    after = ours.state()
    assert [x["ifname"] for x in after["cont"]["link"]] == [x["ifname"] for x in before["cont"]["link"]]
    assert leases(after["data"]) == leases(before["data"]) == []
    assert_same(step(go, ours, "bridge", "DEL", br_conf(isGateway=True)))
    add = step(go, ours, "bridge", "ADD", br_conf(isGateway=True, forceAddress=True))
    assert_same(add)
    assert add.ours.rc == 0, add.ours.stdout
    assert_same_state(go, ours)
    addrs = [a["local"] for a in ours.ip("addr show cni0", ours.host)[0]["addr_info"] if a["family"] == "inet"]
    assert addrs == ["10.6.0.1"]


def test_bridge_check_detects_drift(worlds):
    go, ours = worlds
    conf = br_conf(isGateway=True)
    add = step(go, ours, "bridge", "ADD", conf)
    assert_same(add)
    for w in (go, ours):
        w.sh("ip addr flush dev eth0", ns=w.cont)
    chk = step_after(go, ours, "bridge", "CHECK", conf, add)
    g, o = chk.go, chk.ours
    assert g.rc == o.rc == 1 and g.json["msg"] == o.json["msg"]
    for w, a in ((go, add.go), (ours, add.ours)):
        w.sh("ip link set cni0 promisc on")
    chk = step_after(go, ours, "bridge", "CHECK", conf, add)
    g, o = chk.go, chk.ours
    assert g.rc == o.rc == 1 and g.json["msg"] == o.json["msg"]


def test_bridge_del_netns_gone_masq(worlds):
    """Go 1.1.1 leaks the masquerade chain when the netns is gone before DEL (plugins#810); ours
    removes it. Both release the IP."""
    go, ours = worlds
    conf = br_conf(ipMasq=True, ipMasqBackend="iptables")
    add = step(go, ours, "bridge", "ADD", conf)
    assert_same(add)
    for w in (go, ours):
        w.sh(f"ip netns del {w.cont}", ns=w.host)
    dele = step(go, ours, "bridge", "DEL", with_prev(conf, add.go))
    assert_same(dele)
    go_nat, our_nat = (w.sh("iptables-save -t nat | grep -c '^-A' || true").strip() for w in (go, ours))
    assert go_nat == "3" and our_nat == "0"
    assert "brnet/10.6.0.2" not in tree(ours.datadir) and "brnet/10.6.0.2" not in tree(go.datadir)


def test_bridge_del_without_netns(worlds):
    go, ours = worlds
    conf = br_conf()
    assert_same(step(go, ours, "bridge", "ADD", conf))
    assert_same(step(go, ours, "bridge", "DEL", conf, netns=""))
    assert tree(ours.datadir) == tree(go.datadir)


# --- ptp ------------------------------------------------------------------------------------

PTP_CASES = {
    "plain": {},
    "masq-mtu": {"ipMasq": True, "ipMasqBackend": "iptables", "mtu": 1400},
    "dual-stack": {"ipam": {"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd00:7::/64"}]],
                            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}},
    "dns": {"dns": {"nameservers": ["10.7.0.53"]}},
}


@pytest.mark.parametrize("case", sorted(PTP_CASES))
def test_ptp(worlds, case):
    go, ours = worlds
    conf = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp",
            "ipam": {"type": "host-local", "subnet": "10.7.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}}
    conf.update(PTP_CASES[case])
    add = lifecycle(go, ours, "ptp", conf, sysctls=("net.ipv4.ip_forward",), nat=True)
    assert add.ours.json["ips"][0]["interface"] == 1


def test_ptp_check_detects_drift(worlds):
    go, ours = worlds
    conf = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp", "ipam": {"type": "host-local", "subnet": "10.7.0.0/24"}}
    add = step(go, ours, "ptp", "ADD", conf)
    assert_same(add)
    for w in (go, ours):
        w.sh("ip route del 10.7.0.0/24", ns=w.cont)
    chk = step_after(go, ours, "ptp", "CHECK", conf, add)
    g, o = chk.go, chk.ours
    assert g.rc == o.rc == 1 and g.json["msg"] == o.json["msg"]


# --- host-device ----------------------------------------------------------------------------

HD_CASES = {
    "device-static": {"device": "hd0", "ipam": {"type": "static", "addresses": [{"address": "10.8.0.5/24",
                                                                                  "gateway": "10.8.0.1"}],
                                                "routes": [{"dst": "0.0.0.0/0"}]}},
    "hwaddr-l2": {"hwaddr": "02:00:00:00:08:01"},
    "kernelpath-missing": {"kernelpath": "/sys/devices/virtual/net/hd0"},
    "nothing": {},
    "bad-kernelpath": {"kernelpath": "net/hd0"},
}


@pytest.mark.parametrize("case", sorted(HD_CASES))
def test_host_device(worlds, case):
    go, ours = worlds
    for w in (go, ours):
        w.sh("ip link add hd0 address 02:00:00:00:08:01 type veth peer name hd0p")
    conf = {"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device", **HD_CASES[case]}
    add = lifecycle(go, ours, "host-device", conf, dels=1)  # a 2nd DEL fails in Go: see below
    if add.ours.rc == 0:
        assert ours.ip("link show hd0", ours.host)[0]["ifname"] == "hd0"  # back on the host after DEL


def test_host_device_del_twice_and_netns_gone(worlds):
    """Deliberate: a second DEL (device already back) and a DEL after the netns is gone succeed;
    Go 1.1.1 fails both."""
    go, ours = worlds
    for w in (go, ours):
        w.sh("ip link add hd0 type veth peer name hd0p")
    conf = {"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device", "device": "hd0"}
    assert_same(step(go, ours, "host-device", "ADD", conf))
    assert_same(step(go, ours, "host-device", "DEL", conf))
    again = step(go, ours, "host-device", "DEL", conf)
    assert again.go.rc == 1 and again.ours.rc == 0
    assert_same(step(go, ours, "host-device", "ADD", conf))
    for w in (go, ours):
        w.sh(f"ip netns del {w.cont}")
    gone = step(go, ours, "host-device", "DEL", conf)
    assert gone.go.rc == 1 and gone.ours.rc == 0


def test_bridge_macspoofchk(worlds):
    """Same nft bridge table, chains, rules and comments as Go's spoof checker; DEL (twice) removes
    the per-container chains and the jump."""
    go, ours = worlds
    conf = br_conf(macspoofchk=True)

    def table(w):
        return w.normalise(w.sh("nft list table bridge nat 2>/dev/null || true").replace("\t", " ").splitlines())

    add = step(go, ours, "bridge", "ADD", conf)
    assert_same(add)
    text = table(ours)
    assert text == table(go)
    assert any("ether saddr" in ln and "return" in ln for ln in text)
    assert any(add.ours.json["interfaces"][2]["mac"] in ln for ln in ours.sh("nft list table bridge nat").splitlines())
    for _ in range(2):
        assert_same(step(go, ours, "bridge", "DEL", with_prev(conf, add.go)))
    assert table(ours) == table(go)
    assert not any("cni-br-iface" in ln for ln in table(ours))


def _prev_with_container_mac(conf, outcome, mac):
    """CHECK config whose prevResult names a different MAC for the container interface."""
    out = with_prev(conf, outcome)
    for intf in out["prevResult"]["interfaces"]:
        if intf.get("sandbox"):
            intf["mac"] = mac
    return out


@pytest.mark.parametrize("plugin", ["ptp", "host-device"])
def test_check_container_mac_and_presence_messages(worlds, plugin):
    """The container-side CHECK messages, Go's text byte for byte: a MAC the prevResult names
    wrongly (ptp prefixes it with "ptp: ", host-device does not), then the interface gone."""
    go, ours = worlds
    if plugin == "ptp":
        conf = {"cniVersion": "1.0.0", "name": "ptpnet", "type": "ptp",
                "ipam": {"type": "host-local", "subnet": "10.7.0.0/24"}}
    else:
        for w in (go, ours):
            w.sh("ip link add hd0 type veth peer name hd0p")
        conf = {"cniVersion": "1.0.0", "name": "hdnet", "type": "host-device", "device": "hd0",
                "ipam": {"type": "static", "addresses": [{"address": "10.8.0.5/24"}]}}
    add = step(go, ours, plugin, "ADD", conf)
    assert_same(add)
    g = go.run(plugin, "CHECK", _prev_with_container_mac(conf, add.go, "02:11:22:33:44:55"))
    o = ours.run(plugin, "CHECK", _prev_with_container_mac(conf, add.ours, "02:11:22:33:44:55"))
    assert g.rc == o.rc == 1
    # the message ends with the interface's real MAC, which differs between the two worlds
    mac = {side: next(i["mac"] for i in out.json["interfaces"] if i.get("sandbox"))
           for side, out in (("go", add.go), ("ours", add.ours))}
    assert o.json["msg"].replace(mac["ours"], "<mac>") == g.json["msg"].replace(mac["go"], "<mac>")
    assert "doesn't match container Mac" in o.json["msg"], o.json["msg"]
    for w in (go, ours):
        w.sh("ip link set eth0 down && ip link set eth0 name gone0", ns=w.cont)
    chk = step_after(go, ours, plugin, "CHECK", conf, add)
    g, o = chk.go, chk.ours
    assert g.rc == o.rc == 1 and o.json["msg"] == g.json["msg"]
    assert "Container Interface name in prevResult" in o.json["msg"]
