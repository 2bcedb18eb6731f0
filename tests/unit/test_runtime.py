"""The chaining runtime without touching the network: config loading, the chain semantics and the
libcni cache format, driven through recorder plugins (tiny foreign executables that log every call)
and a fake built-in plugin (to prove the in-process path does not fork)."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest

import cnitest
from cni import runtime
from cni.protocol import registry, spec
from cni.node.installer import write_executables
from cni.protocol.spec import CNIError

RECORDER = r"""#!/usr/bin/python3 -IS
import json, os, sys
name = os.path.basename(sys.argv[0])
cmd = os.environ.get("CNI_COMMAND", "")
log = os.environ["REC_LOG"]
if cmd == "VERSION":
    with open(log, "a") as f:
        f.write(json.dumps({"plugin": name, "cmd": cmd}) + "\n")
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}))
    sys.exit(0)
conf = json.loads(sys.stdin.read())
env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
with open(log, "a") as f:
    f.write(json.dumps({"plugin": name, "cmd": cmd, "env": env, "conf": conf}) + "\n")
if name + ":" + cmd in os.environ.get("REC_FAIL", "").split(","):
    print(json.dumps({"code": 111, "msg": name + " " + cmd + " failed on purpose"}))
    sys.exit(1)
if cmd == "ADD":
    res = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "dns": {}}
    res.setdefault("interfaces", []).append({"name": name, "mac": "02:00:00:00:00:0" + name[-1]})
    if name == "rec1":
        res["ips"] = [{"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 0}]
    print(json.dumps(res))
"""


@pytest.fixture
def rec(tmp_path):
    """A CNI_PATH of recorder plugins rec1..rec3, a log of their calls, a cache dir, a Runtime."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("rec1", "rec2", "rec3"):
        path = bindir / name
        path.write_text(RECORDER)
        path.chmod(0o755)
    logf = tmp_path / "calls.log"

    class Rec:
        log = logf
        cache = tmp_path / "cache"

        def runtime(self, fail: str = "") -> runtime.Runtime:
            env = {"PATH": "/usr/bin:/bin", "REC_LOG": str(logf), "REC_FAIL": fail}
            return runtime.Runtime(conf_dir=str(tmp_path / "net.d"), cni_path=[str(bindir)],
                                   cache_dir=str(self.cache), environ=env)

        def calls(self, verbs=("ADD", "CHECK", "DEL", "GC", "STATUS")):
            if not logf.exists():
                return []
            rows = [json.loads(line) for line in logf.read_text().splitlines()]
            return [r for r in rows if r["cmd"] in verbs]

        def order(self, verbs=("ADD", "CHECK", "DEL", "GC", "STATUS")):
            return [(r["plugin"], r["cmd"]) for r in self.calls(verbs)]

    return Rec()


def chain(version="1.0.0", **extra):
    conf = {"cniVersion": version, "name": "recnet", "plugins": [
        {"type": "rec1", "capabilities": {"portMappings": True, "mac": False}},
        {"type": "rec2", "capabilities": {"bandwidth": True}, "foo": "bar"},
        {"type": "rec3"}]}
    conf.update(extra)
    return runtime.network_from_dict(conf)


CAPS = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}],
        "mac": "02:11:22:33:44:55", "bandwidth": {"ingressRate": 1000, "ingressBurst": 100}}


def attachment(**kw):
    kw.setdefault("capability_args", CAPS)
    return runtime.RuntimeConf(container_id="cid1", netns="/run/netns/x", ifname="eth1",
                               args=[("IgnoreUnknown", "1"), ("K8S_POD_NAME", "p")], **kw)


# --- ADD ---------------------------------------------------------------------------------

