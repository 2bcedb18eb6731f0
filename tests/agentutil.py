"""A real node agent for tests, and a raw client speaking its wire protocol (agent.py)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import cnitest
from cni.node import agent as agent_mod

PY = os.path.join(cnitest.ROOT, ".venv", "bin", "python3")
ENGINE = "import sys; sys.path.insert(0, sys.argv[1]); from cni.node.main import main; sys.exit(main(sys.argv[2:]))"


class Agent:
    """`cnikit agent --socket SOCK --cni-path <dir of SOCK>` (or `cni_path`), up and listening."""

    def __init__(self, sock: str, env: Optional[dict] = None, cni_path: Optional[List[str]] = None,
                 prefix: Tuple[str, ...] = (), pass_fds: Tuple[int, ...] = ()) -> None:
        self.sock = sock
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: a chatty agent never blocks on it
        dirs = ":".join(cni_path if cni_path is not None else [os.path.dirname(sock)])
        self.proc = subprocess.Popen([*prefix, PY, "-I", "-c", ENGINE, cnitest.LIB, "cnikit", "agent",
                                      "--socket", sock, "--cni-path", dirs],
                                     env=dict(os.environ, **(env or {})), stderr=self.log, pass_fds=pass_fds)
        deadline = time.monotonic() + 30
        while not agent_mod.alive(sock):
            assert self.proc.poll() is None, self.read_log()
            assert time.monotonic() < deadline, "agent did not come up"
            time.sleep(0.02)

    def read_log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> str:
        """SIGTERM, wait; the agent's log."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        return self.read_log()


def request_bytes(name: str, env: Dict[str, str], stdin: bytes) -> bytes:
    blob = b"\0".join(f"{k}={v}".encode() for k, v in env.items())
    return b"CNIKIT/2 %d %d %d\n" % (len(name), len(blob), len(stdin)) + name.encode() + blob + stdin


def raw_call(sock: str, name: str, env: Dict[str, str], stdin: bytes, timeout: float = 30) -> Tuple[bool, bytes]:
    """(acknowledged, reply) for one request sent straight to the agent's socket."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(timeout)
        conn.connect(sock)
        try:
            conn.sendall(request_bytes(name, env, stdin))
            ack = conn.recv(1)
        except (BrokenPipeError, ConnectionResetError):  # refused: closed with our bytes unread
            ack = b""
        if ack != b"+":
            return False, b""
        conn.sendall(b"!")
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
        return True, reply
