"""Differential tests, Go reference plugins (1.1.1) vs ours: protocol validation matrix, result
formatting per cniVersion, loopback and macvlan options (bridge/ptp/host-device in
test_diff_plugins_veth.py)."""
from __future__ import annotations

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cnitest  # noqa: E402
from difflib_cni import assert_same, assert_same_state, lifecycle, make_worlds, step, step_after, tree  # noqa: E402

MASTER = "ip link add m0 type veth peer name m0p && ip link set m0 up && ip link set m0p up"


def mv_conf(version: str = "1.0.0", **extra):
    conf = {"cniVersion": version, "name": "mvnet", "type": "macvlan", "master": "m0",
            "ipam": {"type": "host-local", "subnet": "10.5.0.0/24", "routes": [{"dst": "0.0.0.0/0"}]}}
    conf.update(extra)
    return {k: v for k, v in conf.items() if v is not None}


@pytest.fixture
def worlds(netns_factory, tmp_path):
    return make_worlds(netns_factory, tmp_path, setup=MASTER)


# --- §6.1 protocol/skel matrix, run against macvlan -------------------------------------------

GOOD = json.dumps(mv_conf())
MATRIX = {
    # name: (env overrides (None = unset), stdin)
    "unknown-command": ({"CNI_COMMAND": "FOO"}, GOOD),
    "missing-path": ({"CNI_PATH": None}, GOOD),
    "missing-ifname": ({"CNI_IFNAME": None}, GOOD),
    "missing-containerid": ({"CNI_CONTAINERID": None}, GOOD),
    "missing-netns": ({"CNI_NETNS": None}, GOOD),
    "cid-dash": ({"CNI_CONTAINERID": "-abc"}, GOOD),
    "cid-slash": ({"CNI_CONTAINERID": "a/b"}, GOOD),
    "cid-space": ({"CNI_CONTAINERID": "a b"}, GOOD),
    "ifname-16": ({"CNI_IFNAME": "a" * 16}, GOOD),
    "ifname-dot": ({"CNI_IFNAME": "."}, GOOD),
    "ifname-dotdot": ({"CNI_IFNAME": ".."}, GOOD),
    "ifname-colon": ({"CNI_IFNAME": "a:b"}, GOOD),
    "ifname-space": ({"CNI_IFNAME": "a b"}, GOOD),
    "ifname-slash": ({"CNI_IFNAME": "a/b"}, GOOD),
    "name-empty": ({}, json.dumps(mv_conf(name=""))),
    "name-slash": ({}, json.dumps(mv_conf(name="n/a"))),
    "json-bad": ({}, '{"cniVersion": "1.0.0", "name": '),
    "version-050": ({}, json.dumps(mv_conf("0.5.0"))),
    "version-garbage": ({}, json.dumps(mv_conf("x.y"))),
    "check-031": ({"CNI_COMMAND": "CHECK"}, json.dumps(mv_conf("0.3.1"))),
    "args-unknown": ({"CNI_ARGS": "FOO=bar"}, GOOD),
    "args-malformed": ({"CNI_ARGS": "FOO"}, GOOD),
    "mtu-type": ({}, json.dumps(mv_conf(mtu="1400"))),
    "mode-unknown": ({}, json.dumps(mv_conf(mode="source"))),
    "master-missing": ({}, json.dumps(mv_conf(master="nope0"))),
    "mtu-above-master": ({}, json.dumps(mv_conf(mtu=9000))),
    "mtu-negative": ({}, json.dumps(mv_conf(mtu=-1))),
    "mac-invalid": ({"CNI_ARGS": "MAC=zz"}, GOOD),
    "mac-args-no-ignore": ({"CNI_ARGS": "MAC=02:00:00:00:00:44"}, GOOD),
    "netns-missing": ({"CNI_NETNS": "/run/netns/does-not-exist"}, GOOD),
}


