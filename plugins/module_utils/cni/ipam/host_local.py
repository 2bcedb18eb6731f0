"""host-local IPAM, behaving like the Go plugin of containernetworking/plugins v1.1.1
(plugins/ipam/host-local: allocator/config.go, range.go, range_set.go, allocator.go, main.go),
same messages, same on-disk store (see store.py), plus spec 1.1 GC and STATUS which Go lacks.

Range sets come from runtimeConfig.ipRanges (prepended), the legacy top-level
subnet/rangeStart/rangeEnd/gateway, and ipam.ranges; every range set yields one address.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..protocol import skel, spec
from ..protocol.plugin import Plugin
from ..protocol.spec import CNIError
from .store import IPAddr, Store, parse_ip

ERR = spec.ERR_INTERNAL  # Go host-local returns plain errors: the skel reports them as 999


def type_error(value: Any, what: str) -> CNIError:
    kind = {bool: "bool", int: "number", float: "number", list: "array", dict: "object"}.get(type(value), "value")
    return CNIError(ERR, f"json: cannot unmarshal {kind} into Go value of type {what}")


def json_ip(obj: Dict[str, Any], key: str) -> Optional[IPAddr]:
    """A `net.IP` JSON field: absent/"" is unset, anything else must parse."""
    val = obj.get(key)
    if val is None or val == "":
        return None
    if not isinstance(val, str):
        raise type_error(val, "string")
    ip = parse_ip(val)
    if ip is None:
        raise CNIError(ERR, f"invalid IP address: {val}")
    return ip


def parse_cidr(text: Any) -> Tuple[IPAddr, int]:
    """Go `net.ParseCIDR`, keeping the address as written (host bits included)."""
    if not isinstance(text, str):
        raise type_error(text, "string")
    addr, sep, mask = text.partition("/")
    ip = None if "%" in addr else _try_ip(addr)
    if not sep or ip is None or not (mask.isascii() and mask.isdigit()) or int(mask) > ip.max_prefixlen:
        raise CNIError(ERR, f"invalid CIDR address: {text}")
    return ip, int(mask)


def _try_ip(text: str) -> Optional[IPAddr]:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def parse_requested_ip(text: Any) -> Optional[IPAddr]:
    """The plugins' `ip.IP` (CNI_ARGS IP, args.cni.ips, runtimeConfig.ips): "ip" or "ip/prefix"."""
    if not isinstance(text, str):
        raise type_error(text, "string")
    if text == "":
        return None
    if "/" in text:
        try:
            ip: Optional[IPAddr] = parse_cidr(text)[0]
        except CNIError:
            ip = None
    else:
        ip = parse_ip(text)
    if ip is None:
        raise ValueError(f"invalid IP address {text}")
    return ip


