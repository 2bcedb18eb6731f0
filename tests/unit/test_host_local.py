"""host-local allocation logic, config validation, store format, GC and STATUS (in-process, no netns)."""
from __future__ import annotations

import ipaddress
import json
import os
import stat
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from cnitest import inproc  # noqa: E402

from cni.protocol import skel  # noqa: E402
from cni.ipam import host_local as hl  # noqa: E402
from cni.ipam.store import Store  # noqa: E402


def conf(data_dir, ranges=None, version="1.0.0", name="net1", **ipam):
    body = {"type": "host-local", "dataDir": str(data_dir)}
    if ranges is not None:
        body["ranges"] = ranges
    body.update(ipam)
    return {"cniVersion": version, "name": name, "type": "bridge", "ipam": body}


def add(c, cid="c1", ifname="eth0", **kw):
    return inproc("host-local", "ADD", c, cid=cid, ifname=ifname, netns="/x", **kw)


def files(data_dir, name="net1"):
    d = os.path.join(str(data_dir), name)
    paths = {f: os.path.join(d, f) for f in sorted(os.listdir(d)) if f != "lock"}
    return {f: open(p, "rb").read() for f, p in paths.items() if os.path.isfile(p) and not os.path.islink(p)}


def rset(*ranges):
    return hl._canonical_set(list(ranges))


# --- iterator ---------------------------------------------------------------------------

def ips(it, n=100):
    return [str(ip) for ip, _ in list(it)[:n]]


def test_iter_from_start_skips_gateway_and_stops_after_one_cycle():
    rs = rset({"subnet": "10.0.0.0/29"})
    assert ips(rs.candidates(None)) == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]


def test_iter_round_robin_from_last_reserved_wraps():
    rs = rset({"subnet": "10.0.0.0/29"})
    got = ips(rs.candidates(ipaddress.ip_address("10.0.0.4")))
    assert got == ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_iter_last_reserved_outside_rangeset_starts_over():
    rs = rset({"subnet": "10.0.0.0/29"})
    assert ips(rs.candidates(ipaddress.ip_address("10.9.9.9")))[0] == "10.0.0.2"


def test_iter_custom_gateway_makes_dot1_allocatable():
    rs = rset({"subnet": "10.0.0.0/29", "gateway": "10.0.0.6"})
    assert ips(rs.candidates(None)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]


def test_iter_crosses_ranges_of_a_multi_subnet_set():
    rs = rset({"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"})
    assert ips(rs.candidates(None)) == ["10.0.0.2", "10.0.1.2"]
    assert ips(rs.candidates(ipaddress.ip_address("10.0.1.2"))) == ["10.0.0.2", "10.0.1.2"]


def test_v6_default_range_end_is_last_address():
    rs = rset({"subnet": "fd00::/126"})
    assert ips(rs.candidates(None)) == ["fd00::2", "fd00::3"]
    assert str(rset({"subnet": "fd00::/64"})[0]) == "fd00::1-fd00::ffff:ffff:ffff:ffff"


# --- config validation (Go's messages) --------------------------------------------------

