"""The node agent is no root-equivalent socket (issue 13: M1, L1, L4; docs/security.md).

Every test talks to a real `cnikit agent` over its unix socket, raw or through the real relays:
- a peer in another mount or pid namespace is refused (a root container with /run mounted);
- a request's CNI_PATH outside the agent's own plugin dirs is refused and never executed, an unsafe
  (group/world-writable) configured dir is never executed from, and a foreign plugin the agent does
  run sees only the request's CNI_* variables;
- 1000 idle connections cost no threads and do not delay others; running out of descriptors
  (EMFILE) does not end the agent; a relay that gave up before the `+` never has its request run;
- the relay never talks to a listener that is not root (or its own uid).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time

import pytest

import cnitest
from agentutil import PY, Agent, raw_call, request_bytes
from cni.node import installer

EVIL = "#!/bin/sh\ntouch {marker}\nexit 0\n"
ENVDUMP = "#!/bin/sh\nenv > {out}\nexit 0\n"


def plugin_dir(path: str, name: str, script: str, mode: int = 0o755) -> str:
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    exe = os.path.join(path, name)
    with open(exe, "w", encoding="utf-8") as fh:
        fh.write(script)
    os.chmod(exe, 0o755)
    return path


def status_call(ipam_type: str, cni_path: str, **extra: str) -> tuple:
    """ptp STATUS delegates to its IPAM type: a foreign one is exec'd from CNI_PATH."""
    conf = {"cniVersion": "1.1.0", "name": "secnet", "type": "ptp", "ipam": {"type": ipam_type}}
    env = {"CNI_COMMAND": "STATUS", "CNI_PATH": cni_path, **extra}
    return "ptp", env, json.dumps(conf).encode()


@pytest.fixture
def hostile(sandbox):
    """A directory the agent was never told about, holding an `evil` IPAM plugin that leaves a mark."""
    path = tempfile.mkdtemp(prefix="hostile", dir="/run")
    marker = os.path.join(path, "EXECUTED")
    plugin_dir(path, "evil", EVIL.format(marker=marker))
    yield path, marker
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("order", ["hostile", "trusted:hostile", "hostile:trusted"])
def test_hostile_cni_path_is_never_executed(work, agents, hostile, order):
    path, marker = hostile
    running = agents()
    cni_path = order.replace("trusted", work).replace("hostile", path)
    acked, _ = raw_call(running.sock, *status_call("evil", cni_path))
    assert not acked, "the agent took a request whose CNI_PATH names a dir that is not its own"
    assert not os.path.exists(marker), "the agent executed a plugin from the request's CNI_PATH"
    assert "is not one of the agent's plugin dirs" in running.stop()


def test_unsafe_configured_plugin_dir_is_never_executed(work, agents, hostile):
    path, marker = hostile
    os.chmod(path, 0o777)  # configured, but anyone may drop a plugin in it
    running = agents(cni_path=[path])
    acked, _ = raw_call(running.sock, *status_call("evil", path))
    assert not acked and not os.path.exists(marker)
    assert "group- or world-writable" in running.stop()


def test_foreign_plugin_sees_only_the_cni_variables(work, agents):
    out = os.path.join(work, "env.txt")
    plugins = plugin_dir(os.path.join(work, "plugins"), "envdump", ENVDUMP.format(out=out))
    running = agents()
    acked, reply = raw_call(running.sock, *status_call("envdump", plugins, LD_PRELOAD="/run/evil.so",
                                                         PATH="/run/evil", BASH_ENV="/run/evil.sh"))
    assert acked and reply.startswith(b"0 "), reply
    with open(out, encoding="utf-8") as fh:
        seen = dict(line.split("=", 1) for line in fh.read().splitlines() if "=" in line)
    assert seen["CNI_PATH"] == plugins and seen["CNI_COMMAND"] == "STATUS"
    assert "LD_PRELOAD" not in seen and "BASH_ENV" not in seen and "/run/evil" not in seen.get("PATH", "")


CLIENT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from agentutil import raw_call
    acked, reply = raw_call(sys.argv[2], *json.loads(sys.argv[3])[:2], sys.argv[4].encode())
    print(json.dumps([acked, reply.decode()]))
