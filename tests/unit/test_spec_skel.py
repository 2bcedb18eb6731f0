"""Protocol layer: versions, validation in the Go skel's order, result shapes per version."""
from __future__ import annotations

import json

import pytest

import cnitest
from cni.protocol import skel, spec


class Dummy:
    supported_versions = spec.SUPPORTED_VERSIONS

    def add(self, ctx, conf):
        return spec.new_result(
            interfaces=[{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": ctx.netns}],
            ips=[{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 0},
                 {"address": "fd00::2/64", "interface": 0}],
            routes=[{"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1400}])

    def delete(self, ctx, conf):
        pass


def run(env, conf):
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    return skel.execute(Dummy, env, data.encode() if isinstance(data, str) else data)


def env(**kw):
    base = cnitest.cni_env("ADD", netns="/run/netns/x", path="/opt/cni/bin")
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "dummy"}


def code_of(out):
    return json.loads(out[1])["code"]


def test_version_lists_all_supported():
    rc, out, _ = skel.execute(Dummy, {"CNI_COMMAND": "VERSION"}, b"")
    assert rc == 0
    assert json.loads(out)["supportedVersions"] == list(spec.SUPPORTED_VERSIONS)


def test_no_command_prints_about_on_stderr():
    rc, out, err = skel.execute(Dummy, {}, b"")
    assert (rc, out) == (0, "") and "CNI" in err


@pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH", "CNI_NETNS"])
def test_missing_env_is_code_4(missing):
    res = run(env(**{missing: None}), CONF)
    assert res[0] == 1 and code_of(res) == 4 and missing in json.loads(res[1])["msg"]


def test_del_does_not_need_netns():
    assert run(env(CNI_COMMAND="DEL", CNI_NETNS=None), CONF)[0] == 0


@pytest.mark.parametrize("cid,code", [("-abc", 4), ("a/b", 4), ("a b", 4), ("../x", 4), ("ok.id_1-2", None)])
def test_container_id_validation(cid, code):
    res = run(env(CNI_CONTAINERID=cid), CONF)
    assert (code_of(res) if res[0] else None) == code


@pytest.mark.parametrize("ifname", ["a" * 16, ".", "..", "a:b", "a b", "a/b", "é" * 8])
def test_bad_ifname_is_code_4(ifname):
    assert code_of(run(env(CNI_IFNAME=ifname), CONF)) == 4


def test_ifname_not_utf8_is_code_4():
    res = run(env(CNI_IFNAME="eth\udcff"), CONF)
    assert code_of(res) == 4 and "UTF-8" in json.loads(res[1])["msg"]


def test_ifname_15_bytes_ok():
    assert run(env(CNI_IFNAME="a" * 15), CONF)[0] == 0


@pytest.mark.parametrize("conf,code", [
    (b"{not json", 6),
    ({"cniVersion": "1.0.0", "type": "x"}, 7),
    ({"cniVersion": "1.0.0", "name": "n/a", "type": "x"}, 7),
    ({"cniVersion": "0.5.0", "name": "n", "type": "x"}, 1),
    ({"cniVersion": "9.9.9", "name": "n", "type": "x"}, 1),
    (b"[]", 6),
])
def test_config_errors(conf, code):
    res = run(env(), conf)
    assert res[0] == 1 and code_of(res) == code


def test_incompatible_version_details_like_go():
    res = run(env(), {"cniVersion": "0.5.0", "name": "n"})
    details = json.loads(res[1])["details"]
    assert details.startswith('config is "0.5.0", plugin supports ["0.1.0" "0.2.0"')


def test_check_below_040_is_code_1():
    res = run(env(CNI_COMMAND="CHECK"), dict(CONF, cniVersion="0.3.1"))
    assert code_of(res) == 1


def test_unknown_command_is_code_4():
    assert code_of(run(env(CNI_COMMAND="FROB"), CONF)) == 4


def test_traceback_never_on_stdout():
    class Boom(Dummy):
        def add(self, ctx, conf):
            raise RuntimeError("kaboom")
    rc, out, err = skel.execute(Boom, env(), json.dumps(CONF).encode())
    assert rc == 1 and json.loads(out) == {"cniVersion": "1.0.0", "code": 999, "msg": "kaboom"}
    assert "Traceback" in err


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_shape_03x_has_ip_version(version):
    rc, out, _ = run(env(), dict(CONF, cniVersion=version))
    res = json.loads(out)
    assert [ip["version"] for ip in res["ips"]] == ["4", "6"]
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}] and res["dns"] == {}


def test_result_shape_100_drops_version_and_11_fields():
    res = json.loads(run(env(), CONF)[1])
    assert "version" not in res["ips"][0] and res["ips"][0]["interface"] == 0
    assert res["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]


def test_result_shape_110_keeps_route_mtu():
    res = json.loads(run(env(), dict(CONF, cniVersion="1.1.0"))[1])
    assert res["routes"][0]["mtu"] == 1400


def test_result_legacy_020():
    res = json.loads(run(env(), dict(CONF, cniVersion="0.2.0"))[1])
    assert res["ip4"] == {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
                          "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]}
    assert res["ip6"] == {"ip": "fd00::2/64"} and "ips" not in res


def test_missing_cniversion_is_legacy_010():
    conf = {"name": "n", "type": "x"}
    res = json.loads(run(env(), conf)[1])
    assert res["cniVersion"] == "0.1.0" and "ip4" in res


def test_prev_result_roundtrip_from_020():
    legacy = {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/16", "gateway": "10.1.0.1"}, "dns": {}}
    cur = spec.result_from_dict(legacy)
    assert cur["ips"] == [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}]
    out = spec.result_to_dict(cur, "0.4.0")
    assert out["ips"] == [{"version": "4", "address": "10.1.0.5/16", "gateway": "10.1.0.1"}]


@pytest.mark.parametrize("raw,pairs", [("", []), ("A=1;B=2", [("A", "1"), ("B", "2")]), ("IP=10.0.0.1", [("IP", "10.0.0.1")])])
def test_cni_args_parse(raw, pairs):
    assert skel.parse_cni_args(raw) == pairs


@pytest.mark.parametrize("raw", ["A", "A=1=2", "A=1;;"])
def test_cni_args_bad_pair_is_code_4(raw):
    with pytest.raises(spec.CNIError) as exc:
        skel.parse_cni_args(raw)
    assert exc.value.code == 4


def test_unknown_args_rejected_unless_ignore_unknown():
    with pytest.raises(spec.CNIError):
        skel.check_known_args([("FOO", "1")], ("IP",))
    skel.check_known_args([("FOO", "1"), ("IgnoreUnknown", "1")], ("IP",))


# --- GC without a keep-list (issue 19): decided once in skel for every plugin --------------

class Collector(Dummy):
    def __init__(self):
        self.gcs = []

    def gc(self, ctx, conf):
        self.gcs.append(spec.valid_attachments(conf))


GC_CONF = {"cniVersion": "1.1.0", "name": "net1", "type": "collector"}


def gc(conf):
    plugin = Collector()
    rc, out, err = skel.execute(lambda: plugin, cnitest.cni_env("GC", cid="", ifname=""), json.dumps(conf).encode())
    return rc, out, err, plugin.gcs


@pytest.mark.parametrize("extra,why", [
    ({}, "has no cni.dev/valid-attachments list"),
    ({"cni.dev/valid-attachments": None, "cni.dev/attachments": None}, "has no cni.dev/valid-attachments list"),
    ({"cni.dev/valid-attachments": "c1"}, "cni.dev/valid-attachments is not a list of objects"),
    ({"cni.dev/valid-attachments": {"containerID": "c1"}}, "cni.dev/valid-attachments is not a list of objects"),
    ({"cni.dev/valid-attachments": ["c1"]}, "cni.dev/valid-attachments is not a list of objects"),
    ({"cni.dev/attachments": 7}, "cni.dev/attachments is not a list of objects"),
])
def test_gc_without_a_usable_list_collects_nothing_and_says_why(extra, why):
    rc, out, err, gcs = gc(dict(GC_CONF, **extra))
    assert (rc, out, gcs) == (0, "", [])
    assert err.startswith("collector GC: nothing collected: ") and why in err and err.count("\n") == 1


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_with_an_explicit_list_even_empty_reaches_the_plugin(key):
    assert gc(dict(GC_CONF, **{key: []})) == (0, "", "", [set()])
    listed = [{"containerID": "c1", "ifname": "eth0"}]
    assert gc(dict(GC_CONF, **{key: listed})) == (0, "", "", [{("c1", "eth0")}])


def test_valid_attachments_never_defaults_to_nothing_valid():
    """A plugin reaching for the list without skel's gate fails instead of collecting everything."""
    with pytest.raises(spec.NoKeepList):
        spec.valid_attachments({"name": "net1"})
