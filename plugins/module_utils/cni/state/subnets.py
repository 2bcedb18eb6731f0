"""Node subnets planned from the inventory (no etcd): the ranges planner cutting the cluster CIDR.

flannel's layout: the cluster network (default 10.244.0.0/16) in subnets of `subnet_len` (/24),
from `SubnetMin` (default: the second subnet) to `SubnetMax` (default: the last). The ranges
planner does the work (ranges.plan with `whole=True`, slots of 2^(32-len) addresses aligned on
the network address), so node subnets get its guarantees: stable (an override, else the subnet
persisted on the node by an earlier run, is kept), disjoint, the lowest free subnet for a new node,
every conflict an error before any node is touched. Pure: the caller reads and writes the files.
"""
from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, Mapping, Optional

from . import ranges
from ..cluster.leases import BACKENDS, DEFAULT_VNI, HOST_GW, Lease, vtep_mac

PlanError = ranges.PlanError


def _cluster(cidr: str, subnet_len: int) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(cidr, strict=True)
    except ValueError as exc:
        raise PlanError(f"invalid cluster CIDR {cidr!r}: {exc}") from None
    if not isinstance(subnet_len, int) or not net.prefixlen < subnet_len <= 30:
        raise PlanError(f"subnet length /{subnet_len} must be longer than the cluster CIDR's /{net.prefixlen} "
                        "and at most /30")
    return net


def _subnet(node: str, value: str, what: str, net: ipaddress.IPv4Network, subnet_len: int) -> ipaddress.IPv4Network:
    try:
        sub = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise PlanError(f"{node}: {what} subnet {value!r} is not a subnet: {exc}") from None
    if sub.prefixlen != subnet_len or not sub.subnet_of(net):
        raise PlanError(f"{node}: {what} subnet {sub} is not a /{subnet_len} of the cluster network {net}")
    return sub


def as_range(sub: ipaddress.IPv4Network) -> Dict[str, str]:
    return {"rangeStart": str(sub.network_address), "rangeEnd": str(sub.broadcast_address)}


def persisted_subnet(text: str, network: str, cluster_cidr: str, subnet_len: int) -> Optional[str]:
    """A node's persisted subnet, or None when absent, unreadable, for another network/cluster CIDR, or of
    another size (the layout was changed on purpose: the node is planned afresh)."""
    found = ranges.load_persisted(text, network, cluster_cidr)
    if not found:
        return None
    try:
        nets = list(ipaddress.summarize_address_range(ipaddress.IPv4Address(found["rangeStart"]),
                                                      ipaddress.IPv4Address(found["rangeEnd"])))
    except (ValueError, TypeError):
        return None
    if len(nets) != 1 or nets[0].prefixlen != subnet_len:
        return None
    return str(nets[0])


def plan(
    nodes: Iterable[str],
    node_ips: Mapping[str, str],
    cluster_cidr: str = "10.244.0.0/16",
    subnet_len: int = 24,
    subnet_min: Optional[str] = None,
    subnet_max: Optional[str] = None,
    backend: str = "vxlan",
    vni: int = DEFAULT_VNI,
    overrides: Optional[Mapping[str, str]] = None,
    persisted: Optional[Mapping[str, Optional[str]]] = None,
    uplink_cidr: Optional[str] = None,
) -> Dict[str, Lease]:
    """One lease per node, in node order, or PlanError. `persisted` holds subnets read back with
    persisted_subnet; `uplink_cidr` (host-gw) is the one L2 segment every node IP must be in."""
    net = _cluster(cluster_cidr, subnet_len)
    if backend not in BACKENDS:
        raise PlanError(f"unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    order = list(dict.fromkeys(nodes))
    size = 2 ** (32 - subnet_len)
    first = _subnet("cluster", subnet_min, "SubnetMin", net, subnet_len) if subnet_min else \
        list(net.subnets(new_prefix=subnet_len))[1] if net.prefixlen < subnet_len else None
    last = _subnet("cluster", subnet_max, "SubnetMax", net, subnet_len) if subnet_max else None
    fixed = {n: as_range(_subnet(n, v, "override", net, subnet_len)) for n, v in (overrides or {}).items() if v}
    kept = {n: as_range(_subnet(n, v, "persisted", net, subnet_len)) for n, v in (persisted or {}).items() if v}

    ips: Dict[str, ipaddress.IPv4Address] = {}
    for node in order:
        try:
            ips[node] = ipaddress.IPv4Address(str(node_ips[node]).split("/", 1)[0])
        except (KeyError, ValueError):
            raise PlanError(f"{node}: no usable node IP (got {node_ips.get(node)!r})") from None
    seen: Dict[ipaddress.IPv4Address, str] = {}
    for node, ip in ips.items():
        if ip in seen:
            raise PlanError(f"{seen[ip]} and {node} have the same node IP {ip}")
        if ip in net:
            raise PlanError(f"{node}: node IP {ip} lies inside the cluster network {net}")
        seen[ip] = node
    if backend == HOST_GW and uplink_cidr:
        segment = ipaddress.IPv4Network(uplink_cidr, strict=False)
        off = [f"{n} ({ip})" for n, ip in ips.items() if ip not in segment]
        if off:
            raise PlanError(f"backend host-gw needs every node on one L2 segment ({segment}); not on it: "
                            f"{', '.join(off)} — use backend vxlan")

    planned = ranges.plan(order, str(net), str(first.network_address) if first else str(net.network_address),
                          size, pool_end=str(last.broadcast_address) if last else None,
                          overrides=fixed, persisted=kept, whole=True)
    out: Dict[str, Lease] = {}
    for node, rng in planned.items():
        sub = ipaddress.IPv4Network(f"{rng.start}/{subnet_len}", strict=True)
        out[node] = Lease(sub, ips[node], backend, vni, vtep_mac(sub), node)
    return out


def dump_persisted(network: str, cluster_cidr: str, node: str, lease: Lease) -> str:
    rng = ranges.NodeRange(node, lease.subnet.network_address, lease.subnet.broadcast_address, "computed")
    return ranges.dump_persisted(network, cluster_cidr, rng)
