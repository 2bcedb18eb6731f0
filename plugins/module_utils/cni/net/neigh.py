"""Neighbour (ARP) entries, bridge/vxlan FDB entries and protocol-marked routes: the netlink pieces
the overlay datapath needs, on the one netlink layer (`net/`; nothing else imports pyroute2). `ipr` is a `net.rtnl.Rtnl` (plain blocking socket: ~3 ms per dump here where IPRoute's asyncio
round takes ~20 ms of wall time).

Entries are plain tuples so a caller can diff desired against current with set operations.
"""
from __future__ import annotations

import ipaddress
from typing import Any, List, Optional, Tuple

from .rtnl import netlink_error_code

NUD_NOARP = 0x40
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
MAIN_TABLE = 254
AF_INET, AF_BRIDGE = 2, 7

Neighbour = Tuple[str, str]   # (ip, mac)
Fdb = Tuple[str, str]         # (mac, remote ip)
Route = Tuple[str, str, int, bool]  # (dst cidr, gateway, oif index, onlink)


def neighbours(ipr: Any, index: int, protocol: Optional[int] = None) -> List[Neighbour]:
    """Permanent IPv4 neighbours on a link; with `protocol`, only those carrying that NDA_PROTOCOL."""
    out = []
    for msg in ipr.neigh("dump", family=AF_INET, match={"ifindex": index}):
        if not msg["state"] & NUD_PERMANENT:
            continue
        if protocol is not None and msg.get_attr("NDA_PROTOCOL") != protocol:
            continue
        mac = msg.get_attr("NDA_LLADDR")
        if msg.get_attr("NDA_DST") and mac:
            out.append((msg.get_attr("NDA_DST"), mac.lower()))
    return out


def add_neighbour(ipr: Any, index: int, ip: str, mac: str, protocol: int) -> None:
    """`ip neigh replace IP lladdr MAC dev DEV nud permanent proto PROTOCOL`."""
    ipr.neigh("replace", family=AF_INET, dst=ip, lladdr=mac, ifindex=index, state=NUD_PERMANENT,
              NDA_PROTOCOL=protocol)


def del_neighbour(ipr: Any, index: int, ip: str) -> None:
    try:
        ipr.neigh("del", family=AF_INET, dst=ip, ifindex=index)
    except Exception as exc:  # noqa: BLE001 - gone already is fine
        if netlink_error_code(exc) not in (2, 3):  # ENOENT, ESRCH
            raise


def fdb_entries(ipr: Any, index: int) -> List[Fdb]:
    """The FDB entries with a remote destination on a vxlan link (`bridge fdb show dev DEV`)."""
    out = []
    for msg in ipr.neigh("dump", family=AF_BRIDGE, match={"ifindex": index}):
        if msg["ifindex"] != index:
            continue
        mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
        if mac and dst:
            out.append((mac.lower(), dst))
    return out


def append_fdb(ipr: Any, index: int, mac: str, dst: str) -> None:
    """`bridge fdb append MAC dev DEV dst DST self permanent`."""
    ipr.neigh("append", family=AF_BRIDGE, ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT | NUD_NOARP,
              flags=NTF_SELF)


def del_fdb(ipr: Any, index: int, mac: str, dst: str) -> None:
    try:
        ipr.neigh("del", family=AF_BRIDGE, ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT | NUD_NOARP,
                  flags=NTF_SELF)
    except Exception as exc:  # noqa: BLE001
        if netlink_error_code(exc) not in (2, 3):
            raise


def routes_by_protocol(ipr: Any, protocol: int, table: int = MAIN_TABLE) -> List[Route]:
    """IPv4 unicast routes in `table` whose rtm_protocol is `protocol` (the routes a daemon wrote)."""
    out = []
    for msg in ipr.get_routes(family=AF_INET, table=table):
        if msg["proto"] != protocol or msg.get_attr("RTA_DST") is None:
            continue
        out.append((f"{msg.get_attr('RTA_DST')}/{msg['dst_len']}", msg.get_attr("RTA_GATEWAY") or "",
                    msg.get_attr("RTA_OIF") or 0, bool(msg["flags"] & RTNH_F_ONLINK)))
    return out


def add_route(ipr: Any, route: Route, protocol: int, table: int = MAIN_TABLE) -> None:
    dst, gw, oif, onlink = route
    net = ipaddress.IPv4Network(dst)
    kw = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif, "family": AF_INET,
          "proto": protocol, "table": table, "type": "unicast"}
    if gw:
        kw["gateway"] = gw
    if onlink:
        kw["flags"] = RTNH_F_ONLINK
    ipr.route("add", **kw)


def del_route(ipr: Any, route: Route, protocol: int, table: int = MAIN_TABLE) -> None:
    dst, gw, oif, _onlink = route
    net = ipaddress.IPv4Network(dst)
    kw = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif, "family": AF_INET,
          "proto": protocol, "table": table}
    if gw:
        kw["gateway"] = gw
    try:
        ipr.route("del", **kw)
    except Exception as exc:  # noqa: BLE001
        if netlink_error_code(exc) not in (2, 3):
            raise
