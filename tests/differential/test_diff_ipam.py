"""Differential tests: our host-local/static against the Go reference plugins (v1.1.1, /usr/lib/cni).

Every step runs the same config + env through both executables (each on its own temporary dataDir)
and compares exit code, result JSON / error code+msg, and the whole dataDir tree (names, bytes,
CRLF, last_reserved_ip.N, file modes) after the step. No netns is involved: IPAM only keeps files.
"""
from __future__ import annotations

import copy
import fcntl
import ipaddress
import json
import os
import stat
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(cnitest.GO_BIN, "host-local")),
                                reason="Go reference plugins (containernetworking-plugins) not installed")

DATA = "@DATA@"


def tree(root):
    """{relative path: (kind, mode, bytes)} of everything under root."""
    out = {}
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
            elif stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(path).encode())
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), open(path, "rb").read())
    return out


class Differ:
    """Runs steps on Go and on ours and asserts they stay indistinguishable."""

    def __init__(self, tmp_path, plugin="host-local", inproc=False):
        self.plugin = plugin
        self.inproc = inproc  # ours through skel.execute in this process (same code, no exec)
        self.dirs = {"go": str(tmp_path / "go"), "py": str(tmp_path / "py")}
        for d in self.dirs.values():
            os.makedirs(d)
        self.log = []

    def seed(self, rel, data):
        """Put the same pre-existing file into both data dirs."""
        for d in self.dirs.values():
            path = os.path.join(d, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as fh:
                fh.write(data)

    def _conf(self, conf, flavour):
        text = json.dumps(conf).replace(DATA, self.dirs[flavour])
        return json.loads(text)

    def step(self, command, conf, cid="c1", ifname="eth0", args=""):
        out = {}
        for flavour in ("go", "py"):
            call = cnitest.inproc if flavour == "py" and self.inproc else cnitest.run
            kw = {} if call is cnitest.inproc else {"go": flavour == "go"}
            out[flavour] = call(self.plugin, command, self._conf(conf, flavour), cid=cid, ifname=ifname,
                                netns="/var/run/netns/x", args=args, **kw)
        go, py = out["go"], out["py"]
        where = f"{command} cid={cid} ifname={ifname} args={args!r}\n go: {go}\n py: {py}"
        assert go.rc == py.rc, where
        if go.rc == 0:
            assert go.json == py.json, where
        else:
            gerr = {k: v for k, v in go.json.items() if k != "cniVersion"}
            perr = {k: v for k, v in py.json.items() if k != "cniVersion"}
            perr = json.loads(json.dumps(perr).replace(self.dirs["py"], self.dirs["go"]))
            assert gerr == perr, where
        assert tree(self.dirs["go"]) == tree(self.dirs["py"]), where
        self.log.append((command, cid, go.rc))
        return py


def hl_conf(ranges=None, version="1.0.0", name="net1", **ipam):
    body = {"type": "host-local", "dataDir": DATA}
    if ranges is not None:
        body["ranges"] = ranges
    body.update(ipam)
    return {"cniVersion": version, "name": name, "type": "bridge", "ipam": body}


@pytest.fixture
def diff(tmp_path):
    return Differ(tmp_path)


def _ok(out):
    assert out.rc == 0, out.stdout
    return [ip["address"] for ip in out.json["ips"]] if out.json else None


# --- host-local state machine ---------------------------------------------------------------

def test_wrap_around_exhaustion_and_reuse(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/29", "rangeStart": "10.10.0.4"}]])
    for cid in ("a", "b", "c"):
        _ok(diff.step("ADD", c, cid=cid))
    assert diff.step("ADD", c, cid="d").rc == 1  # exhausted
    diff.step("DEL", c, cid="b")
    assert _ok(diff.step("ADD", c, cid="d")) == ["10.10.0.5/29"]  # wrapped past .6 to the free .5
    diff.step("DEL", c, cid="a")
    diff.step("DEL", c, cid="a")  # twice
    assert _ok(diff.step("ADD", c, cid="e")) == ["10.10.0.4/29"]


def test_gateway_skip_and_custom_gateway(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/29", "gateway": "10.10.0.3"}]])
    got = [_ok(diff.step("ADD", c, cid=f"c{i}"))[0] for i in range(5)]
    assert "10.10.0.3/29" not in got and "10.10.0.1/29" in got
    diff.step("ADD", c, cid="c9")
    c2 = hl_conf([[{"subnet": "10.11.0.0/24", "gateway": "10.11.0.254"}]], name="net2")
    assert _ok(diff.step("ADD", c2)) == ["10.11.0.1/24"]


def test_ipv6_64_and_wrap_at_last_address(diff):
    c = hl_conf([[{"subnet": "fd00:1::/64", "rangeStart": "fd00:1::ffff:ffff:ffff:fffe"}]])
    assert _ok(diff.step("ADD", c, cid="a")) == ["fd00:1::ffff:ffff:ffff:fffe/64"]
    assert _ok(diff.step("ADD", c, cid="b")) == ["fd00:1::ffff:ffff:ffff:ffff/64"]
    diff.step("ADD", c, cid="c")  # exhausted: the range is only two addresses
    diff.step("DEL", c, cid="a")
    diff.step("ADD", c, cid="c")
    c2 = hl_conf([[{"subnet": "fd00:2::/64"}]], name="net2")
    for cid in ("a", "b"):
        diff.step("ADD", c2, cid=cid)


def test_dual_stack_and_multi_subnet_range_set(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/30"}, {"subnet": "10.10.1.0/30"}], [{"subnet": "fd00::/126"}]],
                routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}])
    for cid in ("a", "b"):
        diff.step("ADD", c, cid=cid)
    diff.step("ADD", c, cid="c")  # v4 set exhausted: the v6 lease of c is rolled back as well
    diff.step("DEL", c, cid="a")
    diff.step("ADD", c, cid="c")
    diff.step("CHECK", c, cid="c")


def test_ip_ranges_prepended_and_legacy_range(diff):
    c = hl_conf([[{"subnet": "10.12.0.0/24"}]], subnet="10.11.0.0/24", rangeStart="10.11.0.100",
                gateway="10.11.0.1")
    c["runtimeConfig"] = {"ipRanges": [[{"subnet": "10.10.0.0/24", "rangeEnd": "10.10.0.20"}]]}
    diff.step("ADD", c, cid="a")
    diff.step("ADD", c, cid="a", ifname="eth1")
    diff.step("DEL", c, cid="a")


@pytest.mark.parametrize("how", ["env", "args", "runtime"])
def test_requested_ip(diff, how):
    c = hl_conf([[{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.10", "rangeEnd": "10.10.0.20"}],
                 [{"subnet": "fd00::/120"}]])

    def want(ip):
        cc, args = copy.deepcopy(c), ""
        if how == "env":
            args = f"IP={ip}"
        elif how == "args":
            cc["args"] = {"cni": {"ips": [ip]}}
        else:
            cc["runtimeConfig"] = {"ips": [ip]}
        return cc, args

    for cid, ip in (("a", "10.10.0.15"), ("b", "10.10.0.15"), ("c", "10.10.0.30"), ("d", "10.10.0.1"),
                    ("e", "fd00::20"), ("f", "10.99.0.1"), ("g", "10.10.0.14/24")):
        cc, args = want(ip)
        diff.step("ADD", cc, cid=cid, args=args)
    diff.step("ADD", c, cid="h")  # round-robin continues after the requested .14


def test_requested_ips_dual_stack(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd00::/120"}]])
    c["runtimeConfig"] = {"ips": ["10.10.0.7", "fd00::7"]}
    diff.step("ADD", c, cid="a")
    diff.step("ADD", c, cid="b")
    c["args"] = {"cni": {"ips": ["10.10.0.8"]}}
    c["runtimeConfig"] = {"ips": ["10.10.0.8"]}  # the same IP twice counts once
    diff.step("ADD", c, cid="b")


@pytest.mark.parametrize("ranges", [
    [[{"subnet": "10.10.0.0/31"}]],
    [[{"subnet": "10.10.0.1/32"}]],
    [[{"subnet": "fd00::/127"}]],
    [[{"subnet": "10.10.0.4/24"}]],
    [[{"subnet": "10.10.0.0/24"}], [{"subnet": "10.10.0.128/25"}]],
    [[{"subnet": "10.10.0.0/24"}, {"subnet": "10.10.0.0/25"}]],
    [[{"subnet": "10.10.0.0/24"}, {"subnet": "fd00::/64"}]],
    [[{"subnet": "10.10.0.0/24", "rangeStart": "10.10.1.5"}]],
    [[{"subnet": "10.10.0.0/24", "rangeEnd": "10.10.1.5"}]],
    [[{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.9", "rangeEnd": "10.10.0.8"}]],
    [[]],
    [],
    [[{"gateway": "10.10.0.1"}]],
    [[{"subnet": "10.10.0.0"}]],
    [[{"subnet": "10.10.0.0/24", "rangeStart": "bogus"}]],
], ids=lambda r: json.dumps(r)[:60])
def test_config_errors(diff, ranges):
    out = diff.step("ADD", hl_conf(ranges))
    assert out.rc == 1
    diff.step("DEL", hl_conf(ranges))


def test_version_and_arg_errors(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/24"}], [{"subnet": "10.11.0.0/24"}]], version="0.2.0")
    diff.step("ADD", c)
    c = hl_conf([[{"subnet": "10.10.0.0/24"}]])
    diff.step("ADD", c, args="IP=nope")
    diff.step("ADD", c, args="FOO=bar")
    diff.step("ADD", c, args="FOO=bar;IgnoreUnknown=true")
    diff.step("ADD", {"cniVersion": "1.0.0", "name": "net1", "type": "host-local"})


@pytest.mark.parametrize("version", ["", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"])
def test_result_per_version(diff, version):
    c = hl_conf([[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd00::/120"}]] if version not in ("", "0.2.0")
                else [[{"subnet": "10.10.0.0/24"}]], version=version,
                routes=[{"dst": "10.20.0.0/16", "gw": "10.10.0.1"}, {"dst": "10.30.0.5/16"}])
    if not version:
        del c["cniVersion"]
    diff.step("ADD", c)


def test_duplicate_add_check_before_and_after_del(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/24"}]])
    diff.step("CHECK", c)
    diff.step("ADD", c)
    diff.step("ADD", c)
    diff.step("CHECK", c)
    diff.step("CHECK", c, ifname="eth1")
    diff.step("DEL", c)
    diff.step("CHECK", c)
    diff.step("DEL", c)


def test_legacy_cid_only_lease(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/24"}], [{"subnet": "10.11.0.0/24"}]])
    diff.seed("net1/10.10.0.77", b"old\n")
    diff.seed("net1/10.11.0.77", b"other")
    diff.step("CHECK", c, cid="old")
    diff.step("ADD", c, cid="old")  # the legacy lease counts as this container's: duplicate
    diff.step("DEL", c, cid="old")
    diff.step("DEL", c, cid="old")
    c1 = hl_conf([[{"subnet": "10.10.0.0/24"}]])
    diff.seed("net1/10.10.0.78", b"two")
    diff.step("ADD", c1, cid="two", ifname="eth1", args="IP=10.10.0.79")
    diff.step("DEL", c1, cid="two", ifname="eth1")  # new-format match wins; legacy stays
    diff.step("DEL", c1, cid="two", ifname="eth1")  # then the legacy fallback


def test_last_reserved_ip_outside_range_or_garbage(diff):
    c = hl_conf([[{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.50"}]])
    diff.seed("net1/last_reserved_ip.0", b"10.99.0.1")
    diff.step("ADD", c, cid="a")
    diff.seed("net1/last_reserved_ip.0", b"10.10.0.60\n")  # not parseable by Go's ParseIP either
    diff.step("ADD", c, cid="b")
    diff.seed("net1/last_reserved_ip.0", b"10.10.0.60")
    diff.step("ADD", c, cid="c")
    diff.seed("net1/10.10.0.62", b"")  # torn lease: taken, skipped
    diff.step("ADD", c, cid="d")


def test_resolv_conf(diff, tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("nameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\nsearch a.example b\n"
                  "options ndots:3 rotate\n# comment\n")
    c = hl_conf([[{"subnet": "10.10.0.0/24"}]], resolvConf=str(rc))
    diff.step("ADD", c)
    c["ipam"]["resolvConf"] = str(tmp_path / "missing.conf")
    diff.step("ADD", c, cid="b")


_OPS = st.tuples(st.sampled_from(["ADD", "ADD", "ADD", "DEL", "CHECK"]), st.sampled_from(["a", "b", "c", "d"]),
                 st.sampled_from(["eth0", "eth1"]), st.sampled_from(["", "", "", "IP=10.10.0.4", "IP=fd00::5"]))


@settings(max_examples=int(os.environ.get("IPAM_EXAMPLES", "25")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_OPS, min_size=1, max_size=14))
def test_random_sequences_match_go(tmp_path_factory, ops):
    """Random ADD/DEL/CHECK sequences (requested IPs included) on a tiny dual-stack network that
    exhausts and wraps: result, error and the whole store stay identical to Go's at every step.
    IPAM_EXAMPLES=400 runs a deeper search (~1 min)."""
    diff = Differ(tmp_path_factory.mktemp("seq"), inproc=True)
    c = hl_conf([[{"subnet": "10.10.0.0/29", "rangeStart": "10.10.0.3"}], [{"subnet": "fd00::/125"}]])
    for command, cid, ifname, args in ops:
        diff.step(command, c, cid=cid, ifname=ifname, args=args)


# --- static ---------------------------------------------------------------------------------

def st_conf(addresses=None, version="1.0.0", **ipam):
    body = {"type": "static"}
    if addresses is not None:
        body["addresses"] = addresses
    body.update(ipam)
    return {"cniVersion": version, "name": "snet", "type": "bridge", "ipam": body}


@pytest.mark.parametrize("case", [
    dict(conf=st_conf([{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}, {"address": "fd00::5/64"}],
                      routes=[{"dst": "0.0.0.0/0", "gw": "10.10.0.1"}],
                      dns={"nameservers": ["10.10.0.53"], "domain": "x", "search": ["a"], "options": ["o"]})),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}]), args="IP=10.20.0.5/24, fd00::9/64;GATEWAY=10.20.0.1,fd00::1"),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}]), args="GATEWAY=10.10.0.1"),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}]), args="IP=10.20.0.5"),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}]), args="GATEWAY=nope"),
    dict(conf=st_conf([{"address": "10.10.0.5"}])),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}, {"address": "10.11.0.5/24"}], version="0.2.0")),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}, {"address": "fd00::5/64"}], version="0.2.0")),
    dict(conf=st_conf([{"address": "10.10.0.5/24"}, {"address": "10.11.0.5/24"}], version="0.3.1")),
    dict(conf=dict(st_conf([{"address": "10.10.0.5/24"}]), args={"cni": {"ips": ["10.30.0.5/24"]}}),
         args="IP=10.20.0.5/24"),
    dict(conf=dict(st_conf([{"address": "10.10.0.5/24"}]), args={"cni": {"ips": ["10.30.0.5/24"]}},
                   runtimeConfig={"ips": ["10.40.0.5/24", "fd00::40/64"]})),
    dict(conf=dict(st_conf([]), runtimeConfig={"ips": ["10.40.0.5"]})),
    dict(conf=dict(st_conf([]), args={"cni": {"ips": ["bad"]}})),
    dict(conf=st_conf([]), args="FOO=1"),
    dict(conf={"cniVersion": "1.0.0", "name": "snet", "type": "static"}),
], ids=lambda c: json.dumps(c)[:70])
def test_static_add(tmp_path, case):
    d = Differ(tmp_path, plugin="static")
    d.step("ADD", case["conf"], args=case.get("args", ""))
    d.step("DEL", case["conf"], args=case.get("args", ""))


