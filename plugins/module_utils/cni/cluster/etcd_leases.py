"""The overlay's lease set from etcd: `EtcdLeaseSource` (a `LeaseSource` over the node subnet leases
of subnets.py) and `NodeSubnet` (this node's own lease: acquired once, kept alive, re-acquired on
the same subnet when it expired or was deleted). docs/overlay.md, docs/cluster-state.md.

The records under `<prefix>/network/subnets/<key>` are the documents `leases.parse` reads
(`Node`, `PublicIP`, `BackendType`, `BackendData{VNI, VtepMAC}`), so the mapping is `parse` itself.
An unreachable cluster is a `LeaseSourceError` (the daemon keeps its last good state); a malformed
record is a `LeaseError`, as with the directory source.
"""
from __future__ import annotations

import ipaddress
import time
from typing import Any, Dict, Optional

from ..protocol.spec import CNIError
from .client import Client, EtcdConfig, KeepAlive, Unavailable, Watch
from .leases import VXLAN, Lease, LeaseSourceError, parse, vtep_mac
from .subnets import DEFAULT_TTL, NetworkConfig, SubnetError, SubnetLease, SubnetManager


class EtcdLeaseSource:
    """`leases()` lists the subnet keys (one range read); `wait()` blocks on an etcd watch of the
    subnets prefix opened from the revision of the last list, so no change between a list and
    the next wait is missed. While the watch cannot be opened (an outage) it sleeps `poll`."""

    def __init__(self, client: Client, poll: float = 0.5) -> None:
        self.client = client
        self.manager = SubnetManager(client)
        self.poll = poll
        self.revision = 0  # the store revision of the last successful list
        self._watch: Optional[Watch] = None

    def leases(self) -> Dict[str, Lease]:
        try:
            kvs, self.revision = self.client.get_prefix(self.manager.subnets_prefix)
        except CNIError as exc:  # Unavailable, or an etcd error: either way not readable now
            raise LeaseSourceError(f"etcd: {exc.msg}{': ' + exc.details if exc.details else ''}") from None
        out: Dict[str, Lease] = {}
        for kv in kvs:
            key = kv.key[len(self.manager.subnets_prefix):]
            out[key] = parse(key, kv.value.decode("utf-8", "replace"))
        return out

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._watch is None:
            try:
                self._watch = Watch(self.client, self.manager.subnets_prefix, self.revision + 1)
            except CNIError:
                time.sleep(max(0.0, min(self.poll, deadline - time.monotonic())))
                return
        try:
            # Events already seen by a later list only cost one extra (unchanged) list.
            self._watch.next(max(0.0, deadline - time.monotonic()))
        except Unavailable:
            self.close()  # broken stream: the next wait re-opens it from the newest listed revision

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None


class NodeSubnet:
    """This node's subnet lease in etcd. `acquire()` writes the network config if the cluster has
    none (create-only), then takes the node's existing subnet (a restart keeps it) or a free one,
    with `VtepMAC` derived from the subnet (leases.vtep_mac: the datapath's ownership mark), and
    starts a keep-alive. `ensure()` re-acquires, same subnet first, when the keep-alive saw the
    lease expire or the key is missing from the lease set."""

    def __init__(self, conf: EtcdConfig, node: str, public_ip: str, cluster_cidr: str, subnet_len: int = 24,
                 backend: str = VXLAN, vni: int = 1, ttl: int = DEFAULT_TTL) -> None:
        self.conf, self.node, self.public_ip = conf, node, public_ip
        self.network = NetworkConfig(ipaddress.IPv4Network(cluster_cidr), subnet_len, backend={"Type": backend})
        self.backend, self.vni, self.ttl = backend, vni, ttl
        self.client = Client(conf)
        self.manager = SubnetManager(self.client)
        self.lease: Optional[SubnetLease] = None
        self.keepalive: Optional[KeepAlive] = None

    def _data(self, subnet: Optional[ipaddress.IPv4Network]) -> Dict[str, Any]:
        if self.backend != VXLAN:
            return {}
        data: Dict[str, Any] = {"VNI": self.vni}
        if subnet is not None:
            data["VtepMAC"] = vtep_mac(subnet)
        return data

    def acquire(self) -> SubnetLease:
        self.manager.put_config(self.network)
        have = self.manager.get_config().network
        if have != self.network.network:
            raise SubnetError(f"etcd's network config says Network {have}, this node's cluster CIDR is "
                              f"{self.network.network}: make them agree (or delete {self.manager.config_key})")
        prefer = self.lease.subnet if self.lease else None
        if prefer is None:
            mine = [le for le in self.manager.list()[0] if le.node == self.node and le.subnet.subnet_of(have)]
            prefer = mine[0].subnet if mine else None
        got = self.manager.acquire(self.node, self.public_ip, self.backend, self._data(prefer), self.ttl,
                                   prefer=str(prefer) if prefer else None)
        if got.backend_data != self._data(got.subnet):  # a new node: the MAC needs the subnet it got
            got = self.manager.acquire(self.node, self.public_ip, self.backend, self._data(got.subnet), self.ttl,
                                       prefer=str(got.subnet))
        self.lease = got
        self._keep()
        return got

    def _keep(self) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        if self.lease is not None:
            self.keepalive = KeepAlive(self.conf, self.lease.lease_id, self.ttl)

    def ensure(self, leases: Dict[str, Lease]) -> bool:
        """Re-acquire when the lease was lost; True when it did (the lease set changed)."""
        lost = self.keepalive is not None and self.keepalive.lost.is_set()
        present = any(le.node == self.node for le in leases.values())
        if self.lease is not None and present and not lost:
            return False
        self.acquire()
        return True

    def release(self) -> bool:
        """Give the subnet back (reset): the key and its etcd lease are deleted."""
        self.stop()
        mine = [le for le in self.manager.list()[0] if le.node == self.node]
        return any([self.manager.release(le) for le in mine])

    def stop(self) -> None:
        """Stop the keep-alive; the lease stays (its TTL covers a daemon restart)."""
        if self.keepalive is not None:
            self.keepalive.stop()
            self.keepalive = None

    def close(self) -> None:
        self.stop()
        self.client.close()