def test_add_chains_prev_result_and_injects_capabilities(rec):
    result = rec.runtime().add(chain(), attachment())
    calls = rec.calls(("ADD",))
    assert [c["plugin"] for c in calls] == ["rec1", "rec2", "rec3"]
    assert "prevResult" not in calls[0]["conf"]  # spec 1.1: no prevResult on the first ADD
    assert [i["name"] for i in calls[1]["conf"]["prevResult"]["interfaces"]] == ["rec1"]
    assert [i["name"] for i in calls[2]["conf"]["prevResult"]["interfaces"]] == ["rec1", "rec2"]
    # only declared-true capabilities that the runtime supplied
    assert calls[0]["conf"]["runtimeConfig"] == {"portMappings": CAPS["portMappings"]}
    assert calls[1]["conf"]["runtimeConfig"] == {"bandwidth": CAPS["bandwidth"]}
    assert "runtimeConfig" not in calls[2]["conf"]
    for c in calls:
        assert c["conf"]["name"] == "recnet" and c["conf"]["cniVersion"] == "1.0.0"
        assert c["env"] == {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "cid1", "CNI_NETNS": "/run/netns/x",
                            "CNI_IFNAME": "eth1", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p",
                            "CNI_PATH": c["env"]["CNI_PATH"]}
    assert calls[1]["conf"]["foo"] == "bar"  # unknown keys pass through
    assert [i["name"] for i in result["interfaces"]] == ["rec1", "rec2", "rec3"]
    assert result["ips"] == [{"interface": 0, "address": "10.9.0.5/24", "gateway": "10.9.0.1"}]


def test_result_converted_to_list_version(rec):
    result = rec.runtime().add(chain("0.4.0"), attachment())
    assert result["cniVersion"] == "0.4.0"
    assert result["ips"][0]["version"] == "4"  # 0.4.0 shape carries ips[].version


def test_version_probed_once_per_binary(rec):
    rt = rec.runtime()
    rt.add(chain(), attachment())
    rt.check(chain(), attachment())
    rt.delete(chain(), attachment())
    probes = [r["plugin"] for r in rec.calls(("VERSION",))]
    assert sorted(probes) == ["rec1", "rec2", "rec3"]


def test_add_refuses_existing_attachment(rec):
    rt = rec.runtime()
    rt.add(chain(), attachment())
    with pytest.raises(CNIError, match="already attached"):
        rt.add(chain(), attachment())
    assert len(rec.calls(("ADD",))) == 3 and not rec.calls(("DEL",))


def test_failed_add_dels_whole_chain_and_caches_nothing(rec):
    rt = rec.runtime(fail="rec2:ADD")
    with pytest.raises(CNIError) as exc:
        rt.add(chain(), attachment())
    assert exc.value.code == 111
    assert exc.value.msg == 'plugin type="rec2" failed (add): rec2 ADD failed on purpose'
    assert rec.order() == [("rec1", "ADD"), ("rec2", "ADD"), ("rec3", "DEL"), ("rec2", "DEL"), ("rec1", "DEL")]
    # the cleanup DEL carries what had been set up so far
    assert [i["name"] for i in rec.calls(("DEL",))[0]["conf"]["prevResult"]["interfaces"]] == ["rec1"]
    assert not (rec.cache / "results" / "recnet-cid1-eth1").exists()


def test_validation_before_anything_runs(rec):
    net = runtime.network_from_dict({"cniVersion": "1.0.0", "name": "recnet",
                                     "plugins": [{"type": "rec1"}, {"type": "nosuchplugin"}]})
    with pytest.raises(CNIError) as exc:
        rec.runtime().add(net, attachment())
    assert exc.value.code == spec.ERR_INVALID_CONFIG and "nosuchplugin" in exc.value.msg
    old = runtime.network_from_dict({"cniVersion": "0.2.0", "name": "recnet", "plugins": [{"type": "rec1"}]})
    with pytest.raises(CNIError) as exc:
        rec.runtime().add(old, attachment())
    assert exc.value.code == spec.ERR_INCOMPATIBLE_VERSION
    assert rec.calls() == []


@pytest.mark.parametrize("field,value,code", [("container_id", "a b", 4), ("container_id", "", 3),
                                              ("ifname", "a/b", 4), ("ifname", "x" * 16, 4)])
