"""Node subnet leases (flannel's scheme, on our etcd client): a cluster CIDR cut into per-node
subnets, each held by one node under an etcd lease with a TTL. docs/cluster-state.md.

Keys (under the client's prefix, default /cnikit):
  network/config                  {"Network": "10.244.0.0/16", "SubnetLen": 24, "SubnetMin"?,
                                   "SubnetMax"?, "Backend": {...}}   (flannel's field names)
  network/subnets/10.244.1.0-24   {"Node": "k8s-node01", "PublicIP": "192.168.80.101",
                                   "BackendType": "vxlan", "BackendData": {"VtepMAC": ...}}
                                   attached to the node's etcd lease

- `acquire` returns the node's existing lease when there is one (same subnet after a restart;
  record and TTL refreshed), else the subnet it asks for (`prefer`, e.g. the one it persisted
  locally) if free, else the lowest free one. Taking a subnet is a transaction that succeeds
  only if the key does not exist, so two nodes joining at once never get the same subnet: the
  loser re-reads and takes the next.
- `renew` refreshes the etcd lease (`KeepAlive` does it in the background); when the lease has
  expired it re-acquires, preferring the same subnet.
- `release` deletes the key (only if it still belongs to the node) and revokes the lease.
- `list` + `watch` give peers the lease set and its changes (list + watch from the list's
  revision: nothing is missed).
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..protocol import spec
from ..protocol.spec import CNIError
from .client import Client, Event, KV, cmp_absent, cmp_mod_revision, op_delete, op_get, op_put

DEFAULT_TTL = 24 * 3600  # flannel's
MAX_RACE_RETRIES = 64

IPv4Network = ipaddress.IPv4Network


class SubnetError(CNIError):
    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(spec.ERR_INTERNAL, msg, details)


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int = 24
    subnet_min: Optional[IPv4Network] = None
    subnet_max: Optional[IPv4Network] = None
    backend: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: Any) -> "NetworkConfig":
        if not isinstance(raw, dict) or not isinstance(raw.get("Network"), str):
            raise SubnetError("network config: 'Network' (a CIDR) is required")
        try:
            net = ipaddress.IPv4Network(raw["Network"], strict=True)
        except ValueError as exc:
            raise SubnetError(f"network config: bad Network {raw['Network']!r}", str(exc)) from None
        length = raw.get("SubnetLen", 24 if net.prefixlen < 24 else net.prefixlen + 1)
        if isinstance(length, bool) or not isinstance(length, int) or not net.prefixlen < length <= 30:
            raise SubnetError(f"network config: SubnetLen {length!r} must be in ({net.prefixlen}, 30]")
        bounds = []
        for key in ("SubnetMin", "SubnetMax"):
            val = raw.get(key)
            if val in (None, ""):
                bounds.append(None)
                continue
            try:
                sub = IPv4Network(f"{str(val).split('/')[0]}/{length}", strict=True)
            except ValueError as exc:
                raise SubnetError(f"network config: bad {key} {val!r}", str(exc)) from None
            if not sub.subnet_of(net):
                raise SubnetError(f"network config: {key} {val} is outside {net}")
            bounds.append(sub)
        backend = raw.get("Backend") or {}
        if not isinstance(backend, dict):
            raise SubnetError("network config: Backend must be an object")
        return cls(net, length, bounds[0], bounds[1], backend)

    def to_dict(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"Network": str(self.network), "SubnetLen": self.subnet_len}
        if self.subnet_min:
            out["SubnetMin"] = str(self.subnet_min.network_address)
        if self.subnet_max:
            out["SubnetMax"] = str(self.subnet_max.network_address)
        if self.backend:
            out["Backend"] = self.backend
        return out

    def candidates(self) -> Iterator[IPv4Network]:
        """Every subnet a node may get, lowest first (flannel skips the first: .0.0/len stays free
        by default, like its SubnetMin = network + 1 subnet)."""
        lo = self.subnet_min or next(self.network.subnets(new_prefix=self.subnet_len))
        hi = self.subnet_max
        first = self.subnet_min is None
        for sub in self.network.subnets(new_prefix=self.subnet_len):
            if first and sub == lo:
                continue
            if int(sub.network_address) < int(lo.network_address):
                continue
            if hi is not None and int(sub.network_address) > int(hi.network_address):
                return
            yield sub


def subnet_key_name(sub: IPv4Network) -> str:
    return f"{sub.network_address}-{sub.prefixlen}"


def parse_key_name(name: str) -> IPv4Network:
    addr, _, plen = name.rpartition("-")
    return IPv4Network(f"{addr}/{plen}")


@dataclass(frozen=True)
class SubnetLease:
    subnet: IPv4Network
    node: str
    public_ip: str
    backend_type: str = ""
    backend_data: Dict[str, Any] = field(default_factory=dict)
    lease_id: int = 0
    mod_revision: int = 0

    def record(self) -> str:
        return json.dumps({"Node": self.node, "PublicIP": self.public_ip, "BackendType": self.backend_type,
                           "BackendData": self.backend_data}, sort_keys=True)

    @classmethod
    def from_kv(cls, kv: KV) -> Optional["SubnetLease"]:
        """None for a key that is not a well-formed lease (it is ignored, never fatal)."""
        try:
            sub = parse_key_name(kv.key.rsplit("/", 1)[1])
            doc = json.loads(kv.value)
            return cls(sub, str(doc["Node"]), str(doc.get("PublicIP", "")), str(doc.get("BackendType", "")),
                       dict(doc.get("BackendData") or {}), kv.lease, kv.mod_revision)
        except (ValueError, KeyError, TypeError, IndexError):
            return None


@dataclass(frozen=True)
class LeaseChange:
    kind: str  # "added" (new or updated) | "removed" (released or expired)
    subnet: IPv4Network
    lease: Optional[SubnetLease]  # None when removed


class SubnetManager:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.config_key = f"{client.conf.prefix}/network/config"
        self.subnets_prefix = f"{client.conf.prefix}/network/subnets/"

    def key(self, sub: IPv4Network) -> str:
        return self.subnets_prefix + subnet_key_name(sub)

    # --- config ---------------------------------------------------------------------------

    def put_config(self, conf: NetworkConfig) -> bool:
        """Write the network config if there is none; True when written. An existing config is
        kept (changing the cluster CIDR under live leases is an operator decision: delete it)."""
        return self.client.txn([cmp_absent(self.config_key)], [op_put(self.config_key, json.dumps(conf.to_dict()))]).succeeded

    def get_config(self) -> NetworkConfig:
        kv = self.client.get(self.config_key)
        if kv is None:
            raise SubnetError(f"no network config at {self.config_key}")
        try:
            return NetworkConfig.from_dict(json.loads(kv.value))
        except ValueError as exc:
            raise SubnetError(f"network config at {self.config_key} is not JSON", str(exc)) from None

    # --- leases ---------------------------------------------------------------------------

    def list(self) -> Tuple[List[SubnetLease], int]:
        kvs, rev = self.client.get_prefix(self.subnets_prefix)
        return [lease for lease in (SubnetLease.from_kv(kv) for kv in kvs) if lease], rev

    def acquire(self, node: str, public_ip: str, backend_type: str = "", backend_data: Optional[Dict[str, Any]] = None,
                ttl: int = DEFAULT_TTL, prefer: Optional[str] = None) -> SubnetLease:
        if not node:
            raise SubnetError("a node name is required")
        conf = self.get_config()
        want = SubnetLease(IPv4Network("0.0.0.0/32"), node, public_ip, backend_type, dict(backend_data or {}))
        wanted = IPv4Network(prefer) if prefer else None
        for _ in range(MAX_RACE_RETRIES):
            leases, _rev = self.list()
            mine = [le for le in leases if le.node == node and le.subnet.subnet_of(conf.network)]
            if mine:  # a restart: keep the subnet, refresh record and lease
                got = self._refresh(mine[0], want, ttl)
                if got is not None:
                    return got
                continue
            taken = {le.subnet for le in leases}
            order = list(conf.candidates())
            if wanted in order:
                order.remove(wanted)
                order.insert(0, wanted)
            free = next((s for s in order if s not in taken), None)
            if free is None:
                raise SubnetError(f"no free /{conf.subnet_len} subnet left in {conf.network} "
                                  f"({len(taken)} leased)")
            lease_id = self.client.grant(ttl)
            key = self.key(free)
            res = self.client.txn([cmp_absent(key)], [op_put(key, _replace_subnet(want, free).record(), lease_id)])
            if res.succeeded:
                return _replace_subnet(want, free, lease_id, res.revision)
            self.client.revoke(lease_id)  # lost the race: another node took it; look again
        raise SubnetError(f"could not acquire a subnet for {node} after {MAX_RACE_RETRIES} tries (contention)")

    def _refresh(self, old: SubnetLease, want: SubnetLease, ttl: int) -> Optional[SubnetLease]:
        """Keep `old`'s subnet for `want`'s node with a fresh lease and record; None on a race."""
        lease_id = self.client.grant(ttl)
        key = self.key(old.subnet)
        res = self.client.txn([cmp_mod_revision(key, old.mod_revision)],
                              [op_put(key, _replace_subnet(want, old.subnet).record(), lease_id)])
        if not res.succeeded:
            self.client.revoke(lease_id)
            return None
        if old.lease_id:
            self.client.revoke(old.lease_id)  # the key is on the new lease now; the old one holds nothing
        return _replace_subnet(want, old.subnet, lease_id, res.revision)

    def renew(self, lease: SubnetLease, ttl: int = DEFAULT_TTL) -> SubnetLease:
        """Refresh the lease; when it has expired (the key is gone) acquire again, same subnet first."""
        if lease.lease_id and self.client.keepalive(lease.lease_id) > 0:
            kv = self.client.get(self.key(lease.subnet))
            current = SubnetLease.from_kv(kv) if kv else None
            if current and current.node == lease.node:
                return current
        return self.acquire(lease.node, lease.public_ip, lease.backend_type, lease.backend_data, ttl,
                            prefer=str(lease.subnet))

    def release(self, lease: SubnetLease) -> bool:
        """Delete the node's key (only while it is still the node's) and revoke its lease."""
        key = self.key(lease.subnet)
        res = self.client.txn([], [op_get(key)])
        kvs = res.kvs(0)
        current = SubnetLease.from_kv(kvs[0]) if kvs else None
        done = False
        if current and current.node == lease.node:
            done = self.client.txn([cmp_mod_revision(key, current.mod_revision)], [op_delete(key)]).succeeded
            if current.lease_id:
                self.client.revoke(current.lease_id)
        if lease.lease_id and (current is None or lease.lease_id != current.lease_id):
            self.client.revoke(lease.lease_id)
        return done

    def watch(self, revision: int) -> Iterator[List[LeaseChange]]:
        """Batches of changes after `revision` (from `list()`); raises client.Unavailable when the
        stream breaks (list again and watch from the new revision). Empty batches every second
        let the caller check for shutdown."""
        w = self.client.watch(self.subnets_prefix, revision + 1)
        try:
            while True:
                yield [change for change in (_change(ev) for ev in w.next(1.0)) if change]
        finally:
            w.cancel()


def _replace_subnet(lease: SubnetLease, sub: IPv4Network, lease_id: int = 0, rev: int = 0) -> SubnetLease:
    return SubnetLease(sub, lease.node, lease.public_ip, lease.backend_type, lease.backend_data, lease_id, rev)


def _change(ev: Event) -> Optional[LeaseChange]:
    try:
        sub = parse_key_name(ev.kv.key.rsplit("/", 1)[1])
    except (ValueError, IndexError):
        return None
    if ev.type == "DELETE":
        return LeaseChange("removed", sub, None)
    lease = SubnetLease.from_kv(ev.kv)
    return LeaseChange("added", sub, lease) if lease else None
