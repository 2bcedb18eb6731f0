"""Config input is checked before it reaches the kernel or a ruleset (issue 13: L5 and the numeric
range checks; docs/security.md).

- portmap's hostIP never carries an IPv6 zone (its bytes would reach nft/iptables batches);
- every MTU field (bridge, ipvlan, macvlan, ptp, tap, tuning, vlan) and dhcp's timeout are
  range-checked first: code 7 naming the field and the range, nothing on stderr, nothing created;
- pyroute2's own logging never reaches a plugin's stderr.
"""
from __future__ import annotations

import subprocess

import pytest

import cnitest

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/run/netns/absent"}],
        "ips": [{"address": "10.47.0.7/24", "interface": 0}]}


@pytest.mark.parametrize("host_ip", ["fe80::1%eth0", "fe80::1%x;flush ruleset", "fe80::1%\u202e", "::1%1"])
def test_portmap_host_ip_with_a_zone_is_refused(sandbox, host_ip):
    conf = {"cniVersion": "1.0.0", "name": "secpm", "type": "portmap", "prevResult": PREV,
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                                "hostIP": host_ip}]}}
    before = cnitest.sh("nft list ruleset") + cnitest.sh("iptables-save")
    out = cnitest.run("portmap", "ADD", conf, cid="pm1", netns="/run/netns/absent")
    assert out.rc == 1 and out.code == 7 and "Invalid host IP" in out.json["msg"], out.stdout
    assert "zone" in out.json["details"] and out.stderr == ""
    assert cnitest.sh("nft list ruleset") + cnitest.sh("iptables-save") == before


MTU_PLUGINS = {
    "bridge": {"bridge": "secbr0"},
    "ipvlan": {"master": "secabsent0"},
    "macvlan": {"master": "secabsent0"},
    "ptp": {},
    "tap": {},
    "vlan": {"master": "secabsent0", "vlanId": 5},
}


@pytest.mark.parametrize("value", [-1, 65536, 2 ** 70])  # every other extreme: the integer-extremes fuzz
@pytest.mark.parametrize("ptype", sorted(MTU_PLUGINS) + ["tuning"])
def test_mtu_out_of_range_is_a_config_error_before_netlink(sandbox, netns, tmp_path, ptype, value):
    conf = {"cniVersion": "1.0.0", "name": "secmtu", "type": ptype, "mtu": value, **MTU_PLUGINS.get(ptype, {}),
            "ipam": {"type": "host-local", "subnet": "10.47.1.0/24", "dataDir": str(tmp_path)}}
    if ptype == "tuning":
        conf = {"cniVersion": "1.0.0", "name": "secmtu", "type": "tuning", "mtu": value, "prevResult": PREV,
                "dataDir": str(tmp_path)}
    links = cnitest.sh("ip -o link show")
    out = cnitest.run(ptype, "ADD", conf, cid="m1", netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.code == 7, out.stdout + out.stderr
    assert out.json["msg"] == f"invalid mtu {value}: must be between 0 and 65535"
    assert out.stderr == ""  # no traceback, no pyroute2 log line
    assert cnitest.sh("ip -o link show") == links and cnitest.sh(f"ip netns exec {netns} ip -o link show").count("\n") == 1
    assert not list(tmp_path.glob("secmtu/10.*"))  # no lease taken


def test_tuning_mtu_from_args_is_range_checked_too(sandbox, netns, tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "secmtu", "type": "tuning", "prevResult": PREV, "dataDir": str(tmp_path),
            "args": {"cni": {"mtu": 2 ** 70}}}
    out = cnitest.run("tuning", "ADD", conf, cid="m2", netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.code == 7 and "must be between 0 and 65535" in out.json["msg"]


@pytest.mark.parametrize("timeout", [0, -1, 1e308, 3601])
def test_dhcp_timeout_is_range_checked(sandbox, netns, timeout):
    conf = {"cniVersion": "1.0.0", "name": "secdhcp", "type": "dhcp", "ipam": {"type": "dhcp", "timeout": timeout}}
    out = cnitest.run("dhcp", "ADD", conf, cid="d1", netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.code == 7 and "ipam.timeout" in out.json["msg"] and "3600" in out.json["msg"]


def test_dhcp_timeout_infinity_is_refused(sandbox, netns):
    stdin = b'{"cniVersion": "1.0.0", "name": "secdhcp", "type": "dhcp", "ipam": {"type": "dhcp", "timeout": 1e999}}'
    out = cnitest.run("dhcp", "ADD", stdin, cid="d2", netns=f"/run/netns/{netns}")
    assert out.rc == 1 and out.code == 7, out.stdout


def test_pyroute2_logging_never_reaches_stderr(sandbox):
    program = ("import sys, logging; sys.path.insert(0, sys.argv[1]); from cni.net import rtnl; rtnl.iproute().close(); "
               "logging.getLogger('pyroute2.netlink.nlsocket').error('a pyroute2 complaint')")
    proc = subprocess.run([cnitest.ROOT + "/.venv/bin/python3", "-I", "-c", program, cnitest.LIB],
                          capture_output=True, text=True, timeout=60, check=True)
    assert proc.stderr == "" and proc.stdout == ""