def test_attachment_validated(rec, field, value, code):
    rt = attachment()
    setattr(rt, field, value)
    with pytest.raises(CNIError) as exc:
        rec.runtime().add(chain(), rt)
    assert exc.value.code == code
    assert rec.calls() == []


# --- the cache -----------------------------------------------------------------------------

def test_cache_file_is_libcni_format(rec):
    net = chain()
    rec.runtime().add(net, attachment())
    path = rec.cache / "results" / "recnet-cid1-eth1"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    cached = json.loads(text)
    assert list(cached) == ["kind", "containerId", "config", "ifName", "networkName", "netns", "cniArgs",
                            "capabilityArgs", "result"]  # libcni cachedInfo field order
    assert cached["kind"] == "cniCacheV1"
    assert base64.b64decode(cached["config"]) == net.raw
    assert cached["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "p"]]
    assert cached["capabilityArgs"] == CAPS
    assert cached["result"]["cniVersion"] == "1.0.0" and len(cached["result"]["interfaces"]) == 3
    # Go marshals the map-typed fields with sorted keys, compact, no trailing newline
    assert '"result":{"cniVersion":"1.0.0","dns":{},"interfaces":[{"mac":' in text
    assert text.endswith("}}") and " " not in text


def test_cache_omits_empty_fields(rec):
    rec.runtime().add(chain(), runtime.RuntimeConf(container_id="cid2", ifname="eth0"))
    cached = json.loads((rec.cache / "results" / "recnet-cid2-eth0").read_text())
    assert "netns" not in cached and "cniArgs" not in cached and "capabilityArgs" not in cached


def test_cached_result_and_attachments(rec):
    rt = rec.runtime()
    net = chain()
    assert rt.cached_result(net, attachment()) is None
    out = rt.add(net, attachment())
    assert rt.cached_result(net, attachment()) == out
    atts = rt.cached_attachments()
    assert [(a["networkName"], a["containerId"], a["ifName"]) for a in atts] == [("recnet", "cid1", "eth1")]
    assert rt.cached_attachments("cid1") == atts and rt.cached_attachments("other") == []


def test_libcni_legacy_cache_is_read(rec):
    """libcni < 0.7 cached the bare result; DEL must still pass it on."""
    path = rec.cache / "results" / "recnet-cid1-eth1"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.1.1/24"}]}))
    rec.runtime().delete(chain(), attachment())
    assert all(c["conf"]["prevResult"]["ips"][0]["address"] == "10.1.1.1/24" for c in rec.calls(("DEL",)))


# --- CHECK / DEL -----------------------------------------------------------------------------

def test_check_gives_every_plugin_the_cached_result(rec):
    rt = rec.runtime()
    out = rt.add(chain(), attachment())
    rt.check(chain(), attachment(capability_args=None))
    checks = rec.calls(("CHECK",))
    assert [c["plugin"] for c in checks] == ["rec1", "rec2", "rec3"]
    assert all(c["conf"]["prevResult"] == out for c in checks)
    # capability args not given to CHECK come from the cache
    assert checks[0]["conf"]["runtimeConfig"] == {"portMappings": CAPS["portMappings"]}


def test_check_rules(rec):
    rt = rec.runtime()
    with pytest.raises(CNIError) as exc:
        rt.check(chain(), attachment())
    assert exc.value.code == spec.ERR_UNKNOWN_CONTAINER  # no ADD before
    rt.add(chain(disableCheck=True), attachment())
    rt.check(chain(disableCheck=True), attachment())
    assert rec.calls(("CHECK",)) == []
    with pytest.raises(CNIError) as exc:
        rt.check(chain("0.3.1"), attachment())
    assert exc.value.code == spec.ERR_INCOMPATIBLE_VERSION


def test_del_reverse_with_cached_prev_result(rec):
    rt = rec.runtime()
    out = rt.add(chain(), attachment())
    rt.delete(chain(), attachment())
    dels = rec.calls(("DEL",))
    assert [d["plugin"] for d in dels] == ["rec3", "rec2", "rec1"]
    assert all(d["conf"]["prevResult"] == out for d in dels)
    assert not (rec.cache / "results" / "recnet-cid1-eth1").exists()
    rt.delete(chain(), attachment())  # idempotent: no cache, plugins still called, no error
    assert all("prevResult" not in d["conf"] for d in rec.calls(("DEL",))[3:])


def test_del_is_best_effort(rec):
    rec.runtime().add(chain(), attachment())
    with pytest.raises(CNIError) as exc:
        rec.runtime(fail="rec2:DEL").delete(chain(), attachment())
    assert exc.value.code == 111 and 'plugin type="rec2" failed (delete)' in exc.value.msg
    assert rec.order(("DEL",)) == [("rec3", "DEL"), ("rec2", "DEL"), ("rec1", "DEL")]
    # the cache stays so a retry (or GC) still has the prevResult
    assert (rec.cache / "results" / "recnet-cid1-eth1").exists()
    rec.runtime().delete(chain(), attachment())
    assert not (rec.cache / "results" / "recnet-cid1-eth1").exists()


def test_del_drops_unreadable_cache(rec):
    path = rec.cache / "results" / "recnet-cid1-eth1"
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    rec.runtime().delete(chain(), attachment())
    assert not path.exists() and len(rec.calls(("DEL",))) == 3


def test_del_pre_040_sends_no_prev_result(rec):
    rt = rec.runtime()
    rt.add(chain("0.3.1"), attachment())
    rt.delete(chain("0.3.1"), attachment())
    assert all("prevResult" not in d["conf"] for d in rec.calls(("DEL",)))


# --- GC / STATUS -------------------------------------------------------------------------------

def test_gc_deletes_stale_attachments_and_sends_valid_list(rec):
    rt = rec.runtime()
    net = chain("1.1.0")
    for cid in ("keep", "stale"):
        rt.add(net, runtime.RuntimeConf(container_id=cid, netns=f"/run/netns/{cid}", ifname="eth0",
                                        args=[("A", cid)], capability_args={"mac": "x"}))
    rt.add(chain("1.1.0", name="othernet"), runtime.RuntimeConf(container_id="stale", ifname="eth0"))
    rt.gc(net, [{"containerID": "keep", "ifname": "eth0"}])
    dels = rec.calls(("DEL",))
    assert [(d["plugin"], d["env"]["CNI_CONTAINERID"]) for d in dels] == [
        ("rec3", "stale"), ("rec2", "stale"), ("rec1", "stale")]
    # the stale DEL runs with the cached netns and CNI_ARGS
    assert dels[0]["env"]["CNI_NETNS"] == "/run/netns/stale" and dels[0]["env"]["CNI_ARGS"] == "A=stale"
    gcs = rec.calls(("GC",))
    assert [g["plugin"] for g in gcs] == ["rec1", "rec2", "rec3"]
    valid = [{"containerID": "keep", "ifname": "eth0"}]
    for g in gcs:
        assert g["conf"]["cni.dev/valid-attachments"] == valid and g["conf"]["cni.dev/attachments"] == valid
        assert "runtimeConfig" not in g["conf"] and "prevResult" not in g["conf"]
    left = sorted((a["networkName"], a["containerId"]) for a in rt.cached_attachments())
    assert left == [("othernet", "stale"), ("recnet", "keep")]


def test_gc_rules(rec):
    rt = rec.runtime()
    rt.add(chain("1.0.0"), attachment())
    rt.gc(chain("1.0.0", disableGC=True), [])
    assert rec.calls(("DEL", "GC")) == []
    rt.gc(chain("1.0.0"), None)  # before 1.1.0: stale DELs only, no GC verb
    assert rec.order(("DEL", "GC")) == [("rec3", "DEL"), ("rec2", "DEL"), ("rec1", "DEL")]
    assert rt.cached_attachments() == []


def test_gc_joins_errors(rec):
    rt = rec.runtime(fail="rec1:GC,rec3:GC")
    with pytest.raises(CNIError) as exc:
        rt.gc(chain("1.1.0"), [])
    assert "failed to GC plugin rec1" in exc.value.msg and "failed to GC plugin rec3" in exc.value.msg
    assert [g["plugin"] for g in rec.calls(("GC",))] == ["rec1", "rec2", "rec3"]


def test_status(rec):
    rec.runtime().status(chain("1.0.0"))
    assert rec.calls() == []  # STATUS exists from 1.1.0 on
    with pytest.raises(CNIError) as exc:
        rec.runtime(fail="rec2:STATUS").status(chain("1.1.0"))
    assert exc.value.code == 111
    assert rec.order() == [("rec1", "STATUS"), ("rec2", "STATUS")]  # stops at the first failure


# --- built-in plugins run in-process ---------------------------------------------------------------

class FakeBuiltin:
    supported_versions = spec.SUPPORTED_VERSIONS
    calls: list = []

    def add(self, ctx, conf):
        FakeBuiltin.calls.append(("ADD", os.getpid(), ctx.container_id, json.loads(json.dumps(conf["prevResult"]))))
        prev = conf.get("prevResult") or spec.new_result()
        prev["interfaces"].append({"name": "fake", "mac": "02:00:00:00:00:99", "mtu": 1400})
        return prev

    def delete(self, ctx, conf):
        FakeBuiltin.calls.append(("DEL", os.getpid(), ctx.container_id, conf.get("prevResult")))


@pytest.fixture
def fake_builtin(monkeypatch):
    FakeBuiltin.calls = []
    monkeypatch.setitem(registry.PLUGINS, "fakebuiltin", ("unused", "FakeBuiltin"))
    real_load = registry.load
    monkeypatch.setattr(registry, "load", lambda name: FakeBuiltin if name == "fakebuiltin" else real_load(name))
    return FakeBuiltin


def test_builtin_runs_in_process_between_foreign_plugins(rec, fake_builtin):
    net = runtime.network_from_dict({"cniVersion": "1.0.0", "name": "mixed",
                                     "plugins": [{"type": "rec1"}, {"type": "fakebuiltin"}, {"type": "rec3"}]})
    out = rec.runtime().add(net, attachment())
    assert fake_builtin.calls[0][1] == os.getpid()  # no fork/exec
    assert [i["name"] for i in fake_builtin.calls[0][3]["interfaces"]] == ["rec1"]
    # the in-process result is shaped for 1.0.0 before rec3 sees it (1.1 field `mtu` dropped)
    rec3_prev = rec.calls(("ADD",))[1]["conf"]["prevResult"]
    assert rec3_prev["interfaces"][1] == {"name": "fake", "mac": "02:00:00:00:00:99"}
    assert [i["name"] for i in out["interfaces"]] == ["rec1", "fake", "rec3"]
    rec.runtime().delete(net, attachment())
    assert fake_builtin.calls[1][0] == "DEL" and fake_builtin.calls[1][3]["interfaces"][1]["name"] == "fake"


def test_builtin_crash_becomes_cni_error(rec, fake_builtin, monkeypatch):
    monkeypatch.setattr(FakeBuiltin, "add", lambda self, ctx, conf: 1 / 0)
    net = runtime.network_from_dict({"cniVersion": "1.0.0", "name": "mixed", "plugins": [{"type": "fakebuiltin"}]})
    with pytest.raises(CNIError) as exc:
        rec.runtime().add(net, attachment())
    assert exc.value.code == spec.ERR_INTERNAL and "division by zero" in exc.value.msg


def test_launcher_on_cni_path_resolves_in_process(tmp_path):
    """Our executables on CNI_PATH run in-process; a foreign file of the same name is exec'd."""
    ours = tmp_path / "ours"
    write_executables(str(ours), sys.executable, cnitest.LIB, names=["host-local"])
    assert runtime.Runtime(cni_path=[str(ours)]).resolve("host-local") is None
    assert runtime.Runtime(cni_path=["/usr/lib/cni"]).resolve("host-local") == "/usr/lib/cni/host-local"
    assert runtime.Runtime(cni_path=[str(tmp_path / "empty")]).resolve("host-local") is None  # built in
    with pytest.raises(CNIError) as exc:
        runtime.Runtime(cni_path=[str(tmp_path)]).resolve("not-a-plugin")
    assert exc.value.code == spec.ERR_INVALID_CONFIG


# --- config loading (libcni conf.go) ----------------------------------------------------------------

def write(d, name, obj):
    d.mkdir(exist_ok=True)
    (d / name).write_text(obj if isinstance(obj, str) else json.dumps(obj))


def test_load_order(tmp_path):
    d = tmp_path / "net.d"
    write(d, "20-b.conflist", {"cniVersion": "1.0.0", "name": "dup", "plugins": [{"type": "b"}]})
    write(d, "10-a.conflist", {"cniVersion": "1.0.0", "name": "dup", "plugins": [{"type": "a"}]})
    write(d, "05-single.conf", {"cniVersion": "0.4.0", "name": "dup", "type": "single"})
    write(d, "07-single.json", {"cniVersion": "0.4.0", "name": "solo", "type": "single", "z": 1, "a": 2})
    assert runtime.load_network(str(d), "dup").plugins[0]["type"] == "a"  # conflists first, lexical order
    solo = runtime.load_network(str(d), "solo")
    assert solo.cni_version == "0.4.0" and solo.plugins == [{"cniVersion": "0.4.0", "name": "solo",
                                                             "type": "single", "z": 1, "a": 2}]
    # up-converted like libcni ConfListFromConf: a re-marshalled, key-sorted list
    assert solo.raw == (b'{"cniVersion":"0.4.0","name":"solo","plugins":[{"a":2,"cniVersion":"0.4.0",'
                        b'"name":"solo","type":"single","z":1}]}')
    assert runtime.load_network(str(d), "dup").raw == (d / "10-a.conflist").read_bytes()
    with pytest.raises(CNIError, match='no net configuration with name "nope"'):
        runtime.load_network(str(d), "nope")
    with pytest.raises(CNIError, match="no net configurations found"):
        runtime.load_network(str(tmp_path / "missing"), "x")
    assert [n for n, _ in runtime.list_networks(str(d))] == ["dup", "dup", "dup", "solo"]


def test_cni_versions_picks_highest_supported():
    net = runtime.network_from_dict({"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0", "9.9.0"],
                                     "name": "v", "plugins": [{"type": "x"}]})
    assert net.cni_version == "1.1.0"
    net = runtime.network_from_dict({"cniVersions": ["0.3.1", "1.0.0"], "name": "v", "plugins": [{"type": "x"}]})
    assert net.cni_version == "1.0.0"