def test_validation_matrix(netns_factory, tmp_path):
    """Every input error gives Go's exit code and error code through the real executables, and
    nothing is created. One pair of worlds for all cases (each case fails before creating)."""
    go, ours = make_worlds(netns_factory, tmp_path, setup=MASTER, inproc=False)
    before = ours.state()
    mismatches = []
    for case in sorted(MATRIX):
        env_over, stdin = MATRIX[case]
        g, o = (w.run("macvlan", "ADD", stdin, env=env_over) for w in (go, ours))
        if g.rc != 1 or o.rc != 1 or "Traceback" in o.stdout:
            mismatches.append((case, g.stdout, o.stdout + o.stderr))
        elif case == "args-malformed":
            # deliberate (skel): a malformed CNI_ARGS is an env error (4); Go's plugin parses it late (999)
            if (g.code, o.code) != (999, 4):
                mismatches.append((case, g.stdout, o.stdout))
        elif case == "mtu-negative":
            # deliberate (issue 13): an out-of-range number is a config error (7) naming the field and
            # range, checked before netlink; Go hands it to the kernel and reports its refusal (999)
            if (g.code, o.code) != (999, 7) or "must be between 0 and 65535" not in o.stdout:
                mismatches.append((case, g.stdout, o.stdout))
        elif o.code != g.code:
            mismatches.append((case, g.stdout, o.stdout))
    assert not mismatches, mismatches
    # ours created nothing; Go's macvlan leaves its link when IPAM fails ("mac-args-no-ignore":
    # the deferred cleanup tests a shadowed `err`), so Go's state is not the reference here
    after = ours.state()
    assert after["cont"] == before["cont"] and after["data"] == before["data"]


def test_version_and_about():
    go = cnitest.exec_plugin(os.path.join(cnitest.GO_BIN, "macvlan"), {"CNI_COMMAND": "VERSION"}, b"")
    ours = cnitest.exec_plugin(os.path.join(cnitest.OUR_BIN, "macvlan"), {"CNI_COMMAND": "VERSION"}, b"")
    assert go.rc == ours.rc == 0
    # deliberate: we also speak 1.1.0, so our list is Go's plus "1.1.0"
    assert ours.json["supportedVersions"] == go.json["supportedVersions"] + ["1.1.0"]
    about = cnitest.exec_plugin(os.path.join(cnitest.OUR_BIN, "macvlan"), {}, b"")
    assert about.rc == 0 and about.stdout == "" and "CNI" in about.stderr


# --- result formatting per version ------------------------------------------------------------

@pytest.mark.parametrize("version", [None, "0.3.1", "0.4.0", "1.0.0"])
def test_result_per_version(worlds, version):
    go, ours = worlds
    conf = mv_conf(version)
    if version == "1.0.0":  # dual-stack once (IPv6 DAD costs seconds per ADD)
        conf["ipam"]["ranges"] = [[{"subnet": "fd00:5::/64"}]]
        conf["ipam"]["routes"].append({"dst": "::/0"})
    conf["dns"] = {"nameservers": ["10.5.0.53"], "search": ["cluster.local"]}
    add = lifecycle(go, ours, "macvlan", conf)
    if version is None:
        conf_v = "0.1.0"
        assert set(add.ours.json) == {"cniVersion", "ip4", "dns"} and add.ours.json["cniVersion"] == conf_v
    else:
        assert add.ours.json["ips"][0]["interface"] == 0
        assert ("version" in add.ours.json["ips"][0]) == (version != "1.0.0")


