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

Wire format: request `CNIKIT/2 <len name> <len env> <len stdin>\\n` + name + env (K=V joined by NUL)
+ stdin; the agent answers `+` as soon as it holds the whole request, the relay answers `!` (go)
unless it has given up waiting for the `+`, and only then does the agent work: a relay that falls
back in-process after its ACK_TIMEOUT never sends `!`, so a request never runs twice. The reply is
`<rc> <len stdout> <len stderr>\\n` + both.

Who may talk to it, what it execs and what it opens is in docs/security.md: peers of root or the
agent's uid in the agent's own mount/pid/user namespaces; foreign plugins only from the agent's own
plugin dirs; only the CNI_* variables of a request (and its CNI_PATH only within those dirs).
"""
from __future__ import annotations

import errno
import os
import queue
import resource
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Set, Tuple

from ..net import ns, rtnl
from ..protocol import fsutil, registry, skel, spec
from ..protocol.spec import CNIError

DEFAULT_SOCKET = "/run/cni/cnikit.sock"
MAX_REQUEST = 16 << 20  # a conflist with a large prevResult is a few KB; refuse anything absurd
_CODEC = ("utf-8", "surrogateescape")  # how os.environ / sys.stdout treat bytes, for identical results
MAGIC = b"CNIKIT/2"
REQUEST_TIMEOUT = 2.0  # a whole request must arrive within this (the relays wait 5 s for the `+`)
COMMIT_TIMEOUT = 5.0  # for the relay's `!` after our `+` (it sends it at once)
MAX_PENDING = 256  # connections being read at once; the oldest is dropped beyond it


class _Stop(Exception):
    """Raised in the accept loop by SIGTERM/SIGINT."""


# --- who may talk to the agent (docs/security.md) -------------------------------------------------

NAMESPACES = ("mnt", "pid", "user")  # a peer must share these with the agent (M1)


def _ns_ids(pid: str) -> Tuple[Tuple[int, int], ...]:
    return tuple((st.st_dev, st.st_ino) for st in (os.stat(f"/proc/{pid}/ns/{kind}") for kind in NAMESPACES))


def peer_refusal(conn: socket.socket) -> Optional[str]:
    """Why the peer may not drive the agent, None if it may: only root or the agent's own user, and
    only from the agent's own mount, pid and user namespaces - a root container that can reach the
    socket sees other files under the same paths (CNI_NETNS, plugin dirs) and is not the node."""
    pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    if uid not in (0, os.geteuid()):
        return f"peer uid {uid} is neither root nor the agent's"
    if pid <= 0:  # the peer's pid is not visible here: another pid namespace
        return "peer in another pid namespace"
    try:
        if _ns_ids(str(pid)) != _ns_ids("self"):
            return f"peer pid {pid} is in other namespaces ({'/'.join(NAMESPACES)} must be the agent's)"
    except OSError as exc:
        return f"peer pid {pid}: {exc.strerror}"
    return None


def trusted_dirs(dirs: List[str]) -> List[str]:
    """The agent's plugin dirs (real paths) that are safe to exec from; the others are logged and dropped."""
    kept = []
    for path in dirs:
        why = fsutil.unsafe_dir(path)
        if why:
            log(f"not executing plugins from {path}: {why}")
        else:
            kept.append(os.path.realpath(path))
    return kept


def request_env(env: Dict[str, str], trusted: List[str]) -> Dict[str, str]:
    """The environment a request runs with: its CNI_* variables only (no LD_PRELOAD or PATH from the
    caller reaches a foreign plugin exec'd as root), the agent's own PATH, and CNI_PATH limited to
    the agent's trusted plugin dirs. A CNI_PATH naming another existing directory is refused
    (ValueError): the relay then runs the call in-process, with the caller's own rights."""
    out = {k: v for k, v in env.items() if k.startswith("CNI_")}
    if "PATH" in os.environ:
        out["PATH"] = os.environ["PATH"]
    if "CNI_PATH" not in out:
        return out
    kept = []
    for entry in (p for p in out["CNI_PATH"].split(os.pathsep) if p):
        real = os.path.realpath(entry)
        if any(real == top or real.startswith(top.rstrip("/") + "/") for top in trusted):
            if fsutil.unsafe_dir(real) is None:
                kept.append(real)  # resolved now: a link swapped later does not move it
                continue
        if os.path.lexists(entry):
            raise ValueError(f"CNI_PATH entry {entry!r} is not one of the agent's plugin dirs")
    if out["CNI_PATH"] and not kept:
        raise ValueError("no CNI_PATH entry is one of the agent's plugin dirs")
    out["CNI_PATH"] = os.pathsep.join(kept)
    return out