@pytest.mark.parametrize("ranges, msg", [
    ([[{"subnet": "10.0.0.0/31"}]], "invalid range set 0: Network 10.0.0.0/31 too small to allocate from"),
    ([[{"subnet": "10.0.0.1/32"}]], "invalid range set 0: Network 10.0.0.1/32 too small to allocate from"),
    ([[{"subnet": "fd00::/127"}]], "invalid range set 0: Network fd00::/127 too small to allocate from"),
    ([[{"subnet": "10.0.0.5/24"}]], "invalid range set 0: Network has host bits set. For a subnet mask of "
                                    "length 24 the network address is 10.0.0.0"),
    ([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.1.1"}]],
     "invalid range set 0: RangeStart 10.0.1.1 not in network 10.0.0.0/24"),
    ([[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.50", "rangeEnd": "10.0.0.40"}]],
     "invalid range set 0: RangeStart 10.0.0.50 not in network 10.0.0.0/24"),  # as Go: start checked against end
    ([[{"subnet": "10.0.0.0/24", "rangeEnd": "10.0.1.40"}]],
     "invalid range set 0: RangeEnd 10.0.1.40 not in network 10.0.0.0/24"),
    ([[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]], "range set 0 overlaps with 1"),
    ([[{"subnet": "10.0.0.0/24"}, {"subnet": "10.0.0.128/25"}]],
     "invalid range set 0: subnets 10.0.0.1-10.0.0.254 and 10.0.0.129-10.0.0.254 overlap"),
    ([[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]], "invalid range set 0: mixed address families"),
    ([[]], "invalid range set 0: empty range set"),
    ([[{"rangeStart": "10.0.0.1"}]], "invalid range set 0: IP <nil> not v4 nor v6"),
    ([[{"subnet": "10.0.0.0"}]], "invalid CIDR address: 10.0.0.0"),
    ([[{"subnet": "10.0.0.0/24", "gateway": "nope"}]], "invalid IP address: nope"),
    ([], "no IP ranges specified"),
])
def test_config_errors(tmp_path, ranges, msg):
    out = add(conf(tmp_path, ranges))
    assert (out.rc, out.code, out.json["msg"]) == (1, 999, msg)
    assert not os.path.exists(tmp_path / "net1")  # nothing touched on a config error


def test_missing_ipam_key(tmp_path):
    out = add({"cniVersion": "1.0.0", "name": "n", "type": "host-local"})
    assert out.json["msg"] == "IPAM config missing 'ipam' key"


def test_more_than_one_address_per_family_needs_030(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]], version="0.2.0")
    assert add(c).json["msg"] == "CNI version 0.2.0 does not support more than 1 address per family"
    c["cniVersion"] = "0.3.0"
    assert add(c).rc == 0


def test_range_sets_are_ipranges_then_legacy_then_ranges(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.2.0.0/24"}]], subnet="10.1.0.0/24", gateway="10.1.0.9")
    c["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.0.0.0/24"}]]}
    out = add(c)
    assert [ip["address"] for ip in out.json["ips"]] == ["10.0.0.2/24", "10.1.0.1/24", "10.2.0.2/24"]
    assert out.json["ips"][1]["gateway"] == "10.1.0.9"
    assert files(tmp_path)["last_reserved_ip.1"] == b"10.1.0.1"


# --- allocation through the plugin --------------------------------------------------------

def test_lease_file_format_mode_and_result(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]],
             routes=[{"dst": "0.0.0.0/0"}, {"dst": "fd00:1::/64", "gw": "fd00::1"}])
    out = add(c, cid="abc", ifname="net9")
    assert out.json == {"cniVersion": "1.0.0",
                        "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
                                {"address": "fd00::2/64", "gateway": "fd00::1"}],
                        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "fd00:1::/64", "gw": "fd00::1"}],
                        "dns": {}}
    assert files(tmp_path) == {"10.0.0.2": b"abc\r\nnet9", "fd00::2": b"abc\r\nnet9",
                               "last_reserved_ip.0": b"10.0.0.2", "last_reserved_ip.1": b"fd00::2"}
    d = tmp_path / "net1"
    assert stat.S_IMODE(os.stat(d / "10.0.0.2").st_mode) == 0o644 & ~_umask()
    assert stat.S_IMODE(os.stat(d / "lock").st_mode) == 0o750 & ~_umask()
    assert not [f for f in os.listdir(d) if "tmp" in f]  # no temp file left behind


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_round_robin_exhaustion_and_reuse_after_del(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/29", "rangeStart": "10.0.0.4"}]])
    got = [add(c, cid=f"c{i}").json["ips"][0]["address"] for i in range(3)]
    assert got == ["10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    full = add(c, cid="c9")
    assert full.json["msg"] == "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.4-10.0.0.6"
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0
    # round-robin continues after the last reserved (.6) and wraps to the freed .5
    assert add(c, cid="c9").json["ips"][0]["address"] == "10.0.0.5/29"


def test_duplicate_allocation_refused(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]])
    add(c)
    out = add(c)
    assert out.json["msg"] == "failed to allocate for range 0: 10.0.0.2 has been allocated to c1, duplicate allocation is not allowed"
    assert add(c, ifname="eth1").json["ips"][0]["address"] == "10.0.0.3/24"


@pytest.mark.parametrize("how", ["env", "args", "runtime"])
def test_requested_ip_sources(tmp_path, how):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]])
    kw = {}
    if how == "env":
        kw["args"] = "IP=10.0.0.77"
    elif how == "args":
        c["args"] = {"cni": {"ips": ["10.0.0.77/24"]}}
    else:
        c["runtimeConfig"] = {"ips": ["10.0.0.77"]}
    assert add(c, **kw).json["ips"][0]["address"] == "10.0.0.77/24"
    again = add(c, cid="c2", **kw)
    assert again.json["msg"] == ("failed to allocate for range 0: requested IP address 10.0.0.77 is not "
                                 "available in range set 10.0.0.1-10.0.0.254")


