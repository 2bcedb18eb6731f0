"""Where the time of one CNI call goes on the fast path, layer by layer (docs/performance.md).

    tools/sandbox.sh .venv/bin/python3 tests/perf/probe_fastpath.py [--rounds 40]

Not a test (it asserts nothing about speed): it prints medians, every variant interleaved round by
round so that the machine's noise hits them alike.
  - VERSION exec: the compiled relay, the dash launcher, a Go plugin, /bin/true;
  - host-local ADD / DEL (little work: the exec path dominates) and macvlan + host-local ADD / DEL,
    each through the compiled relay, the dash launcher + relay.py, a raw socket from this process (no
    exec at all) to the agent, and the Go plugin;
  - inside the agent: the whole request (accept -> reply sent) against `run()` (skel.execute), with
    the long-lived workers and, on a second agent, with a thread started per connection (as before).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "plugins", "module_utils")
PY = os.path.join(ROOT, ".venv", "bin", "python3")
WORK = "/run/fastprobe"
GO = "/usr/lib/cni"

# The agent, with the time of each request (handle) and of its work (run) appended to a log file.
AGENT = """
import sys, threading, time
sys.path.insert(0, sys.argv[1])
from cni.node import agent
log = open(sys.argv[3], "a", buffering=1)
run, handle = agent.run, agent.handle
def timed_run(name, env, stdin):
    t = time.perf_counter(); out = run(name, env, stdin)
    log.write(f"run {name} {env.get('CNI_COMMAND')} {(time.perf_counter() - t) * 1e3:.3f}\\n"); return out
def timed_handle(conn, request):
    t = time.perf_counter(); handle(conn, request); log.write(f"handle {(time.perf_counter() - t) * 1e3:.3f}\\n")
agent.run, agent.handle = timed_run, timed_handle
if sys.argv[4] == "thread-per-request":
    agent.Workers.submit = lambda self, conn, request: threading.Thread(target=agent.handle, args=(conn, request)).start() or True
    agent.Workers.drain = lambda self: None
