"""host-local on the real default paths and real failure modes, inside the sandbox (its /var/lib/cni
is a private tmpfs): default dataDir shared with Go, a read-only data dir, a writer killed mid-ADD."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import cnitest  # noqa: E402
from cnitest import sh  # noqa: E402

DEFAULT = "/var/lib/cni/networks"


def conf(name, version="1.0.0", data_dir=None, ranges=None):
    ipam = {"type": "host-local", "ranges": ranges or [[{"subnet": "10.60.0.0/24"}]]}
    if data_dir:
        ipam["dataDir"] = data_dir
    return {"cniVersion": version, "name": name, "type": "bridge", "ipam": ipam}


@pytest.fixture
def net(sandbox, request):
    name = f"hl{os.getpid()}{request.node.name[-12:].replace('[', '').replace(']', '')}"
    name = "".join(ch for ch in name if ch.isalnum())
    yield name
    sh(f"rm -rf {DEFAULT}/{name}")


def test_default_data_dir_shared_with_go(net):
    out = cnitest.run("host-local", "ADD", conf(net), cid="a", netns="/x")
    assert out.rc == 0, out.stdout
    d = os.path.join(DEFAULT, net)
    assert open(os.path.join(d, "10.60.0.2"), "rb").read() == b"a\r\neth0"
    assert cnitest.run("host-local", "CHECK", conf(net), go=True, cid="a", netns="/x").rc == 0
    go = cnitest.run("host-local", "ADD", conf(net), go=True, cid="b", netns="/x")
    assert go.json["ips"][0]["address"] == "10.60.0.3/24"
    assert cnitest.run("host-local", "DEL", conf(net), go=True, cid="a").rc == 0
    assert cnitest.run("host-local", "DEL", conf(net), cid="b").rc == 0
    assert sorted(os.listdir(d)) == ["last_reserved_ip.0", "lock"]


def test_read_only_data_dir(net, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    sh(f"mount -t tmpfs -o ro tmpfs {ro}")
    try:
        c = conf(net, version="1.1.0", data_dir=str(ro))
        status = cnitest.run("host-local", "STATUS", c)
        assert (status.rc, status.code) == (1, 50), status.stdout
        add = cnitest.run("host-local", "ADD", c, cid="a", netns="/x")
        assert add.rc == 1 and add.json["msg"] == f"mkdir {ro}/{net}: read-only file system"
        assert cnitest.run("host-local", "DEL", c, cid="a").rc == 0  # nothing can be leased there (Go fails)
        assert os.listdir(ro) == []
    finally:
        sh(f"umount {ro}")


def test_writer_killed_after_lease_write_leaves_a_whole_lease(net):
    env = {"CNIKIT_FAULT": "host_local.after_lease_write"}
    out = cnitest.run("host-local", "ADD", conf(net), cid="a", netns="/x", extra=env)
    assert out.rc == -9  # SIGKILL: no cleanup ran
    d = os.path.join(DEFAULT, net)
    assert open(os.path.join(d, "10.60.0.2"), "rb").read() == b"a\r\neth0"  # never torn
    assert not os.path.exists(os.path.join(d, "last_reserved_ip.0"))
    # the lock died with the process: the next ADD (Go's) proceeds and skips the taken address
    assert cnitest.run("host-local", "ADD", conf(net), go=True, cid="b", netns="/x").json["ips"][0]["address"] \
        == "10.60.0.3/24"
    assert cnitest.run("host-local", "DEL", conf(net), cid="a").rc == 0  # the runtime's DEL cleans up


@pytest.mark.parametrize("nth, ranges", [
    ("", [[{"subnet": "10.60.0.0/24"}]]),
    ("@2", [[{"subnet": "10.60.0.0/24"}], [{"subnet": "fd60::/120"}]]),
])
def test_failed_add_rolls_back_every_lease(net, nth, ranges):
    env = {"CNIKIT_FAULT": f"host_local.after_lease_write{nth}:raise"}
    out = cnitest.run("host-local", "ADD", conf(net, ranges=ranges), cid="a", netns="/x", extra=env)
    assert (out.rc, out.code) == (1, 999) and "fault injected" in out.json["msg"]
    d = os.path.join(DEFAULT, net)
    assert [f for f in os.listdir(d) if f[0].isdigit() or f.startswith("fd") or "tmp" in f] == []


def test_gc_removes_temp_files_of_killed_writers(net):
    c = conf(net, version="1.1.0")
    assert cnitest.run("host-local", "ADD", c, cid="a", netns="/x").rc == 0
    d = os.path.join(DEFAULT, net)
    open(os.path.join(d, ".last_reserved_ip.0.tmp999"), "w").write("10.60.0.9")
    c["cni.dev/valid-attachments"] = [{"containerID": "a", "ifname": "eth0"}]
    assert cnitest.run("host-local", "GC", c).rc == 0
    assert sorted(os.listdir(d)) == ["10.60.0.2", "last_reserved_ip.0", "lock"]


def test_parallel_adds_of_ours_on_two_range_sets(net):
    c = conf(net, ranges=[[{"subnet": "10.60.0.0/26"}], [{"subnet": "fd60::/122"}]])
    procs = []
    for i in range(8):
        env = cnitest.cni_env("ADD", cid=f"p{i}", netns="/x")
        proc = subprocess.Popen([os.path.join(cnitest.OUR_BIN, "host-local")], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        proc.stdin.write(cnitest.json.dumps(c).encode())
        proc.stdin.close()
        procs.append(proc)
    ips = [cnitest.json.loads(p.stdout.read())["ips"] for p in procs]
    assert [p.wait() for p in procs] == [0] * 8
    v4 = {i[0]["address"] for i in ips}
    v6 = {i[1]["address"] for i in ips}
    assert len(v4) == len(v6) == 8