def test_requested_ip_errors_release_everything(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]])
    out = add(c, args="IP=10.9.0.1")
    assert out.json["msg"] == "failed to allocate all requested IPs: 10.9.0.1"
    assert set(files(tmp_path)) == {"last_reserved_ip.0", "last_reserved_ip.1"}  # both leases rolled back
    out = add(c, args="IP=10.0.0.1")
    assert out.json["msg"] == "failed to allocate for range 0: requested ip 10.0.0.1 is subnet's gateway"
    out = add(c, args="IP=bogus")
    assert out.json["msg"] == 'ARGS: error parsing value of pair "IP=bogus": invalid IP address bogus'
    assert add(c, args="FOO=1").json["msg"] == 'ARGS: unknown args ["FOO=1"]'
    assert add(c, args="FOO=1;IgnoreUnknown=1").rc == 0


def test_del_is_idempotent_and_handles_legacy_cid_only_files(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]])
    add(c)
    d = tmp_path / "net1"
    (d / "10.0.0.50").write_bytes(b"c1\n")  # written by an ancient host-local
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0
    assert set(files(tmp_path)) == {"10.0.0.50", "last_reserved_ip.0"}  # legacy only as a fallback
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0
    assert set(files(tmp_path)) == {"last_reserved_ip.0"}
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0


def test_check(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]])
    assert inproc("host-local", "CHECK", c, netns="/x").json["msg"] == \
        "host-local: Failed to find address added by container ctr1"
    add(c, cid="ctr1")
    assert inproc("host-local", "CHECK", c, netns="/x").rc == 0


def test_garbage_and_torn_files_never_crash(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/29"}]])
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.0.0.2").write_bytes(b"")  # torn lease (crash between create and write)
    (d / "10.0.0.3").write_bytes(os.urandom(64))
    (d / "10.0.0.4").write_bytes(b"x" * 100000)  # oversized
    (d / "last_reserved_ip.0").write_bytes(b"\xff\xfegarbage")
    (d / "sub").mkdir()
    os.symlink("/etc/passwd", d / "10.0.0.6")
    assert add(c).json["ips"][0]["address"] == "10.0.0.5/29"
    assert inproc("host-local", "CHECK", c, cid="c1", netns="/x").rc == 0
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0
    assert set(files(tmp_path)) == {"10.0.0.2", "10.0.0.3", "10.0.0.4", "last_reserved_ip.0"}
    assert os.path.exists("/etc/passwd") and os.path.islink(d / "10.0.0.6")


def test_resolv_conf(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain ex.org\n"
                  "search a.ex b.ex\noptions ndots:2 edns0\n;x\nbogus\n")
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]], resolvConf=str(rc))
    assert add(c).json["dns"] == {"nameservers": ["10.0.0.53", "fd00::53"], "domain": "ex.org",
                                  "search": ["a.ex", "b.ex"], "options": ["ndots:2", "edns0"]}
    c["ipam"]["resolvConf"] = str(tmp_path / "missing")
    assert add(c, cid="c2").json["msg"] == f"open {tmp_path}/missing: no such file or directory"


@pytest.mark.parametrize("version, key", [("0.2.0", "ip4"), ("0.3.1", "ips"), ("0.4.0", "ips")])
def test_result_shape_per_version(tmp_path, version, key):
    out = add(conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]], version=version))
    assert key in out.json and out.json["cniVersion"] == version


# --- safety -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "a/b", ".."])
def test_network_name_cannot_escape_data_dir(tmp_path, name):
    out = add(conf(tmp_path / "d", [[{"subnet": "10.0.0.0/24"}]], name=name))
    assert out.rc == 1 and out.code == 7
    assert os.listdir(tmp_path) == []


def test_store_rejects_nul_in_data_dir():
    with pytest.raises(Exception) as err:
        Store("net1", "/tmp/a\0b")
    assert err.value.code == 7


# --- GC and STATUS (spec 1.1) -------------------------------------------------------------

def test_gc_releases_leases_of_attachments_not_listed(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]], version="1.1.0")
    for cid in ("a", "b", "c"):
        add(c, cid=cid)
    d = tmp_path / "net1"
    (d / "10.0.0.100").write_bytes(b"b")  # legacy lease of a still-valid container
    (d / "10.0.0.101").write_bytes(b"zz")  # legacy lease of a gone one
    (d / "10.0.0.102").write_bytes(b"")  # torn
    c["cni.dev/valid-attachments"] = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "eth0"}]
    out = inproc("host-local", "GC", c)
    assert (out.rc, out.stdout) == (0, "")
    assert set(files(tmp_path)) == {"10.0.0.2", "10.0.0.3", "10.0.0.100", "last_reserved_ip.0"}


