"""`cnikit-cluster`: one address pool for every node, each address a key in etcd owned by
(node, containerID, ifname), taken in a transaction. docs/cluster-state.md ("Cluster IPAM").

Config: host-local's range keys (`ranges`, or `subnet`/`rangeStart`/`rangeEnd`/`gateway`,
`routes`, `resolvConf`, requested IPs through CNI_ARGS / args / runtimeConfig — parsed by
host-local's own loader, same messages) plus
  `etcd`     the cluster (cluster/client.py EtcdConfig: endpoints, caFile, certFile, keyFile, timeout, prefix)
  `node`     this node's name (default: $CNIKIT_NODE_NAME, else the hostname)
  `dataDir`  local state: DELs that could not reach etcd (default /var/lib/cni/cnikit-cluster)

Keys (prefix /cnikit):
  ipam/<network>/ips/<ip>                           {"node", "containerID", "ifname"}
  ipam/<network>/owners/<node>/<containerID>/<ifname>  ["<ip>", ...]   (the attachment's addresses)

Every change is one transaction over the address keys and the owner key, so a crash never leaves
an address without its owner record or the other way round. ADD reads the taken addresses
(a linearizable read: without quorum it fails before anything is written), picks free ones at
random (parallel ADDs rarely collide), and commits only if every picked key is still absent;
a collision re-reads and tries again.

DEL when etcd is unreachable succeeds (the pod's interface is gone either way) and records the
attachment under dataDir; the node's next successful call (ADD, DEL, GC, STATUS) releases it.
`cnikit cluster-ipam reclaim --node N` releases every lease of a node that is gone.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import threading
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from ..protocol import skel, spec
from ..cluster.client import Client, EtcdConfig, Unavailable, cmp_absent, cmp_mod_revision, op_delete, op_get, op_get_prefix, op_put
from ..protocol.plugin import Plugin
from ..protocol.spec import CNIError
from .host_local import IpamConf, RangeSet, load_config, parse_resolv_conf
from .store import IPAddr

ERR = spec.ERR_INTERNAL
DEFAULT_DATA_DIR = "/var/lib/cni/cnikit-cluster"
MAX_COLLISIONS = 32


@dataclass
class ClusterConf:
    base: IpamConf
    etcd: EtcdConfig
    node: str
    data_dir: str


def node_name(ipam: Dict[str, Any]) -> str:
    name = ipam.get("node") or os.environ.get("CNIKIT_NODE_NAME") or socket.gethostname()
    if not isinstance(name, str) or not name or "/" in name or len(name) > 253:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"cnikit-cluster: invalid node name {name!r}")
    return name


def load(conf: Dict[str, Any], ctx: skel.Context) -> ClusterConf:
    base = load_config(conf, ctx)
    ipam = conf["ipam"]
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    return ClusterConf(base, EtcdConfig.from_dict(ipam.get("etcd"), "cnikit-cluster: ipam.etcd"),
                       node_name(ipam), data_dir)


class Keys:
    def __init__(self, prefix: str, network: str) -> None:
        self.root = f"{prefix}/ipam/{network}/"
        self.ips = self.root + "ips/"
        self.owners = self.root + "owners/"

    def ip(self, addr: IPAddr | str) -> str:
        return self.ips + str(addr)

    def owner(self, node: str, cid: str, ifname: str) -> str:
        return f"{self.owners}{node}/{cid}/{ifname}"

    def node_owners(self, node: str) -> str:
        return f"{self.owners}{node}/"


def owner_record(node: str, cid: str, ifname: str) -> str:
    return json.dumps({"node": node, "containerID": cid, "ifname": ifname}, sort_keys=True)


def _free_candidates(rs: RangeSet, taken: set) -> List[IPAddr]:
    return [ip for ip, _ in rs.candidates(None) if str(ip) not in taken]


def pick_free(rs: RangeSet, taken: set, tries: int = 64) -> Optional[IPAddr]:
    """A random free address of `rs` (gateways skipped): random probes first — cheap while the
    pool is not nearly full — then a full walk, so a free address is always found if there is one."""
    sizes = [int(r.end) - int(r.start) + 1 for r in rs]
    for _ in range(tries):
        r = random.choices(list(rs), weights=sizes)[0]
        ip = ipaddress.ip_address(random.randint(int(r.start), int(r.end)))
        if ip != r.gateway and str(ip) not in taken:
            return ip
    free = _free_candidates(rs, taken)
    return random.choice(free) if free else None


_local = threading.local()


def client_for(conf: EtcdConfig) -> Client:
    """One client per etcd config and thread, kept for the process's life: the node agent's
    worker threads then reuse their TLS connections (a new one costs ~25 ms, a request on a
    kept one ~2 ms)."""
    cache = getattr(_local, "clients", None)
    if cache is None:
        cache = _local.clients = {}
    cli = cache.get(conf)
    if cli is None:
        cli = cache[conf] = Client(conf)
    return cli


def _range_for(ranges: Sequence[RangeSet], ip: IPAddr) -> Tuple[int, Any]:
    for idx, rs in enumerate(ranges):
        r = rs.range_for(ip)
        if r is not None:
            return idx, r
    raise CNIError(ERR, f"{ip} is in no range set")


class Allocator:
    """The operations on one network's keys, under one client and one deadline."""

    def __init__(self, cli: Client, keys: Keys, node: str) -> None:
        self.cli, self.keys, self.node = cli, keys, node

    def owned(self, cid: str, ifname: str) -> Optional[Tuple[List[str], int]]:
        kv = self.cli.get(self.keys.owner(self.node, cid, ifname))
        return (json.loads(kv.value), kv.mod_revision) if kv else None

    def allocate(self, ranges: Sequence[RangeSet], cid: str, ifname: str, requested: Sequence[IPAddr]) -> List[IPAddr]:
        owner_key = self.keys.owner(self.node, cid, ifname)
        record = owner_record(self.node, cid, ifname)
        for _ in range(MAX_COLLISIONS):
            # one round trip: the taken addresses (keys only) and this attachment's owner key
            snap = self.cli.txn([], [op_get_prefix(self.keys.ips, keys_only=True), op_get(owner_key)])
            taken = {kv.key[len(self.keys.ips):] for kv in snap.kvs(0)}
            if snap.kvs(1):
                raise CNIError(ERR, f"{cid}/{ifname} already holds an address in network "
                                    f"{self.keys.root.rstrip('/').rsplit('/', 1)[1]}, duplicate allocation is not allowed")
            picked: List[IPAddr] = []
            wanted = {str(ip): ip for ip in requested}
            for idx, rs in enumerate(ranges):
                want = next((k for k, ip in wanted.items() if rs.contains(ip)), None)
                if want is not None:
                    ip = wanted.pop(want)
                    r = rs.range_for(ip)
                    if ip == r.gateway:
                        raise CNIError(ERR, f"failed to allocate for range {idx}: requested ip {ip} is subnet's gateway")
                    if str(ip) in taken:
                        raise CNIError(ERR, f"failed to allocate for range {idx}: requested IP address {ip} "
                                            f"is not available in range set {rs}")
                    picked.append(ip)
                    continue
                free = pick_free(rs, taken)
                if free is None:
                    raise CNIError(ERR, f"failed to allocate for range {idx}: no IP addresses available in range set: {rs}")
                picked.append(free)
            if wanted:
                raise CNIError(ERR, "failed to allocate all requested IPs: " + " ".join(wanted))
            compare = [cmp_absent(self.keys.ip(ip)) for ip in picked] + [cmp_absent(owner_key)]
            ops = [op_put(self.keys.ip(ip), record) for ip in picked]
            ops.append(op_put(owner_key, json.dumps([str(ip) for ip in picked])))
            res = self.cli.txn(compare, ops)
            if res.succeeded:
                return picked
            # a collision — or our own earlier attempt landed before its reply was lost
            mine = self.owned(cid, ifname)
            if mine is not None and mine[0] == [str(ip) for ip in picked]:
                return picked
            if requested:
                continue  # re-read: the requested address may have been taken meanwhile
        raise Unavailable("cnikit-cluster: too many allocation collisions", f"{MAX_COLLISIONS} attempts")

    def release(self, node: str, cid: str, ifname: str) -> int:
        """Delete the attachment's owner key and those of its addresses it still owns; returns
        how many addresses were released."""
        owner_key = self.keys.owner(node, cid, ifname)
        for _ in range(MAX_COLLISIONS):
            kv = self.cli.get(owner_key)
            if kv is None:
                return 0
            try:
                ips = [str(ip) for ip in json.loads(kv.value)]
            except (ValueError, TypeError):
                ips = []
            record = owner_record(node, cid, ifname)
            mine = []
            for ip in ips:
                cur = self.cli.get(self.keys.ip(ip))
                if cur is not None and cur.value == record.encode():
                    mine.append((ip, cur.mod_revision))
            compare = [cmp_mod_revision(owner_key, kv.mod_revision)] + [cmp_mod_revision(self.keys.ip(ip), rev) for ip, rev in mine]
            ops = [op_delete(owner_key)] + [op_delete(self.keys.ip(ip)) for ip, _ in mine]
            if self.cli.txn(compare, ops).succeeded:
                return len(mine)
        raise Unavailable("cnikit-cluster: release kept colliding", owner_key)

    def attachments(self, node: str) -> Iterator[Tuple[str, str]]:
        kvs, _ = self.cli.get_prefix(self.keys.node_owners(node))
        for kv in kvs:
            cid, _, ifname = kv.key[len(self.keys.node_owners(node)):].partition("/")
            yield cid, ifname

    def orphans(self) -> List[str]:
        """Address keys whose owner key is gone (should never happen: both change in one txn)."""
        kvs, _ = self.cli.get_prefix(self.keys.ips)
        out = []
        for kv in kvs:
            try:
                doc = json.loads(kv.value)
                owner = self.cli.get(self.keys.owner(doc["node"], doc["containerID"], doc["ifname"]))
            except (ValueError, KeyError, TypeError):
                owner = None
            if owner is None or kv.key[len(self.keys.ips):] not in json.loads(owner.value):
                out.append(kv.key)
        return out