agent.serve(sys.argv[2], [sys.argv[2].rsplit('/', 1)[0]])
"""


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True)


def env_for(command: str, cid: str, netns: str, path: str) -> dict:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": "eth0",
            "CNI_PATH": path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def exec_call(binary: str, env: dict, stdin: bytes) -> float:
    start = time.perf_counter()
    proc = subprocess.run([binary], env=env, input=stdin, capture_output=True, check=False)
    took = (time.perf_counter() - start) * 1e3
    if proc.returncode != 0:
        raise RuntimeError(f"{binary} {env['CNI_COMMAND']}: {proc.stdout!r} {proc.stderr[-500:]!r}")
    return took


def raw_call(sock: str, name: str, env: dict, stdin: bytes) -> float:
    start = time.perf_counter()
    blob = b"\0".join(f"{k}={v}".encode() for k, v in env.items())
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(sock)
        conn.sendall(b"CNIKIT/2 %d %d %d\n" % (len(name), len(blob), len(stdin)) + name.encode() + blob + stdin)
        if conn.recv(1) != b"+":
            raise RuntimeError(f"raw {name}: not acknowledged")
        conn.sendall(b"!")
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    took = (time.perf_counter() - start) * 1e3
    if not reply.startswith(b"0 "):
        raise RuntimeError(f"raw {name}: {reply[:300]!r}")
    return took


def rotate(items, i: int) -> list:
    """A different variant first in each round (the one after the previous round's macvlan DEL
    shares the CPU with the kernel's deferred link cleanup)."""
    items = list(items)
    return items[i % len(items):] + items[:i % len(items)]


def median(samples: list) -> str:
    return f"{statistics.median(samples):6.2f}" if samples else "     -"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    rounds = parser.parse_args().rounds
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        raise SystemExit("run it inside tools/sandbox.sh")
    sys.path.insert(0, LIB)
    from cni.node.installer import write_executables  # noqa: PLC0415

    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    socks = {"workers": f"{WORK}/workers.sock", "thread-per-request": f"{WORK}/threads.sock"}
    logs = {mode: f"{WORK}/{mode}.log" for mode in socks}
    bins = {"compiled": f"{WORK}/bin-c", "script": f"{WORK}/bin-s"}
    for kind, dest in bins.items():
        write_executables(dest, PY, LIB, ["host-local", "macvlan"], socket=socks["workers"],
                          cc=None if kind == "compiled" else "")
    agents = [subprocess.Popen([PY, "-I", "-c", AGENT, LIB, socks[mode], logs[mode], mode], stderr=subprocess.DEVNULL)
              for mode in socks]
    sh("ip link add ens33 type veth peer name ens33p && ip link set ens33 up && ip netns add probe")
    try:
        while not all(os.path.exists(s) for s in socks.values()):
            time.sleep(0.05)
        data = f"{WORK}/data"
        hl = json.dumps({"cniVersion": "1.0.0", "name": "probe-hl", "type": "host-local",
                         "ipam": {"type": "host-local", "subnet": "10.77.0.0/16", "dataDir": data}}).encode()
        mv = json.dumps({"cniVersion": "1.0.0", "name": "probe-mv", "type": "macvlan", "master": "ens33",
                         "mode": "bridge", "ipam": {"type": "host-local", "subnet": "10.78.0.0/16",
                                                    "dataDir": data}}).encode()
        version = {"compiled": f"{bins['compiled']}/host-local", "script": f"{bins['script']}/host-local",
                   "go": f"{GO}/host-local", "/bin/true": "/bin/true"}
        doors = {
            "compiled": lambda plugin, e, conf: exec_call(f"{bins['compiled']}/{plugin}", e, conf),
            "script": lambda plugin, e, conf: exec_call(f"{bins['script']}/{plugin}", e, conf),
            "raw socket": lambda plugin, e, conf: raw_call(socks["workers"], plugin, e, conf),
            "raw, thread/req": lambda plugin, e, conf: raw_call(socks["thread-per-request"], plugin, e, conf),
            "go": lambda plugin, e, conf: exec_call(f"{GO}/{plugin}", dict(e, CNI_PATH=GO), conf),
        }
        times: dict = {}
        for i in range(rounds + 3):
            for label, binary in rotate(version.items(), i):
                t = exec_call(binary, {"CNI_COMMAND": "VERSION"}, b"")
                times.setdefault(("VERSION", label, ""), []).append(t)
            for plugin, conf, netns in (("host-local", hl, "/proc/self/ns/net"), ("macvlan", mv, "/run/netns/probe")):
                for door, call in rotate(doors.items(), i):
                    cid = f"{door[:3]}{i}".replace(" ", "").replace(",", "")
                    for command in ("ADD", "DEL"):
                        t = call(plugin, env_for(command, cid, netns, bins["compiled"]), conf)
                        if i >= 3:
                            times.setdefault((plugin, door, command), []).append(t)
        print(f"medians of {rounds} rounds, ms; load average {os.getloadavg()[0]:.1f}")
        print(f"{'VERSION exec':28}" + "".join(f"{label:>12}" for label in version))
        print(f"{'':28}" + "".join(f"{median(times[('VERSION', label, '')][3:]):>12}" for label in version))
        for plugin in ("host-local", "macvlan"):
            print(f"\n{plugin:28}" + "".join(f"{door:>17}" for door in doors))
            for command in ("ADD", "DEL"):
                print(f"{command:28}" + "".join(f"{median(times[(plugin, door, command)]):>17}" for door in doors))
    finally:
        for proc in agents:
            proc.terminate()
            proc.wait()
        sh("ip link del ens33; ip netns del probe")
    print("\ninside the agent (accept -> reply sent, against run() = skel.execute):")
    for mode, path in logs.items():
        with open(path, encoding="utf-8") as fh:
            lines = [line.split() for line in fh]
        runs = [float(f[-1]) for f in lines if f[0] == "run"]
        handles = [float(f[-1]) for f in lines if f[0] == "handle"]
        extra = [h - r for h, r in zip(handles, runs)]  # one request at a time: the lines pair up
        print(f"  {mode:20} requests {len(runs)}, median run {median(runs)}, median handle {median(handles)}, "
              f"median handle - run {median(extra)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
