"""Runs inside one lab node (bench/cluster_load.py starts it with nsenter): N plugin calls
through the real exec protocol, `--concurrency` at a time; prints one JSON line with each
call's latency and result."""
from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor

from .driver import cni_env, exec_plugin


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--conf", required=True)
    ap.add_argument("--command", required=True, choices=("ADD", "DEL"))
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    a = ap.parse_args()
    with open(a.conf, "rb") as fh:
        stdin = fh.read()
    bindir = a.plugin.rsplit("/", 1)[0]

    def one(i: int):
        call = exec_plugin(a.plugin, cni_env(a.command, bindir, f"{a.prefix}{i}", "/run/netns/none"), stdin)
        out = call.stdout.decode(errors="replace")
        ip = ""
        if call.rc == 0 and a.command == "ADD":
            ip = json.loads(out)["ips"][0]["address"]
        return {"s": call.seconds, "rc": call.rc, "ip": ip, "err": "" if call.rc == 0 else out[:300]}

    with ThreadPoolExecutor(a.concurrency) as pool:
        res = list(pool.map(one, range(a.count)))
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
