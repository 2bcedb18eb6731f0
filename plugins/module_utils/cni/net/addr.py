"""Addresses and routes on a link (Go pkg/ip address/route helpers). Every function works on a socket
`ipr` (an Rtnl, or a pyroute2 IPRoute) the caller opened in the right netns."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple


IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40


def route_oif_name(dst: str) -> Optional[str]:
    """Go getRoutableHostIF for an IPv4 address: the device of the longest-prefix main-table route
    to `dst`, read from /proc/net/route so that portmap needs no pyroute2 import (~200 ms) for it.
    (Policy rules are not consulted; a container subnet's route is a plain main-table route.)"""
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    target = int(ipaddress.IPv4Address(dst))
    best: Optional[Tuple[int, int, str]] = None  # (prefix length, -metric, device)
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            next(fh, None)
            for row in fh:
                cols = row.split()
                if len(cols) < 8 or not int(cols[3], 16) & 0x1:  # RTF_UP
                    continue
                # the kernel prints the network-order words as host integers
                net, mask = socket.ntohl(int(cols[1], 16)), socket.ntohl(int(cols[7], 16))
                if target & mask == net & mask:
                    cand = (bin(mask).count("1"), -int(cols[6]), cols[0])
                    best = cand if best is None or cand[:2] > best[:2] else best
    except OSError:
        return None
    return best[2] if best else None


def link_addresses(ipr: Any, index: int, family: int = 0) -> List[str]:
    """The addresses of a link as "ip/prefix" strings (IFA_LOCAL first: it is ours on a ptp link)."""
    out = []
    for msg in ipr.get_addr(index=index, **({"family": family} if family else {})):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        out.append(f"{addr}/{msg['prefixlen']}")
    return out


def is_global_unicast(ip: Any) -> bool:
    """Go net.IP.IsGlobalUnicast (private ranges count; link-local, loopback, multicast do not)."""
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or str(ip) == "255.255.255.255")


def settle_addresses(ipr: Any, index: int, timeout: float = 10.0) -> None:
    """Go ip.SettleAddresses: wait until no IPv6 address is tentative (DAD), ignoring a timeout."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flags = [m.get_attr("IFA_FLAGS") or m["flags"] for m in ipr.get_addr(index=index, family=10)]
        if any(f & IFA_F_DADFAILED for f in flags):
            return
        if not any(f & IFA_F_TENTATIVE for f in flags):
            return
        time.sleep(0.05)


def main_routes(ipr: Any, family: int) -> List[Tuple[Optional[str], Optional[str], Optional[int], Optional[int]]]:
    """The main-table routes of one family (2, 10) as (dst "ip/len", None for a default route;
    gateway; output ifindex; metric)."""
    out = []
    for r in ipr.get_routes(family=family, table=254):
        dst = r.get_attr("RTA_DST")
        out.append((f"{dst}/{r['dst_len']}" if dst else None, r.get_attr("RTA_GATEWAY"), r.get_attr("RTA_OIF"),
                    r.get_attr("RTA_PRIORITY")))
    return out


def add_address(ipr: Any, index: int, cidr: str) -> None:
    """One address; IPv4 gets the subnet broadcast as Go's netlink.AddrAdd computes it."""
    import ipaddress  # noqa: PLC0415

    iface = ipaddress.ip_interface(cidr)
    extra: Dict[str, Any] = {}
    if iface.version == 4 and iface.network.prefixlen < 31:
        extra["broadcast"] = str(iface.network.broadcast_address)
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)


def add_route(ipr: Any, dst: str, gw: Optional[str], oif: int, scope: Optional[int] = None,
              append: bool = False, **attrs: Any) -> None:
    """One route; `append` is Go's RouteAddEcmp (NLM_F_APPEND), otherwise NLM_F_EXCL."""
    import ipaddress  # noqa: PLC0415

    net = ipaddress.ip_network(dst, strict=False)
    # proto boot (3) like Go's netlink.RouteAdd, not pyroute2's default "static"
    kw: Dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif,
                          "family": 10 if net.version == 6 else 2, "proto": 3, **attrs}
    if gw:
        kw["gateway"] = gw
    if scope is not None:
        kw["scope"] = scope
    ipr.route("append" if append else "add", **kw)