# --- DELs that could not reach etcd ---------------------------------------------------------

def _pending_dir(cc: ClusterConf) -> str:
    return os.path.join(cc.data_dir, cc.base.name, "pending-release")


def record_pending(cc: ClusterConf, cid: str, ifname: str) -> None:
    d = _pending_dir(cc)
    os.makedirs(d, mode=0o755, exist_ok=True)
    path = os.path.join(d, f"{cid}:{ifname}")
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(owner_record(cc.node, cid, ifname))
    os.replace(tmp, path)


def flush_pending(cc: ClusterConf, alloc: Allocator) -> int:
    """Release what earlier DELs could not; a file goes only after its release committed."""
    d = _pending_dir(cc)
    try:
        names = sorted(os.listdir(d))
    except FileNotFoundError:
        return 0
    done = 0
    for name in names:
        cid, sep, ifname = name.partition(":")
        if not sep or ".tmp" in ifname:
            continue
        alloc.release(cc.node, cid, ifname)
        os.unlink(os.path.join(d, name))
        done += 1
    return done


class ClusterIpam(Plugin):
    name = "cnikit-cluster"

    @staticmethod
    def _open(conf: Dict[str, Any], ctx: skel.Context) -> Tuple[ClusterConf, Client, Allocator]:
        cc = load(conf, ctx)
        cli = client_for(cc.etcd)
        return cc, cli, Allocator(cli, Keys(cc.etcd.prefix, cc.base.name), cc.node)

    def add(self, ctx: skel.Context, conf: Dict[str, Any]) -> Dict[str, Any]:
        cc, cli, alloc = self._open(conf, ctx)
        dns = parse_resolv_conf(cc.base.resolv_conf) if cc.base.resolv_conf else {}
        with cli.budget():
            flush_pending(cc, alloc)
            picked = alloc.allocate(cc.base.ranges, ctx.container_id, ctx.ifname, cc.base.requested)
        ips = []
        for ip in picked:
            _, r = _range_for(cc.base.ranges, ip)
            ips.append({"address": f"{ip}/{r.network.prefixlen}", "gateway": str(r.gateway)})
        return spec.new_result(ips=ips, routes=cc.base.routes, dns=dns)

    def delete(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        cc, cli, alloc = self._open(conf, ctx)
        try:
            with cli.budget():
                alloc.release(cc.node, ctx.container_id, ctx.ifname)
                flush_pending(cc, alloc)
        except Unavailable:
            # The pod is going away whatever etcd says: remember the release and succeed.
            record_pending(cc, ctx.container_id, ctx.ifname)

    def check(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        cc, cli, alloc = self._open(conf, ctx)
        with cli.budget():
            owned = alloc.owned(ctx.container_id, ctx.ifname)
            if owned is None:
                raise CNIError(ERR, f"cnikit-cluster: Failed to find address added by container {ctx.container_id}")
            record = owner_record(cc.node, ctx.container_id, ctx.ifname).encode()
            for ip in owned[0]:
                kv = cli.get(alloc.keys.ip(ip))
                if kv is None or kv.value != record:
                    raise CNIError(ERR, f"cnikit-cluster: address {ip} of container {ctx.container_id} "
                                        f"is not owned by it in etcd")
        prev = conf.get("prevResult")
        if prev:
            have = {ipaddress.ip_interface(ip["address"]).ip for ip in prev.get("ips", [])}
            for ip in owned[0]:
                if ipaddress.ip_address(ip) not in have:
                    raise CNIError(ERR, f"cnikit-cluster: address {ip} missing from prevResult")

    def gc(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Release this node's attachments not in `cni.dev/valid-attachments` (skel.gc has already
        made sure there is a list: with none, nothing is released — issue 19)."""
        keep = spec.valid_attachments(conf)
        cc, cli, alloc = self._open(conf, ctx)
        with cli.budget(max(cc.etcd.timeout, 10.0)):
            flush_pending(cc, alloc)
            for cid, ifname in list(alloc.attachments(cc.node)):
                if (cid, ifname) not in keep:
                    alloc.release(cc.node, cid, ifname)

    def status(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        cc, cli, alloc = self._open(conf, ctx)
        try:
            with cli.budget():
                flush_pending(cc, alloc)
                kvs, _ = cli.get_prefix(alloc.keys.ips, keys_only=True)
        except Unavailable as exc:
            raise CNIError(spec.ERR_NOT_AVAILABLE, f"cnikit-cluster: {exc.msg}", exc.details) from None
        taken = {kv.key[len(alloc.keys.ips):] for kv in kvs}
        for idx, rs in enumerate(cc.base.ranges):
            if pick_free(rs, taken, tries=0) is None:
                raise CNIError(spec.ERR_NOT_AVAILABLE, f"cnikit-cluster: no IP addresses available in range set {idx}: {rs}")


# --- operator command: `cnikit cluster-ipam` ------------------------------------------------

def _ipam_conf(path: str) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        doc = json.load(fh)
    for plugin in doc.get("plugins", [doc]):
        if (plugin.get("ipam") or {}).get("type") == ClusterIpam.name:
            return dict(plugin, name=doc["name"], cniVersion=doc.get("cniVersion", "1.0.0"))
    raise CNIError(spec.ERR_INVALID_CONFIG, f"{path}: no plugin with ipam type {ClusterIpam.name}")


def cli_main(args: Any) -> int:
    conf = _ipam_conf(args.conf)
    cc, cli, alloc = ClusterIpam._open(conf, skel.Context(command="GC"))
    with cli.budget(max(cc.etcd.timeout, 30.0)):
        if args.action == "list":
            kvs, _ = cli.get_prefix(alloc.keys.ips)
            for kv in kvs:
                doc = json.loads(kv.value)
                print(f"{kv.key[len(alloc.keys.ips):]}\t{doc.get('node')}\t{doc.get('containerID')}\t{doc.get('ifname')}")
            return 0
        if not args.node:
            raise CNIError(spec.ERR_INVALID_CONFIG, "reclaim needs --node NODE (the node that is gone)")
        released = attachments = 0
        for cid, ifname in list(alloc.attachments(args.node)):
            released += alloc.release(args.node, cid, ifname)
            attachments += 1
        print(f"reclaimed {released} addresses of {attachments} attachments of node {args.node}")
    return 0
