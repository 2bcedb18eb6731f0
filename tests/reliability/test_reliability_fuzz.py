"""Fuzzing the protocol surface with hypothesis: configs, environments and CNI_ARGS.

Every generated input must give exit code 0/1, a spec error JSON (or a valid result), no
traceback and no state left behind. Most of it runs in-process through `skel.execute` (the very
function the executables call); a sample goes through the real executables.
"""
from __future__ import annotations

import copy
import json
import os
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cnitest
import relutil
from cni.protocol import registry, skel, spec

# Figures for docs/reliability.md; each test asserts it really ran this many examples.
# CNIKIT_FUZZ_SCALE multiplies them for a deeper run than CI's (e.g. 20 before a release).
SCALE = int(os.environ.get("CNIKIT_FUZZ_SCALE", "1"))
N_SKEL = 3000 * SCALE
N_PLUGIN = 420 * SCALE  # per plugin (17 plugins: 7,140)
N_EXEC = 10 * SCALE  # per plugin

# .ci/run sets CNIKIT_FUZZ_DERANDOMIZE=1: CI replays the same inputs every run (hypothesis' own
# advice for CI), so a red CI always means a change broke something; `make test` on a workstation and
# the deep CNIKIT_FUZZ_SCALE runs draw fresh inputs each time (docs/reliability.md).
DERANDOMIZE = os.environ.get("CNIKIT_FUZZ_DERANDOMIZE") == "1"
SETTINGS = dict(deadline=None, database=None, derandomize=DERANDOMIZE, print_blob=True,
                suppress_health_check=list(HealthCheck))

HOSTILE = ["../../etc/passwd", "..", ".", "../x", "a/b", "/abs/path", "a\0b", "\0", "$(touch /tmp/pwn)",
           "`id`", "a;rm -rf /", "a|b", "a&b", "a b", "a\nb", "a\r\nb", "x" * 300, "é", "日本語", "\u202e",
           "-rf", "*", "~root", "%s%n", "\udcff", "\t", "IgnoreUnknown=1", "a=b=c", ";;", "="]

# JSON values of every shape: wrong types, huge ints, NaN, unicode, NULs, nesting.
scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats() | st.text(max_size=20) | st.sampled_from(HOSTILE))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                           max_leaves=16)
versions = st.sampled_from(list(spec.SUPPORTED_VERSIONS) + ["", "1.1", "9.9.9", "0.3.1 ", "01.0.0", "1.0.0\0", "-1.0.0"])
names = st.sampled_from(["net1", "a", "n" * 200, "net.1-x_y"]) | st.sampled_from(HOSTILE) | st.text(max_size=12)
ids = st.sampled_from(["ctr1", "c" * 64, "0abc-def.ghi_jkl"]) | st.sampled_from(HOSTILE) | st.text(max_size=16)
ifnames = st.sampled_from(["eth0", "net1", "x" * 15, "x" * 16, "a:b"]) | st.sampled_from(HOSTILE) | st.text(max_size=18)
arg_keys = st.sampled_from(["IP", "MAC", "IgnoreUnknown", "K8S_POD_NAME", "K8S_POD_NAMESPACE", "GATEWAY"]) | st.text(max_size=6)
arg_vals = st.sampled_from(["1", "true", "10.99.0.5", "10.99.0.5/24", "ff:ff", ""]) | st.sampled_from(HOSTILE) | st.text(max_size=10)
cni_args = (st.lists(st.tuples(arg_keys, arg_vals), max_size=4).map(lambda kv: ";".join(f"{k}={v}" for k, v in kv))
            | st.text(max_size=30) | st.sampled_from(HOSTILE))
commands = st.sampled_from(list(skel.COMMANDS) + ["add", "FOO", "", "ADD\0"])
ABSENT_NETNS = "/run/netns/cnikit-fuzz-absent"
netns_values = st.sampled_from([ABSENT_NETNS, "", "/nonexistent", "/proc/0/ns/net"]) | st.sampled_from(HOSTILE)


def envs(netns=netns_values):
    return st.fixed_dictionaries(
        {"CNI_COMMAND": commands},
        optional={"CNI_CONTAINERID": ids, "CNI_NETNS": netns, "CNI_IFNAME": ifnames, "CNI_ARGS": cni_args,
                  "CNI_PATH": st.sampled_from([cnitest.OUR_BIN, "", "/nonexistent:/x", "../.."])})