# --- the wire -----------------------------------------------------------------------------------

def parse_request(buf: bytes) -> Optional[Tuple[str, Dict[str, str], bytes]]:
    """The request in `buf` once it is complete, None while it is not; ValueError if it is malformed."""
    head, sep, rest = buf.partition(b"\n")
    if not sep:
        if len(buf) > 64:
            raise ValueError("bad request header")
        return None
    fields = head.split()
    if len(head) > 64 or len(fields) != 4 or fields[0] != MAGIC or not all(f.isdigit() for f in fields[1:]):
        raise ValueError("bad request header")
    sizes = [int(f) for f in fields[1:]]
    if sum(sizes) > MAX_REQUEST:
        raise ValueError("request too large")
    if len(rest) < sum(sizes):
        return None
    if len(rest) > sum(sizes):
        raise ValueError("bytes after the request")
    name, blob, stdin = rest[:sizes[0]], rest[sizes[0]:sizes[0] + sizes[1]], rest[sizes[0] + sizes[1]:]
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


Request = Tuple[str, Dict[str, str], bytes]


def handle(conn: socket.socket, request: Request) -> bool:
    """Acknowledge, wait for the relay's go (it may have given up on us: then nothing is run, so the
    request never runs twice), run, reply. True when it ran."""
    name, env, stdin = request
    with conn:
        try:
            conn.setblocking(True)
            conn.settimeout(COMMIT_TIMEOUT)
            conn.sendall(b"+")
            if conn.recv(1) != b"!":
                log_limited("late", f"{name} {env.get('CNI_COMMAND', '')}: the relay gave up before the acknowledgement; not run")
                return False
            conn.settimeout(None)
        except OSError as exc:
            log_limited("drop", f"dropped a request: {exc}")
            return False
        reply = encode_reply(*run(name, env, stdin))
        try:
            conn.sendall(reply)
        except OSError as exc:  # the relay went away (killed by its runtime): the work stands
            log(f"could not reply to {name} {env.get('CNI_COMMAND', '')}: {exc}")
        return True


class Workers:
    """Long-lived request threads. An idle worker takes the next request; a new one is started only
    when all are busy - never a queue: a request may wait on another (a foreign plugin that execs one
    of ours, which comes back through this agent) - up to `limit` busy ones (beyond it a request is
    refused and its relay runs it in-process); a worker beyond `keep` idle ones exits once done."""

    def __init__(self, keep: int = 8, limit: int = 64) -> None:
        self.keep = keep
        self.limit = limit
        self.jobs: "queue.SimpleQueue[Optional[Tuple[socket.socket, Request]]]" = queue.SimpleQueue()
        self.lock = threading.Lock()
        self.idle = 0  # idle workers not yet promised a job
        self.threads: Set[threading.Thread] = set()
        self.home = ns.thread_netns_id()  # where every idle worker must be
        self.served = 0  # requests run (SIGUSR1 logs it)

    def submit(self, conn: socket.socket, request: Request) -> bool:
        """Hand the request to a worker; False (nothing taken) when `limit` workers are busy."""
        with self.lock:
            if self.idle:
                self.idle -= 1
            elif len(self.threads) >= self.limit:
                return False
            else:
                worker = threading.Thread(target=self._work, name="cni-request")
                self.threads.add(worker)
                worker.start()
        self.jobs.put((conn, request))
        return True

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if handle(*job):
                with self.lock:
                    self.served += 1
            stray = ns.thread_netns_id() != self.home
            if stray:  # it could not switch back from a container's netns: never reuse it
                log("a worker was left in another network namespace; discarded")
            with self.lock:
                if stray or self.idle >= self.keep:
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


