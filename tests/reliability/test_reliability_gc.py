"""GC: the spec's GC verb (host-local) and `cnikit gc` (node level) reclaim what is gone and touch
nothing valid; torn and garbage store files are reported, never crashed on."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import cnitest
import relutil

NET = "gcnet"
FAKE_NETNS = "/run/netns/cnikit-ipam-only"


def hl_conf(datadir: str, version: str = "1.1.0", **extra) -> dict:
    conf = {"cniVersion": version, "name": NET, "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": datadir, "ranges": [[{"subnet": "10.44.0.0/24"}]]}}
    conf.update(extra)
    return conf


def owners(datadir: str):
    return sorted(relutil.lease_files(datadir).values())


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_verb_releases_exactly_the_invalid_leases(sandbox, tmp_path, key):
    datadir = str(tmp_path / "data")
    for cid in ("keep1", "gone1", "gone2"):
        assert cnitest.run("host-local", "ADD", hl_conf(datadir), cid=cid, netns=FAKE_NETNS).rc == 0
    assert cnitest.run("host-local", "ADD", hl_conf(datadir), cid="keep1", ifname="net1", netns=FAKE_NETNS).rc == 0
    everyone = owners(datadir)
    for bad in (None, "keep1", {"containerID": "keep1"}, ["keep1"]):  # no list: nothing collected
        out = cnitest.run("host-local", "GC", hl_conf(datadir, **{key: bad}), cid="", ifname="", netns="")
        assert (out.rc, out.stdout) == (0, "") and "nothing collected" in out.stderr, out
        assert owners(datadir) == everyone
    valid = [{"containerID": "keep1", "ifname": "eth0"}, {"containerID": "keep1", "ifname": "net1"}]
    out = cnitest.run("host-local", "GC", hl_conf(datadir, **{key: valid}), cid="", ifname="", netns="")
    assert (out.rc, out.stdout) == (0, ""), out
    assert owners(datadir) == ["keep1\r\neth0", "keep1\r\nnet1"]
    out = cnitest.run("host-local", "GC", hl_conf(datadir, **{key: []}), cid="", ifname="", netns="")
    assert out.rc == 0 and owners(datadir) == []


def test_torn_and_garbage_store_files_are_survived(sandbox, tmp_path):
    """Binary garbage, an empty (torn) lease, an oversized file, a directory and a symlink named like
    IPs: ADD allocates around them, DEL/STATUS/GC exit cleanly, the symlink's target is untouched."""
    datadir = tmp_path / "data"
    netdir = datadir / NET
    netdir.mkdir(parents=True)
    (netdir / "10.44.0.2").write_bytes(b"\x00\xff\xfe garbage \r\n\x01")
    (netdir / "10.44.0.3").write_bytes(b"")
    (netdir / "10.44.0.4").write_bytes(b"x" * 1_000_000)
    (netdir / "10.44.0.5").mkdir()
    victim = tmp_path / "victim"
    victim.write_text("victim")
    (netdir / "10.44.0.6").symlink_to(victim)
    (netdir / "last_reserved_ip.0").write_bytes(b"\xff\xfenot an ip")
    conf = hl_conf(str(datadir))
    add = cnitest.run("host-local", "ADD", conf, cid="ctr", netns=FAKE_NETNS)
    assert add.rc == 0, add
    assert add.json["ips"][0]["address"] not in {f"10.44.0.{i}/24" for i in range(2, 7)}
    for verb in ("CHECK", "DEL", "DEL"):
        out = cnitest.run("host-local", verb, dict(conf, prevResult=add.json), cid="ctr", netns=FAKE_NETNS)
        relutil.check_outcome(out.rc, out.stdout, out.stderr, verb)
        assert out.rc == 0, out
    for verb in ("STATUS", "GC"):
        out = cnitest.run("host-local", verb, dict(conf, **{"cni.dev/valid-attachments": []}), cid="", ifname="", netns="")
        relutil.check_outcome(out.rc, out.stdout, out.stderr, verb)
    assert victim.read_text() == "victim"


def test_store_writes_are_atomic_under_sigkill(sandbox, tmp_path):
    """Killed right after the lease write, ten times over: every lease is whole, no temp file."""
    datadir = str(tmp_path / "data")
    conf = hl_conf(datadir, version="1.0.0")
    for i in range(10):
        out = cnitest.run("host-local", "ADD", conf, cid=f"k{i}", netns=FAKE_NETNS,
                          extra={"CNIKIT_FAULT": "host_local.after_lease_write"})
        assert out.rc == -signal.SIGKILL, out
    leases = relutil.lease_files(datadir)
    assert sorted(leases.values()) == sorted(f"k{i}\r\neth0" for i in range(10))
    assert len(set(leases)) == 10  # ten distinct IPs although last_reserved_ip never moved
    for i in range(10):
        assert cnitest.run("host-local", "DEL", conf, cid=f"k{i}", netns=FAKE_NETNS).rc == 0
    assert relutil.lease_files(datadir) == {}


