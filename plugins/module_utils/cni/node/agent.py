"""The per-node agent: the engine and pyroute2 kept warm in one process, serving the CNI executables.

Each executable is the exec relay (relay.c compiled, or relay.py) that sends argv[0] + environment + stdin
over a unix socket; the agent runs exactly what the in-process executable runs (`skel.execute` on
the registry's plugin) and sends back exit code + stdout + stderr.

It holds no state of its own: every lease, result and rule lives on disk or in the kernel under the
same locks the in-process path takes, so killing it loses nothing, and the relays fall back to
in-process execution while it is away. One request per thread at a time: `ns.in_netns` enters a
netns in the calling thread only, so requests are independent; host-local's flock is per open file,
so it serialises threads as it does processes. The threads are long-lived workers (`Workers`): a
request is handed to an idle one instead of a thread started for it.

Wire format: request `CNIKIT/1 <len name> <len env> <len stdin>\\n` + name + env (K=V joined by NUL)
+ stdin; the agent answers `+` as soon as it holds the whole request (before doing anything, so a
relay that gets no `+` knows nothing was done), then `<rc> <len stdout> <len stderr>\\n` + both.
"""
from __future__ import annotations

import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
from typing import Dict, List, Optional, Set, Tuple

from ..net import ns, rtnl
from ..protocol import registry, skel, spec
from ..protocol.spec import CNIError

DEFAULT_SOCKET = "/run/cni/cnikit.sock"
MAX_REQUEST = 16 << 20  # a conflist with a large prevResult is a few KB; refuse anything absurd
_CODEC = ("utf-8", "surrogateescape")  # how os.environ / sys.stdout treat bytes, for identical results


class _Stop(Exception):
    """Raised in the accept loop by SIGTERM/SIGINT."""


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = conn.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise ValueError("request cut short")
        buf += chunk
    return bytes(buf)


def read_request(conn: socket.socket) -> Tuple[str, Dict[str, str], bytes]:
    head = bytearray()
    while not head.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte or len(head) > 64:
            raise ValueError("bad request header")
        head += byte
    fields = head.split()
    if len(fields) != 4 or fields[0] != b"CNIKIT/1" or not all(f.isdigit() for f in fields[1:]):
        raise ValueError("bad request header")
    sizes = [int(f) for f in fields[1:]]
    if sum(sizes) > MAX_REQUEST:
        raise ValueError("request too large")
    name, blob, stdin = (_recv_exact(conn, n) for n in sizes)
    env: Dict[str, str] = {}
    for item in blob.split(b"\0") if blob else []:
        key, _, value = item.decode(*_CODEC).partition("=")
        env[key] = value
    return name.decode(*_CODEC), env, stdin


def run(name: str, env: Dict[str, str], stdin: bytes) -> Tuple[int, str, str]:
    """What the in-process executable does for plugin `name` (main.plugin_main), as a value."""
    if not registry.is_builtin(name):
        err = CNIError(spec.ERR_INTERNAL, f"unknown plugin {name!r}")
        return 1, spec.dumps(err.to_dict()) + "\n", ""
    return skel.execute(lambda: registry.load(name)(), env, stdin)


def encode_reply(rc: int, out: str, err: str) -> bytes:
    body_out, body_err = out.encode(*_CODEC), err.encode(*_CODEC)
    return b"%d %d %d\n" % (rc, len(body_out), len(body_err)) + body_out + body_err


def peer_allowed(conn: socket.socket) -> bool:
    """Only root or the agent's own user may drive it (the socket is 0600 too)."""
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return uid in (0, os.geteuid())


def handle(conn: socket.socket) -> None:
    with conn:
        try:
            if not peer_allowed(conn):
                return
            name, env, stdin = read_request(conn)
            conn.sendall(b"+")
        except (OSError, ValueError) as exc:
            log(f"dropped a request: {exc}")
            return
        reply = encode_reply(*run(name, env, stdin))
        try:
            conn.sendall(reply)
        except OSError as exc:  # the relay went away (killed by its runtime): the work stands
            log(f"could not reply to {name} {env.get('CNI_COMMAND', '')}: {exc}")


class Workers:
    """Long-lived request threads. An idle worker takes the next connection; a new one is started
    only when all are busy - never a queue: a request may wait on another (a foreign plugin that
    execs one of ours, which comes back through this agent) - and a worker beyond `keep` idle ones
    exits once its request is done."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self.jobs: "queue.SimpleQueue[Optional[socket.socket]]" = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0  # idle workers not yet promised a job
        self.threads: Set[threading.Thread] = set()

    def submit(self, conn: socket.socket) -> None:
        with self.lock:
            if self.idle:
                self.idle -= 1
            else:
                worker = threading.Thread(target=self._work, name="cni-request")
                self.threads.add(worker)
                worker.start()
        self.jobs.put(conn)

    def _work(self) -> None:
        while True:
            conn = self.jobs.get()
            if conn is None:
                return
            handle(conn)
            with self.lock:
                if self.idle >= self.keep:
                    self.threads.discard(threading.current_thread())
                    return
                self.idle += 1

    def drain(self) -> None:
        """Let every request in flight finish, then stop the workers."""
        with self.lock:
            threads = list(self.threads)
        for _ in threads:
            self.jobs.put(None)
        for worker in threads:
            worker.join()


def warm() -> List[str]:
    """Import every plugin and open one netlink socket now, so that no request pays for it."""
    broken = []
    for name in registry.PLUGINS:
        try:
            registry.load(name)
        except Exception as exc:  # noqa: BLE001 - a missing plugin must not stop the others
            broken.append(f"{name}: {type(exc).__name__}: {exc}")
    rtnl.iproute().close()
    return broken


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} cnikit-agent[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


def alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def listen(path: str) -> socket.socket:
    """Bind `path` (mode 0600) atomically: a stale socket from a killed agent is replaced, a live
    agent is left alone."""
    if alive(path):
        raise CNIError(spec.ERR_INTERNAL, f"an agent already listens on {path}")
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)  # no window where the socket is connectable by others
    try:
        sock.bind(tmp)
    finally:
        os.umask(old)
    sock.listen(128)
    os.replace(tmp, path)
    return sock


def serve(path: str = DEFAULT_SOCKET) -> int:
    """Run the agent until SIGTERM/SIGINT; in-flight requests finish before it exits."""
    broken = warm()
    if broken:
        log("plugins not loadable (their calls will fail): " + "; ".join(broken))
    sock = listen(path)
    ident = os.stat(path).st_ino

    def stop(_sig: int, _frame: object) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"listening on {path}")
    workers = Workers()
    try:
        while True:
            conn, _ = sock.accept()
            workers.submit(conn)
    except _Stop:
        pass
    finally:
        sock.close()
        try:  # only our own socket: a newer agent may already have replaced it
            if os.stat(path).st_ino == ident:
                os.unlink(path)
        except FileNotFoundError:
            pass
        log("stopping; waiting for requests in flight")
        workers.drain()
    return 0