class Inbox:
    """Requests being read, all in the accept thread (non-blocking): an idle or slow connection
    costs a file descriptor until its deadline, never a thread; past `limit` the oldest is dropped."""

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self.sel = selectors.DefaultSelector()
        self.pending: "OrderedDict[socket.socket, Tuple[float, bytearray]]" = OrderedDict()

    def add(self, conn: socket.socket) -> None:
        if len(self.pending) >= self.limit:
            self.drop(next(iter(self.pending)), "too many connections; dropped the oldest")
        conn.setblocking(False)
        self.pending[conn] = (time.monotonic() + REQUEST_TIMEOUT, bytearray())
        self.sel.register(conn, selectors.EVENT_READ)

    def drop(self, conn: socket.socket, why: str = "") -> None:
        if why:
            log_limited("drop", f"dropped a request: {why}")
        self.pending.pop(conn, None)
        self.sel.unregister(conn)
        conn.close()

    def read(self, conn: socket.socket) -> Optional[Request]:
        """Take what arrived; the request once complete (the connection is then no longer ours)."""
        _deadline, buf = self.pending[conn]
        try:
            chunk = conn.recv(1 << 20)
            if not chunk and not buf:  # a liveness probe (alive()): nothing to say
                self.drop(conn)
                return None
            if not chunk:
                raise ValueError("request cut short")
            buf += chunk
            request = parse_request(bytes(buf))
        except (OSError, ValueError) as exc:
            self.drop(conn, str(exc))
            return None
        if request is not None:
            self.pending.pop(conn)
            self.sel.unregister(conn)
        return request

    def expire(self) -> float:
        """Drop connections past their deadline; seconds until the next one."""
        now = time.monotonic()
        while self.pending:
            conn, (deadline, _) = next(iter(self.pending.items()))
            if deadline > now:
                return deadline - now
            self.drop(conn, f"no complete request within {REQUEST_TIMEOUT:g} s")
        return REQUEST_TIMEOUT

    def close(self) -> None:
        for conn in list(self.pending):
            self.drop(conn)
        self.sel.close()


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


_quiet: Dict[str, Tuple[float, int]] = {}  # log_limited: per kind, end of its quiet second, lines held back