def raw_stdin():
    """Bytes that are not a JSON object: garbage, deep nesting, huge numbers, bad UTF-8."""
    return st.one_of(
        st.binary(max_size=64),
        st.integers(min_value=1, max_value=20_000).map(lambda n: b"[" * n + b"]" * n),
        st.integers(min_value=1, max_value=20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
        st.just(b'{"cniVersion": "1.0.0", "name": "n", "x": ' + b"9" * 5000 + b"}"),
        st.just(b'{"cniVersion": "1.0.0", "name": "n\xff\xfe"}'),
        st.just(b'{"cniVersion": "1.0.0", "name": "net1", "type": "x"}\0'),
    )


class Probe:
    """A plugin that accepts everything the skel lets through (the skel alone is under test)."""

    supported_versions = spec.SUPPORTED_VERSIONS

    def add(self, ctx, conf):
        skel.check_known_args(ctx.args, ("IP",))
        return spec.new_result(ips=[{"address": "10.0.0.2/24"}])

    def check(self, ctx, conf):
        pass

    def delete(self, ctx, conf):
        pass

    def gc(self, ctx, conf):
        pass

    def status(self, ctx, conf):
        pass


def test_fuzz_skel_env_args_and_stdin():
    """Env sets, CNI_ARGS and stdin (JSON of any shape, or not JSON at all) against the skel."""
    ran = [0]

    @settings(max_examples=N_SKEL, **SETTINGS)
    @given(env=envs(), conf=st.one_of(
        st.fixed_dictionaries({}, optional={"cniVersion": versions | json_values, "name": names | json_values,
                                            "type": st.just("probe") | json_values,
                                            "prevResult": json_values, "ipam": json_values}).map(json.dumps).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        raw_stdin()))
    def run(env, conf):
        ran[0] += 1
        rc, out, err = skel.execute(Probe, env, conf)
        relutil.check_outcome(rc, out, err, env["CNI_COMMAND"])

    run()
    assert ran[0] >= N_SKEL


# --- every landed plugin, in-process, from a valid base config plus random mutations ----------

def base_conf(ptype: str, datadir: str, version: str) -> dict:
    ipam = {"type": "host-local", "dataDir": datadir, "ranges": [[{"subnet": "10.99.0.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}
    prev = {"cniVersion": version, "interfaces": [{"name": "eth0", "sandbox": ABSENT_NETNS}],
            "ips": [{"address": "10.99.0.7/24", "gateway": "10.99.0.1", "interface": 0}]}
    conf = {"cniVersion": version, "name": "fuzznet", "type": ptype}
    if ptype == "host-local":
        conf["ipam"] = ipam
    elif ptype == "static":
        conf["ipam"] = {"type": "static", "addresses": [{"address": "10.99.0.5/24", "gateway": "10.99.0.1"}]}
    elif ptype in ("portmap", "bandwidth", "firewall", "tuning", "sbr"):
        conf.update(prevResult=prev, runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
                                                    "bandwidth": {"ingressRate": 1000, "ingressBurst": 1000}},
                    sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1"})
    else:
        conf.update(master="cnifuzz-absent", device="cnifuzz-absent", mode="bridge", mtu=1400, ipam=ipam)
    return conf


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def mutate(conf: dict, rnd: random.Random, values: list) -> dict:
    """Replace, delete or retype a few nodes anywhere in the config tree."""
    conf = copy.deepcopy(conf)
    for value in values:
        paths = [p for p in _paths(conf) if p]
        path = rnd.choice(paths)
        parent = conf
        for key in path[:-1]:
            parent = parent[key]
        if rnd.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return conf


@pytest.fixture
def fuzz_area(sandbox, tmp_path, monkeypatch):
    """A private cwd and dataDir; relative paths written by a plugin land here and are seen."""
    monkeypatch.chdir(tmp_path)
    datadir = tmp_path / "data"
    datadir.mkdir()
    return tmp_path, str(datadir)


@pytest.mark.parametrize("ptype", relutil.importable_plugins())
def test_fuzz_plugin_in_process(fuzz_area, ptype):
    """Mutated configs + fuzzed env for each plugin that has landed: spec errors or a result that
    a DEL fully releases; no lease, file or link left behind."""
    area, datadir = fuzz_area
    roots = [str(area), "/var/lib/cni", "/etc/cni", "/opt/cni", "/run/netns"]
    fs_before = relutil.fs_snapshot(roots)
    links_before = relutil.link_names()
    ran, results = [0], [0]
    # every dataDir a mutated config named (a relative one lands in the cwd), and host-local's default
    store_dirs = {datadir, "/var/lib/cni/networks"}

    @settings(max_examples=N_PLUGIN, **SETTINGS)
    @given(version=st.sampled_from(["0.3.1", "0.4.0", "1.0.0", "1.1.0"]),
           env=envs(netns=st.just(ABSENT_NETNS) | netns_values),
           values=st.lists(json_values | st.sampled_from(HOSTILE), max_size=3), seed=st.integers(0, 2 ** 32))
    def run(version, env, values, seed):
        ran[0] += 1
        conf = mutate(base_conf(ptype, datadir, version), random.Random(seed), values)
        ipam = conf.get("ipam") if isinstance(conf, dict) else None
        if isinstance(ipam, dict) and isinstance(ipam.get("dataDir"), str) and "\0" not in ipam["dataDir"]:
            store_dirs.add(os.path.abspath(ipam["dataDir"]))
        data = json.dumps(conf).encode()
        factory = registry.load(ptype)
        rc, out, err = skel.execute(factory, env, data)
        relutil.check_outcome(rc, out, err, env["CNI_COMMAND"])
        if rc == 0 and env["CNI_COMMAND"] == "ADD":
            results[0] += 1
            rc2, out2, err2 = skel.execute(factory, dict(env, CNI_COMMAND="DEL"), data)
            assert rc2 == 0, (out2, err2)
        assert relutil.lease_files(datadir) == {}, (ptype, env, conf)

    run()
    assert ran[0] >= N_PLUGIN
    after = relutil.fs_snapshot(roots)
    # A host-local store keeps its directories, lock and last_reserved_ip after DEL (as Go's does);
    # a lease file or anything elsewhere is a leak.
    created = sorted(p for p in set(after) - set(fs_before) if not relutil.is_store_bookkeeping(p, store_dirs))
    assert created == [], created
    # A bridge device is shared infrastructure that Go's bridge also leaves; anything else is a leak.
    new = set(relutil.link_names()) - set(links_before)
    bridges = {l for l in new if cnitest.ip_json(f"-d link show dev {l}")[0].get("linkinfo", {}).get("info_kind") == "bridge"}
    for name in bridges:  # the test's own cleanup, so later tests start from the same node
        cnitest.sh(f"ip link del {name}", check=False)
    assert sorted(new - bridges) == []
    rules = relutil.nft_ruleset() + cnitest.sh("iptables-save")
    assert "10.99.0." not in rules, "a rule for a fuzzed container outlived its DEL"


@pytest.mark.parametrize("ptype", relutil.importable_plugins())
def test_fuzz_sample_through_executables(sandbox, tmp_path, ptype):
    """A sample through the real launcher: the same contract across a process boundary."""
    ran = [0]

    @settings(max_examples=N_EXEC, **SETTINGS)
    @given(env=envs(), stdin=st.one_of(
        st.fixed_dictionaries({"cniVersion": versions, "name": names},
                              optional={"type": json_values, "ipam": json_values}).map(json.dumps).map(str.encode),
        raw_stdin()))
    def run(env, stdin):
        ran[0] += 1
        # exec cannot carry NUL in the environment; NULs still reach the plugin through stdin.
        env = {k: v.replace("\0", "") for k, v in env.items()}
        env = {k: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for k, v in env.items()}
        env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        out = cnitest.exec_plugin(os.path.join(cnitest.OUR_BIN, ptype), env, stdin)
        relutil.check_outcome(out.rc, out.stdout, out.stderr, env["CNI_COMMAND"])

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        run()
    finally:
        os.chdir(cwd)
    assert ran[0] >= N_EXEC


# --- integer extremes of every integer field of every plugin (issue 13) -----------------------

# Every integer a plugin reads from its config, runtimeConfig or args, by path.
INT_FIELDS = {
    "bridge": [("mtu",), ("vlan",)],
    "ipvlan": [("mtu",)],
    "macvlan": [("mtu",)],
    "ptp": [("mtu",)],
    "tap": [("mtu",), ("owner",), ("group",)],
    "vlan": [("mtu",), ("vlanId",)],
    "tuning": [("mtu",), ("args", "cni", "mtu")],
    "portmap": [("markMasqBit",), ("runtimeConfig", "portMappings", 0, "hostPort"),
                ("runtimeConfig", "portMappings", 0, "containerPort")],
    "bandwidth": [("ingressRate",), ("ingressBurst",), ("egressRate",), ("egressBurst",),
                  ("runtimeConfig", "bandwidth", "ingressRate"), ("runtimeConfig", "bandwidth", "egressBurst")],
    "dhcp": [("ipam", "timeout")],
}
INT_EXTREMES = [-(2 ** 70), -(2 ** 63) - 1, -(2 ** 63), -(2 ** 31) - 1, -1, 0, 1, 67, 4094, 4095, 65535, 65536,
                2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 63 - 1, 2 ** 63, 2 ** 64, 2 ** 70, 1.5, -0.0, 1e308]


def extreme_conf(ptype: str, datadir: str, netns: str) -> dict:
    """A config that would get as far as netlink: a real netns, a real master (fuzzm0)."""
    conf = base_conf(ptype, datadir, "1.0.0")
    conf.update(master="fuzzm0", bridge="fuzzbr0", vlanId=7)
    if ptype == "bandwidth":
        conf.update(ingressRate=8000, ingressBurst=8000, egressRate=8000, egressBurst=8000)
    if ptype == "dhcp":
        conf["ipam"] = {"type": "dhcp", "timeout": 1}
    if "prevResult" in conf:
        conf["prevResult"]["interfaces"][0]["sandbox"] = netns
    return conf


def set_path(conf: dict, path: tuple, value) -> dict:
    conf = copy.deepcopy(conf)
    parent = conf
    for key in path[:-1]:
        parent = parent.setdefault(key, {}) if isinstance(key, str) else parent[key]
    parent[path[-1]] = value
    return conf


@pytest.fixture
def fuzz_master(sandbox):
    cnitest.sh("ip link add fuzzm0 type veth peer name fuzzm0p && ip link set fuzzm0 up")
    yield "fuzzm0"
    cnitest.sh("ip link del fuzzm0", check=False)
    cnitest.sh("ip link del fuzzbr0", check=False)


@pytest.mark.parametrize("ptype", sorted(INT_FIELDS))
def test_integer_extremes_of_every_field(fuzz_area, fuzz_master, netns, ptype):
    """Each integer field at every extreme: a result a DEL releases, or a spec error - never a
    traceback (an out-of-range number reaching pyroute2's encoder was one). An mtu outside
    0..65535 is a config error (7) naming the field and range."""
    area, datadir = fuzz_area
    links_before = relutil.link_names()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "fuzzint", "CNI_NETNS": f"/run/netns/{netns}",
           "CNI_IFNAME": "eth0", "CNI_PATH": cnitest.OUR_BIN}
    factory = registry.load(ptype)
    ran = 0
    for path in INT_FIELDS[ptype]:
        for value in INT_EXTREMES:
            data = json.dumps(set_path(extreme_conf(ptype, datadir, f"/run/netns/{netns}"), path, value)).encode()
            rc, out, err = skel.execute(factory, env, data)
            got = relutil.check_outcome(rc, out, err, "ADD")
            if path[-1] == "mtu" and isinstance(value, int) and not 0 <= value <= 65535:
                assert (rc, got["code"]) == (1, 7) and "mtu" in got["msg"] and "65535" in got["msg"], (path, value, got)
            if rc == 0:
                rc2, out2, err2 = skel.execute(factory, dict(env, CNI_COMMAND="DEL"), data)
                assert rc2 == 0, (path, value, out2, err2)
            assert relutil.lease_files(datadir) == {}, (path, value)
            ran += 1
    assert ran == len(INT_FIELDS[ptype]) * len(INT_EXTREMES)
    left = set(relutil.link_names()) - set(links_before) - {"fuzzbr0"}
    assert sorted(left) == []
    assert cnitest.sh(f"ip netns exec {netns} ip -o link show").count("\n") == 1  # lo only
