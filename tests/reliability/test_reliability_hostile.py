"""Hostile identifiers: container IDs, network names, ifnames and dataDir values built to escape a
directory, inject into a shell or overflow a name are rejected (code 4 or 7) before any file or
link is touched; nothing is ever created outside the configured directories; no shell runs."""
from __future__ import annotations

import itertools
import os
import re
import sys

import pytest

import cnitest
import relutil

MARKER = "/tmp/cnikit-pwned"
SHELLY = [f"$(touch {MARKER})", f"`touch {MARKER}`", f"a;touch {MARKER}", f"a|touch {MARKER}", f"a&&touch {MARKER}"]
TRAVERSAL = ["../../../tmp/escape", "..", ".", "../x", "a/b", "/abs", "a/../../b"]
NULS = ["a\0b", "\0"]
LONG = ["x" * 256, "y" * 5000]
BAD_CID = TRAVERSAL + SHELLY + NULS + LONG + ["-leading-dash", "a b", "a\nb", "é", "\u202e", "*"]
BAD_NAME = TRAVERSAL + SHELLY + NULS + LONG + ["-x", "a b", "a\nb", "日本", "", "n:x", "*"]
BAD_IFNAME = ["../x", "a/b", "..", ".", "a:b", "a b", "a\tb", "a\0b", "x" * 16, "é" * 8, f"$(touch {MARKER})"]
# Every traversal stays inside the test's tmp_path (cwd and dataDir sit three levels below it), so
# the snapshot would see an escape without one ever reaching the real filesystem.
BAD_DATADIR = ["../../escape", "{base}/data/../../escape", "{base}/data/../../../escape", "a\0b", "{base}/\0"]

# Plugins exercised through the real executables, for every EXEC_EVERY-th case (the rest go
# in-process through the same skel, which is what the executable runs).
EXEC_PLUGINS = ("host-local", "macvlan", "bridge", "ptp")
EXEC_EVERY = 5
_calls = itertools.count()


@pytest.fixture
def arena(netns, tmp_path, monkeypatch):
    """A netns, a master link, a private cwd and dataDir, and snapshots of every area a plugin could
    write to."""
    base = tmp_path / "a" / "b" / "c"
    datadir = base / "data"
    datadir.mkdir(parents=True)
    monkeypatch.chdir(base)
    cnitest.sh("ip link add cnihm0 type veth peer name cnihm1 && ip link set cnihm0 up")
    roots = [str(tmp_path), "/var/lib/cni", "/etc/cni", "/opt/cni", "/run"]
    before = (relutil.fs_snapshot(roots), relutil.link_names(), relutil.link_names(netns))
    yield netns, str(datadir), base
    after = (relutil.fs_snapshot(roots), relutil.link_names(), relutil.link_names(netns))
    # the bridge an accepted ADD made is shared infrastructure DEL keeps (as Go's bridge does)
    after[1][:] = [name for name in after[1] if name != "cnihbr0"]
    cnitest.sh("ip link del cnihm0; ip link del cnihbr0", check=False)
    assert not os.path.exists(MARKER), "a shell ran with user data"
    # Inside the configured dataDir a network directory and its lock may appear; leases may not.
    # (lock files under /run/lock, e.g. the iptables backend's, are infrastructure, not user data)
    created = sorted(p for p in set(after[0]) - set(before[0])
                     if not p.startswith((f"{datadir}/", "/run/lock/")))
    assert created == [], f"files created outside the configured directories: {created}"
    assert relutil.lease_files(str(datadir)) == {}
    assert after[1:] == before[1:], "links changed"


def conf_for(ptype: str, datadir: str, name: str = "hostnet") -> dict:
    ipam = {"type": "host-local", "dataDir": datadir, "ranges": [[{"subnet": "10.98.0.0/24"}]]}
    conf = {"cniVersion": "1.0.0", "name": name, "type": ptype, "ipam": ipam}
    conf.update(master="cnihm0", bridge="cnihbr0", mode="l2" if ptype == "ipvlan" else "bridge")
    if ptype == "static":
        conf["ipam"] = {"type": "static", "addresses": [{"address": "10.98.0.5/24"}]}
    if ptype in ("portmap", "bandwidth", "firewall", "tuning", "sbr"):
        conf["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": "10.98.0.5/24"}]}
    return conf


def call(ptype: str, conf: dict, netns: str, command: str = "ADD", **kw) -> cnitest.Outcome:
    env_kw = dict(netns=f"/run/netns/{netns}", **kw)
    if ptype in EXEC_PLUGINS and next(_calls) % EXEC_EVERY == 0 and not any("\0" in v for v in kw.values()):
        return cnitest.run(ptype, command, conf, **env_kw)
    return cnitest.inproc(ptype, command, conf, **env_kw)


def expect(out: cnitest.Outcome, codes: tuple) -> None:
    relutil.check_outcome(out.rc, out.stdout, out.stderr, "ADD")
    assert out.rc == 1 and out.code in codes, out