def log_limited(kind: str, msg: str) -> None:
    """log() at most once a second per kind of message: a flood of bad connections must not become
    a flood of lines (or block on a full log pipe)."""
    now = time.monotonic()
    until, held = _quiet.get(kind, (0.0, 0))
    if now < until:
        _quiet[kind] = (until, held + 1)
        return
    _quiet[kind] = (now + 1.0, 0)
    log(msg + (f" (and {held} more like it)" if held else ""))


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
    agent is left alone. The directory must be safe (fsutil.unsafe_dir): whoever can write to it can put
    their own socket in our place."""
    if alive(path):
        raise CNIError(spec.ERR_INTERNAL, f"an agent already listens on {path}")
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    why = fsutil.unsafe_dir(os.path.dirname(path) or ".")
    if why:
        raise CNIError(spec.ERR_INTERNAL, f"refusing to listen on {path}: {why}")
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


SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first inherited descriptor


def inherited(path: str) -> Optional[socket.socket]:
    """The listening socket a socket unit (cnikit-agent.socket) handed us, by the sd_listen_fds
    protocol: LISTEN_PID is our pid and LISTEN_FDS >= 1; the variables are unset so no child of ours
    takes the descriptor for its own. None when nothing was passed. The passed socket must be a
    listening unix stream socket bound to `path` in a safe directory (the same rules as listen()):
    anything else is a misconfigured unit, refused with an error rather than served."""
    pid, fds = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not fds or pid != str(os.getpid()):
        return None
    if not fds.isdigit() or int(fds) != 1:
        raise CNIError(spec.ERR_INTERNAL, f"expected one socket from the socket unit, got LISTEN_FDS={fds!r}")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as exc:
        raise CNIError(spec.ERR_INTERNAL, f"LISTEN_FDS=1 but descriptor {SD_LISTEN_FDS_START} is no socket: {exc}") from exc
    os.set_inheritable(sock.fileno(), False)
    bound = sock.getsockname() if sock.family == socket.AF_UNIX else None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening or bound != path:
        sock.close()
        raise CNIError(spec.ERR_INTERNAL, f"the inherited socket is not a listening unix stream socket on {path} "
                                          f"(bound to {bound!r}); check ListenStream= in cnikit-agent.socket")
    why = fsutil.unsafe_dir(os.path.dirname(path) or ".")
    if why:
        sock.close()
        raise CNIError(spec.ERR_INTERNAL, f"refusing to serve on {path}: {why}")
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:  # a socket unit without SocketMode=0600: let only the peer check stand between
        sock.close()
        raise CNIError(spec.ERR_INTERNAL, f"refusing to serve on {path}: mode {mode:o} (SocketMode=0600 in the socket unit)")
    return sock


def raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one: idle connections cost a descriptor each."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def accept(sock: socket.socket, inbox: Inbox) -> None:
    """Take one connection: refuse a peer that may not drive us; out of descriptors (EMFILE),
    make room by dropping the oldest connection being read - never stop serving."""
    try:
        conn, _ = sock.accept()
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            if inbox.pending:
                inbox.drop(next(iter(inbox.pending)), f"accept: {exc.strerror}; dropped the oldest connection")
            else:
                log_limited("accept", f"accept: {exc.strerror}")
                time.sleep(0.05)
        elif exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
            log_limited("accept", f"accept: {exc}")
            time.sleep(0.05)
        return
    why = peer_refusal(conn)
    if why:
        log_limited("peer", f"refused a connection: {why}")
        conn.close()
        return
    inbox.add(conn)


def dispatch(conn: socket.socket, request: Request, trusted: List[str], workers: Workers) -> None:
    """Start a complete request, or refuse it (closed without `+`: the relay runs it in-process)."""
    name, env, stdin = request
    try:
        request = (name, request_env(env, trusted), stdin)
    except ValueError as exc:
        log_limited("env", f"refused {name} {env.get('CNI_COMMAND', '')}: {exc}")
        conn.close()
        return
    if not workers.submit(conn, request):
        log_limited("busy", f"refused {name} {env.get('CNI_COMMAND', '')}: {workers.limit} requests in flight")
        conn.close()


def serve(path: str = DEFAULT_SOCKET, cni_path: Optional[List[str]] = None) -> int:
    """Run the agent until SIGTERM/SIGINT; in-flight requests finish before it exits. `cni_path`:
    the only dirs a foreign plugin is exec'd from (default /opt/cni/bin)."""
    trusted = trusted_dirs(cni_path or ["/opt/cni/bin"])
    raise_fd_limit()
    broken = warm()
    if broken:
        log("plugins not loadable (their calls will fail): " + "; ".join(broken))
    passed = inherited(path)
    sock = passed or listen(path)
    sock.setblocking(False)
    ident = os.stat(path).st_ino

    def stop(_sig: int, _frame: object) -> None:
        raise _Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"listening on {path}{' (socket from the socket unit)' if passed else ''}; plugin dirs {':'.join(trusted) or '(none)'}")
    workers = Workers()
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: log(f"served {workers.served} requests"))
    inbox = Inbox()
    inbox.sel.register(sock, selectors.EVENT_READ)
    try:
        while True:
            for key, _ in inbox.sel.select(inbox.expire()):
                if key.fileobj is sock:
                    accept(sock, inbox)
                    continue
                conn = key.fileobj
                if not isinstance(conn, socket.socket):  # only sockets are registered; keeps the type checker informed
                    continue
                request = inbox.read(conn)
                if request is not None:
                    dispatch(conn, request, trusted, workers)
    except _Stop:
        pass
    finally:
        sock.close()
        inbox.close()
        try:  # only our own socket (a newer agent may already have replaced it; a socket unit keeps its own)
            if not passed and os.stat(path).st_ino == ident:
                os.unlink(path)
        except FileNotFoundError:
            pass
        log("stopping; waiting for requests in flight")
        workers.drain()
    return 0
