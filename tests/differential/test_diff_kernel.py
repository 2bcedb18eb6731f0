"""Differential tests, Go reference plugins (1.1.1) vs ours, for what needs kernel features this
project's CI machines lack: ipvlan (l2/l3/l3s), vlan, the bridge's `vlan` option (VLAN filtering)
and the vrf meta plugin. Results, error codes and messages, and kernel state (links, addresses,
routes in all tables, bridge port VLANs) after ADD, CHECK and DEL, as in test_diff_plugins*.py.

On a kernel without these features every test skips with the kernel's answer; `make test-kernel`
runs them on Debian's stock kernel in a qemu guest (tools/stock_kernel.py). dummy has no Go
counterpart in 1.1.1 (it is tested live in tests/integration/test_plugins_netlink.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cnitest  # noqa: E402
from difflib_cni import assert_same, assert_same_state, lifecycle, make_worlds, step, step_after  # noqa: E402

MASTER = "ip link add m0 type veth peer name m0p && ip link set m0 up && ip link set m0p up"


def conf_for(plugin, version="1.0.0", ipam=None, **extra):
    conf = {"cniVersion": version, "name": f"{plugin}net", "type": plugin,
            "ipam": ipam if ipam is not None else {"type": "host-local", "subnet": "10.7.0.0/24",
                                                    "routes": [{"dst": "0.0.0.0/0"}]}}
    conf.update(extra)
    return {k: v for k, v in conf.items() if v is not None}


@pytest.fixture
def worlds(netns_factory, tmp_path):
    return make_worlds(netns_factory, tmp_path, setup=MASTER)


def port_vlans(world):
    """`bridge vlan show` of the world's host netns, normalised (veth names are random)."""
    out = world.sh("bridge -j vlan show")
    return sorted(json.dumps(row, sort_keys=True) for row in world.normalise(json.loads(out) if out.strip() else []))


def reaches(world, addr):
    proc = subprocess.run(["ip", "netns", "exec", world.cont, "ping", "-c", "1", "-W", "3", addr],
                          capture_output=True, check=False)
    return proc.returncode == 0


# --- ipvlan -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["l2", "l3", "l3s", None])
def test_ipvlan_modes(worlds, mode):
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    lifecycle(go, ours, "ipvlan", conf_for("ipvlan", master="m0", mode=mode))


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_ipvlan_versions_and_mtu(worlds, version):
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    lifecycle(go, ours, "ipvlan", conf_for("ipvlan", version, master="m0", mtu=1280))


def test_ipvlan_dual_stack(worlds):
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}], [{"subnet": "fd00:7::/64"}]],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}
    lifecycle(go, ours, "ipvlan", conf_for("ipvlan", ipam=ipam, master="m0", mode="l2"),
              sysctls=("net.ipv6.conf.eth0.accept_dad",))


def test_ipvlan_chained_on_prev_result(worlds):
    """No IPAM: the master is prevResult's single interface, its addresses are applied."""
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    conf = conf_for("ipvlan", ipam={})
    del conf["ipam"]
    conf["prevResult"] = {"cniVersion": "1.0.0", "interfaces": [{"name": "m0"}],
                          "ips": [{"address": "10.7.0.9/24", "gateway": "10.7.0.1"}]}
    lifecycle(go, ours, "ipvlan", conf, check=False)


IPVLAN_ERRORS = {
    "master-missing": {"master": "nope0"},
    "mode-unknown": {"master": "m0", "mode": "l4"},
}


@pytest.mark.parametrize("case", sorted(IPVLAN_ERRORS))
def test_ipvlan_errors(worlds, case):
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    before = ours.state()
    res = step(go, ours, "ipvlan", "ADD", conf_for("ipvlan", **IPVLAN_ERRORS[case]))
    assert res.go.rc == 1
    assert_same(res, msg=True)
    assert ours.state() == before


def test_ipvlan_mtu_above_master(worlds):
    """Go 1.1.1's ipvlan does not check the MTU against the master's: whatever the kernel makes of
    it, both sides end the same."""
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    lifecycle(go, ours, "ipvlan", conf_for("ipvlan", master="m0", mtu=9000))


def test_ipvlan_check_detects_mode_drift(worlds):
    cnitest.require_kernel("ipvlan")
    go, ours = worlds
    conf = conf_for("ipvlan", master="m0", mode="l3")
    add = step(go, ours, "ipvlan", "ADD", conf)
    assert_same(add)
    assert_same(step_after(go, ours, "ipvlan", "CHECK", dict(conf, mode="l2"), add), msg=True)
    assert_same(step_after(go, ours, "ipvlan", "DEL", conf, add))


# --- vlan -------------------------------------------------------------------------------------

