"""`make bench-cluster` (issue 15 item 6): N parallel ADDs spread over 3 lab nodes into the
cluster-wide IPAM (cnikit-cluster, a real 3-member TLS etcd in the lab nodes), then N DELs; the
same load into host-local (ours) and Go's host-local (per-node ranges), side by side in one run.

Per flavour: every node's driver (bench/cluster_driver.py, inside the node) fires its share of
the calls, `--concurrency` at a time, all nodes at once, through the exec protocol. Checks: N
distinct addresses after the ADDs, no lease left after the DELs (etcd keys for the cluster IPAM,
lease files for host-local). Modes: `exec` = no node agent (every call a fresh engine), `agent`
= the node agent up (the production path). Results: bench/results/cluster-<time>.json + a table.

    tools/sandbox.sh .venv/bin/python3 -m bench.cluster_load [--count 500] [--concurrency 8] [--modes exec,agent]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
import lab  # noqa: E402
from lab.etcd import Cluster  # noqa: E402

BIN = os.path.join(ROOT, "build", "bin")
GO_HOST_LOCAL = "/usr/lib/cni/host-local"
PY = sys.executable
RESULTS = os.path.join(ROOT, "bench", "results")


def pct(values: List[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000 if s else float("nan")


def run_nodes(state: Dict[str, Any], plugin: str, confs: Dict[str, str], command: str, count: int,
              concurrency: int, tag: str) -> List[Dict[str, Any]]:
    """All nodes at once, each its share of `count` calls; every call's record."""
    procs = []
    nodes = state["nodes"]
    for i, n in enumerate(nodes):
        share = count // len(nodes) + (1 if i < count % len(nodes) else 0)
        argv = lab.nsenter(n["pid"], [PY, "-m", "bench.cluster_driver", "--plugin", plugin, "--conf", confs[n["name"]],
                                      "--command", command, "--prefix", f"{tag}-{n['name']}-", "--count", str(share),
                                      "--concurrency", str(concurrency)])
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=dict(os.environ, PYTHONPATH=ROOT)))  # nsenter -m resets the cwd
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(f"driver failed: {stderr[-2000:]}")
        out += json.loads(stdout)
    return out