""")


def host_local_request(work: str, cid: str) -> tuple:
    conf = {"cniVersion": "1.0.0", "name": "secnet", "type": "host-local",
            "ipam": {"type": "host-local", "subnet": "10.45.0.0/24", "dataDir": os.path.join(work, "data")}}
    env = cnitest.cni_env("ADD", cid=cid, netns="/proc/self/ns/net", path=work)
    return "host-local", env, json.dumps(conf).encode()


def leases(work: str) -> list:
    netdir = os.path.join(work, "data", "secnet")
    return sorted(n for n in os.listdir(netdir) if n[0].isdigit()) if os.path.isdir(netdir) else []


@pytest.mark.parametrize("unshare", [[], ["unshare", "--mount"], ["unshare", "--pid", "--fork"]],
                         ids=["same-namespaces", "other-mount-ns", "other-pid-ns"])
def test_peer_in_other_namespaces_is_refused(work, agents, unshare):
    running = agents()
    name, env, stdin = host_local_request(work, "ns1")
    proc = subprocess.run([*unshare, PY, "-c", CLIENT, os.path.dirname(cnitest.__file__), running.sock,
                           json.dumps([name, env]), stdin.decode()], capture_output=True, text=True, timeout=60,
                          check=True, env=dict(os.environ, PYTHONPATH=cnitest.LIB))
    acked, _reply = json.loads(proc.stdout)
    if unshare:
        assert not acked and leases(work) == []
        assert "other namespaces" in running.stop()
    else:
        assert acked and leases(work) == ["10.45.0.2"]


def test_relay_in_another_mount_namespace_falls_back_in_process(work, agents):
    running = agents()
    bdir = os.path.join(work, "bin")
    installer.write_executables(bdir, PY, cnitest.LIB, ["host-local"], socket=running.sock)
    name, env, stdin = host_local_request(work, "ns2")
    proc = subprocess.run(["unshare", "--mount", os.path.join(bdir, name)], env=env, input=stdin,
                          capture_output=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.45.0.2/24"  # done in-process
    assert "other namespaces" in running.stop()


FAKE_AGENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(8)
    forged = b'{"cniVersion": "1.0.0", "ips": [{"address": "6.6.6.6/32"}]}'
    while True:
        c, _ = s.accept(); c.recv(1 << 20); c.sendall(b"+"); c.recv(1)
        c.sendall(b"0 %d 0\\n" % len(forged) + forged); c.close()
""")


@pytest.mark.parametrize("kind", ["compiled", "script"])
def test_relay_refuses_a_listener_that_is_not_root(work, kind):
    """Someone who could put a socket on the agent's path gets no request and forges no result."""
    shared = tempfile.mkdtemp(prefix="fake", dir="/run")
    os.chmod(shared, 0o777)
    sock = os.path.join(shared, "agent.sock")
    fake = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                             "/usr/bin/python3", "-I", "-c", FAKE_AGENT, sock])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock):
            assert fake.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        bdir = os.path.join(work, f"bin-{kind}")
        installer.write_executables(bdir, PY, cnitest.LIB, ["host-local"], socket=sock,
                                   cc=None if kind == "compiled" else "")
        name, env, stdin = host_local_request(work, "fk1")
        out = cnitest.exec_plugin(os.path.join(bdir, name), env, stdin)
        assert out.rc == 0, out.stdout + out.stderr
        assert out.json["ips"][0]["address"] == "10.45.0.2/24", "the relay took a forged result"
    finally:
        fake.kill()
        fake.wait()
        shutil.rmtree(shared, ignore_errors=True)


