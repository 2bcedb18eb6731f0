"""Measure `podman run --rm` with our plugins vs the Go plugins, side by side in one run.

Run inside the sandbox:  tools/sandbox.sh .venv/bin/python tests/clients/measure_podman.py [N]
Flavours are interleaved (go, ours, go, ours, ...) so drift hits both alike; the first run of
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


def main(n: int) -> dict:
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        raise SystemExit("run me inside tools/sandbox.sh")
    work = tempfile.mkdtemp(prefix="cnikit-podbench-")
    mounted = clientlib.private_cgroup_root()
    rootfs = clientlib.build_rootfs(os.path.join(work, "rootfs"))
    flavours = {"go": "/usr/lib/cni", "ours": clientlib.our_bin(os.path.join(work, "bin"))}
    pods = {}
    for label, cni_dir in flavours.items():
        pm = clientlib.Podman(os.path.join(work, label), cni_dir, rootfs)
        pm.network("benchnet", podnet("benchnet", f"cnikit-b{label}", subnet="10.89.20" if label == "go" else "10.89.21"))
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
    if mounted:
        subprocess.run(["umount", mounted], check=False)
    summary = {case: {label: {"median_ms": round(statistics.median(v), 1), "min_ms": round(min(v), 1),
                              "max_ms": round(max(v), 1), "n": len(v)} for label, v in per.items()}
               for case, per in times.items()}
    print(f"{'podman run --rm /bin/true':28} {'Go median':>10} {'ours median':>12} {'ratio':>6}")
    for case, per in summary.items():
        g, o = per["go"]["median_ms"], per["ours"]["median_ms"]
        print(f"{case:28} {g:10.1f} {o:12.1f} {o / g:6.2f}")
    net_go = summary["chain -p 8080:80"]["go"]["median_ms"] - summary["none"]["go"]["median_ms"]
    net_ours = summary["chain -p 8080:80"]["ours"]["median_ms"] - summary["none"]["ours"]["median_ms"]
    print(f"{'network part (-p) ':28} {net_go:10.1f} {net_ours:12.1f} {net_ours / net_go:6.2f}")
    print(json.dumps({"runs": n, "summary": summary}))
    return summary


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
