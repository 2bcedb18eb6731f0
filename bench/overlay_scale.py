"""`make overlay-scale`: the overlay on an N-node lab (default 50), every node with a live overlayd.

Asserts, for every node: exactly 3 × (N−1) entries of ours (routes, neighbours, FDB: N−1 each) for
vxlan; then measures how long a join and a leave take to be in the kernel of every node (from the
lease file's write to the last daemon's `changed_at`, stamped right after the pass that changed the kernel), and each daemon's full
reconcile time (its first pass, N−1 peers from nothing). A pod on the first and on the last node
ping each other through vxlan. Exit status 1 when any of that fails.

    tools/sandbox.sh .venv/bin/python3 -m bench.overlay_scale [--nodes 50] [--backend vxlan]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lab  # noqa: E402
from lab import overlay as ov  # noqa: E402
from cni.cluster.leases import Lease, vtep_mac  # noqa: E402


def status(pid: int) -> Dict[str, Any]:
    out = lab.run_in(pid, ["cat", "/run/cnikit/overlay/status.json"], check=False).stdout
    return json.loads(out) if out else {}


def all_status(nodes: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda n: status(n["pid"]), nodes))


def wait_all(nodes: List[Dict[str, Any]], leases: int, timeout: float, quiet: float = 0.0) -> List[Dict[str, Any]]:
    """Every node's status once all have seen `leases` leases. `quiet`: seconds to keep still first, so
    the harness's own `nsenter cat`s do not compete with the daemons being timed (their status files
    carry the time each pass ended)."""
    time.sleep(quiet)
    deadline = time.monotonic() + timeout
    while True:
        got = all_status(nodes)
        if all(s.get("leases") == leases for s in got):
            return got
        if time.monotonic() > deadline:
            behind = [n["name"] for n, s in zip(nodes, got) if s.get("leases") != leases]
            raise SystemExit(f"overlay-scale: {len(behind)} nodes never saw {leases} leases: {behind[:5]}...")
        time.sleep(0.2)


def counts(pid: int) -> tuple:
    e = ov.entries(pid)
    return len(e["routes"]), len(e["neigh"]), len(e["fdb"])


def main(argv: List[str] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overlay_scale")
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--backend", choices=["vxlan", "host-gw"], default="vxlan")
    args = p.parse_args(argv)
    lab.require_sandbox()
    n = args.nodes
    work = tempfile.mkdtemp(prefix="overlay-scale-")
    state_path, lease_dir = os.path.join(work, "state.json"), os.path.join(work, "leases")
    failures: List[str] = []
    try:
        t0 = time.monotonic()
        state = ov.up_wide(n, state_path)
        nodes = state["nodes"]
        print(f"lab: {n} nodes up in {time.monotonic() - t0:.1f} s")
        leases = ov.plan(nodes, args.backend)
        for lease in leases.values():
            ov.put_lease(lease_dir, lease)
        t0 = time.monotonic()
        for node in nodes:
            ov.configure(node, lease_dir, backend=args.backend)
            ov.start_daemon(node["pid"])
        first = wait_all(nodes, n, 300)
        print(f"daemons: {n} started and reconciled in {time.monotonic() - t0:.1f} s (process start-up included)")
        full = [s["reconcile_ms"] for s in first]
        with ThreadPoolExecutor(max_workers=8) as pool:
            got = list(pool.map(lambda node: counts(node["pid"]), nodes))
        want = (n - 1, n - 1, n - 1) if args.backend == "vxlan" else (n - 1, 0, 0)
        bad = [(node["name"], c) for node, c in zip(nodes, got) if c != want]
        if bad:
            failures.append(f"entry counts differ from {want}: {bad[:5]}")
        print(f"entries per node (routes, neighbours, fdb): {got[0]} on every node = {sum(got[0])}, "
              f"expected {want} = {sum(want)}" if not bad else f"entries: {len(bad)} nodes wrong")

        # join: a node that is not there (an address on the segment nobody holds) gets a lease
        ghost = ipaddress.IPv4Network("10.244.250.0/24")
        extra = Lease(ghost, ipaddress.IPv4Address("172.30.200.1"), args.backend, 1, vtep_mac(ghost), "ghost")
        before = {s["node"]: s["at"] for s in first}
        t_write = time.time()
        ov.put_lease(lease_dir, extra)
        joined = wait_all(nodes, n + 1, 60, quiet=2.0)
        join = max(s["changed_at"] for s in joined) - t_write
        join_each = sorted(s["changed_at"] - t_write for s in joined)
        join_ms = [s["reconcile_ms"] for s in joined if not s["full"]]
        assert all(s["at"] > before[s["node"]] for s in joined)
        t_write = time.time()
        os.unlink(os.path.join(lease_dir, f"{extra.key}.json"))
        left = wait_all(nodes, n, 60, quiet=2.0)
        leave = max(s["changed_at"] for s in left) - t_write
        leave_each = sorted(s["changed_at"] - t_write for s in left)
        for label, value in (("join", join), ("leave", leave)):
            if value >= 1.0:
                failures.append(f"{label} took {value:.2f} s to reach every node (bound: 1 s)")
        print(f"join visible on all {n} nodes after {join * 1000:.0f} ms (median node {statistics.median(join_each) * 1000:.0f} ms); "
              f"leave after {leave * 1000:.0f} ms (median node {statistics.median(leave_each) * 1000:.0f} ms)")
        print(f"reconcile per daemon: full (N-1 peers from nothing) median {statistics.median(full):.1f} ms, "
              f"max {max(full):.1f} ms; one join median {statistics.median(join_ms):.1f} ms, max {max(join_ms):.1f} ms")

        # a resync (full) pass on every node: the kernel read back and compared, nothing to change
        t_left = time.time()
        deadline = time.monotonic() + 30
        while True:
            time.sleep(2.0)
            got = all_status(nodes)
            if all(s.get("full") and s["at"] > t_left for s in got) or time.monotonic() > deadline:
                break
        resync = [s["reconcile_ms"] for s in got if s.get("full") and s["at"] > t_left]
        if resync:
            print(f"resync (full pass over {3 * (n - 1)} entries, nothing to change) on {len(resync)} nodes: "
                  f"median {statistics.median(resync):.1f} ms, max {max(resync):.1f} ms")
        a, b = nodes[0], nodes[-1]
        ip_a = ov.add_pod(a["pid"], "p1", ov.netconf(leases[a["name"]], first[0]["mtu"]))
        ip_b = ov.add_pod(b["pid"], "p1", ov.netconf(leases[b["name"]], first[-1]["mtu"]))
        ok = lab.run_in(a["pid"], ["ip", "netns", "exec", "p1", "ping", "-c", "1", "-W", "2", ip_b], check=False).returncode == 0
        print(f"pod {ip_a} on {a['name']} -> pod {ip_b} on {b['name']}: {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append("first-to-last pod ping failed")
        rss = []
        for node in nodes[:5]:
            pid = lab.run_in(node["pid"], ["cat", "/run/cnikit/overlayd.pid"]).stdout.strip()
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                rss += [int(l.split()[1]) for l in fh if l.startswith("VmRSS")]
        print(f"daemon RSS: {statistics.median(rss) / 1024:.1f} MB (median of 5)")
    finally:
        lab.down(state_path)
        shutil.rmtree(work, ignore_errors=True)
    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
