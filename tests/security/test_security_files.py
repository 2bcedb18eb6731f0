"""Files written as root cannot be steered by others (issue 13: L4; docs/security.md).

- the writers that used a predictable `<name>.tmp<pid>` (runtime result cache, tuning backup,
  netstate files, dhcp lease records) never follow a link planted under that name;
- host-local's lock file is never opened through a link;
- a state directory that others may write to (group/world-writable, or not ours) is refused.
"""
from __future__ import annotations

import json
import os

import pytest

import cnitest
from cni import runtime
from cni.protocol import fsutil
from cni.state import netstate
from cni.ipam import dhcp
from cni.plugins.meta import tuning


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "victim"
    path.write_text("precious\n")
    return str(path)


def plant(path: str, victim: str) -> None:
    """The link an attacker would put under the temp name the writer of `path` used to pick."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(victim, f"{path}.tmp{os.getpid()}")


WRITERS = {
    "tuning-backup": lambda path: tuning._write_backup(path, {"mtu": 1500}),
    "dhcp-lease": lambda path: dhcp.write_lease(path, {"ip": "10.0.0.2"}),
    "netstate-file": lambda path: netstate.ensure_config_file(path, "{}\n", 0o600),
    "atomic-write": lambda path: fsutil.write_atomic(path, b"{}", 0o600),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writers_never_follow_a_planted_temp_link(tmp_path, victim, writer):
    path = str(tmp_path / "state" / "file.json")
    plant(path, victim)
    WRITERS[writer](path)
    with open(victim) as fh:
        assert fh.read() == "precious\n", f"{writer} wrote through the planted link"
    assert os.path.isfile(path) and not os.path.islink(path)


def test_runtime_cache_never_follows_a_planted_temp_link(sandbox, tmp_path, victim):
    rt = runtime.Runtime(cache_dir=str(tmp_path / "cache"), cni_path=["/nonexistent"])
    net = runtime.network_from_dict({"cniVersion": "1.0.0", "name": "secnet", "plugins": [
        {"type": "host-local", "ipam": {"type": "host-local", "subnet": "10.46.1.0/24", "dataDir": str(tmp_path / "data")}}]})
    rtconf = runtime.RuntimeConf(container_id="c1", netns="/proc/self/ns/net", ifname="eth0")
    plant(rt.cache_path("secnet", rtconf), victim)
    rt.add(net, rtconf)
    with open(victim) as fh:
        assert fh.read() == "precious\n", "the result cache was written through the planted link"
    rt.delete(net, rtconf)


def test_host_local_lock_is_never_opened_through_a_link(sandbox, tmp_path):
    data = tmp_path / "data"
    (data / "secnet").mkdir(parents=True)
    target = tmp_path / "created-by-root"
    os.symlink(target, data / "secnet" / "lock")
    conf = {"cniVersion": "1.0.0", "name": "secnet", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.46.2.0/24", "dataDir": str(data)}}
    out = cnitest.inproc("host-local", "ADD", conf, cid="l1", netns="/proc/self/ns/net", path="/nonexistent")
    assert out.rc == 1 and not target.exists(), out.stdout


@pytest.mark.parametrize("how", ["world-writable", "group-writable", "other-owner"])
def test_unsafe_state_dirs_are_refused(sandbox, tmp_path, how):
    data = tmp_path / "data"
    (data / "secnet").mkdir(parents=True)
    if how == "other-owner":
        os.chown(data / "secnet", 65534, 65534)
    else:
        os.chmod(data / "secnet", 0o777 if how == "world-writable" else 0o775)
    conf = {"cniVersion": "1.0.0", "name": "secnet", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.46.3.0/24", "dataDir": str(data)}}
    out = cnitest.inproc("host-local", "ADD", conf, cid="u1", netns="/proc/self/ns/net", path="/nonexistent")
    assert out.rc == 1 and out.json["code"] == 5 and "refusing dataDir" in out.json["msg"], out.stdout
    assert sorted(os.listdir(data / "secnet")) == []  # no lease, no lock made there
    with pytest.raises(dhcp.CNIError, match="refusing state directory"):
        lease_dir = tmp_path / "leases"
        lease_dir.mkdir(mode=0o777)
        os.chmod(lease_dir, 0o777)
        dhcp.write_lease(str(lease_dir / "x.json"), {})


def test_runtime_del_validates_ifname_before_using_it_in_a_path(sandbox, tmp_path):
    """L6: `x/../../victim` as ifname made DEL read - and, not being a cache entry, delete -
    <cache dir>/victim."""
    cache = tmp_path / "cache"
    (cache / "results" / "secnet-c1-x").mkdir(parents=True)
    victim = cache / "victim"
    victim.write_text("precious\n")
    rt = runtime.Runtime(cache_dir=str(cache), cni_path=["/nonexistent"])
    net = runtime.network_from_dict({"cniVersion": "1.0.0", "name": "secnet", "plugins": [
        {"type": "host-local", "ipam": {"type": "host-local", "subnet": "10.46.4.0/24", "dataDir": str(tmp_path / "data")}}]})
    with pytest.raises(runtime.CNIError) as err:
        rt.delete(net, runtime.RuntimeConf(container_id="c1", netns="", ifname="x/../../victim"))
    assert err.value.code == 4 and "interface name" in err.value.msg
    assert victim.read_text() == "precious\n"
    with pytest.raises(runtime.CNIError):
        rt.cache_path("secnet", runtime.RuntimeConf(container_id="../c1", ifname="eth0"))
