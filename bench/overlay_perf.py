"""Pod-to-pod latency and TCP throughput across two lab nodes: vxlan vs host-gw vs udp vs macvlan, in one run.

One 3-node lab. Pods `p1` on k8s-master and k8s-node01 sit on cni0 (the overlay's bridge + host-local,
MTU 1450); the datapath between them is switched vxlan -> host-gw -> udp by rewriting the leases, `overlayd --remove`
and `--once` per node (udp: plus the daemon, whose relay carries the packets), so the backends alternate
round by round on the same pods.
Pods `mv` on the same two nodes hang off ens33 as macvlan (bridge mode, the seed's network) and are
measured in the same rounds. Latency: `ping -c N -i 0.002`, the mean RTT. Throughput: one TCP stream
for `--seconds` (stdlib Python sender/receiver, 64 KiB writes), the receiver's count.

    tools/sandbox.sh .venv/bin/python3 -m bench.overlay_perf [--rounds 3] [--seconds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lab  # noqa: E402
from lab import overlay as ov  # noqa: E402

SYS_PY = "/usr/bin/python3"
KINDS = ("vxlan", "host-gw", "udp", "macvlan")
RECV = ("import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        "s.bind(('0.0.0.0',5201));s.listen(1);print('ready',flush=True);c,_=s.accept();n=0;t=time.monotonic()\n"
        "while True:\n b=c.recv(1<<20)\n if not b: break\n n+=len(b)\nprint(n, time.monotonic()-t)")
SEND = ("import socket,sys,time\nc=socket.create_connection((sys.argv[1],5201));b=b'x'*65536;end=time.monotonic()+float(sys.argv[2])\n"
        "while time.monotonic()<end: c.sendall(b)\nc.close()")


def latency(pid: int, pod: str, dst: str, count: int) -> float:
    out = lab.run_in(pid, ["ip", "netns", "exec", pod, "ping", "-q", "-c", str(count), "-i", "0.002", dst]).stdout
    return float(re.search(r"= [\d.]+/([\d.]+)/", out).group(1))


def throughput(src: Dict, dst: Dict, pod: str, ip: str, seconds: float) -> float:
    rx = subprocess.Popen(lab.nsenter(dst["pid"], ["ip", "netns", "exec", pod, SYS_PY, "-c", RECV]),
                          stdout=subprocess.PIPE, text=True)
    assert rx.stdout.readline().strip() == "ready"
    lab.run_in(src["pid"], ["ip", "netns", "exec", pod, SYS_PY, "-c", SEND, ip, str(seconds)])
    n, t = rx.communicate(timeout=60)[0].split()
    return int(n) * 8 / float(t) / 1e9  # Gbit/s


def use_backend(nodes: List[Dict], lease_dir: str, backend: str) -> None:
    """Switch every node's datapath: `overlayd --remove` + `--once`; udp also needs the daemon (its relay)."""
    leases = ov.plan(nodes, backend)
    for n in nodes:
        ov.stop_daemon(n["pid"])
        ov.put_lease(lease_dir, leases[n["name"]])
    for n in nodes:
        ov.configure(n, lease_dir, backend=backend)
        ov.overlayd(n["pid"], "--remove")
        st = ov.overlayd(n["pid"], "--once")
        assert st["entries"]["routes"] == (1 if backend == "udp" else len(nodes) - 1), st
        if backend == "udp":
            ov.start_daemon(n["pid"])
    if backend == "udp":
        time.sleep(1.5)  # the relays bind and learn their peers


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overlay_perf")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--pings", type=int, default=200)
    args = p.parse_args(argv)
    lab.require_sandbox()
    work = tempfile.mkdtemp(prefix="overlay-perf-")
    state_path, lease_dir = os.path.join(work, "state.json"), os.path.join(work, "leases")
    results: Dict[str, Dict[str, List[float]]] = {k: {"rtt_ms": [], "gbps": []} for k in KINDS}
    try:
        state = lab.up(3, path=state_path)
        nodes = state["nodes"]
        a, b = nodes[0], nodes[1]
        use_backend(nodes, lease_dir, "vxlan")
        leases = ov.plan(nodes)
        ips = {n["name"]: ov.add_pod(n["pid"], "p1", ov.netconf(leases[n["name"]], 1450)) for n in (a, b)}
        mv = {}
        for i, n in enumerate((a, b)):
            conf = {"cniVersion": "1.0.0", "name": "mv", "plugins": [{"type": "macvlan", "master": "ens33",
                    "mode": "bridge", "ipam": {"type": "host-local", "subnet": "192.168.80.0/24",
                                               "rangeStart": f"192.168.80.{200 + i}", "rangeEnd": f"192.168.80.{200 + i}"}}]}
            ov.write_file(n["pid"], "/etc/cni/net.d/20-mv.conflist", json.dumps(conf))
            lab.run_in(n["pid"], ["ip", "netns", "add", "mv"])
            env = f"CNI_PATH={ov.BIN} NETCONFPATH=/etc/cni/net.d"
            out = lab.run_in(n["pid"], ["sh", "-c", f"{env} {ov.BIN}/cnikit net add mv /run/netns/mv"]).stdout
            mv[n["name"]] = json.loads(out)["ips"][0]["address"].split("/")[0]
        for r in range(args.rounds):
            for kind in KINDS:
                if kind != "macvlan":
                    use_backend(nodes, lease_dir, kind)
                pod, dst = ("mv", mv[b["name"]]) if kind == "macvlan" else ("p1", ips[b["name"]])
                lab.run_in(a["pid"], ["ip", "netns", "exec", pod, "ping", "-c", "3", "-i", "0.2", dst])  # warm ARP
                results[kind]["rtt_ms"].append(latency(a["pid"], pod, dst, args.pings))
                results[kind]["gbps"].append(throughput(a, b, pod, dst, args.seconds))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v['rtt_ms'][-1] * 1000:.0f} us {v['gbps'][-1]:.2f} Gbit/s"
                                                  for k, v in results.items()), flush=True)
    finally:
        lab.down(state_path)
        shutil.rmtree(work, ignore_errors=True)
    base = results["macvlan"]
    print(f"\n{'path':<10} {'RTT (median)':>14} {'vs macvlan':>11} {'TCP 1 stream':>14} {'vs macvlan':>11}")
    for kind, v in results.items():
        rtt, gbps = statistics.median(v["rtt_ms"]), statistics.median(v["gbps"])
        print(f"{kind:<10} {rtt * 1000:>11.0f} us {rtt / statistics.median(base['rtt_ms']):>10.2f}x "
              f"{gbps:>9.2f} Gbit/s {gbps / statistics.median(base['gbps']):>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