def test_gc_accepts_the_pre_1_1_key_and_empty_list(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]], version="1.1.0")
    add(c, cid="a")
    add(c, cid="b")
    c["cni.dev/attachments"] = [{"containerID": "b", "ifname": "eth0"}]
    assert inproc("host-local", "GC", c).rc == 0
    assert set(files(tmp_path)) == {"10.0.0.3", "last_reserved_ip.0"}
    del c["cni.dev/attachments"]
    out = inproc("host-local", "GC", c)  # no list at all (cnitool): b's lease is not guessed away
    assert (out.rc, out.stdout) == (0, "") and "nothing collected" in out.stderr
    assert set(files(tmp_path)) == {"10.0.0.3", "last_reserved_ip.0"}
    c["cni.dev/valid-attachments"] = []  # an explicit empty list: nothing is valid
    assert inproc("host-local", "GC", c).rc == 0
    assert set(files(tmp_path)) == {"last_reserved_ip.0"}


def test_gc_and_status_need_1_1(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]], version="1.0.0")
    assert inproc("host-local", "GC", c).code == 1
    assert inproc("host-local", "STATUS", c).code == 1


def test_status_ok_then_exhausted_then_unwritable(tmp_path):
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/30"}]], version="1.1.0")
    assert inproc("host-local", "STATUS", c).rc == 0
    assert not os.path.exists(tmp_path / "net1")  # STATUS creates nothing
    add(c)
    out = inproc("host-local", "STATUS", c)
    assert (out.rc, out.code) == (1, 50)
    assert "no IP addresses available" in out.json["msg"]
    assert inproc("host-local", "DEL", c, cid="c1").rc == 0
    assert inproc("host-local", "STATUS", c).rc == 0
    (tmp_path / "file").write_text("")
    c["ipam"]["dataDir"] = str(tmp_path / "file" / "sub")
    assert inproc("host-local", "STATUS", c).code == 50


# --- property: any ADD/DEL sequence keeps the store consistent with a model --------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=30))
def test_random_add_del_sequences_match_model(tmp_path_factory, ops):
    data = tmp_path_factory.mktemp("prop")
    c = conf(data, [[{"subnet": "10.0.0.0/29"}], [{"subnet": "fd00::/125"}]])
    held = {}
    for is_add, n in ops:
        cid = f"c{n}"
        if is_add:
            out = add(c, cid=cid)
            if cid in held:
                assert "duplicate allocation" in out.json["msg"]
            elif len(held) == 5:
                assert "no IP addresses available" in out.json["msg"]
            else:
                assert out.rc == 0, out.stdout
                held[cid] = [ip["address"].split("/")[0] for ip in out.json["ips"]]
        else:
            assert inproc("host-local", "DEL", c, cid=cid).rc == 0
            held.pop(cid, None)
        leases = {k: v for k, v in files(data).items() if not k.startswith("last_")}
        assert leases == {ip: f"{cid}\r\neth0".encode() for cid, addrs in held.items() for ip in addrs}


def test_load_config_is_pure(tmp_path):
    ctx = skel.Context(command="ADD", container_id="c", ifname="eth0")
    cfg = hl.load_config(conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]]), ctx)
    assert [str(rs) for rs in cfg.ranges] == ["10.0.0.1-10.0.0.254"]
    assert json.dumps(cfg.routes) == "[]"


@pytest.mark.parametrize("cid, ifname", [("a\r\nb", "eth0"), ("", "eth0"), ("c1", "a/b"), ("c1", "")])
def test_in_process_callers_cannot_forge_lease_content(tmp_path, cid, ifname):
    ctx = skel.Context(command="ADD", container_id=cid, ifname=ifname)
    with pytest.raises(Exception) as err:
        hl.HostLocal().add(ctx, conf(tmp_path, [[{"subnet": "10.0.0.0/24"}]]))
    assert err.value.code in (3, 4)
    assert not os.path.exists(tmp_path / "net1")


def test_store_falls_back_to_o_excl_without_hard_links(tmp_path, monkeypatch):
    import errno  # noqa: PLC0415

    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    c = conf(tmp_path, [[{"subnet": "10.0.0.0/29"}]])
    assert add(c).json["ips"][0]["address"] == "10.0.0.2/29"
    assert add(c, cid="c2").json["ips"][0]["address"] == "10.0.0.3/29"
    assert files(tmp_path) == {"10.0.0.2": b"c1\r\neth0", "10.0.0.3": b"c2\r\neth0", "last_reserved_ip.0": b"10.0.0.3"}
    assert not [f for f in os.listdir(tmp_path / "net1") if "tmp" in f]
