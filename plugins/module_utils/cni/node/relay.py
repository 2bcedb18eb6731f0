"""The thin CNI executable: hand argv[0] + environment + stdin to the node agent, print its reply.

This is the fallback for nodes without a C compiler: its compiled twin, relay.c, is what
installer.write_executables installs when `cc` works. Both follow the protocol and fallback rules below
(tests/perf/test_fastpath.py runs every case through both).

Run as a script (never imported by the engine) by any Python 3 with `-I -S`, so it may import only
modules built into the interpreter: `_socket`, `posix`, `sys`. That keeps a plugin exec near the
bare interpreter start (~8 ms) instead of paying the engine + pyroute2 imports (~100+ ms).

    python3 -I -S relay.py <plugin path> <agent socket> <engine python> <libdir>

The agent is an accelerator, never a dependency:
  - no agent (no socket, connection refused, a listener not running as root or as us, no
    acknowledgement within ACK_TIMEOUT): run the same engine in-process (exec the engine
    interpreter with a memfd copy of stdin); the agent works only once it has our `!` after its
    `+`, so a request we gave up on is never run by it too;
  - the agent dies after acknowledging (it may have done part of the work): replay the request
    in-process. An ADD is first undone with a DEL of the same attachment, because the runtime has
    not seen a result and host-local refuses a second allocation for one container + ifname.
Wire format (see agent.py): request `CNIKIT/2 <len name> <len env> <len stdin>\\n` + the three
blobs (env as NUL-separated K=V); the agent answers `+` once it has the request, we answer `!`,
then it sends `<rc> <len stdout> <len stderr>\\n` + the two blobs.
"""
import _socket
import posix
import sys

ACK_TIMEOUT = 5.0  # seconds for a live agent to take a request; it acknowledges before working
ENGINE = "import sys; sys.path.insert(0, sys.argv[1]); from cni.node.main import main; sys.exit(main(sys.argv[2:]))"


def read_fd(fd):
    chunks = []
    while True:
        chunk = posix.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def write_fd(fd, data):
    while data:
        data = data[posix.write(fd, data):]


def in_process(argv, env, stdin=None):
    """Replace this process by the engine running the plugin in-process (does not return)."""
    plugin, _, python, libdir = argv[1:5]
    if stdin is not None:  # stdin was consumed here: hand the engine a copy
        fd = posix.memfd_create("cni-stdin")
        write_fd(fd, stdin)
        posix.lseek(fd, 0, 0)
        posix.dup2(fd, 0)
        posix.close(fd)
    posix.execve(python, [python, "-I", "-c", ENGINE, libdir, plugin], env)


def undo_add(argv, env, stdin):
    """Run DEL for the attachment in a child (output discarded), before replaying an ADD."""
    env = dict(env)
    env[b"CNI_COMMAND"] = b"DEL"
    pid = posix.fork()
    if pid == 0:
        try:
            null = posix.open("/dev/null", posix.O_WRONLY)
            posix.dup2(null, 1)
            posix.dup2(null, 2)
            in_process(argv, env, stdin)
        finally:
            posix._exit(127)
    posix.waitpid(pid, 0)


def agent_trusted(sock):
    """The listener must run as root (or as us): anyone else who got a socket onto the path would
    be handed every call's config and could answer it with a forged result."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[4:8], sys.byteorder) in (0, posix.geteuid())


def exchange(sock_path, name, env, stdin):
    """Send the request; return (acknowledged, reply bytes or None when the agent went away)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    acked = False
    try:
        sock.settimeout(ACK_TIMEOUT)
        sock.connect(sock_path)
        if not agent_trusted(sock):
            return False, None
        blob = b"\0".join([k + b"=" + v for k, v in env.items()])
        sock.sendall(b"CNIKIT/2 %d %d %d\n" % (len(name), len(blob), len(stdin)) + name + blob + stdin)
        if sock.recv(1) != b"+":
            return False, None
        sock.sendall(b"!")  # the go: the agent runs nothing before it, so giving up above is safe
        acked = True
        sock.shutdown(_socket.SHUT_WR)
        sock.settimeout(None)  # from here the agent is working: operations may wait on locks
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True, b"".join(chunks)
            chunks.append(chunk)
    except OSError:
        return acked, None
    finally:
        sock.close()


def parse_reply(reply):
    """(rc, stdout, stderr) from a complete reply, None if it is cut short."""
    head, sep, rest = reply.partition(b"\n")
    fields = head.split()
    if not sep or len(fields) != 3 or not all(f.isdigit() for f in fields):
        return None
    rc, nout, nerr = [int(f) for f in fields]
    if len(rest) != nout + nerr:
        return None
    return rc, rest[:nout], rest[nout:]


def main(argv):
    env = posix.environ
    name = argv[1].rsplit("/", 1)[-1].encode()
    command = env.get(b"CNI_COMMAND", b"")
    # Like the Go skel (and the in-process path), VERSION and the about text do not read stdin.
    stdin = None if command in (b"", b"VERSION") else read_fd(0)
    acked, reply = exchange(argv[2], name, env, stdin or b"")
    parsed = parse_reply(reply) if reply is not None else None
    if parsed is None:
        if acked and command == b"ADD":
            undo_add(argv, env, stdin)
        in_process(argv, env, stdin)
    rc, out, err = parsed
    write_fd(2, err)
    write_fd(1, out)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv))
