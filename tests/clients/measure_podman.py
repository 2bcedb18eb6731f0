"""Measure `podman run --rm` with our plugins vs the Go plugins, side by side in one run.

Run inside the sandbox:  tools/sandbox.sh .venv/bin/python tests/clients/measure_podman.py [N] [bridge|macvlan]
(`macvlan` swaps the first plugin for macvlan on a veth master; portmap, firewall, tuning stay.)
Flavours: the Go plugins; ours exec'd by podman (engine in-process in each plugin process); ours
with the node agent up (the executables hand their calls to a warm `cnikit agent`, performance.md).
Flavours are interleaved (go, ours, ours-agent, go, ...) so drift hits both alike; the first run of
each is a warm-up and not counted. Prints a table and one JSON line (docs/runtime.md has the numbers).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import clientlib  # noqa: E402
from test_podman import podnet  # noqa: E402


def conflist(chain: str, label: str) -> dict:
    subnet = {"go": "10.89.20", "ours": "10.89.21", "ours-agent": "10.89.22"}[label]
    conf = podnet("benchnet", f"cnikit-b{label[:6]}", subnet=subnet)
    if chain == "macvlan":
        conf["plugins"][0] = {"type": "macvlan", "master": "mbench0", "mode": "bridge",
                              "ipam": conf["plugins"][0]["ipam"]}
    return conf


def main(n: int, chain: str) -> dict:
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        raise SystemExit("run me inside tools/sandbox.sh")
    work = tempfile.mkdtemp(prefix="cnikit-podbench-")
    mounted = clientlib.private_cgroup_root()
    rootfs = clientlib.build_rootfs(os.path.join(work, "rootfs"))
    sock = os.path.join(work, "agent.sock")
    flavours = {"go": "/usr/lib/cni", "ours": clientlib.our_bin(os.path.join(work, "bin")),
                "ours-agent": clientlib.our_bin(os.path.join(work, "bin-agent"), agent_socket=sock)}
    agent = subprocess.Popen([os.path.join(work, "bin-agent", "cnikit"), "agent", "--socket", sock])
    for _ in range(200):
        if os.path.exists(sock):
            break
        time.sleep(0.05)
    if chain == "macvlan":
        subprocess.run("ip link add mbench0 type veth peer name mbench1 && ip link set mbench0 up", shell=True,
                       check=True)
    pods = {}
    for label, cni_dir in flavours.items():
        pm = clientlib.Podman(os.path.join(work, label), cni_dir, rootfs)
        pm.network("benchnet", conflist(chain, label))
        pods[label] = pm
    cases = {
        "none": lambda pm: pm.run_args("none", "--rm"),
        "chain": lambda pm: pm.run_args("benchnet", "--rm"),
        "chain -p 8080:80": lambda pm: pm.run_args("benchnet", "--rm", "-p", "8080:80"),
    }
    times: dict = {case: {label: [] for label in pods} for case in cases}
    for case, args in cases.items():
        for i in range(n + 1):
            for label, pm in pods.items():
                t0 = time.perf_counter()
                pm(*args(pm), "/bin/true")
                if i:  # run 0 is the warm-up
                    times[case][label].append((time.perf_counter() - t0) * 1000)
    agent.terminate()
    agent.wait()
    if mounted:
        subprocess.run(["umount", mounted], check=False)
    summary = {case: {label: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1),
                              "max_ms": round(max(v), 1), "n": len(v)} for label, v in per.items()}
               for case, per in times.items()}
    print(f"{'podman run --rm /bin/true':28} {'Go':>8} {'ours':>8} {'ratio':>6} {'ours+agent':>11} {'ratio':>6}  (medians, ms)")
    rows = {case: {label: per[label]["median_ms"] for label in pods} for case, per in summary.items()}
    rows["network part (-p minus none)"] = {label: rows["chain -p 8080:80"][label] - rows["none"][label]
                                            for label in pods}
    for case, m in rows.items():
        print(f"{case:28} {m['go']:8.1f} {m['ours']:8.1f} {m['ours'] / m['go']:6.2f} {m['ours-agent']:11.1f}"
              f" {m['ours-agent'] / m['go']:6.2f}")
    print(json.dumps({"runs": n, "chain": chain, "summary": summary}))
    return summary


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10, sys.argv[2] if len(sys.argv) > 2 else "bridge")
