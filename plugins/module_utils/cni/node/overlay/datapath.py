"""The overlay datapath on one node: the backend device and, per remote node, exactly its entries.

vxlan (flannel's): a device `flannel.<VNI>` (UDP port 8472 by default, local = the node IP, on the
uplink, no learning, MAC derived from the node's subnet, MTU = uplink − 50, the subnet's .0/32 on
it) and per remote node three entries:

    route  <subnet> via <subnet .0> dev flannel.1 onlink     (protocol RTPROT_CNIKIT)
    neigh  <subnet .0> lladdr <VTEP MAC> PERMANENT           (NDA_PROTOCOL RTPROT_CNIKIT)
    fdb    <VTEP MAC> dst <node IP> self permanent           (MAC in the derived VTEP range)

host-gw: per remote node one route `<subnet> via <node IP>` on the uplink (protocol RTPROT_CNIKIT);
a peer whose node IP is not on the uplink's own subnet is refused (it is not on this L2 segment).

Ownership: routes and neighbours carry our protocol number; vxlan FDB entries cannot carry one, so
ours are those on our device with a MAC in the derived VTEP range (leases.VTEP_MAC_PREFIX). Nothing
else is read as ours, so nothing else is ever changed. Masquerade: one nft table, pod traffic leaving
the cluster CIDR only.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

from ...cluster.leases import HOST_GW, UDP, VTEP_MAC_PREFIX, VXLAN, Lease
from ...net import link, neigh
from ...netfilter import nft

RTPROT_CNIKIT = 241  # rtm_protocol / NDA_PROTOCOL of every entry the daemon writes (unassigned in iproute2)
OVERHEAD = {VXLAN: 50, HOST_GW: 0, UDP: 28}  # vxlan: outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14
MASQ_TABLE = "cnikit_overlay"


class DatapathError(RuntimeError):
    """A state the datapath refuses to build; the message says what to fix."""


@dataclass(frozen=True)
class Backend:
    kind: str = VXLAN
    vni: int = 1
    port: int = 8472
    uplink: str = ""  # "" = the link holding the node's PublicIP
    cluster: str = ""  # the cluster CIDR (udp: routed into the tun device)

    @property
    def device(self) -> str:
        return "flannel0" if self.kind == UDP else f"flannel.{self.vni}"


@dataclass
class Entries:
    routes: Set[neigh.Route] = field(default_factory=set)
    neighbours: Set[neigh.Neighbour] = field(default_factory=set)
    fdb: Set[neigh.Fdb] = field(default_factory=set)

    def counts(self) -> Dict[str, int]:
        return {"routes": len(self.routes), "neighbours": len(self.neighbours), "fdb": len(self.fdb)}

    def total(self) -> int:
        return len(self.routes) + len(self.neighbours) + len(self.fdb)


@dataclass(frozen=True)
class Node:
    """What the datapath found (or made) on this node."""
    uplink_index: int
    uplink_mtu: int
    uplink_nets: Tuple[ipaddress.IPv4Network, ...]
    device_index: int  # 0 for host-gw
    mtu: int  # the pods' MTU


def _uplink(ipr: Any, backend: Backend, own: Lease) -> link.Iface:
    if backend.uplink:
        return link.require_link(ipr, backend.uplink, f"uplink {backend.uplink!r}")
    for msg in ipr.get_addr(family=2):
        if msg.get_attr("IFA_ADDRESS") == str(own.public_ip):
            found = link.get_link(ipr, index=msg["index"])
            if found:
                return found
    raise DatapathError(f"no link holds this node's PublicIP {own.public_ip} (set the uplink explicitly)")


def _nets(ipr: Any, index: int) -> Tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Interface(a).network for a in link.link_addresses(ipr, index, family=2))


def ensure_node(ipr: Any, backend: Backend, own: Lease) -> Node:
    """The uplink, and for vxlan the device as specified (created, or corrected in place); idempotent."""
    up = _uplink(ipr, backend, own)
    nets = _nets(ipr, up["index"])
    mtu = up["mtu"] - OVERHEAD[backend.kind]
    if backend.kind == HOST_GW:
        return Node(up["index"], up["mtu"], nets, 0, mtu)
    if backend.kind == UDP:
        return _ensure_tun(ipr, backend, own, up, nets, mtu)
    dev = link.get_link(ipr, backend.device)
    want = {"IFLA_VXLAN_ID": backend.vni, "IFLA_VXLAN_PORT": backend.port,
            "IFLA_VXLAN_LOCAL": str(own.public_ip), "IFLA_VXLAN_LINK": up["index"], "IFLA_VXLAN_LEARNING": 0}
    if dev is not None:
        if dev["kind"] != "vxlan":
            raise DatapathError(f"{backend.device} exists and is a {dev['kind'] or 'plain'} link, not ours: "
                                "remove it or pick another VNI")
        if any(link.info_data(dev, k) != v for k, v in want.items()):
            ipr.link("del", index=dev["index"])  # ours, built differently (VNI/port/uplink changed): rebuild
            dev = None
    if dev is None:
        ipr.link("add", ifname=backend.device, kind="vxlan", vxlan_id=backend.vni, vxlan_port=backend.port,
                 vxlan_local=str(own.public_ip), vxlan_link=up["index"], vxlan_learning=0,
                 address=own.vtep_mac, mtu=mtu)
        dev = link.require_link(ipr, backend.device)
        # no IPv6 on the VTEP: link-local chatter has no FDB entry and only counts as drops
        link.sysctl_try_set(f"net/ipv6/conf/{backend.device}/disable_ipv6", "1")
    return Node(up["index"], up["mtu"], nets, _device_common(ipr, dev, own, mtu, own.vtep_mac), mtu)


def _ensure_tun(ipr: Any, backend: Backend, own: Lease, up: link.Iface, nets: Tuple[ipaddress.IPv4Network, ...],
                mtu: int) -> Node:
    """udp: a persistent tun `flannel0` (MTU uplink − 28, address the subnet's .0/32, up); the daemon's
    relay (udp.py) carries its packets. One route, the cluster CIDR into it, is in desired()."""
    dev = link.get_link(ipr, backend.device)
    if dev is not None and dev["kind"] != "tun":
        raise DatapathError(f"{backend.device} exists and is a {dev['kind'] or 'plain'} link, not ours: remove it")
    if dev is None:
        os.close(link.open_tun(backend.device, persist=True))
        dev = link.require_link(ipr, backend.device)
        link.sysctl_try_set(f"net/ipv6/conf/{backend.device}/disable_ipv6", "1")
    return Node(up["index"], up["mtu"], nets, _device_common(ipr, dev, own, mtu, None), mtu)


def _device_common(ipr: Any, dev: link.Iface, own: Lease, mtu: int, mac: Optional[str]) -> int:
    """MTU (and MAC), the address <subnet .0>/32 alone, up: the part both devices share."""
    if dev["mtu"] != mtu or (mac and dev["mac"].lower() != mac):
        link.set_link(ipr, dev["index"], mtu=mtu, **({"address": mac} if mac else {}))
    vtep = f"{own.vtep_ip}/32"
    have = link.link_addresses(ipr, dev["index"], family=2)
    for addr in have:
        if addr != vtep:
            ipr.addr("del", index=dev["index"], address=addr.split("/")[0], prefixlen=int(addr.split("/")[1]))
    if vtep not in have:
        ipr.addr("add", index=dev["index"], address=str(own.vtep_ip), prefixlen=32)
    if not dev["up"]:
        link.set_link(ipr, dev["index"], state="up")
    return dev["index"]


def desired(own: Lease, leases: Iterable[Lease], backend: Backend, node: Node) -> Tuple[Entries, List[str]]:
    """The entries for every remote lease, and the peers refused (with why)."""
    want, refused = Entries(), []
    if backend.kind == UDP:  # no per-node kernel entries: the relay holds the peer table
        if backend.cluster:
            want.routes.add((backend.cluster, "", node.device_index, False))
        return want, refused
    for lease in sorted(leases, key=lambda l: int(l.subnet.network_address)):
        if lease.subnet == own.subnet:
            continue
        if backend.kind == VXLAN:
            want.routes.add((str(lease.subnet), str(lease.vtep_ip), node.device_index, True))
            want.neighbours.add((str(lease.vtep_ip), lease.vtep_mac))
            want.fdb.add((lease.vtep_mac, str(lease.public_ip)))
        elif not any(lease.public_ip in net for net in node.uplink_nets):
            refused.append(f"host-gw: peer {lease.node or lease.key} ({lease.public_ip}) is not on this node's "
                           f"L2 segment ({', '.join(map(str, node.uplink_nets)) or 'no address'}): no route to "
                           f"{lease.subnet}; use backend vxlan")
        else:
            want.routes.add((str(lease.subnet), str(lease.public_ip), node.uplink_index, False))
    return want, refused


def _ours_fdb(entry: neigh.Fdb) -> bool:
    return entry[0].startswith(VTEP_MAC_PREFIX + ":")


def current(ipr: Any, node: Node) -> Entries:
    have = Entries(routes=set(neigh.routes_by_protocol(ipr, RTPROT_CNIKIT)))
    if node.device_index:
        have.neighbours = set(neigh.neighbours(ipr, node.device_index, RTPROT_CNIKIT))
        have.fdb = {e for e in neigh.fdb_entries(ipr, node.device_index) if _ours_fdb(e)}
    return have


def apply(ipr: Any, node: Node, want: Entries, have: Entries) -> Dict[str, int]:
    """Make `have` (ours, as read) equal `want`: stale entries go first (a changed peer re-uses the
    same destination), then the new ones; FDB before neighbour on removal, so an interrupted run
    leaves nothing it could not recognise next time. Returns how many entries were added/removed."""
    dev = node.device_index
    gone_routes, new_routes = have.routes - want.routes, want.routes - have.routes
    gone_fdb, new_fdb = have.fdb - want.fdb, want.fdb - have.fdb
    gone_neigh, new_neigh = have.neighbours - want.neighbours, want.neighbours - have.neighbours
    for r in gone_routes:
        neigh.del_route(ipr, r, RTPROT_CNIKIT)
    for mac, dst in gone_fdb:
        neigh.del_fdb(ipr, dev, mac, dst)
    for ip, _mac in gone_neigh:
        if ip not in {n[0] for n in new_neigh}:  # a replace below covers a changed MAC
            neigh.del_neighbour(ipr, dev, ip)
    conflicts: List[str] = []
    for mac, dst in new_fdb:
        if not _exists(neigh.append_fdb, ipr, dev, mac, dst):
            continue  # written by someone else in between (a concurrent `overlayd --once`): same entry
    for ip, mac in new_neigh:
        neigh.add_neighbour(ipr, dev, ip, mac, RTPROT_CNIKIT)
    for r in new_routes:
        if not _exists(neigh.add_route, ipr, r, RTPROT_CNIKIT) and r not in neigh.routes_by_protocol(ipr, RTPROT_CNIKIT):
            conflicts.append(f"a route to {r[0]} exists and is not ours: left alone, {r[0]} stays unreachable "
                             "through the overlay until it is removed")
    return {"added": len(new_routes) + len(new_fdb) + len(new_neigh) - len(conflicts),
            "removed": len(gone_routes) + len(gone_fdb) + len(gone_neigh), "conflicts": conflicts}


def _exists(fn: Any, *args: Any) -> bool:
    """Run an add; False when the kernel says the entry exists (EEXIST) instead of raising."""
    try:
        fn(*args)
        return True
    except Exception as exc:  # noqa: BLE001
        if link.netlink_error_code(exc) == 17:
            return False
        raise


@dataclass
class Pass:
    """One reconcile pass: what changed, the peers refused (and conflicts), the node, the entries wanted."""
    changes: Dict[str, int]
    refused: List[str]
    node: Node
    want: Entries
    conflicts: bool


def reconcile(ipr: Any, own: Lease, leases: Iterable[Lease], backend: Backend, node: Optional[Node] = None,
              have: Optional[Entries] = None) -> Pass:
    """One pass. Full (no `node`/`have`): ensure the device and read ours back from the kernel.
    Incremental: trust `node` and `have` (what the last pass left) and apply only the difference."""
    full = node is None or have is None
    node = ensure_node(ipr, backend, own) if full or node is None else node
    want, refused = desired(own, leases, backend, node)
    result = apply(ipr, node, want, current(ipr, node) if full or have is None else have)
    return Pass({k: result[k] for k in ("added", "removed")}, refused + result["conflicts"], node, want,
                bool(result["conflicts"]))


def masq_lines(cluster_cidr: str) -> List[str]:
    """Pod traffic is masqueraded only when it leaves the cluster CIDR (and is not multicast)."""
    t = f"ip {MASQ_TABLE}"
    return [f"add table {t}",
            f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
            f"flush chain {t} postrouting",
            f"add rule {t} postrouting ip saddr {cluster_cidr} ip daddr != {cluster_cidr} "
            "ip daddr != 224.0.0.0/4 masquerade"]


def ensure_masq(cluster_cidr: str) -> None:
    nft.run(masq_lines(cluster_cidr))


def remove(ipr: Any, backend: Backend) -> int:
    """Everything the datapath wrote: our routes, the vxlan device (its neighbours and FDB go with it),
    the masquerade table. Returns how many things were removed."""
    n = 0
    for r in neigh.routes_by_protocol(ipr, RTPROT_CNIKIT):
        neigh.del_route(ipr, r, RTPROT_CNIKIT)
        n += 1
    dev = link.get_link(ipr, backend.device)
    if dev is not None and dev["kind"] in ("vxlan", "tun"):
        ipr.link("del", index=dev["index"])
        n += 1
    if nft.try_run([f"delete table ip {MASQ_TABLE}"]) is None:  # an error = it was not there
        n += 1
    return n
