"""CNI_NETNS is opened safely, and a worker left in a container's netns is never reused
(issue 13: L2; docs/security.md). Through a real agent: a hang or a stray thread there would
outlive the request that caused it.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from agentutil import raw_call


def loopback(netns: str, cni_path: str) -> tuple:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "nsx", "CNI_NETNS": netns, "CNI_IFNAME": "lo",
           "CNI_PATH": cni_path}
    return "loopback", env, json.dumps({"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}).encode()


def reply_of(raw: bytes) -> tuple:
    head, _, body = raw.partition(b"\n")
    rc, nout, _nerr = (int(f) for f in head.split())
    return rc, body[:nout].decode()


@pytest.mark.parametrize("kind", ["fifo", "device", "regular-file", "directory"])
def test_cni_netns_that_is_no_netns_is_refused_without_hanging(work, agents, kind):
    path = os.path.join(work, kind)
    if kind == "fifo":
        os.mkfifo(path)  # opening it for reading blocks until a writer comes: forever
    elif kind == "device":
        os.symlink("/dev/null", path)
    elif kind == "regular-file":
        open(path, "w").close()
    else:
        os.mkdir(path)
    running = agents()
    start = time.monotonic()
    acked, raw = raw_call(running.sock, *loopback(path, work), timeout=15)
    assert acked and time.monotonic() - start < 5
    rc, out = reply_of(raw)
    assert rc == 1 and json.loads(out)["msg"] == f"failed to open netns {path!r}: not a network namespace", out
    acked, raw = raw_call(running.sock, *loopback("/proc/self/ns/net", work), timeout=15)  # still serving
    assert acked and reply_of(raw)[0] == 0


def test_a_worker_that_cannot_switch_back_is_discarded(work, agents, netns):
    running = agents(env={"CNIKIT_FAULT": "net.restore_netns@1:raise"})
    pid = running.proc.pid
    home = os.stat(f"/proc/{pid}/ns/net").st_ino
    acked, raw = raw_call(running.sock, *loopback(f"/run/netns/{netns}", work))
    assert acked and reply_of(raw)[0] == 1  # the injected failure, reported as an error
    deadline = time.monotonic() + 5
    while len(os.listdir(f"/proc/{pid}/task")) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    tasks = os.listdir(f"/proc/{pid}/task")
    assert tasks == [str(pid)], "the worker stuck in the container's netns was kept"
    for _ in range(3):  # later requests run on a fresh worker, in the agent's own netns
        acked, raw = raw_call(running.sock, *loopback(f"/run/netns/{netns}", work))
        assert acked and reply_of(raw)[0] == 0
    assert all(os.stat(f"/proc/{pid}/task/{t}/ns/net").st_ino == home for t in os.listdir(f"/proc/{pid}/task"))
    assert "discarded" in running.stop()