# --- cnikit gc ---------------------------------------------------------------------------

class GcNode:
    def __init__(self, tmp) -> None:
        self.conf_dir, self.cache_dir, self.data_dir = (str(tmp / d) for d in ("conf", "cache", "data"))
        os.makedirs(self.conf_dir)
        with open(os.path.join(self.conf_dir, "10-gc.conflist"), "w", encoding="utf-8") as fh:
            json.dump({"cniVersion": "1.1.0", "name": NET, "plugins": [hl_conf(self.data_dir)]}, fh)

    def cnikit(self, *args: str) -> subprocess.CompletedProcess:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "NETCONFPATH": self.conf_dir, "CNI_PATH": cnitest.OUR_BIN}
        return subprocess.run([os.path.join(cnitest.OUR_BIN, "cnikit"), *args], env=env, capture_output=True,
                              text=True, timeout=60, check=False)

    def add(self, pod: str) -> None:
        out = self.cnikit("net", "add", NET, f"/run/netns/{pod}", "--cache-dir", self.cache_dir)
        assert out.returncode == 0, out

    def gc(self, *flags: str) -> dict:
        out = self.cnikit("gc", "--cache-dir", self.cache_dir, "--data-dir", self.data_dir, *flags)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out
        return json.loads(out.stdout)

    def results(self) -> str:
        return os.path.join(self.cache_dir, "results")


def _lease(datadir: str, ip: str, content: bytes, age: float) -> str:
    path = os.path.join(datadir, NET, ip)
    with open(path, "wb") as fh:
        fh.write(content)
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def test_cnikit_gc_reclaims_only_what_is_gone(netns_factory, tmp_path):
    node = GcNode(tmp_path)
    live, dead = netns_factory("live"), netns_factory("dead")
    node.add(live)
    node.add(dead)
    cnitest.sh(f"ip netns del {dead}")
    # an entry without a netns path (nothing proves it gone) and a corrupt one: both kept
    entries = sorted(os.listdir(node.results()))
    with open(os.path.join(node.results(), entries[0]), encoding="utf-8") as fh:
        blank = json.load(fh)
    blank["containerId"] = "nonetns"
    blank.pop("netns")
    with open(os.path.join(node.results(), f"{NET}-nonetns-eth0"), "w", encoding="utf-8") as fh:
        json.dump(blank, fh)
    with open(os.path.join(node.results(), f"{NET}-torn-eth0"), "wb") as fh:
        fh.write(b'{"kind": "cniCacheV1", "containerId": "to')
    # leases with no cache entry: fresh (an ADD in flight), old, garbage, legacy cid-only of a live one
    fresh = _lease(node.data_dir, "10.44.0.200", b"inflight\r\neth0", age=0)
    old = _lease(node.data_dir, "10.44.0.201", b"forgotten\r\neth0", age=600)
    junk = _lease(node.data_dir, "10.44.0.202", b"\x00\xff\xfe\r\n\x01", age=600)
    snapshot = relutil.fs_snapshot([str(tmp_path)])

    report = node.gc("--dry-run", "--orphans")
    assert relutil.fs_snapshot([str(tmp_path)]) == snapshot, "--dry-run changed something"
    assert len(report["collected"]) == 1 and report["collected"][0].startswith(f"{NET}/cnitool-")
    assert len(report["orphan_leases"]) == 2 and report["corrupt"] == [os.path.join(node.results(), f"{NET}-torn-eth0")]

    report = node.gc()  # no --orphans: only the stale cache entry goes
    assert len(report["collected"]) == 1 and len(report["kept"]) == 2 and report["errors"] == []
    assert all(os.path.exists(p) for p in (fresh, old, junk))
    remaining = owners(node.data_dir)
    assert len(remaining) == 4  # live's lease + the three planted ones; dead's lease is gone

    report = node.gc("--orphans")
    assert sorted(report["orphan_leases"])[0].startswith(f"{NET}/10.44.0.201")
    assert os.path.exists(fresh) and not os.path.exists(old) and not os.path.exists(junk)
    assert len(owners(node.data_dir)) == 2  # live + the in-flight one
    assert os.path.exists(os.path.join(node.results(), f"{NET}-torn-eth0"))  # reported, kept
    assert os.path.exists(os.path.join(node.results(), f"{NET}-nonetns-eth0"))

    # --gc-verb: the spec verb with the cache's live attachments as the valid list; host-local then
    # frees every lease not listed (the in-flight one too: why the verb is opt-in for `cnikit gc`)
    report = node.gc("--gc-verb")
    assert report["errors"] == [] and report["collected"] == []
    assert owners(node.data_dir) == [o for o in remaining if o.startswith("cnitool-")]
