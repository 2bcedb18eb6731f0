"""The runtime and `cnikit net` on real namespaces (sandbox only): our plugins in-process, Go
plugins as foreign executables in the same chain, rollback of a failed ADD, best-effort DEL, GC."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

import cnitest
from cni import runtime
from cni.protocol.spec import CNIError

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
SUBNET = "10.7.0"


@pytest.fixture
def master(sandbox):
    """A veth pair in the sandbox netns: m7 is the macvlan master."""
    cnitest.sh("ip link add m7 type veth peer name m7p && ip link set m7 up && ip link set m7p up")
    yield "m7"
    cnitest.sh("ip link del m7", check=False)


def mvnet(datadir, *more, name="rtnet"):
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "macvlan", "master": "m7", "mode": "bridge",
         "ipam": {"type": "host-local", "subnet": f"{SUBNET}.0/24", "dataDir": str(datadir)}}, *more]}


def links(ns):
    return [link["ifname"] for link in cnitest.ip_json("link show", ns)]


def leases(datadir, net="rtnet"):
    d = os.path.join(str(datadir), net)
    return sorted(n for n in os.listdir(d) if n[0].isdigit()) if os.path.isdir(d) else []


def make_runtime(tmp_path, cni_path):
    return runtime.Runtime(conf_dir=str(tmp_path / "net.d"), cni_path=cni_path, cache_dir=str(tmp_path / "cache"),
                           environ=ENV)


def test_cli_lifecycle_on_our_plugins(master, netns, tmp_path):
    netd = tmp_path / "net.d"
    netd.mkdir()
    (netd / "10-rtnet.conflist").write_text(json.dumps(mvnet(tmp_path / "data", {
        "type": "tuning", "capabilities": {"mac": True}, "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}})))
    env = dict(ENV, NETCONFPATH=str(netd), CNI_PATH=cnitest.OUR_BIN, CNI_CACHE_DIR=str(tmp_path / "cache"),
               CAP_ARGS=json.dumps({"mac": "02:42:00:00:00:07"}))
    path = f"/run/netns/{netns}"

    def cnikit(verb):
        return subprocess.run([os.path.join(cnitest.OUR_BIN, "cnikit"), "net", verb, "rtnet", path],
                              capture_output=True, text=True, env=env, timeout=60, check=False)

    add = cnikit("add")
    assert add.returncode == 0, add.stderr
    result = json.loads(add.stdout)
    eth0 = [i for i in result["interfaces"] if i["name"] == "eth0"][0]
    assert eth0 == {"name": "eth0", "mac": "02:42:00:00:00:07", "sandbox": path}
    [addr] = [a for a in cnitest.ip_json("addr show eth0", netns)[0]["addr_info"] if a["family"] == "inet"]
    assert f"{addr['local']}/24" == result["ips"][0]["address"]
    assert cnitest.sh(f"ip netns exec {netns} sysctl -n net.ipv4.conf.eth0.arp_notify").strip() == "1"
    assert leases(tmp_path / "data") == [addr["local"]]
    [entry] = os.listdir(tmp_path / "cache" / "results")
    assert entry.startswith("rtnet-cnitool-") and entry.endswith("-eth0")
    assert cnikit("check").returncode == 0
    for _ in range(2):
        dele = cnikit("del")
        assert dele.returncode == 0, dele.stderr
        assert "eth0" not in links(netns) and leases(tmp_path / "data") == []
        assert os.listdir(tmp_path / "cache" / "results") == []
    assert cnikit("check").returncode == 1  # nothing attached any more
    # `net gc` (an explicit empty list, where cnitool sends none) removes what `add` made
    assert cnikit("add").returncode == 0 and "eth0" in links(netns)
    gc = cnikit("gc")
    assert gc.returncode == 0, gc.stderr
    assert "eth0" not in links(netns) and leases(tmp_path / "data") == []
    assert os.listdir(tmp_path / "cache" / "results") == []
    assert cnikit("status").returncode == 0


def test_in_process_and_foreign_plugins_in_one_chain(master, netns, tmp_path):
    """Our macvlan/host-local in-process, Go tuning exec'd: the prevResult crosses both ways."""
    gobin = tmp_path / "gobin"
    gobin.mkdir()
    os.symlink("/usr/lib/cni/tuning", gobin / "tuning")
    rt = make_runtime(tmp_path, [str(gobin), cnitest.OUR_BIN])
    assert rt.resolve("macvlan") is None and rt.resolve("tuning") == str(gobin / "tuning")
    net = rt.network_from_dict(mvnet(tmp_path / "data", {"type": "tuning", "mtu": 1300, "promisc": True}))
    att = runtime.RuntimeConf(container_id="mixed1", netns=f"/run/netns/{netns}")
    out = rt.add(net, att)
    link = cnitest.ip_json("-d link show eth0", netns)[0]
    assert link["mtu"] == 1300 and "PROMISC" in link["flags"]
    assert out["interfaces"][0]["name"] == "eth0" and out["ips"][0]["address"].startswith(SUBNET)
    rt.check(net, att)
    rt.delete(net, att)
    assert "eth0" not in links(netns) and leases(tmp_path / "data") == []


