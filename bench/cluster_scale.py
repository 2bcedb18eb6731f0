"""`make bench-cluster-scale` (issue 15 item 7): simulated clients against a real 3-member TLS
etcd (127.0.0.x inside the sandbox) — the figures docs/cluster-state.md's scaling model is built on.

  txn      create-if-absent transactions (what ADD/DEL and a subnet acquire commit), T threads
  range    listing K address keys (what every cluster-IPAM ADD reads), K = 1k, 10k, 50k
  lease    keep-alive refreshes per second (subnet leases, one per node)
  watch    one change seen by W watchers (the peers of a subnet change), W = 10, 50, 200

    tools/sandbox.sh .venv/bin/python3 -m bench.cluster_scale [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "plugins", "module_utils"))
from cni.cluster.client import Client, cmp_absent, op_put  # noqa: E402
from lab.etcd import Cluster  # noqa: E402

VALUE = json.dumps({"node": "k8s-node-0001", "containerID": "c" * 64, "ifname": "eth0"})


def pct(v: List[float], p: float) -> float:
    s = sorted(v)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] * 1000


def parallel(conf, threads: int, seconds: float, work) -> Dict[str, float]:
    lat: List[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def run(t: int) -> None:
        with Client(conf) as cli:
            i = 0
            mine = []
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                work(cli, t, i)
                mine.append(time.perf_counter() - t0)
                i += 1
            with lock:
                lat.extend(mine)

    ths = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    t0 = time.monotonic()
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    wall = time.monotonic() - t0
    return {"ops": len(lat), "ops_per_s": len(lat) / wall, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    secs = 3.0 if a.quick else 8.0
    cluster = Cluster.loopback(3, tempfile.mkdtemp(prefix="cnikit-scale-"), base_port=24790)
    cluster.start()
    conf = cluster.config(timeout=10)
    out: Dict[str, Any] = {}
    try:
        for threads in (1, 8, 32):
            def txn(cli, t, i, threads=threads):
                k = f"/s/txn{threads}/{t}/{i}"
                cli.txn([cmp_absent(k)], [op_put(k, VALUE)])
            r = parallel(conf, threads, secs, txn)
            out[f"txn_t{threads}"] = r
            print(f"txn  {threads:3} threads: {r['ops_per_s']:7.0f}/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms", flush=True)
        with Client(conf) as cli:
            made = 0
            for k in (1000, 10000) + (() if a.quick else (50000,)):
                batch = []
                while made < k:
                    batch.append(op_put(f"/s/ips/10.{made >> 16 & 255}.{made >> 8 & 255}.{made & 255}", VALUE))
                    made += 1
                    if len(batch) == 100:
                        cli.txn([], batch)
                        batch = []
                if batch:
                    cli.txn([], batch)
                for keys_only in (False, True):
                    lat = []
                    for _ in range(5):
                        t0 = time.perf_counter()
                        kvs, _ = cli.get_prefix("/s/ips/", keys_only=keys_only)
                        lat.append(time.perf_counter() - t0)
                    assert len(kvs) == k
                    tag = "keys" if keys_only else "values"
                    out[f"range_{k}_{tag}"] = {"keys": k, "keys_only": keys_only, "median_ms": statistics.median(lat) * 1000}
                    print(f"range {k:6} keys ({tag}): {statistics.median(lat) * 1000:8.1f} ms", flush=True)
            st = cli._post("status", "/maintenance/status", {})
            out["db_size_bytes"] = int(st.get("dbSize", 0))
            print(f"db size after the range keys: {int(st.get('dbSize', 0)) / 1e6:.1f} MB")
        leases: List[int] = []
        with Client(conf) as cli:
            for _ in range(200):
                leases.append(cli.grant(3600))

        def refresh(cli, t, i):
            cli.keepalive(leases[(t * 7919 + i) % len(leases)])
        r = parallel(conf, 8, secs, refresh)
        out["keepalive_t8"] = r
        print(f"keepalive 8 threads: {r['ops_per_s']:7.0f}/s  p50 {r['p50_ms']:.1f} ms", flush=True)
        for w in (10, 50) + (() if a.quick else (200,)):
            with Client(conf) as cli:
                _, rev = cli.get_prefix("/s/subnets/")
                watches = [cli.watch("/s/subnets/", rev + 1) for _ in range(w)]
                seen: List[float] = []
                t0 = time.perf_counter()
                cli.put(f"/s/subnets/w{w}", "x")

                def wait(wt):
                    while not wt.next(5):
                        pass
                    seen.append(time.perf_counter() - t0)
                ths = [threading.Thread(target=wait, args=(wt,)) for wt in watches]
                for th in ths:
                    th.start()
                for th in ths:
                    th.join()
                for wt in watches:
                    wt.cancel()
            out[f"watch_{w}"] = {"watchers": w, "all_seen_ms": max(seen) * 1000, "p50_ms": pct(seen, 50)}
            print(f"watch {w:4} watchers: all saw the change in {max(seen) * 1000:.1f} ms (p50 {pct(seen, 50):.1f})", flush=True)
    finally:
        cluster.stop()
    path = os.path.join(ROOT, "bench", "results", time.strftime("cluster-scale-%Y%m%dT%H%M%S.json"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(out, fh, indent=2)
    print("results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