@dataclass
class Range:
    """One canonicalised range: subnet, gateway and inclusive start/end (Go `Range`)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: IPAddr
    start: IPAddr
    end: IPAddr

    def contains(self, addr: IPAddr) -> bool:
        return (addr.version == self.network.version and addr in self.network
                and self.start <= addr <= self.end)

    def overlaps(self, other: "Range") -> bool:
        if self.start.version != other.start.version:
            return False
        return (self.contains(other.start) or self.contains(other.end)
                or other.contains(self.start) or other.contains(self.end))

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def _canonical_range(raw: Dict[str, Any]) -> Range:
    """Go `Range.Canonicalize`, in its order and with its messages."""
    if raw.get("subnet") in (None, ""):
        raise ValueError("IP <nil> not v4 nor v6")
    ip, ones = parse_cidr(raw["subnet"])
    bits = ip.max_prefixlen
    if ones > bits - 2:
        raise ValueError(f"Network {ip}/{ones} too small to allocate from")
    network = ipaddress.ip_network(f"{ip}/{ones}", strict=False)
    if network.network_address != ip:
        raise ValueError(f"Network has host bits set. For a subnet mask of length {ones} "
                         f"the network address is {network.network_address}")
    gateway = json_ip(raw, "gateway")
    if gateway is None:
        gateway = network.network_address + 1
    # Go checks rangeStart/rangeEnd with Range.Contains while both hold what the JSON gave
    # (an unset bound is no bound), so a start above the end reports the start.
    start, end = json_ip(raw, "rangeStart"), json_ip(raw, "rangeEnd")
    probe = Range(network, gateway, network.network_address if start is None else start,
                  network.broadcast_address if end is None else end)
    if start is not None:
        if not probe.contains(start):
            raise ValueError(f"RangeStart {start} not in network {network}")
    else:
        start = probe.start = network.network_address + 1
    if end is not None:
        if not probe.contains(end):
            raise ValueError(f"RangeEnd {end} not in network {network}")
    else:
        end = network.broadcast_address - 1 if bits == 32 else network.broadcast_address
    return Range(network, gateway, start, end)


class RangeSet(List[Range]):
    def contains(self, addr: IPAddr) -> bool:
        return self.range_for(addr) is not None

    def range_for(self, addr: IPAddr) -> Optional[Range]:
        return next((r for r in self if r.contains(addr)), None)

    def overlaps(self, other: "RangeSet") -> bool:
        return any(r.overlaps(r1) for r in self for r1 in other)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self)

    def candidates(self, last: Optional[IPAddr]) -> Iterator[Tuple[IPAddr, Range]]:
        """Go `RangeIter`: round-robin from after `last` (or from the first rangeStart),
        across the ranges, wrapping once; gateways are skipped."""
        idx, cur, start_ip = 0, None, None
        if last is not None and self.contains(last):
            idx = next(i for i, r in enumerate(self) if r.contains(last))
            cur = last
        while True:
            r = self[idx]
            if cur is None:
                cur = start_ip = r.start
                if cur != r.gateway:
                    yield cur, r
                continue
            if cur == r.end:
                idx = (idx + 1) % len(self)
                r = self[idx]
                cur = r.start
            else:
                cur = cur + 1
            if start_ip is None:
                start_ip = cur
            elif cur == start_ip:
                return
            if cur != r.gateway:
                yield cur, r


def _canonical_set(raw: Any) -> RangeSet:
    if not isinstance(raw, list):
        raise type_error(raw, "allocator.RangeSet")
    if not raw:
        raise ValueError("empty range set")
    rs = RangeSet()
    for item in raw:
        if not isinstance(item, dict):
            raise type_error(item, "allocator.Range")
        rs.append(_canonical_range(item))
        if rs[-1].start.version != rs[0].start.version:
            raise ValueError("mixed address families")
    for i, r1 in enumerate(rs):
        for r2 in rs[i + 1:]:
            if r1.overlaps(r2):
                raise ValueError(f"subnets {r1} and {r2} overlap")
    return rs


@dataclass
class IpamConf:
    name: str
    ranges: List[RangeSet]
    data_dir: str = ""
    resolv_conf: str = ""
    routes: List[Dict[str, Any]] = field(default_factory=list)
    requested: List[IPAddr] = field(default_factory=list)


def parse_routes(raw: Any) -> List[Dict[str, Any]]:
    """`routes` verbatim, with dst/gw re-printed the way Go re-marshals them."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise type_error(raw, "[]*types.Route")
    out = []
    for route in raw:
        if not isinstance(route, dict):
            raise type_error(route, "types.Route")
        ip, ones = parse_cidr(route.get("dst", ""))
        entry = dict(route, dst=f"{ip}/{ones}")
        gw = json_ip(route, "gw")
        if gw is not None:
            entry["gw"] = str(gw)
        else:
            entry.pop("gw", None)
        out.append(entry)
    return out