@pytest.mark.parametrize("conf,msg", [
    ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "no name"),
    ({"name": "n", "plugins": []}, "no plugins"),
    ({"name": "n", "plugins": [{"foo": 1}]}, "failed to parse plugin config 0"),
    ({"name": "n", "plugins": [{"type": "x"}], "disableCheck": "maybe"}, "disableCheck"),
    ({"name": "n", "cniVersions": "1.0.0", "plugins": [{"type": "x"}]}, "cniVersions"),
])
def test_bad_lists(conf, msg):
    with pytest.raises(CNIError) as exc:
        runtime.network_from_dict(conf)
    assert msg in str(exc.value)


def test_string_booleans():
    net = runtime.network_from_dict({"name": "n", "plugins": [{"type": "x"}], "disableCheck": "TRUE",
                                     "disableGC": False})
    assert net.disable_check and not net.disable_gc


def test_go_json_escapes_like_go():
    assert runtime.go_json({"b": "<a&b>", "a": "é\u2028"}, sort_keys=True) == \
        '{"a":"é\\u2028","b":"\\u003ca\\u0026b\\u003e"}'


# --- the CLI ------------------------------------------------------------------------------------

def test_cnitool_container_id():
    expected = subprocess.run("printf %s /run/netns/a1 | sha512sum", shell=True, capture_output=True,
                              text=True, check=True).stdout[:20]
    from cni.node import cli  # noqa: PLC0415

    assert cli.container_id_for("/run/netns/a1") == "cnitool-" + expected


