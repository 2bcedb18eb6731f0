"""Per-node host-local range planning (pure) and the persisted allocation a node reads back.

One pool is cut into equal slots of `size` addresses starting at `pool_start`. Nodes are
taken in the order given (the roles pass control-plane nodes first, then workers, in
inventory order). A node keeps the range it already has — an explicit override first, else
the allocation persisted on the node by an earlier run — and every other node gets the
lowest free slot. So the seed's layout (.120-.129 / .130-.139 / .140-.149) falls out of
`pool_start .120, size 10`, and a node's range never moves when others join or leave.

Everything is checked before anything is returned: an overlap, a range outside the subnet's
usable hosts, a reserved address (the gateway, a shim address) inside a range, or an
exhausted pool raises `PlanError` with a message naming the nodes and addresses involved.
No I/O happens here; the caller reads and writes the persisted files.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Tuple, Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PERSIST_FORMAT = "cnikit.ranges/v1"


class PlanError(ValueError):
    """A conflict in the requested layout; the message is meant for the operator."""


@dataclass(frozen=True)
class NodeRange:
    node: str
    start: Address
    end: Address
    source: str  # "override" | "persisted" | "computed"

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def overlaps(self, other: "NodeRange") -> bool:
        return int(self.start) <= int(other.end) and int(other.start) <= int(self.end)

    def __contains__(self, ip: Address) -> bool:
        return int(self.start) <= int(ip) <= int(self.end)

    def text(self) -> str:
        return f"{self.start}-{self.end}"

    def cidrs(self) -> List[str]:
        """The range as the fewest CIDRs (what the macv-host shim routes to the node's pods)."""
        return [n.with_prefixlen for n in ipaddress.summarize_address_range(self.start, self.end)]

    def to_dict(self) -> Dict[str, object]:
        return {"rangeStart": str(self.start), "rangeEnd": str(self.end), "source": self.source,
                "cidrs": self.cidrs()}


def _network(value: str) -> Network:
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise PlanError(f"invalid subnet {value!r}: {exc}") from None


def _address(value: object, what: str) -> Address:
    try:
        return ipaddress.ip_address(str(value))
    except ValueError:
        raise PlanError(f"invalid {what} {value!r}: not an IP address") from None


def _usable(net: Network) -> Tuple[int, int]:
    """First and last address host-local may hand out (no network/broadcast on IPv4 < /31)."""
    first, last = int(net.network_address), int(net.broadcast_address)
    if net.version == 4 and net.prefixlen < 31:
        first, last = first + 1, last - 1
    elif net.version == 6 and net.prefixlen < 127:
        first += 1  # the subnet-router anycast address
    return first, last


def _parse_range(node: str, value: object, source: str, net: Network) -> NodeRange:
    """An override or persisted range: {"rangeStart", "rangeEnd"} or "START-END"."""
    if isinstance(value, Mapping):
        start, end = value.get("rangeStart"), value.get("rangeEnd")
    elif isinstance(value, str) and "-" in value:
        start, end = value.split("-", 1)
    else:
        raise PlanError(f"{node}: {source} range {value!r} must be START-END or {{rangeStart, rangeEnd}}")
    rng = NodeRange(node, _address(start, f"{node} rangeStart"), _address(end, f"{node} rangeEnd"), source)
    if rng.start.version != net.version or rng.end.version != net.version:
        raise PlanError(f"{node}: {source} range {rng.text()} is not in subnet {net}'s address family")
    if int(rng.start) > int(rng.end):
        raise PlanError(f"{node}: {source} range {rng.text()} ends before it starts")
    return rng


def plan(
    nodes: Iterable[str],
    subnet: str,
    pool_start: str,
    size: int,
    pool_end: Optional[str] = None,
    gateway: Optional[str] = None,
    reserved: Optional[Mapping[str, str]] = None,
    overrides: Optional[Mapping[str, object]] = None,
    persisted: Optional[Mapping[str, object]] = None,
) -> Dict[str, NodeRange]:
    """Plan one range per node (in the given order) or raise PlanError. See the module doc."""
    net = _network(subnet)
    lo, hi = _usable(net)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise PlanError(f"range size must be a positive integer, got {size!r}")
    start = _address(pool_start, "pool_start")
    end = _address(pool_end, "pool_end") if pool_end else ipaddress.ip_address(hi)
    for what, ip in (("pool_start", start), ("pool_end", end)):
        if ip.version != net.version or not lo <= int(ip) <= hi:
            raise PlanError(f"{what} {ip} is outside subnet {net} (usable {ipaddress.ip_address(lo)}-{ipaddress.ip_address(hi)})")
    if int(start) > int(end):
        raise PlanError(f"pool_start {start} is after pool_end {end}")
    marks: Dict[str, Address] = {}
    if gateway:
        marks["gateway"] = _address(gateway, "gateway")
    for label, ip in (reserved or {}).items():
        marks[label] = _address(ip, label)

    order: List[str] = list(dict.fromkeys(nodes))  # a host in two groups counts once, first place wins
    overrides, persisted = overrides or {}, persisted or {}
    fixed: List[NodeRange] = []
    for node in order:
        if overrides.get(node):
            fixed.append(_parse_range(node, overrides[node], "override", net))
        elif persisted.get(node):
            fixed.append(_parse_range(node, persisted[node], "persisted", net))
    for rng in fixed:
        if int(rng.start) < lo or int(rng.end) > hi:
            raise PlanError(
                f"{rng.node}: {rng.source} range {rng.text()} is outside subnet {net} "
                f"(usable {ipaddress.ip_address(lo)}-{ipaddress.ip_address(hi)})"
            )
    for i, a in enumerate(fixed):
        for b in fixed[i + 1:]:
            if a.overlaps(b):
                raise PlanError(
                    f"ranges overlap: {a.node} ({a.source}) {a.text()} and {b.node} ({b.source}) {b.text()}"
                )

    taken = sorted(fixed, key=lambda r: int(r.start))
    result = {r.node: r for r in fixed}
    slot = int(start)
    for node in order:
        if node in result:
            continue
        rng = _next_free_slot(node, slot, size, int(end), taken)
        if rng is None:
            capacity = (int(end) - int(start) + 1) // size
            raise PlanError(
                f"pool exhausted: no free {size}-address slot in {start}-{end} for {node} "
                f"({capacity} slots, {len(order)} nodes, {len(fixed)} fixed ranges)"
            )
        slot = int(rng.end) + 1  # every slot below this one is taken now: start the next search here
        result[node] = rng
        _insert(taken, rng)

    for node in order:
        for label, ip in marks.items():
            if ip in result[node]:
                raise PlanError(f"{label} {ip} lies inside {node}'s {result[node].source} range {result[node].text()}")
    return {node: result[node] for node in order}


def _next_free_slot(node: str, first: int, size: int, last: int, taken: List[NodeRange]) -> Optional[NodeRange]:
    """The lowest slot at or after `first` (stepping by `size`) that overlaps nothing taken."""
    s = first
    for rng in taken:  # sorted by start: skip past every range the candidate slot hits
        if int(rng.end) < s:
            continue
        if s + size - 1 < int(rng.start):
            break
        # jump to the first aligned slot after this range
        s += -(-(int(rng.end) + 1 - s) // size) * size
    if s + size - 1 > last:
        return None
    return NodeRange(node, ipaddress.ip_address(s), ipaddress.ip_address(s + size - 1), "computed")


def _insert(taken: List[NodeRange], rng: NodeRange) -> None:
    i = 0
    while i < len(taken) and int(taken[i].start) < int(rng.start):
        i += 1
    taken.insert(i, rng)


# --- the allocation persisted on each node -------------------------------------------------

def dump_persisted(network: str, subnet: str, rng: NodeRange) -> str:
    """The file a node keeps (stable text, so re-writing an unchanged range changes nothing)."""
    doc = {"format": PERSIST_FORMAT, "network": network, "subnet": subnet, "node": rng.node,
           "rangeStart": str(rng.start), "rangeEnd": str(rng.end)}
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def load_persisted(text: str, network: str, subnet: str) -> Optional[Dict[str, str]]:
    """Read a node's persisted range back; None when absent, unreadable or for another subnet.

    A file for another network or subnet means the layout was deliberately changed: the node
    is planned afresh instead of keeping a range that no longer fits.
    """
    if not text or not text.strip():
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("format") != PERSIST_FORMAT:
        return None
    if doc.get("network") != network or doc.get("subnet") != subnet:
        return None
    if not isinstance(doc.get("rangeStart"), str) or not isinstance(doc.get("rangeEnd"), str):
        return None
    return {"rangeStart": doc["rangeStart"], "rangeEnd": doc["rangeEnd"]}