def _ip_list(raw: Any) -> List[Optional[IPAddr]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise type_error(raw, "[]*ip.IP")
    try:
        return [parse_requested_ip(item) for item in raw]
    except ValueError as exc:
        raise CNIError(ERR, str(exc)) from None


def load_config(conf: Dict[str, Any], ctx: skel.Context) -> IpamConf:
    """Go `allocator.LoadIPAMConfig`."""
    if ctx.command in ("ADD", "CHECK", "DEL"):
        # Already checked by the skel for an exec; repeated for in-process callers, since both
        # end up inside lease files that Go binaries parse too.
        skel.validate_container_id(ctx.container_id)
        skel.validate_ifname(ctx.ifname)
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(ERR, "IPAM config missing 'ipam' key")
    for key in ("dataDir", "resolvConf"):
        if not isinstance(ipam.get(key, ""), str):
            raise type_error(ipam[key], "string")
    runtime = conf.get("runtimeConfig") or {}
    args_cni = ((conf.get("args") or {}).get("cni") or {}) if isinstance(conf.get("args"), dict) else {}
    routes = parse_routes(ipam.get("routes"))

    requested: List[Optional[IPAddr]] = []
    env = skel.load_args(ctx.args, {"IP": parse_requested_ip})
    if env.get("IP") is not None:
        requested.append(env["IP"])
    requested += _ip_list(args_cni.get("ips") if isinstance(args_cni, dict) else None)
    requested += _ip_list(runtime.get("ips") if isinstance(runtime, dict) else None)
    if any(ip is None for ip in requested):
        raise CNIError(ERR, "cannot understand ip: IP <nil> not v4 nor v6")

    raw_sets: List[Any] = []
    if isinstance(runtime, dict) and runtime.get("ipRanges"):
        raw_sets += list(runtime["ipRanges"])
    if ipam.get("subnet") not in (None, ""):  # the legacy single range
        raw_sets.append([{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}])
    if ipam.get("ranges") is not None:
        if not isinstance(ipam["ranges"], list):
            raise type_error(ipam["ranges"], "[]allocator.RangeSet")
        raw_sets += ipam["ranges"]
    if not raw_sets:
        raise CNIError(ERR, "no IP ranges specified")
    ranges = []
    for i, raw in enumerate(raw_sets):
        try:
            ranges.append(_canonical_set(raw))
        except ValueError as exc:  # JSON decode errors (CNIError) are not wrapped in Go either
            raise CNIError(ERR, f"invalid range set {i}: {exc}") from None
    v4 = sum(1 for rs in ranges if rs[0].start.version == 4)
    if (v4 > 1 or len(ranges) - v4 > 1) and not spec.version_ge(conf["cniVersion"], "0.3.0"):
        raise CNIError(ERR, f"CNI version {conf['cniVersion']} does not support more than 1 address per family")
    for i, p1 in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            if p1.overlaps(ranges[j]):
                raise CNIError(ERR, f"range set {i} overlaps with {j}")
    return IpamConf(name=conf["name"], ranges=ranges,
                    data_dir=ipam.get("dataDir", ""), resolv_conf=ipam.get("resolvConf", ""),
                    routes=routes, requested=[ip for ip in requested if ip is not None])


def parse_resolv_conf(path: str) -> Dict[str, Any]:
    """Go host-local dns.go: nameserver/domain/search/options lines."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().split("\n")
    except OSError as exc:
        raise CNIError(ERR, f"open {path}: {(exc.strerror or str(exc)).lower()}") from None
    dns: Dict[str, Any] = {"nameservers": [], "domain": "", "search": [], "options": []}
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        if fields[0] == "nameserver":
            dns["nameservers"].append(fields[1])
        elif fields[0] == "domain":
            dns["domain"] = fields[1]
        elif fields[0] in ("search", "options"):
            dns[fields[0]] += fields[1:]
    return dns


def allocate(store: Store, index: int, rs: RangeSet, cid: str, ifname: str,
             requested: Optional[IPAddr], owned: List[IPAddr]) -> Dict[str, Any]:
    """Go `IPAllocator.Get` for range set `index` (the caller holds the store lock). `owned` is
    `store.get_by_id(cid, ifname)` from the start of this ADD: Go rescans per range set, but
    what this ADD adds in one range set can never be in another (they do not overlap)."""
    if requested is not None:
        r = rs.range_for(requested)
        if r is None:
            raise CNIError(ERR, f"{requested} not in range set {rs}")
        if requested == r.gateway:
            raise CNIError(ERR, f"requested ip {requested} is subnet's gateway")
        if not store.reserve(cid, ifname, requested, index):
            raise CNIError(ERR, f"requested IP address {requested} is not available in range set {rs}")
        return {"address": f"{requested}/{r.network.prefixlen}", "gateway": str(r.gateway)}
    for ip in owned:
        if rs.contains(ip):
            raise CNIError(ERR, f"{ip} has been allocated to {cid}, duplicate allocation is not allowed")
    for ip, r in rs.candidates(store.last_reserved_ip(index)):
        if store.reserve(cid, ifname, ip, index):
            return {"address": f"{ip}/{r.network.prefixlen}", "gateway": str(r.gateway)}
    raise CNIError(ERR, f"no IP addresses available in range set: {rs}")


def first_free(store: Store, rs: RangeSet) -> Optional[IPAddr]:
    """The first address ADD could hand out from `rs` (None: exhausted); reads only."""
    return next((ip for ip, _ in rs.candidates(None) if not store.exists(ip)), None)


class HostLocal(Plugin):
    name = "host-local"

    def add(self, ctx: skel.Context, conf: Dict[str, Any]) -> Dict[str, Any]:
        ipam = load_config(conf, ctx)
        dns = parse_resolv_conf(ipam.resolv_conf) if ipam.resolv_conf else {}
        store = Store(ipam.name, ipam.data_dir)
        # One lock for the whole ADD (Go takes it per range set): an ADD spanning several
        # range sets, and its rollback, are then atomic for every other process.
        with store.locked():
            requested = {str(ip): ip for ip in ipam.requested}
            ips: List[Dict[str, Any]] = []
            owned = store.get_by_id(ctx.container_id, ctx.ifname)
            try:
                for idx, rs in enumerate(ipam.ranges):
                    want = next((k for k, ip in requested.items() if rs.contains(ip)), None)
                    try:
                        ips.append(allocate(store, idx, rs, ctx.container_id, ctx.ifname,
                                            requested.pop(want) if want else None, owned))
                    except CNIError as exc:
                        raise CNIError(ERR, f"failed to allocate for range {idx}: {exc.msg}") from None
                if requested:
                    raise CNIError(ERR, "failed to allocate all requested IPs: " + " ".join(requested))
            except BaseException:
                for _ in ips:  # Go releases once per allocator that succeeded
                    store.release_by_id(ctx.container_id, ctx.ifname)
                raise
        return spec.new_result(ips=ips, routes=ipam.routes, dns=dns)

    def check(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        ipam = load_config(conf, ctx)
        store = Store(ipam.name, ipam.data_dir)
        with store.locked():
            if not store.find_by_id(ctx.container_id, ctx.ifname):
                raise CNIError(ERR, f"host-local: Failed to find address added by container {ctx.container_id}")

    def delete(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        ipam = load_config(conf, ctx)
        store = Store(ipam.name, ipam.data_dir)
        if not os.path.isdir(store.dir):
            try:
                store.open()  # created like Go does (the tree stays identical to Go's) ...
                store.close()
            except CNIError:
                return  # ... but where it cannot exist nothing is leased: DEL succeeds (Go fails)
        with store.locked():
            for _ in ipam.ranges:  # Go releases once per range set (the 2nd pass hits legacy files)
                store.release_by_id(ctx.container_id, ctx.ifname)

    def gc(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Release every lease whose owner is not a valid attachment (legacy cid-only leases
        are kept while their container ID is). Unreadable or torn leases have no valid owner;
        temp files of killed writers go too."""
        ipam = load_config(conf, ctx)
        keep = spec.valid_attachments(conf)
        keep_cids = {cid for cid, _ in keep}
        store = Store(ipam.name, ipam.data_dir)
        with store.locked():
            store.remove_stale_temps()
            for ip, data in store.leases():
                cid, sep, ifname = (data or b"").decode("utf-8", "replace").partition("\r\n")
                owned = (cid, ifname) in keep if sep else cid in keep_cids
                if not owned:
                    store.release(ip)

    def status(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        ipam = load_config(conf, ctx)
        store = Store(ipam.name, ipam.data_dir)
        probe = store.dir
        while not os.path.exists(probe) and os.path.dirname(probe) != probe:
            probe = os.path.dirname(probe)
        # The nearest existing ancestor is what ADD's mkdir/create would hit (root bypasses
        # modes, so a read-only mount or a file in the way is what makes it fail).
        if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
            raise CNIError(spec.ERR_NOT_AVAILABLE, f"host-local: data directory {store.dir} is not writable")
        for idx, rs in enumerate(ipam.ranges):
            if first_free(store, rs) is None:
                raise CNIError(spec.ERR_NOT_AVAILABLE, f"host-local: no IP addresses available in range set {idx}: {rs}")
