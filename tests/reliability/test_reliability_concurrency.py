"""Concurrency: many ADD/DEL operations at once, our host-local and Go's on one data dir.

Duplicates are caught while they happen: an IP handed out while another container still holds it
(its DEL not yet started) is a duplicate. At the midpoint every lease file must belong to a live
attachment and vice versa; after the last DEL no lease is left.
"""
from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Tuple

import cnitest
import relutil

CONTAINERS = 250          # 250 ADD + 250 DEL = 500 operations
NETWORKS = ("cc-a", "cc-b", "cc-c")
WORKERS = 16
FAKE_NETNS = "/run/netns/cnikit-ipam-only"  # IPAM never opens it; the skels only need it set


def _conf(net: str, datadir: str) -> dict:
    # a 120-address range: ~80 containers per network keep it busy and force reuse after DELs
    return {"cniVersion": "1.0.0", "name": net, "type": "host-local",
            "ipam": {"type": "host-local", "dataDir": datadir,
                     "ranges": [[{"subnet": "10.77.0.0/24", "rangeStart": "10.77.0.10", "rangeEnd": "10.77.0.129"}]]}}


class Ledger:
    """Which IP each live attachment holds, to catch a duplicate the moment it is handed out."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.live: Dict[Tuple[str, str], Tuple[str, str]] = {}  # (net, ip) -> (cid, ifname)
        self.duplicates: List[str] = []

    def added(self, net: str, ip: str, owner: Tuple[str, str]) -> None:
        with self.lock:
            if (net, ip) in self.live:
                self.duplicates.append(f"{net} {ip}: {owner} while {self.live[(net, ip)]} holds it")
            self.live[(net, ip)] = owner

    def releasing(self, net: str, ip: str) -> None:
        with self.lock:
            self.live.pop((net, ip), None)


def _call(flavour: str, command: str, conf: dict, cid: str, ifname: str) -> cnitest.Outcome:
    kw = dict(cid=cid, ifname=ifname, netns=FAKE_NETNS)
    if flavour == "go":
        return cnitest.run("host-local", command, conf, go=True, **kw)
    if flavour == "exec":
        return cnitest.run("host-local", command, conf, **kw)
    return cnitest.inproc("host-local", command, conf, **kw)


def test_parallel_add_del_mixed_go_and_ours(sandbox, tmp_path):
    datadir = str(tmp_path / "data")
    rnd = random.Random(8)
    # half Go executables, a quarter our executables, a quarter ours in-process (threads: each
    # call opens its own lock descriptor, so flock serialises them like processes)
    flavours = ["go", "go", "exec", "inproc"]
    jobs = []
    for i in range(CONTAINERS):
        net = NETWORKS[i % len(NETWORKS)]
        jobs.append(dict(net=net, conf=_conf(net, datadir), cid=f"ctr{i:04d}", ifname="net1" if i % 5 == 0 else "eth0",
                         add_by=rnd.choice(flavours), del_by=rnd.choice(flavours), keep=rnd.random() < 0.4))
    ledger = Ledger()
    failures: List[str] = []

    def add(job):
        out = _call(job["add_by"], "ADD", job["conf"], job["cid"], job["ifname"])
        if out.rc != 0:
            failures.append(f"ADD {job['cid']} by {job['add_by']}: {out.stdout}{out.stderr}")
            return
        job["ip"] = out.json["ips"][0]["address"].split("/")[0]
        ledger.added(job["net"], job["ip"], (job["cid"], job["ifname"]))
        if not job["keep"]:
            delete(job)

    def delete(job):
        if "ip" in job:
            ledger.releasing(job["net"], job["ip"])
        out = _call(job["del_by"], "DEL", job["conf"], job["cid"], job["ifname"])
        if out.rc != 0:
            failures.append(f"DEL {job['cid']} by {job['del_by']}: {out.stdout}{out.stderr}")

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(add, jobs))
    assert failures == [] and ledger.duplicates == []

    # midpoint: the store holds exactly the live attachments, one distinct IP each
    kept = [j for j in jobs if j["keep"]]
    assert kept, "the seed keeps some containers up to the midpoint"
    expected = {f"{j['net']}/{j['ip']}": f"{j['cid']}\r\n{j['ifname']}" for j in kept}
    assert relutil.lease_files(datadir) == expected
    assert len(expected) == len(kept)

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(delete, kept))
    assert failures == []
    assert relutil.lease_files(datadir) == {}