def test_agent_refuses_an_unsafe_socket_dir(work):
    shared = os.path.join(work, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o777)
    proc = subprocess.run([PY, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from cni.node.main import main; "
                           "sys.exit(main(sys.argv[2:]))", cnitest.LIB, "cnikit", "agent", "--socket",
                           os.path.join(shared, "agent.sock"), "--cni-path", work],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0 and "group- or world-writable" in proc.stderr
    assert not os.path.exists(os.path.join(shared, "agent.sock"))


# --- resources (L1) ----------------------------------------------------------------------------

def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def open_idle(sock: str, count: int, partial: bool) -> list:
    conns = []
    for _ in range(count):
        conn = socket.socket(socket.AF_UNIX)
        conn.connect(sock)
        if partial:
            conn.sendall(b"CNIKIT/2 10 ")  # a header that never ends (slowloris)
        conns.append(conn)
    return conns


def timed_ack(sock: str, request: tuple) -> tuple:
    """(seconds until the `+` or the refusal, acknowledged) - the go is then sent and the reply read."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(10)
        start = time.monotonic()
        conn.connect(sock)
        try:
            conn.sendall(request_bytes(*request))
            ack = conn.recv(1)
        except (BrokenPipeError, ConnectionResetError):
            ack = b""
        took = time.monotonic() - start
        if ack == b"+":
            conn.sendall(b"!")
            while conn.recv(65536):
                pass
        return took, ack == b"+"


def test_a_thousand_idle_connections_do_not_starve_the_agent(work, agents):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1100:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < 1100: cannot hold 1000 connections here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    running = agents()
    idle = open_idle(running.sock, 500, False) + open_idle(running.sock, 500, True)
    try:
        time.sleep(0.3)  # let the agent accept them all
        took = [timed_ack(running.sock, host_local_request(work, f"i{i}")) for i in range(5)]
        assert all(t < 0.1 for t, _ in took), took  # answered (or refused) within 100 ms
        assert all(acked for _, acked in took), "refused although only idle connections are held"
        assert threads(running.proc.pid) <= 3, "idle connections hold threads"
        assert len(leases(work)) == 5
        bdir = os.path.join(work, "bin")
        installer.write_executables(bdir, "/nonexistent/python3", cnitest.LIB, ["host-local"], socket=running.sock)
        name, env, stdin = host_local_request(work, "relay1")
        assert cnitest.exec_plugin(os.path.join(bdir, name), env, stdin).rc == 0  # through the agent
    finally:
        for conn in idle:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_request_that_never_completes_is_dropped(work, agents):
    running = agents()
    (conn,) = open_idle(running.sock, 1, True)
    conn.settimeout(10)
    start = time.monotonic()
    assert conn.recv(1) == b""  # closed, never acknowledged
    assert time.monotonic() - start < 5  # before a relay's 5 s ACK_TIMEOUT: never a late `+`
    conn.close()
    assert "no complete request" in running.stop()


def test_running_out_of_descriptors_does_not_end_the_agent(work, agents):
    running = agents(prefix=("prlimit", "--nofile=48:48"))
    idle = open_idle(running.sock, 80, False)  # more than it may open
    try:
        time.sleep(0.5)
        assert running.proc.poll() is None, "EMFILE ended the agent"
        took, _acked = timed_ack(running.sock, host_local_request(work, "e1"))
        assert took < 1.0
    finally:
        for conn in idle:
            conn.close()
    time.sleep(0.2)
    took, acked = timed_ack(running.sock, host_local_request(work, "e2"))
    assert acked and running.proc.poll() is None
    assert "e2" in "".join(open(os.path.join(work, "data", "secnet", n)).read() for n in leases(work))


def test_a_relay_that_gave_up_never_has_its_request_run(work, agents):
    """The `+` reaches a relay that already fell back in-process: without its `!`, nothing runs."""
    running = agents()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(running.sock)
        conn.sendall(request_bytes(*host_local_request(work, "late1")))
        assert conn.recv(1) == b"+"
    time.sleep(0.5)
    assert leases(work) == []
    assert "the relay gave up" in running.stop()



# --- socket activation (cnikit-agent.socket: the sd_listen_fds protocol) -------------------------

def unit_socket(path: str, mode: int) -> socket.socket:
    """What systemd does for ListenStream=path SocketMode=mode: bind, chmod, listen."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, mode)
    sock.listen(16)
    return sock


def activated(work: str, sock: socket.socket, **kw) -> Agent:
    """The agent started as systemd starts cnikit-agent.service: the socket on fd 3, LISTEN_PID = its
    pid (bash execs the agent, so its $$ is the agent's pid; dash has no fd numbers above 9), LISTEN_FDS=1."""
    fd = sock.fileno()
    prefix = ("bash", "-c", f'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&{fd} {fd}<&-', "sh")
    return Agent(os.path.join(work, "agent.sock"), prefix=prefix, pass_fds=(fd,), **kw)


def test_agent_serves_the_socket_a_socket_unit_passed(work):
    path = os.path.join(work, "agent.sock")
    listener = unit_socket(path, 0o600)
    ino = os.stat(path).st_ino
    running = activated(work, listener)
    listener.close()  # only the agent holds it now (as systemd would keep it too: no difference here)
    try:
        bdir = os.path.join(work, "bin")
        # the executables' in-process fallback cannot run (no such python): a success is the agent's
        installer.write_executables(bdir, "/nonexistent/python3", cnitest.LIB, ["host-local"], socket=path)
        for i in range(3):
            name, env, stdin = host_local_request(work, f"act{i}")
            assert cnitest.exec_plugin(os.path.join(bdir, name), env, stdin).rc == 0, running.read_log()
        assert len(leases(work)) == 3
        deadline = time.monotonic() + 10
        while "served 3 requests" not in running.read_log():  # a worker counts just after its reply
            assert time.monotonic() < deadline, running.read_log()
            os.kill(running.proc.pid, signal.SIGUSR1)
            time.sleep(0.1)
    finally:
        log = running.stop()
    assert "(socket from the socket unit)" in log, log
    assert os.stat(path).st_ino == ino  # the unit's socket: never replaced, never unlinked by the agent


@pytest.mark.parametrize("mode", [0o666, 0o660])
def test_agent_refuses_a_passed_socket_others_may_connect_to(work, mode):
    path = os.path.join(work, "agent.sock")
    listener = unit_socket(path, mode)
    fd = listener.fileno()
    proc = subprocess.run(["bash", "-c", f'export LISTEN_PID=$$ LISTEN_FDS=1; exec "$@" 3<&{fd} {fd}<&-', "sh",
                           PY, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); from cni.node.main import main; "
                           "sys.exit(main(sys.argv[2:]))", cnitest.LIB, "cnikit", "agent", "--socket", path,
                           "--cni-path", work], pass_fds=(fd,), capture_output=True, text=True, timeout=60, check=False)
    listener.close()
    assert proc.returncode != 0 and "SocketMode=0600" in proc.stderr, proc.stderr