def test_result_with_ipv6_only(worlds):
    go, ours = worlds
    conf = mv_conf()
    conf["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "fd00:6::/120"}]], "routes": [{"dst": "::/0"}]}
    lifecycle(go, ours, "macvlan", conf, sysctls=("net.ipv6.conf.all.disable_ipv6",))


# --- macvlan options ------------------------------------------------------------------------

def test_macvlan_modes(worlds):
    """Each mode (and the default) through a whole lifecycle, one after the other in one world pair."""
    go, ours = worlds
    for mode in ("bridge", "private", "vepa", "passthru", None):
        add = lifecycle(go, ours, "macvlan", mv_conf(mode=mode), sysctls=("net.ipv4.conf.eth0.arp_notify",))
        assert add.ours.rc == 0
        assert [l["ifname"] for l in ours.ip("link show", ours.cont)] == ["lo"]


def test_macvlan_mtu_and_l2_only(worlds):
    go, ours = worlds
    conf = mv_conf(mtu=1280)
    conf["ipam"] = {}
    add = step(go, ours, "macvlan", "ADD", conf)
    assert_same(add)
    assert_same_state(go, ours)
    eth0 = [l for l in ours.ip("link show", ours.cont) if l["ifname"] == "eth0"][0]
    assert eth0["mtu"] == 1280 and "UP" in eth0["flags"]
    assert "ips" not in add.ours.json


@pytest.mark.parametrize("source", ["cni_args", "conf", "runtime", "runtime_over_args"])
def test_macvlan_mac_sources(worlds, source):
    """MAC precedence CNI_ARGS < mac < runtimeConfig.mac. (A bare `MAC=` without IgnoreUnknown
    fails in both, in host-local, which gets the same CNI_ARGS: see the validation matrix.)"""
    go, ours = worlds
    conf, args = mv_conf(ipam={}), ""
    if source == "cni_args":
        args = "IgnoreUnknown=1;MAC=02:00:00:00:00:11"
    elif source == "conf":
        conf["mac"] = "02:00:00:00:00:22"
    else:
        conf["runtimeConfig"] = {"mac": "02:00:00:00:00:33"}
        if source == "runtime_over_args":
            args = "IgnoreUnknown=1;MAC=02:00:00:00:00:44"
    add = step(go, ours, "macvlan", "ADD", conf, args=args)
    assert_same(add)
    assert add.go.rc == 0, add.go.stdout
    assert add.go.json["interfaces"][0]["mac"] == add.ours.json["interfaces"][0]["mac"]  # not normalised away
    assert_same_state(go, ours)


def test_macvlan_default_master(worlds):
    """No `master`: the interface of the first default route (m0 here) is used."""
    go, ours = worlds
    for w in (go, ours):
        w.sh("ip addr add 192.0.2.1/24 dev m0 && ip route add default via 192.0.2.254 dev m0")
    conf = mv_conf()
    del conf["master"]
    add = step(go, ours, "macvlan", "ADD", conf)
    assert_same(add)
    assert ours.ip("link show", ours.cont)[1]["link_netnsid"] is not None


def test_macvlan_no_default_route(worlds):
    go, ours = worlds
    conf = mv_conf()
    del conf["master"]
    assert_same(step(go, ours, "macvlan", "ADD", conf), msg=True)


def test_macvlan_ifname_taken_undoes_ipam(worlds):
    go, ours = worlds
    for w in (go, ours):
        w.sh("ip link add eth0 type veth peer name peer0", ns=w.cont)
    add = step(go, ours, "macvlan", "ADD", mv_conf())
    assert_same(add)
    assert_same_state(go, ours)
    assert ours.state()["data"].keys() <= {"mvnet/lock", "mvnet/last_reserved_ip.0"}


def test_macvlan_check_detects_drift(worlds):
    go, ours = worlds
    conf = mv_conf()
    add = step(go, ours, "macvlan", "ADD", conf)
    assert_same(add)
    for w in (go, ours):
        w.sh("ip addr flush dev eth0", ns=w.cont)
    chk = step(go, ours, "macvlan", "CHECK", conf)  # no prevResult
    assert_same(chk, msg=True)
    chk = step_after(go, ours, "macvlan", "CHECK", conf, add)
    go_chk, our_chk = chk.go, chk.ours
    assert go_chk.rc == our_chk.rc == 1
    assert our_chk.json["msg"] == go_chk.json["msg"] == "Failed to match addr 10.5.0.2/24 on interface eth0"


def test_macvlan_del_master_gone(worlds):
    """Deliberate divergence: Go 1.1.1 DEL fails when the master is gone (plugins#953); ours
    succeeds and still releases the IP."""
    go, ours = worlds
    conf = mv_conf()
    add = step(go, ours, "macvlan", "ADD", conf)
    assert_same(add)
    for w in (go, ours):
        w.sh("ip link del m0")
    dele = step_after(go, ours, "macvlan", "DEL", conf, add)
    g, o = dele.go, dele.ours
    assert g.rc == 1 and g.json["msg"] == "Link not found"
    assert o.rc == 0, o.stdout
    assert "mvnet/10.5.0.2" not in ours.state()["data"]


@pytest.mark.parametrize("netns", ["gone", "empty"])
def test_macvlan_del_without_netns(worlds, netns):
    go, ours = worlds
    conf = mv_conf()
    add = step(go, ours, "macvlan", "ADD", conf)
    assert_same(add)
    if netns == "gone":
        for w in (go, ours):
            cnitest.sh(f"ip netns del {w.cont}")
        dele = step(go, ours, "macvlan", "DEL", conf)
    else:
        dele = step(go, ours, "macvlan", "DEL", conf, netns="")
    assert_same(dele)
    stores = [ours.normalise(tree(w.datadir)) for w in (go, ours)]
    assert stores[0] == stores[1] and "mvnet/10.5.0.2" not in stores[1]


# --- loopback --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["0.2.0", "0.3.1", "1.0.0"])
def test_loopback(worlds, version):
    """Loopback ADD/CHECK/DEL/DEL/CHECK (lo down after DEL: CHECK fails in both)."""
    go, ours = worlds
    conf = {"cniVersion": version, "name": "lo", "type": "loopback"}
    add = step(go, ours, "loopback", "ADD", conf)
    assert add.go.rc == add.ours.rc == 0
    assert_same_state(go, ours)
    g, o = add.results()
    if version == "1.0.0":
        assert g == o
    elif version == "0.3.1":
        # deliberate: Go prints its 1.0.0-shaped result under the config's version (no ips[].version);
        # we print what the version's spec says. Same content otherwise.
        assert [{k: v for k, v in ip.items() if k != "version"} for ip in o["ips"]] == g["ips"]
        assert {ip["version"] for ip in o["ips"]} == {"4", "6"} and o["interfaces"] == g["interfaces"]
    else:
        assert o == {"cniVersion": "0.2.0", "ip4": {"ip": "127.0.0.1/8"}, "ip6": {"ip": "::1/128"}, "dns": {}}
    chk = step(go, ours, "loopback", "CHECK", {**conf, "cniVersion": "1.0.0"})
    assert_same(chk, msg=True)
    for _ in range(2):
        assert_same(step(go, ours, "loopback", "DEL", conf))
        assert_same_state(go, ours)
    chk = step(go, ours, "loopback", "CHECK", {**conf, "cniVersion": "1.0.0"})  # lo is down after DEL
    assert_same(chk, msg=True)
    assert chk.ours.rc == 1


def test_loopback_passes_prev_result(worlds):
    go, ours = worlds
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.1.0.2/24", "interface": 0}], "dns": {}}
    conf = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback", "prevResult": prev}
    add = step(go, ours, "loopback", "ADD", conf)
    assert_same(add)
    assert add.ours.json == prev


@pytest.mark.parametrize("master", ["../../etc/passwd", "a" * 16])
def test_macvlan_master_name_too_long(worlds, master):
    """A master name the kernel cannot hold (over IFNAMSIZ: the kernel answers ERANGE, not ENODEV)
    is an ordinary lookup failure, as in Go, never a crash."""
    go, ours = worlds
    conf = dict(mv_conf(), master=master)
    res = step(go, ours, "macvlan", "ADD", conf)
    assert res.go.rc == res.ours.rc == 1
    assert res.ours.json["msg"] == res.go.json["msg"]
    assert "Traceback" not in res.ours.stderr