def write_conf(path: str, conf: Dict[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(conf, fh)
    return path


def agent(state: Dict[str, Any], on: bool) -> None:
    for n in state["nodes"]:
        if on:
            subprocess.Popen(lab.nsenter(n["pid"], ["setsid", os.path.join(BIN, "cnikit"), "agent", "--socket",
                                                    "/run/cni/cnikit.sock"]),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            lab.run_in(n["pid"], ["sh", "-c", "pkill -x -f '.*cnikit agent --socket /run/cni/cnikit.sock' ; "
                                              "rm -f /run/cni/cnikit.sock"], check=False)
    if on:
        for n in state["nodes"]:
            deadline = time.monotonic() + 30
            while lab.run_in(n["pid"], ["test", "-S", "/run/cni/cnikit.sock"], check=False).returncode != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not come up")
                time.sleep(0.2)


def count_etcd_keys(state: Dict[str, Any], cluster: Cluster, prefix: str) -> int:
    n = state["nodes"][0]
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); from cni.cluster.client import Client, EtcdConfig; "
            "c = Client(EtcdConfig.from_dict(json.loads(sys.argv[2]))); print(c.count_prefix(sys.argv[3]))")
    out = lab.run_in(n["pid"], [PY, "-c", code, os.path.join(ROOT, "plugins", "module_utils"),
                                json.dumps(dict(cluster.config(timeout=10).to_dict())), prefix])
    return int(out.stdout)


def count_lease_files(state: Dict[str, Any], net: str) -> int:
    total = 0
    for n in state["nodes"]:
        out = lab.run_in(n["pid"], ["sh", "-c", f"ls /var/lib/cni/networks/{net} 2>/dev/null | grep -c '^[0-9]' || true"])
        total += int(out.stdout.strip() or 0)
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8, help="calls in flight per node")
    ap.add_argument("--modes", default="exec,agent")
    ap.add_argument("--timeout", type=float, default=1.5, help="the cluster IPAM's etcd deadline per operation")
    a = ap.parse_args()
    lab.require_sandbox()
    # SIGTERM (timeout, an interrupted make) unwinds through the finally below: the lab and the
    # etcd members it started are stopped, never left running
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="cnikit-bench-cluster-")
    statefile = os.path.join(work, "lab.json")
    state = lab.up(3, path=statefile)
    cluster = None
    rows, report = [], {"count": a.count, "concurrency_per_node": a.concurrency, "nodes": 3, "flavours": {}}
    try:
        cluster = Cluster.in_lab(state, os.path.join(work, "etcd"))
        cluster.start(wait=False)
        time.sleep(1)
        etcd_conf = cluster.config(timeout=a.timeout).to_dict()
        size = max(1024, 2 * a.count)
        plen = 32 - (size - 1).bit_length()
        confs: Dict[str, Dict[str, str]] = {"cluster": {}, "host-local": {}}
        for i, n in enumerate(state["nodes"]):
            confs["cluster"][n["name"]] = write_conf(os.path.join(work, f"cluster-{n['name']}.json"), {
                "cniVersion": "1.0.0", "name": "loadnet", "type": "macvlan",
                "ipam": {"type": "cnikit-cluster", "subnet": f"10.60.0.0/{plen}", "node": n["name"], "etcd": etcd_conf}})
            confs["host-local"][n["name"]] = write_conf(os.path.join(work, f"hl-{n['name']}.json"), {
                "cniVersion": "1.0.0", "name": "loadnet", "type": "macvlan",
                "ipam": {"type": "host-local", "subnet": f"10.{61 + i}.0.0/{plen}"}})
        # health from inside a node (the controller's namespace has no route to the lab)
        deadline = time.monotonic() + 30
        while count_etcd_keys_safe(state, cluster) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy: " + cluster.logs())
            time.sleep(0.5)
        flavours = [("cluster", os.path.join(BIN, "cnikit-cluster"), "cluster"),
                    ("host-local", os.path.join(BIN, "host-local"), "host-local"),
                    ("go host-local", GO_HOST_LOCAL, "host-local")]
        for mode in a.modes.split(","):
            agent(state, mode == "agent")
            for name, plugin, kind in flavours:
                if name == "go host-local" and mode == "agent" and "exec" in a.modes:
                    continue  # Go has no agent: measured once
                label = f"{name} ({mode})" if name != "go host-local" else name
                tag = f"{mode}-{kind}"
                t0 = time.monotonic()
                adds = run_nodes(state, plugin, confs[kind], "ADD", a.count, a.concurrency, tag)
                t_add = time.monotonic() - t0
                ok = [r for r in adds if r["rc"] == 0]
                distinct = len({r["ip"] for r in ok})
                held = count_etcd_keys(state, cluster, "/cnikit/ipam/loadnet/ips/") if kind == "cluster" \
                    else count_lease_files(state, "loadnet")
                t0 = time.monotonic()
                dels = run_nodes(state, plugin, confs[kind], "DEL", a.count, a.concurrency, tag)
                t_del = time.monotonic() - t0
                left = count_etcd_keys(state, cluster, "/cnikit/ipam/loadnet/") if kind == "cluster" \
                    else count_lease_files(state, "loadnet")
                if kind == "host-local":  # the next host-local flavour starts from empty stores
                    for n in state["nodes"]:
                        lab.run_in(n["pid"], ["rm", "-rf", "/var/lib/cni/networks/loadnet"])
                rec = {"add_ok": len(ok), "add_failed": len(adds) - len(ok), "distinct_ips": distinct,
                       "add_first_try_code11": sum(1 for r in adds if r.get("retries")),
                       "leases_after_add": held, "del_failed": sum(1 for r in dels if r["rc"] != 0),
                       "leases_after_del": left,
                       "add_p50_ms": pct([r["s"] for r in adds], 50), "add_p99_ms": pct([r["s"] for r in adds], 99),
                       "del_p50_ms": pct([r["s"] for r in dels], 50), "del_p99_ms": pct([r["s"] for r in dels], 99),
                       "add_wall_s": t_add, "del_wall_s": t_del,
                       "errors": sorted({r["err"] for r in adds + dels if r["err"]})[:5]}
                report["flavours"][label] = rec
                rows.append((label, rec))
                print(f"{label:24} ADD ok {rec['add_ok']}/{a.count} ({rec['add_first_try_code11']} retried after code 11) "
                      f"distinct {distinct} held {held} | "
                      f"p50 {rec['add_p50_ms']:.1f} ms p99 {rec['add_p99_ms']:.1f} ms wall {t_add:.1f} s | "
                      f"DEL p50 {rec['del_p50_ms']:.1f} p99 {rec['del_p99_ms']:.1f} ms, left {left}", flush=True)
        agent(state, False)
    finally:
        if cluster:
            cluster.stop()
        lab.down(statefile)
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, time.strftime("cluster-%Y%m%dT%H%M%S.json"))
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=2)
    print(f"\n| flavour | ADD ok | retried (code 11) | distinct | left after DEL | ADD p50 ms | ADD p99 ms | DEL p50 ms | DEL p99 ms | ADD wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['add_ok']}/{a.count} | {r['add_first_try_code11']} | {r['distinct_ips']} | {r['leases_after_del']} | {r['add_p50_ms']:.1f} | "
              f"{r['add_p99_ms']:.1f} | {r['del_p50_ms']:.1f} | {r['del_p99_ms']:.1f} | {r['add_wall_s']:.1f} |")
    print(f"results: {path}")
    bad = [label for label, r in rows if r["add_ok"] != a.count or r["distinct_ips"] != a.count or r["leases_after_del"]]
    return 1 if bad else 0


def count_etcd_keys_safe(state: Dict[str, Any], cluster: Cluster):
    try:
        return count_etcd_keys(state, cluster, "/cnikit/")
    except Exception:  # noqa: BLE001 - not up yet
        return None


if __name__ == "__main__":
    sys.exit(main())