def test_static_check(tmp_path):
    d = Differ(tmp_path, plugin="static")
    c = st_conf([{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}])
    d.step("CHECK", c)  # no prevResult
    c["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}]}
    d.step("CHECK", c)
    c["prevResult"]["ips"][0]["gateway"] = "10.10.0.9"
    d.step("CHECK", c)


def test_static_check_missing_address_is_stricter_than_go(tmp_path):
    """Go 1.1.1 passes CHECK when a configured address is absent from prevResult; ours fails."""
    c = st_conf([{"address": "10.10.0.5/24"}])
    c["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.6/24"}]}
    go = cnitest.run("static", "CHECK", c, go=True, netns="/x")
    py = cnitest.run("static", "CHECK", c, netns="/x")
    assert go.rc == 0
    assert (py.rc, py.code, py.json["msg"]) == (1, 999, "static: Failed to find addr 10.10.0.5 on interface eth0")


# --- sharing one data dir with the Go plugin ------------------------------------------------

def _popen(go, conf, cid, command="ADD"):
    bindir = cnitest.GO_BIN if go else cnitest.OUR_BIN
    env = cnitest.cni_env(command, cid=cid, netns="/x", path=bindir)
    proc = subprocess.Popen([os.path.join(bindir, "host-local")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(json.dumps(conf).encode())
    proc.stdin.close()
    return proc


def test_lock_interop_50_parallel_adds_half_go_half_ours(tmp_path):
    conf = json.loads(json.dumps(hl_conf([[{"subnet": "10.50.0.0/24"}]])).replace(DATA, str(tmp_path)))
    procs = [(_popen(i % 2 == 0, conf, f"ctr{i}"), f"ctr{i}") for i in range(50)]
    got = {}
    for proc, cid in procs:
        out = proc.stdout.read()
        assert proc.wait(60) == 0, (cid, out, proc.stderr.read())
        got[cid] = json.loads(out)["ips"][0]["address"].split("/")[0]
    assert len(set(got.values())) == 50
    d = tmp_path / "net1"
    leases = {f: (d / f).read_bytes() for f in os.listdir(d) if f[0].isdigit()}
    assert leases == {ip: f"{cid}\r\neth0".encode() for cid, ip in got.items()}
    # Serialised by the shared flock, round-robin hands out exactly .2 ... .51 and the last
    # reserved IP is the highest one.
    assert sorted(got.values(), key=ipaddress.ip_address) == [f"10.50.0.{i}" for i in range(2, 52)]
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.50.0.51"
    assert not [f for f in os.listdir(d) if "tmp" in f]
    # and parallel DELs of ten of them, each lease released by the other implementation
    dels = [_popen(i % 2 == 1, conf, f"ctr{i}", "DEL") for i in range(10)]
    assert [p.wait(60) for p in dels] == [0] * 10
    left = {f for f in os.listdir(d) if f[0].isdigit()}
    assert left == {ip for cid, ip in got.items() if int(cid[3:]) >= 10}


def test_both_wait_on_the_same_flock(tmp_path):
    """While the test holds flock on <dataDir>/<net>/lock, neither Go's nor our ADD can proceed."""
    conf = json.loads(json.dumps(hl_conf([[{"subnet": "10.50.0.0/24"}]])).replace(DATA, str(tmp_path)))
    os.makedirs(tmp_path / "net1")
    fd = os.open(tmp_path / "net1" / "lock", os.O_CREAT | os.O_RDONLY, 0o750)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        procs = [_popen(True, conf, "go1"), _popen(False, conf, "py1")]
        time.sleep(1.0)
        assert [p.poll() for p in procs] == [None, None]
        assert sorted(os.listdir(tmp_path / "net1")) == ["lock"]
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert [p.wait(30) for p in procs] == [0, 0]
    assert len([f for f in os.listdir(tmp_path / "net1") if f[0].isdigit()]) == 2


def test_mixed_add_del_check_across_implementations(tmp_path):
    conf = json.loads(json.dumps(hl_conf([[{"subnet": "10.50.0.0/24"}], [{"subnet": "fd00::/120"}]]))
                      .replace(DATA, str(tmp_path)))

    def run(go, cmd, cid):
        return cnitest.run("host-local", cmd, conf, go=go, cid=cid, netns="/x")

    assert run(True, "ADD", "a").rc == 0
    assert run(False, "ADD", "b").json["ips"][0]["address"] == "10.50.0.3/24"  # continues Go's round-robin
    assert run(False, "ADD", "a").rc == 1  # sees Go's lease: duplicate
    assert run(True, "ADD", "b").rc == 1  # Go sees ours
    assert run(False, "CHECK", "a").rc == 0 and run(True, "CHECK", "b").rc == 0
    assert run(True, "DEL", "b").rc == 0 and run(False, "DEL", "a").rc == 0
    assert sorted(os.listdir(tmp_path / "net1")) == ["last_reserved_ip.0", "last_reserved_ip.1", "lock"]