def cnikit(*args, env=None):
    full = {"PATH": "/usr/bin:/bin"}
    full.update(env or {})
    return subprocess.run([os.path.join(cnitest.OUR_BIN, "cnikit"), *args], capture_output=True, text=True,
                          env=full, timeout=60, check=False)


@pytest.mark.parametrize("args,env,needle", [
    (["net", "add", "nope", "/run/netns/x"], {}, 'no net configuration with name "nope"'),
    (["net", "add", "recnet", "/run/netns/x"], {"CNI_ARGS": "novalue"}, "invalid CNI_ARGS pair"),
    (["net", "add", "recnet", "/run/netns/x"], {"CAP_ARGS": "{bad"}, "CAP_ARGS is not valid JSON"),
    (["net", "check", "recnet", "/run/netns/x"], {}, "nothing to CHECK"),
])
def test_cli_errors_are_friendly(tmp_path, args, env, needle):
    write(tmp_path / "net.d", "10.conflist", {"cniVersion": "1.0.0", "name": "recnet",
                                              "plugins": [{"type": "loopback"}]})
    env = dict(env, NETCONFPATH=str(tmp_path / "net.d"), CNI_CACHE_DIR=str(tmp_path / "cache"),
               CNI_PATH=str(tmp_path))
    proc = cnikit(*args, env=env)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("cnikit: error") and needle in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_cli_add_del_with_recorders(rec, tmp_path):
    write(tmp_path / "net.d", "10.conflist", {"cniVersion": "1.0.0", "name": "recnet",
                                              "plugins": [{"type": "rec1", "capabilities": {"mac": True}}]})
    env = {"NETCONFPATH": str(tmp_path / "net.d"), "CNI_PATH": str(tmp_path / "bin"), "REC_LOG": str(rec.log),
           "CNI_CACHE_DIR": str(rec.cache), "CAP_ARGS": '{"mac": "02:00:00:00:00:01"}', "CNI_IFNAME": "net1"}
    proc = cnikit("net", "add", "recnet", "/run/netns/a1", env=env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["interfaces"][0]["name"] == "rec1" and proc.stdout.startswith('{\n    "cniVersion"')
    call = rec.calls(("ADD",))[0]
    cid = call["env"]["CNI_CONTAINERID"]
    assert cid.startswith("cnitool-") and call["env"]["CNI_IFNAME"] == "net1"
    assert call["conf"]["runtimeConfig"] == {"mac": "02:00:00:00:00:01"}
    assert (rec.cache / "results" / f"recnet-{cid}-net1").exists()
    assert cnikit("net", "check", "recnet", "/run/netns/a1", env=env).returncode == 0
    assert cnikit("net", "del", "recnet", "/run/netns/a1", env=env).returncode == 0
    assert not (rec.cache / "results" / f"recnet-{cid}-net1").exists()
    assert rec.order() == [("rec1", "ADD"), ("rec1", "CHECK"), ("rec1", "DEL")]


def test_gc_of_pre_12_libcni_entry_uses_the_results_sandbox(rec):
    """libcni v1.1 (podman 4.3) caches no `netns`; the stale DEL still gets the container's netns."""
    path = rec.cache / "results" / "recnet-old1-eth0"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"kind": "cniCacheV1", "containerId": "old1", "config": "", "ifName": "eth0",
                                "networkName": "recnet", "result": {"cniVersion": "1.0.0", "interfaces": [
                                    {"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/old"}]}}))
    rec.runtime().gc(chain(), [])
    assert {d["env"]["CNI_NETNS"] for d in rec.calls(("DEL",))} == {"/run/netns/old"}
    assert not path.exists()