def test_failed_add_is_rolled_back(master, netns, tmp_path):
    rt = make_runtime(tmp_path, [cnitest.OUR_BIN])
    bad = {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.no_such_knob": "1"}}
    net = rt.network_from_dict(mvnet(tmp_path / "data", bad))
    att = runtime.RuntimeConf(container_id="fail1", netns=f"/run/netns/{netns}")
    with pytest.raises(CNIError) as exc:
        rt.add(net, att)
    assert exc.value.msg.startswith('plugin type="tuning" failed (add)')
    # the macvlan made by the first plugin is gone again, its lease released, nothing cached
    assert "eth0" not in links(netns)
    assert leases(tmp_path / "data") == []
    assert rt.cached_attachments() == []


def test_del_is_best_effort_across_the_chain(master, netns, tmp_path):
    """A plugin whose DEL fails does not stop the others (libcni would stop and leak the macvlan
    and its lease); the error is still reported and the cache kept for a retry."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    flaky = bindir / "flaky"
    flaky.write_text('#!/bin/sh\ncat >/dev/null\ncase "$CNI_COMMAND" in\n'
                     'VERSION) echo \'{"cniVersion":"1.0.0","supportedVersions":["1.0.0"]}\';;\n'
                     'ADD) echo \'{"cniVersion":"1.0.0","dns":{}}\';;\n'
                     'DEL) [ -e "$0.ok" ] && exit 0; echo \'{"code":11,"msg":"busy, try again"}\'; exit 1;;\n'
                     'esac\n')
    flaky.chmod(0o755)
    rt = make_runtime(tmp_path, [str(bindir), cnitest.OUR_BIN])
    net = rt.network_from_dict(mvnet(tmp_path / "data", {"type": "flaky"}))
    att = runtime.RuntimeConf(container_id="flaky1", netns=f"/run/netns/{netns}")
    rt.add(net, att)
    assert "eth0" in links(netns) and len(leases(tmp_path / "data")) == 1
    with pytest.raises(CNIError) as exc:
        rt.delete(net, att)
    assert exc.value.code == 11 and 'type="flaky" failed (delete): busy' in exc.value.msg
    assert "eth0" not in links(netns) and leases(tmp_path / "data") == []
    assert len(rt.cached_attachments("flaky1")) == 1
    (bindir / "flaky.ok").write_text("")
    rt.delete(net, att)
    assert rt.cached_attachments("flaky1") == []


def test_gc_removes_only_stale_attachments(master, netns_factory, tmp_path):
    rt = make_runtime(tmp_path, [cnitest.OUR_BIN])
    net = rt.network_from_dict(mvnet(tmp_path / "data") | {"cniVersion": "1.1.0"})
    keep, stale = netns_factory("gk"), netns_factory("gs")
    for cid, ns in (("keep1", keep), ("stale1", stale)):
        rt.add(net, runtime.RuntimeConf(container_id=cid, netns=f"/run/netns/{ns}"))
    ips = leases(tmp_path / "data")
    assert len(ips) == 2
    cnitest.sh(f"ip netns del {stale}")  # the container went away without a DEL
    rt.gc(net, [{"containerID": "keep1", "ifname": "eth0"}])
    assert [a["containerId"] for a in rt.cached_attachments()] == ["keep1"]
    [left] = leases(tmp_path / "data")
    assert "eth0" in links(keep)
    with open(os.path.join(tmp_path / "data", "rtnet", left), "rb") as fh:
        assert fh.read() == b"keep1\r\neth0"
    rt.status(net)  # host-local's STATUS: the store is writable
    rt.delete(net, runtime.RuntimeConf(container_id="keep1", netns=f"/run/netns/{keep}"))
    assert leases(tmp_path / "data") == []


def test_gc_verb_reaches_ipam_for_leases_without_cache(master, netns, tmp_path):
    """A lease whose cache entry is lost is not DELed by the runtime (it does not know it), but the
    spec 1.1 GC verb it sends reaches host-local (through macvlan, in-process) and frees it."""
    rt = make_runtime(tmp_path, [cnitest.OUR_BIN])
    net = rt.network_from_dict(mvnet(tmp_path / "data") | {"cniVersion": "1.1.0"})
    rt.add(net, runtime.RuntimeConf(container_id="lost1", netns=f"/run/netns/{netns}"))
    rt.add(net, runtime.RuntimeConf(container_id="kept1", netns=f"/run/netns/{netns}", ifname="eth1"))
    os.unlink(rt.cache_path("rtnet", runtime.RuntimeConf(container_id="lost1")))
    assert len(leases(tmp_path / "data")) == 2
    rt.gc(net, [{"containerID": "kept1", "ifname": "eth1"}])
    [left] = leases(tmp_path / "data")
    with open(os.path.join(tmp_path / "data", "rtnet", left), "rb") as fh:
        assert fh.read() == b"kept1\r\neth1"
    rt.delete(net, runtime.RuntimeConf(container_id="kept1", netns=f"/run/netns/{netns}", ifname="eth1"))
    assert leases(tmp_path / "data") == []


def cnitool_gc(rt, net):
    """Upstream cnitool's `gc` (libcni GCNetworkList without GCArgs): DEL every attachment of the
    network in its *own* cache, then GC each plugin with a config that has no valid-attachments."""
    for att in rt.cached_attachments():
        if att["networkName"] == net.name:
            rt.delete(net, runtime.RuntimeConf(container_id=att["containerId"], netns=runtime.cached_netns(att),
                                               ifname=att["ifName"], capability_args=att.get("capabilityArgs")))
    for plugin in net.plugins:
        conf = dict(plugin, name=net.name, cniVersion=net.cni_version)
        out = cnitest.exec_plugin(os.path.join(cnitest.OUR_BIN, plugin["type"]),
                                  cnitest.cni_env("GC", cid="", ifname=""), conf)
        assert (out.rc, out.stdout) == (0, "") and "nothing collected" in out.stderr, out


def test_cnitool_gc_leaves_another_runtimes_attachment(netns_factory, tmp_path):
    """Two runtimes (own caches) share one network name and data dir (issue 19): one of them GCs
    like cnitool. Its own attachment goes (by DEL); the other's lease, masquerade and port mapping
    stay, and the other runtime can still CHECK and DEL it."""
    from cni import netfilter  # noqa: PLC0415

    conf = {"cniVersion": "1.1.0", "name": "sharednet", "plugins": [
        {"type": "bridge", "bridge": f"gcb{os.getpid() % 10000}", "isGateway": True, "ipMasq": True,
         "ipam": {"type": "host-local", "subnet": "10.8.0.0/24", "dataDir": str(tmp_path / "data")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    runtimes = {name: runtime.Runtime(conf_dir=str(tmp_path), cni_path=[cnitest.OUR_BIN],
                                      cache_dir=str(tmp_path / name), environ=ENV) for name in ("cnitool", "podman")}
    net = runtime.network_from_dict(conf)
    atts, ips = {}, {}
    for port, (name, rt) in enumerate(runtimes.items(), 8081):
        atts[name] = runtime.RuntimeConf(container_id=f"{name}1", netns=f"/run/netns/{netns_factory(name[:2])}",
                                         capability_args={"portMappings": [
                                             {"hostPort": port, "containerPort": 80, "protocol": "tcp"}]})
        ips[name] = [ip["address"] for ip in rt.add(net, atts[name])["ips"]]

    def state():
        rules = cnitest.sh("nft list ruleset")
        return (leases(tmp_path / "data", "sharednet"), [port for port in ("8081", "8082") if port in rules])

    assert state() == (sorted(ip[0].split("/")[0] for ip in ips.values()), ["8081", "8082"])
    cnitool_gc(runtimes["cnitool"], net)
    assert state() == ([ips["podman"][0].split("/")[0]], ["8082"])
    netfilter.check_ipmasq("sharednet", "podman1", ips["podman"])
    runtimes["podman"].check(net, atts["podman"])
    runtimes["podman"].delete(net, atts["podman"])
    assert state() == ([], [])
