"""The fast path: plugin executable -> node agent, against the in-process engine.

Two kinds of executable (installer.write_executables): the compiled exec relay (relay.c, hard-linked under
every plugin name) and, without a C compiler, the dash launcher running relay.py.

- every door (either kind through the agent, either kind with no agent, skel in-process) gives
  byte-identical stdout and the same exit codes, for results and for errors;
- both kinds fall back to in-process by themselves (stale socket, an agent that never answers, an
  agent that refuses an oversized request, an agent killed after taking a request);
- killing the agent in the middle of an ADD, or between calls, loses no lease and leaks none;
- without a working C compiler the install writes the script launchers.

The `agent` bin dirs are written with an engine interpreter that does not exist: an executable that
silently fell back to in-process would fail there, so a passing test proves the agent answered.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import cnitest

sys.path.insert(0, cnitest.LIB)
from cni.node import agent as agent_mod  # noqa: E402
from cni.node import installer  # noqa: E402
from cni.protocol import invoke  # noqa: E402
from cni.node import relay  # noqa: E402
from cni.protocol import skel  # noqa: E402
from agentutil import Agent  # noqa: E402

PY = os.path.join(cnitest.ROOT, ".venv", "bin", "python3")
NO_PYTHON = "/nonexistent/python3"
KINDS = ("compiled", "script")


@pytest.fixture
def work(sandbox):
    path = tempfile.mkdtemp(prefix="perf", dir="/run")  # short: unix socket paths are ≤ 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def agent_factory(work):
    started = []

    def start(env: dict | None = None) -> Agent:
        a = Agent(os.path.join(work, "agent.sock"), env)
        started.append(a)
        return a

    yield start
    for a in started:
        a.stop()


def bindir(work: str, name: str, python: str, sock: str, plugins=("host-local", "bridge"), kind="compiled") -> str:
    if kind == "compiled" and shutil.which((shlex.split(os.environ.get("CC", "cc")) or ["cc"])[0]) is None:
        pytest.skip("no C compiler (cc) on this machine: the compiled relay cannot be built")
    dest = os.path.join(work, f"{name}-{kind}")
    installer.write_executables(dest, python, cnitest.LIB, list(plugins), socket=sock,
                                cc=None if kind == "compiled" else "")
    with open(os.path.join(dest, plugins[0]), "rb") as fh:  # the kind under test is the kind written
        assert fh.read(4) == (b"\x7fELF" if kind == "compiled" else b"#!/b")
    return dest


def hl_conf(data_dir: str, version: str = "1.0.0", **ipam) -> dict:
    return {"cniVersion": version, "name": "fastnet", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.44.0.0/24", "dataDir": data_dir, **ipam}}


def exec_in(bdir: str, command: str, conf, **kw) -> cnitest.Outcome:
    kw.setdefault("netns", "/proc/self/ns/net")
    return cnitest.exec_plugin(os.path.join(bdir, "host-local"), cnitest.cni_env(command, path=bdir, **kw), conf)


# A sequence on one store: results, then the errors a runtime can provoke.
def scenario(data_dir: str):
    conf = hl_conf(data_dir)
    return [
        ("ADD", conf, {"cid": "a1"}),
        ("ADD", conf, {"cid": "a2", "ifname": "net1"}),
        ("ADD", conf, {"cid": "a1"}),  # duplicate allocation: code 999 from host-local
        ("ADD", hl_conf(data_dir, "0.3.1"), {"cid": "a3"}),
        ("CHECK", conf, {"cid": "a1"}),
        ("DEL", conf, {"cid": "a1"}),
        ("DEL", conf, {"cid": "a1"}),  # idempotent
        ("ADD", conf, {"cid": "bad id"}),  # code 4
        ("ADD", conf, {"cid": ""}),  # missing env: code 4
        ("ADD", b"{not json", {"cid": "a4"}),  # code 6
        ("ADD", hl_conf(data_dir, "9.9.9"), {"cid": "a5"}),  # code 1
        ("ADD", conf, {"cid": "a6", "args": "FOO=bar"}),  # unknown CNI_ARGS
        ("ADD", hl_conf(data_dir, rangeStart="10.45.0.1"), {"cid": "a7"}),  # config error
        ("", conf, {"cid": "a8"}),  # no CNI_COMMAND: the about text on stderr
        ("VERSION", conf, {"cid": "a9"}),
        ("ADD", dict(conf, padding="x" * (2 << 20)), {"cid": "a10"}),  # a 2 MB stdin
        ("DEL", dict(conf, padding="x" * (2 << 20)), {"cid": "a10"}),
    ]


def outcomes(run, data_dir: str):
    shutil.rmtree(data_dir, ignore_errors=True)
    return [(cmd, kw.get("cid"), *run(cmd, conf, kw)) for cmd, conf, kw in scenario(data_dir)]


def via_exec(bdir: str):
    def run(cmd, conf, kw):
        out = exec_in(bdir, cmd, conf, **kw)
        return out.rc, out.stdout, out.stderr if not out.stdout else ""
    return run


def via_inproc(cmd, conf, kw):
    out = cnitest.inproc("host-local", cmd, conf, netns="/proc/self/ns/net", path="/nonexistent", **kw)
    return out.rc, out.stdout, out.stderr if not out.stdout else ""


def test_every_door_gives_the_same_bytes(work, agent_factory):
    running = agent_factory()
    data = os.path.join(work, "data")
    absent = os.path.join(work, "absent.sock")
    inproc = outcomes(via_inproc, data)
    for kind in KINDS:
        assert outcomes(via_exec(bindir(work, "agent", NO_PYTHON, running.sock, kind=kind)), data) == inproc, kind
        assert outcomes(via_exec(bindir(work, "inproc", PY, absent, kind=kind)), data) == inproc, kind
    codes = [(cmd, json.loads(out).get("code") if rc else None) for cmd, _, rc, out, _ in inproc if out]
    assert [c for _, c in codes if c] == [999, 4, 4, 6, 1, 999, 999], codes  # the errors really happened
    assert json.loads(inproc[0][3])["ips"][0]["address"] == "10.44.0.2/24"
    assert inproc[-4][4].startswith("CNI cnikit plugin") and json.loads(inproc[-3][3])["supportedVersions"]
    assert json.loads(inproc[-2][3])["ips"][0]["address"] == "10.44.0.5/24"


@pytest.mark.parametrize("kind", KINDS)
def test_version_is_answered_by_the_executable_byte_for_byte(work, kind):
    bdir = bindir(work, "inproc", NO_PYTHON, os.path.join(work, "absent.sock"), kind=kind)
    expected = skel.execute(lambda: None, {"CNI_COMMAND": "VERSION"}, b"")
    for name in ("host-local", "bridge"):
        out = cnitest.exec_plugin(os.path.join(bdir, name), {"CNI_COMMAND": "VERSION"}, b"")
        assert (out.rc, out.stdout, out.stderr) == expected  # no Python at all was needed
        assert invoke.is_our_launcher(os.path.join(bdir, name))  # the runtime runs these in-process
    assert not invoke.is_our_launcher("/usr/lib/cni/host-local")  # a Go ELF is exec'd


def test_compiled_plugins_are_one_binary(work):
    bdir = bindir(work, "one", NO_PYTHON, os.path.join(work, "absent.sock"), ["host-local", "bridge", "macvlan"])
    inodes = {os.stat(os.path.join(bdir, n)).st_ino for n in ("host-local", "bridge", "macvlan")}
    assert len(inodes) == 1 and os.stat(os.path.join(bdir, "bridge")).st_nlink == 3
    assert sorted(os.listdir(bdir)) == ["bridge", "cnikit", "host-local", "macvlan"]  # no temporary left
    with open(os.path.join(bdir, "cnikit"), "rb") as fh:
        assert fh.read(2) == b"#!"  # the CLI stays a Python launcher


def test_compiled_relay_without_its_engine_prints_a_cni_error(work):
    """No agent and the engine interpreter gone (a broken install): a CNI error on stdout, not a crash."""
    out = exec_in(bindir(work, "broken", NO_PYTHON, os.path.join(work, "absent.sock")), "ADD",
                  hl_conf(os.path.join(work, "data")), cid="b1")
    assert out.rc == 1 and out.json == {"code": 999, "msg": f"cnikit: cannot exec the engine interpreter {NO_PYTHON}",
                                        "details": "No such file or directory"}


@pytest.mark.parametrize("env", [{"PATH": "/nonexistent"}, {"CC": "false"}, {"CC": ""}],
                         ids=["no-cc", "failing-cc", "cc-set-empty"])
def test_without_a_working_compiler_the_launchers_are_scripts(work, env):
    dest = os.path.join(work, "nocc")
    sock = os.path.join(work, "absent.sock")
    proc = subprocess.run([PY, "-I", "-c", relay.ENGINE, cnitest.LIB, "cnikit", "install-plugins", dest, "--python", PY,
                           "--agent-socket", sock], env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert ("writing script launchers instead" in proc.stderr) == (env.get("CC") == "false")
    with open(os.path.join(dest, "host-local"), "rb") as fh:
        assert fh.read().startswith(b"#!/bin/sh")
    out = exec_in(dest, "ADD", hl_conf(os.path.join(work, "data")), cid="n1")
    assert out.rc == 0 and out.json["ips"][0]["address"] == "10.44.0.2/24", out.stdout + out.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_stale_socket_falls_back_in_process(work, kind):
    sock = os.path.join(work, "stale.sock")
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(sock)  # a socket file nobody listens on: what a SIGKILLed agent leaves behind
    dead.close()
    data = os.path.join(work, "data")
    conf = hl_conf(data)
    bdir = bindir(work, "stale", PY, sock, kind=kind)
    got = [exec_in(bdir, cmd, conf, cid="s1") for cmd in ("ADD", "CHECK", "DEL")]
    assert [o.rc for o in got] == [0, 0, 0], [o.stdout for o in got]
    assert got[0].json["ips"][0]["address"] == "10.44.0.2/24" and leases(data) == {}


@pytest.mark.parametrize("kind", KINDS)
def test_agent_that_never_answers_falls_back(work, kind):
    sock = os.path.join(work, "hung.sock")
    hung = socket.socket(socket.AF_UNIX)
    hung.bind(sock)
    hung.listen(8)  # accepts into the backlog, never reads: a wedged agent
    try:
        start = time.monotonic()
        out = exec_in(bindir(work, "hung", PY, sock, kind=kind), "ADD", hl_conf(os.path.join(work, "data")), cid="h1")
        waited = time.monotonic() - start
    finally:
        hung.close()
    assert out.rc == 0, out.stdout + out.stderr
    assert out.json["ips"][0]["address"] == "10.44.0.2/24"
    assert waited >= 5.0  # it gave the agent its ACK_TIMEOUT before running in-process


@pytest.mark.parametrize("kind", KINDS)
def test_oversized_request_is_refused_by_the_agent_and_run_in_process(work, agent_factory, kind):
    running = agent_factory()
    data = os.path.join(work, "data")
    conf = dict(hl_conf(data), padding="x" * (agent_mod.MAX_REQUEST + 1))
    out = exec_in(bindir(work, "agent", PY, running.sock, kind=kind), "ADD", conf, cid="o1")
    assert out.rc == 0, out.stdout[:500] + out.stderr[-2000:]
    assert out.json["ips"][0]["address"] == "10.44.0.2/24" and leases(data) == {"10.44.0.2": b"o1\r\neth0"}
    assert "request too large" in running.stop()  # the agent did refuse it: the engine ran in-process


def leases(data_dir: str) -> dict:
    net = os.path.join(data_dir, "fastnet")
    return {name: open(os.path.join(net, name), "rb").read() for name in os.listdir(net)
            if name[0].isdigit()}


@pytest.mark.parametrize("kind", KINDS)
def test_killing_the_agent_mid_stream_loses_no_lease(work, agent_factory, kind):
    data = os.path.join(work, "data")
    conf = hl_conf(data)
    bdir = bindir(work, "agent", PY, os.path.join(work, "agent.sock"), kind=kind)
    # The agent SIGKILLs itself on its 3rd lease write: after the lease file, before last_reserved_ip.
    first = agent_factory({"CNIKIT_FAULT": "host_local.after_lease_write@3"})
    got = {}
    for i in range(6):
        out = exec_in(bdir, "ADD", conf, cid=f"k{i}")
        assert out.rc == 0, out.stdout + out.stderr
        got[f"k{i}"] = out.json["ips"][0]["address"].split("/")[0]
        if i == 2:
            assert first.proc.wait(timeout=10) == -signal.SIGKILL  # it really died mid-ADD
    assert len(set(got.values())) == 6
    # exactly one lease per container, each the IP its ADD reported: the replay undid the half-done ADD
    assert leases(data) == {ip: f"{cid}\r\neth0".encode() for cid, ip in got.items()}
    # a new agent replaces the stale socket; a SIGKILL between calls loses nothing either
    second = agent_factory()
    for cid in ("k0", "k1", "k2"):
        assert exec_in(bdir, "DEL", conf, cid=cid).rc == 0
    second.proc.send_signal(signal.SIGKILL)
    second.proc.wait(timeout=10)
    agent_factory()
    for cid in ("k3", "k4", "k5"):
        assert exec_in(bdir, "DEL", conf, cid=cid).rc == 0
    assert leases(data) == {}


def test_concurrent_requests_through_the_agent(work, agent_factory):
    agent_factory()
    data = os.path.join(work, "data")
    conf = hl_conf(data)
    bdir = bindir(work, "agent", NO_PYTHON, os.path.join(work, "agent.sock"))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        adds = list(pool.map(lambda i: exec_in(bdir, "ADD", conf, cid=f"p{i}"), range(32)))
        assert all(o.rc == 0 for o in adds), [o.stdout for o in adds if o.rc]
        ips = {o.json["ips"][0]["address"] for o in adds}
        assert len(ips) == 32 and len(leases(data)) == 32
        dels = list(pool.map(lambda i: exec_in(bdir, "DEL", conf, cid=f"p{i}"), range(32)))
    assert all(o.rc == 0 for o in dels)
    assert leases(data) == {}


def test_agent_survives_garbage_and_refuses_a_second_instance(work, agent_factory):
    running = agent_factory()
    for junk in (b"GET / HTTP/1.0\r\n\r\n", b"CNIKIT/2 5 5 999999999\n", b"CNIKIT/2 10 0 0\nshort"):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(running.sock)
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            try:
                answer = s.recv(16)
            except ConnectionResetError:  # closed with our bytes unread
                answer = b""
            assert answer == b""  # dropped, never acknowledged
    with pytest.raises(Exception, match="already listens"):
        agent_mod.listen(running.sock)
    bdir = bindir(work, "agent", NO_PYTHON, running.sock)
    assert exec_in(bdir, "ADD", hl_conf(os.path.join(work, "data")), cid="g1").rc == 0


def tasks(pid: int) -> set:
    return set(os.listdir(f"/proc/{pid}/task")) - {str(pid)}


def test_agent_workers_are_reused_and_bounded(work, agent_factory):
    running = agent_factory()
    conf = hl_conf(os.path.join(work, "data"))
    bdir = bindir(work, "agent", NO_PYTHON, running.sock)
    assert exec_in(bdir, "ADD", conf, cid="w0").rc == 0
    first = tasks(running.proc.pid)
    for i in range(1, 6):  # one request at a time: the same warm thread serves them all
        assert exec_in(bdir, "ADD", conf, cid=f"w{i}").rc == 0
    assert tasks(running.proc.pid) == first and len(first) == 1
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(o.rc == 0 for o in pool.map(lambda i: exec_in(bdir, "DEL", conf, cid=f"w{i % 6}"), range(48)))
    # surplus workers exit once done: at most `keep` idle ones stay (+1 may still be finishing)
    deadline = time.monotonic() + 10
    while len(tasks(running.proc.pid)) > agent_mod.Workers().keep and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(tasks(running.proc.pid)) <= agent_mod.Workers().keep


def test_sigterm_lets_the_request_in_flight_finish(work, agent_factory):
    running = agent_factory()
    data = os.path.join(work, "data")
    os.makedirs(os.path.join(data, "fastnet"))
    name, env = b"host-local", cnitest.cni_env("ADD", cid="t1", netns="/proc/self/ns/net", path=work)
    blob = b"\0".join(f"{k}={v}".encode() for k, v in env.items())
    stdin = json.dumps(hl_conf(data)).encode()
    with open(os.path.join(data, "fastnet", "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # host-local waits for this lock: the request stays in flight
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(running.sock)
        conn.sendall(b"CNIKIT/2 %d %d %d\n" % (len(name), len(blob), len(stdin)) + name + blob + stdin)
        assert conn.recv(1) == b"+"
        conn.sendall(b"!")
        running.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while os.path.exists(running.sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(running.sock) and running.proc.poll() is None  # stopped accepting, still working
    reply = b""
    while chunk := conn.recv(65536):
        reply += chunk
    conn.close()
    head, _, body = reply.partition(b"\n")
    assert head.split()[0] == b"0" and json.loads(body)["ips"][0]["address"] == "10.44.0.2/24"
    assert running.proc.wait(timeout=10) == 0 and leases(data) == {"10.44.0.2": b"t1\r\neth0"}


@pytest.fixture
def master(sandbox):
    cnitest.sh("ip link add pm0 type veth peer name pm0p && ip link set pm0 up")
    yield "pm0"
    cnitest.sh("ip link del pm0", check=False)


def test_macvlan_through_the_agent_matches_in_process(work, agent_factory, netns_factory, master):
    """A main plugin with real kernel work: same result (modulo the random MAC and the netns path),
    same addresses and routes in the container, same error for a missing master."""
    agent_factory()
    data = os.path.join(work, "data")

    def conf(master: str) -> dict:
        return {"cniVersion": "1.0.0", "name": "mvfast", "type": "macvlan", "master": master, "mode": "bridge",
                "ipam": {"type": "host-local", "subnet": "10.46.0.0/24", "dataDir": data,
                         "routes": [{"dst": "0.0.0.0/0"}]}}

    def door(run) -> tuple:
        shutil.rmtree(data, ignore_errors=True)
        ns = netns_factory("mv")
        path = f"/run/netns/{ns}"
        added = run("ADD", conf(master), path)
        assert added.rc == 0, added.stdout + added.stderr
        result = added.json
        for iface in result["interfaces"]:
            assert iface.pop("mac") and iface.pop("sandbox") == path
        state = ([(a["ifname"], [(i["local"], i["prefixlen"]) for i in a["addr_info"] if i["family"] == "inet"])
                  for a in cnitest.ip_json("addr show eth0", ns)],
                 [(r["dst"], r.get("gateway")) for r in cnitest.ip_json("-4 route show", ns)])
        gone = run("ADD", conf("nosuchmaster"), path)
        dele = run("DEL", dict(conf(master), prevResult=added.json), path)
        assert dele.rc == 0
        assert [link["ifname"] for link in cnitest.ip_json("link show", ns)] == ["lo"]
        return result, state, (gone.rc, gone.stdout)

    def via(bdir):
        return lambda cmd, c, path: cnitest.exec_plugin(os.path.join(bdir, "macvlan"),
                                                        cnitest.cni_env(cmd, netns=path, path=bdir), c)

    through_agent = door(via(bindir(work, "agent", NO_PYTHON, os.path.join(work, "agent.sock"), ["macvlan"])))
    script_agent = door(via(bindir(work, "agent", NO_PYTHON, os.path.join(work, "agent.sock"), ["macvlan"], "script")))
    no_agent = door(via(bindir(work, "inproc", PY, os.path.join(work, "absent.sock"), ["macvlan"])))
    inproc = door(lambda cmd, c, path: cnitest.inproc("macvlan", cmd, c, netns=path, path="/nonexistent"))
    assert through_agent == script_agent == no_agent == inproc
    assert through_agent[0]["ips"][0]["address"] == "10.46.0.2/24"
    assert through_agent[2][0] == 1 and json.loads(through_agent[2][1])["code"]