PLUGINS = relutil.importable_plugins()


@pytest.mark.parametrize("ptype", PLUGINS)
def test_hostile_identifiers_rejected_before_touching_anything(arena, ptype):
    netns, datadir, _ = arena
    conf = conf_for(ptype, datadir)
    for cid in BAD_CID:
        expect(call(ptype, conf, netns, cid=cid), (4,))
    for name in BAD_NAME:
        expect(call(ptype, conf_for(ptype, datadir, name=name), netns), (7,))
    for ifname in BAD_IFNAME:
        expect(call(ptype, conf, netns, ifname=ifname), (4,))
    for args in (f"IgnoreUnknown=1;K8S_POD_NAME=$(touch {MARKER})", "IP=../../x", "IP=10.98.0.9;IP=1"):
        out = call(ptype, conf, netns, args=args)
        relutil.check_outcome(out.rc, out.stdout, out.stderr, "ADD")
        if out.rc == 0:  # accepted: must be fully undone by DEL
            assert call(ptype, conf, netns, "DEL", args=args).rc == 0
    assert relutil.lease_files(datadir) == {}


# ipvlan is left out: this kernel has no ipvlan, its ADD fails creating the link before IPAM runs
@pytest.mark.parametrize("ptype", [p for p in PLUGINS if p in ("host-local", "macvlan", "bridge", "ptp")])
def test_hostile_datadir_rejected(arena, ptype):
    netns, datadir, base = arena
    for raw in BAD_DATADIR:
        conf = conf_for(ptype, datadir)
        conf["ipam"]["dataDir"] = raw.format(base=base)
        expect(call(ptype, conf, netns), (4, 7))


@pytest.mark.parametrize("ptype", [p for p in PLUGINS if p == "host-local"])
def test_gc_with_hostile_valid_attachments(arena, ptype):
    """GC carries container IDs in the config, past the skel's checks: they must never become paths."""
    netns, datadir, _ = arena
    conf = conf_for(ptype, datadir)
    conf["cniVersion"] = "1.1.0"
    conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": "eth0"} for c in BAD_CID[:8]]
    out = cnitest.run(ptype, "GC", conf, netns="", cid="", ifname="")
    relutil.check_outcome(out.rc, out.stdout, out.stderr, "GC")


def test_engine_never_invokes_a_shell():
    """Audit: no shell=True, os.system, os.popen or `sh -c` anywhere in the engine."""
    assert relutil.shell_uses() == []


def test_engine_external_commands_take_argv_lists():
    """Every subprocess call in the engine passes an argv list (no string for a shell to split)."""
    offenders = []
    for dirpath, _, files in os.walk(relutil.ENGINE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as fh:
                    for no, line in enumerate(fh, 1):
                        if "subprocess." in line and ("(f\"" in line or "(\"" in line or "('" in line):
                            offenders.append(f"{path}:{no}")
    assert offenders == []


def test_launchers_never_evaluate_user_data(sandbox, tmp_path):
    """Without a C compiler the executables are /bin/sh launchers: user data reaches them in CNI_*
    variables. Every expansion must be quoted and nothing evaluated: shell payloads in every
    variable run nothing - through those launchers and through the compiled ones (build/bin)."""
    from cni.node.installer import write_executables  # noqa: PLC0415

    scripts = str(tmp_path / "scripts")
    write_executables(scripts, sys.executable, cnitest.LIB, ["bridge", "host-local", "macvlan"],
                      socket=str(tmp_path / "absent.sock"), cc="")
    for name in ("bridge", "host-local", "macvlan"):
        with open(os.path.join(scripts, name), encoding="utf-8") as fh:
            text = "\n".join(l for l in fh.read().splitlines() if not l.lstrip().startswith("#"))
        assert not re.search(r"\beval\b", text) and "`" not in text  # (the word: tmp_path says "evaluate")
        # every $-expansion is "$0" or "$CNI_COMMAND", inside double quotes
        assert set(re.findall(r'"?\$\{?\w+\}?"?', text)) <= {'"$0"', '"$CNI_COMMAND"'}, text
    marker = tmp_path / "pwned"
    payload = f"$(touch {marker})"
    for command in (payload, f"VERSION ] || touch {marker} || [", f"`touch {marker}`", "VERSION;touch " + str(marker)):
        env = cnitest.cni_env(command, cid=payload, netns=payload, ifname="eth0", args=f"IgnoreUnknown=1;X={payload}",
                              extra={"CNI_PATH": payload})
        for bindir in (scripts, cnitest.OUR_BIN):
            out = cnitest.exec_plugin(os.path.join(bindir, "bridge"), env, b'{"cniVersion":"1.0.0","name":"n"}')
            relutil.check_outcome(out.rc, out.stdout, out.stderr, command)
            assert out.rc == 1 and out.code == 4, out
    assert not marker.exists()
