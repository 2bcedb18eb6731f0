"""static IPAM: address sources and their precedence, validation, CHECK (in-process)."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cnitest import inproc  # noqa: E402


def conf(addresses=None, version="1.0.0", **extra):
    ipam = {"type": "static"}
    if addresses is not None:
        ipam["addresses"] = addresses
    ipam.update(extra.pop("ipam", {}))
    return {"cniVersion": version, "name": "snet", "type": "macvlan", "ipam": ipam, **extra}


def add(c, **kw):
    return inproc("static", "ADD", c, netns="/x", **kw)


def addrs(out):
    assert out.rc == 0, out.stdout
    return [(ip["address"], ip.get("gateway")) for ip in out.json["ips"]]


def test_addresses_routes_dns_verbatim():
    c = conf([{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}, {"address": "fd00::5/64"}],
             ipam={"routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
                   "dns": {"nameservers": ["10.0.0.53"], "search": ["a.b"]}})
    out = add(c)
    assert addrs(out) == [("10.0.0.5/24", "10.0.0.1"), ("fd00::5/64", None)]
    assert out.json["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]
    assert out.json["dns"] == {"nameservers": ["10.0.0.53"], "search": ["a.b"]}


def test_cni_args_ip_appends_and_gateway_matches_by_subnet():
    out = add(conf([{"address": "10.0.0.5/24"}]), args="IP=10.1.0.5/24, fd00::5/64;GATEWAY=fd00::1,10.1.0.1")
    assert addrs(out) == [("10.0.0.5/24", None), ("10.1.0.5/24", "10.1.0.1"), ("fd00::5/64", "fd00::1")]


def test_gateway_arg_does_not_touch_config_addresses():
    """Go parses config addresses after GATEWAY= is applied, so it never reaches them."""
    assert addrs(add(conf([{"address": "10.0.0.5/24"}]), args="GATEWAY=10.0.0.1")) == [("10.0.0.5/24", None)]


def test_args_cni_ips_replace_and_runtime_config_wins():
    c = conf([{"address": "10.0.0.5/24"}], args={"cni": {"ips": ["10.2.0.5/24"]}})
    assert addrs(add(c, args="IP=10.1.0.5/24")) == [("10.2.0.5/24", None)]
    c["runtimeConfig"] = {"ips": ["10.3.0.5/24", "fd00::3/64"]}
    assert addrs(add(c)) == [("10.3.0.5/24", None), ("fd00::3/64", None)]


@pytest.mark.parametrize("c, args, msg", [
    (conf([{"address": "10.0.0.5"}]), "", "the 'address' field is expected to be in CIDR notation, got: '10.0.0.5'"),
    (conf([]), "IP=10.0.0.5", "the 'ip' field is expected to be in CIDR notation, got: '10.0.0.5'"),
    (conf([]), "GATEWAY=x", "invalid gateway address: x"),
    (conf([], runtimeConfig={"ips": ["10.0.0.5"]}), "",
     "an entry in the 'ips' field is NOT in CIDR notation, got: '10.0.0.5'"),
    (conf([{"address": "10.0.0.5/24"}, {"address": "10.0.1.5/24"}], version="0.2.0"), "",
     "CNI version 0.2.0 does not support more than 1 address per family"),
    ({"cniVersion": "1.0.0", "name": "n", "type": "static"}, "", "IPAM config missing 'ipam' key"),
    (conf([]), "X=1", 'ARGS: unknown args ["X=1"]'),
])
def test_errors(c, args, msg):
    out = add(c, args=args)
    assert (out.rc, out.code, out.json["msg"]) == (1, 999, msg)


def test_two_addresses_of_one_family_fine_from_030():
    c = conf([{"address": "10.0.0.5/24"}, {"address": "10.0.1.5/24"}], version="0.3.0")
    assert len(addrs(add(c))) == 2


def test_del_is_a_noop():
    assert inproc("static", "DEL", conf([{"address": "bogus"}])).rc == 0


def test_check_against_prev_result():
    c = conf([{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}])
    assert inproc("static", "CHECK", c, netns="/x").json["msg"] == "Required prevResult missing"
    c["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}]}
    assert inproc("static", "CHECK", c, netns="/x").rc == 0
    c["prevResult"]["ips"][0]["gateway"] = "10.0.0.2"
    assert inproc("static", "CHECK", c, netns="/x").json["msg"] == "static: Failed to match addr 10.0.0.5 on interface eth0"
    c["prevResult"]["ips"] = [{"address": "10.0.0.6/24", "gateway": "10.0.0.1"}]
    assert inproc("static", "CHECK", c, netns="/x").json["msg"] == "static: Failed to find addr 10.0.0.5 on interface eth0"
