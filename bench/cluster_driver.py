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
        """One ADD (or DEL) as a runtime makes it: an ADD failing with code 11 ("try again later")
        is cleaned up with a DEL and tried again, up to 5 times; the record keeps the first try's
        latency, the retries and every error."""
        cid = f"{a.prefix}{i}"
        retries, errors = 0, []
        while True:
            call = exec_plugin(a.plugin, cni_env(a.command, bindir, cid, "/run/netns/none"), stdin)
            out = call.stdout.decode(errors="replace")
            if retries == 0:
                first = call.seconds
            if call.rc == 0 or a.command != "ADD" or retries == 5 or '"code": 11' not in out:
                break
            errors.append(out[:300])
            exec_plugin(a.plugin, cni_env("DEL", bindir, cid, "/run/netns/none"), stdin)
            retries += 1
        ip = json.loads(out)["ips"][0]["address"] if call.rc == 0 and a.command == "ADD" else ""
        if call.rc != 0:
            errors.append(out[:300])
        return {"s": first, "rc": call.rc, "ip": ip, "retries": retries, "err": " | ".join(errors)}

    with ThreadPoolExecutor(a.concurrency) as pool:
        res = list(pool.map(one, range(a.count)))
    json.dump(res, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
