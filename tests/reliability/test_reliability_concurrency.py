"""Concurrency: many ADD/DEL operations at once, our host-local and Go's on one data dir.

Duplicates are caught while they happen: an IP handed out while another container still holds it
(its DEL not yet started) is a duplicate. At the midpoint every lease file must belong to a live
attachment and vice versa; after the last DEL no lease is left.
"""
from __future__ import annotations

import random
import re
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
    # half Go executables, an eighth our executables, the rest ours in-process (threads: each call
    # opens its own lock descriptor, so flock serialises them like processes)
    flavours = ["go"] * 4 + ["exec"] + ["inproc"] * 3
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


# --- portmap: parallel ADD/DEL, nftables (ours) and iptables (ours and Go's, crossing over) ------

PM_CONTAINERS = 60  # 60 ADD + 60 DEL, plus the warm-up pair
SHARED_RULES = ("-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
                '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ')
PM_BASE_PORT = 20000


def _pm_conf(i: int, backend: str) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "pmnet", "type": "portmap", "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [{"hostPort": PM_BASE_PORT + i, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": FAKE_NETNS}],
                           "ips": [{"address": f"10.33.{i // 200}.{i % 200 + 2}/16", "interface": 0}]}}
    if backend == "iptables":
        conf["backend"] = "iptables"
    return conf


def _pm_rules(i: int) -> Dict[str, int]:
    """How many times container i's DNAT appears in each backend's ruleset."""
    port, ip = PM_BASE_PORT + i, f"10.33.{i // 200}.{i % 200 + 2}"
    nft = relutil.nft_ruleset()
    ipt = cnitest.sh("iptables-save -t nat")
    # nft: the container's own element of the ports4 map (its key is unique, so a duplicate would
    # show as another owner or target) and its hairpin element of masq4
    return {"nft": nft.count(f'tcp . {port} comment "net pmnet id pm{i:04d}" : {ip} . 80'),
            "nft_other": len(re.findall(rf'tcp \. {port} comment "(?!net pmnet id pm{i:04d}")', nft)),
            "nft_masq": nft.count(f'{ip} . tcp . 80 comment "net pmnet id pm{i:04d}"'),
            "ipt": ipt.count(f"--dport {port} -j DNAT --to-destination {ip}:80"),
            "ipt_jump": ipt.count(f"--dports {port} -j CNI-DN-")}


def test_parallel_portmap_add_del_no_lost_or_duplicated_rule(sandbox):
    cnitest.sh("ip link add cnipm0 type veth peer name cnipm1 && ip addr add 10.33.255.1/16 dev cnipm0 "
               "&& ip link set cnipm0 up && ip link set cnipm1 up")
    try:
        _portmap_run()
    finally:
        cnitest.sh("ip link del cnipm0", check=False)


def _shared_rule_counts() -> List[int]:
    saved = cnitest.sh("iptables-save -t nat").splitlines()
    return [saved.count(rule) for rule in SHARED_RULES]


def _portmap_run() -> None:
    # Warm node first, so this test measures steady state; the cold node has its own test below.
    for backend in ("iptables", "nftables"):
        for command in ("ADD", "DEL"):
            out = cnitest.inproc("portmap", command, _pm_conf(PM_CONTAINERS, backend), cid="pmwarm", netns=FAKE_NETNS)
            assert out.rc == 0, out
    rnd = random.Random(4)
    jobs = []
    for i in range(PM_CONTAINERS):
        if i % 3 == 0:  # nftables backend: ours only (Go 1.1.1 has none), exec and in-process
            jobs.append(dict(i=i, backend="nftables", add_by=rnd.choice(["exec", "inproc"]),
                             del_by=rnd.choice(["exec", "inproc"])))
        else:  # iptables: Go's and ours on the same chains, an ADD by one may be DELed by the other
            jobs.append(dict(i=i, backend="iptables", add_by=rnd.choice(["go", "exec", "inproc"]),
                             del_by=rnd.choice(["go", "exec", "inproc"])))
        jobs[-1]["keep"] = rnd.random() < 0.4
    failures: List[str] = []

    def call(job, command, flavour):
        kw = dict(cid=f"pm{job['i']:04d}", netns=FAKE_NETNS)
        conf = _pm_conf(job["i"], job["backend"])
        if flavour == "go":
            out = cnitest.run("portmap", command, conf, go=True, **kw)
        elif flavour == "exec":
            out = cnitest.run("portmap", command, conf, **kw)
        else:
            out = cnitest.inproc("portmap", command, conf, **kw)
        if out.rc != 0:
            failures.append(f"{command} {kw['cid']} {job['backend']} by {flavour}: {out.stdout}{out.stderr}")

    def add(job):
        call(job, "ADD", job["add_by"])
        if not job["keep"]:
            call(job, "DEL", job["del_by"])

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(add, jobs))
    assert failures == []
    wrong = {}
    for job in jobs:
        want = 1 if job["keep"] else 0
        got = _pm_rules(job["i"])
        expect = {"nft": want, "nft_other": 0, "nft_masq": want, "ipt": 0, "ipt_jump": 0} \
            if job["backend"] == "nftables" else \
            {"nft": 0, "nft_other": 0, "nft_masq": 0, "ipt": want, "ipt_jump": want}
        if got != expect:
            wrong[job["i"]] = (job, got)
    assert wrong == {}, wrong
    assert _shared_rule_counts() == [1, 1, 1]

    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda j: call(j, "DEL", j["del_by"]), [j for j in jobs if j["keep"]]))
    assert failures == []
    leftover = {j["i"]: _pm_rules(j["i"]) for j in jobs if any(_pm_rules(j["i"]).values())}
    assert leftover == {}
    assert _shared_rule_counts() == [1, 1, 1]


def test_cold_node_parallel_iptables_portmap_adds_all_succeed(sandbox):
    """Eight first ADDs at once on a node without the shared CNI chains (it failed 6 rounds of 6
    before the iptables backend rebuilt and retried a batch that lost the race)."""
    cnitest.sh("ip link add cnipm0 type veth peer name cnipm1 && ip addr add 10.33.255.1/16 dev cnipm0 "
               "&& ip link set cnipm0 up && ip link set cnipm1 up")
    failed = []
    try:
        for rnd in range(3):
            cnitest.sh("iptables -t nat -F && iptables -t nat -X")  # a cold node: no CNI chain yet
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda i: cnitest.run("portmap", "ADD", _pm_conf(i, "iptables"),
                                                           cid=f"cold{rnd}x{i}", netns=FAKE_NETNS), range(8)))
            failed += [o.stdout for o in outs if o.rc != 0]
    finally:
        cnitest.sh("iptables -t nat -F && iptables -t nat -X && ip link del cnipm0", check=False)
    assert failed == []