@pytest.mark.parametrize("vid,mtu", [(0, None), (7, 1400), (4094, None)])
def test_vlan(worlds, vid, mtu):
    cnitest.require_kernel("vlan")
    go, ours = worlds
    lifecycle(go, ours, "vlan", conf_for("vlan", master="m0", vlanId=vid, mtu=mtu))


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0"])
def test_vlan_versions(worlds, version):
    cnitest.require_kernel("vlan")
    go, ours = worlds
    lifecycle(go, ours, "vlan", conf_for("vlan", version, master="m0", vlanId=9))


def test_vlan_check_detects_id_drift(worlds):
    cnitest.require_kernel("vlan")
    go, ours = worlds
    conf = conf_for("vlan", master="m0", vlanId=7)
    add = step(go, ours, "vlan", "ADD", conf)
    assert_same(add)
    # deliberate: same code, our message names the VLAN id (Go 1.1.1 says "Tuning link eth0
    # configured promisc is 8, current value is 7", a copy-paste slip)
    drift = step_after(go, ours, "vlan", "CHECK", dict(conf, vlanId=8), add)
    assert_same(drift)
    assert drift.ours.json["msg"] == "Error: Container interface eth0 vlan id 7 does not match expected value: 8"
    assert_same(step_after(go, ours, "vlan", "CHECK", dict(conf, mtu=1400), add))  # MTU checked too
    assert_same(step_after(go, ours, "vlan", "DEL", conf, add))


def test_vlan_two_pods_same_vid_on_one_master(worlds, netns_factory):
    """The second pod's VLAN link on the same master and id: the kernel refuses (EBUSY-like), and
    both sides say so the same way."""
    cnitest.require_kernel("vlan")
    go, ours = worlds
    conf = conf_for("vlan", master="m0", vlanId=7)
    first = step(go, ours, "vlan", "ADD", conf)
    assert_same(first)
    second = step(go, ours, "vlan", "ADD", conf, cid="ctr2", ifname="eth1")
    assert_same(second, msg=True)
    assert_same_state(go, ours)
    assert_same(step_after(go, ours, "vlan", "DEL", conf, first))


# --- bridge `vlan` ----------------------------------------------------------------------------

@pytest.mark.parametrize("gateway", [False, True])
def test_bridge_vlan(worlds, gateway):
    """VLAN filtering on the bridge, the pod's port in VLAN 42 (PVID, untagged); with isGateway the
    gateway address sits on `<bridge>.42` (a veth whose peer is a VLAN-42 port of the bridge)."""
    cnitest.require_kernel("bridge-vlan")
    go, ours = worlds
    conf = conf_for("bridge", bridge="brv", vlan=42, isGateway=gateway or None)
    add = step(go, ours, "bridge", "ADD", conf)
    assert_same(add, msg=True)
    assert_same_state(go, ours)
    assert port_vlans(go) == port_vlans(ours)
    assert any(v["vlan"] == 42 for row in json.loads(ours.sh("bridge -j vlan show")) for v in row["vlans"])
    if gateway:  # the pod reaches its gateway on either side, or on neither
        assert reaches(go, "10.7.0.1") == reaches(ours, "10.7.0.1")
    assert_same(step_after(go, ours, "bridge", "CHECK", conf, add), msg=True)
    for _ in range(2):
        assert_same(step_after(go, ours, "bridge", "DEL", conf, add), msg=True)
    assert_same_state(go, ours)
    assert port_vlans(go) == port_vlans(ours)


def test_bridge_vlan_second_pod_and_other_vlan(worlds):
    """Two pods on one VLAN-filtering bridge in different VLANs: both ports as Go sets them."""
    cnitest.require_kernel("bridge-vlan")
    go, ours = worlds
    a = step(go, ours, "bridge", "ADD", conf_for("bridge", bridge="brv", vlan=42))
    assert_same(a)
    b = step(go, ours, "bridge", "ADD", conf_for("bridge", bridge="brv", vlan=43), cid="ctr2", ifname="eth1")
    assert_same(b)
    assert_same_state(go, ours)
    assert port_vlans(go) == port_vlans(ours)


# --- vrf --------------------------------------------------------------------------------------

def vrf_conf(version="1.0.0", **extra):
    conf = {"cniVersion": version, "name": "vrfnet", "type": "vrf", "vrfname": "blue"}
    conf.update(extra)
    return {k: v for k, v in conf.items() if v is not None}


def main_add(go, ours, ifname="eth0", cid="ctr1", dual=False):
    """The interface the vrf plugin works on: a macvlan pod interface made by each side's own macvlan."""
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.7.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    if dual:
        ipam["ranges"].append([{"subnet": "fd00:7::/64"}])
        ipam["routes"].append({"dst": "::/0"})
    conf = conf_for("macvlan", ipam=ipam, master="m0")
    add = step(go, ours, "macvlan", "ADD", conf, ifname=ifname, cid=cid)
    assert_same(add)
    return conf, add


@pytest.mark.parametrize("table", [None, 42])
def test_vrf_lifecycle(worlds, table):
    """ADD puts eth0 into a new VRF (table given or the first free one), CHECK, DEL removes the
    VRF with its last interface; results, errors and kernel state (all route tables) as Go."""
    cnitest.require_kernel("vrf")
    go, ours = worlds
    _mconf, madd = main_add(go, ours, dual=table is None)
    conf = vrf_conf(table=table)
    add = step_after(go, ours, "vrf", "ADD", conf, madd)
    assert_same(add, msg=True)
    assert add.ours.json == madd.ours.json  # the prevResult, unchanged
    assert_same_state(go, ours, sysctls=("net.ipv6.conf.eth0.accept_dad",))
    (blue,) = ours.ip("-d link show blue", ours.cont)
    assert blue["linkinfo"]["info_data"]["table"] == (table or 1)
    (eth0,) = ours.ip("link show eth0", ours.cont)
    assert eth0["master"] == "blue"
    assert_same(step_after(go, ours, "vrf", "CHECK", conf, madd), msg=True)
    for _ in range(2):
        assert_same(step_after(go, ours, "vrf", "DEL", conf, madd), msg=True)
    assert_same_state(go, ours)
    assert [l["ifname"] for l in ours.ip("link show", ours.cont)] == ["lo", "eth0"]


def test_vrf_two_interfaces_share_one_vrf(worlds):
    """A second interface joins the existing VRF; a third VRF config with another table is refused;
    the VRF stays until its last interface leaves."""
    cnitest.require_kernel("vrf")
    go, ours = worlds
    _c0, m0 = main_add(go, ours, "eth0")
    _c1, m1 = main_add(go, ours, "eth1")
    conf = vrf_conf(table=100)
    assert_same(step_after(go, ours, "vrf", "ADD", conf, m0, ifname="eth0"), msg=True)
    assert_same(step_after(go, ours, "vrf", "ADD", conf, m1, ifname="eth1"), msg=True)
    assert_same_state(go, ours)
    clash = step_after(go, ours, "vrf", "ADD", vrf_conf(table=101), m1, ifname="eth1")
    assert clash.go.rc == 1
    assert_same(clash, msg=True)  # "VRF blue already exist with different routing table 100"
    assert_same(step_after(go, ours, "vrf", "DEL", conf, m0, ifname="eth0"), msg=True)
    assert [l["ifname"] for l in ours.ip("link show", ours.cont)] == ["lo", "eth0", "eth1", "blue"]
    assert_same_state(go, ours)
    assert_same(step_after(go, ours, "vrf", "DEL", conf, m1, ifname="eth1"), msg=True)
    assert_same_state(go, ours)


def test_vrf_second_vrf_takes_next_free_table(worlds):
    cnitest.require_kernel("vrf")
    go, ours = worlds
    _c0, m0 = main_add(go, ours, "eth0")
    _c1, m1 = main_add(go, ours, "eth1")
    assert_same(step_after(go, ours, "vrf", "ADD", vrf_conf(), m0, ifname="eth0"))
    assert_same(step_after(go, ours, "vrf", "ADD", vrf_conf(vrfname="red"), m1, ifname="eth1"))
    assert_same_state(go, ours)
    (red,) = ours.ip("-d link show red", ours.cont)
    assert red["linkinfo"]["info_data"]["table"] == 2


VRF_ERRORS = {
    "no-vrfname": (vrf_conf(vrfname=None), "eth0", ""),
    "no-prev-result": (vrf_conf(), "eth0", "noprev"),
    "no-such-interface": (vrf_conf(), "eth9", ""),
    "name-not-a-vrf": (vrf_conf(vrfname="eth0"), "eth0", ""),
    "interface-has-master": (vrf_conf(), "eth0", "ip link add red type vrf table 77 && ip link set eth0 master red"),
    "version-030": (vrf_conf("0.3.0"), "eth0", ""),
}


@pytest.mark.parametrize("case", sorted(VRF_ERRORS))
def test_vrf_errors(worlds, case):
    """Same code and message as Go; ours leaves no VRF behind (Go leaves the one it created when
    enslaving fails: there only ours is compared with the state before)."""
    cnitest.require_kernel("vrf")
    go, ours = worlds
    _c, madd = main_add(go, ours)
    conf, ifname, setup = VRF_ERRORS[case]
    if setup and setup != "noprev":
        for w in (go, ours):
            w.sh(setup, ns=w.cont)
    before = ours.state()
    if setup == "noprev":
        res = step(go, ours, "vrf", "ADD", conf, ifname=ifname)
    else:
        res = step_after(go, ours, "vrf", "ADD", conf, madd, ifname=ifname)
    assert res.go.rc == 1
    assert_same(res, msg=True)
    assert ours.state() == before


def test_vrf_del_without_netns_or_vrf(worlds):
    cnitest.require_kernel("vrf")
    go, ours = worlds
    for netns in ("", "/run/netns/gone"):
        assert_same(step(go, ours, "vrf", "DEL", vrf_conf(), netns=netns), msg=True)
    assert_same(step(go, ours, "vrf", "DEL", vrf_conf()), msg=True)  # no VRF in the container
