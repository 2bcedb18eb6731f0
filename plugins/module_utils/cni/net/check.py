"""CHECK helpers (Go ip.ValidateExpectedInterfaceIPs / ValidateExpectedRoute)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from .addr import link_addresses, main_routes
from .link import get_link
from .rtnl import fail


def _main_routes(ipr: Any, family: int) -> List[Tuple[Optional[str], Optional[str]]]:
    return [(dst, gw) for dst, gw, _oif, _metric in main_routes(ipr, family)]


def check_interface_ips(ipr: Any, ifname: str, ips: List[Dict[str, Any]]) -> None:
    """Every result IP is on `ifname`, and a main-table route to its subnet exists."""
    import ipaddress  # noqa: PLC0415

    for ipc in ips:
        found = get_link(ipr, ifname)
        if found is None:
            raise fail(f"Cannot find container link {ifname}")
        want = ipaddress.ip_interface(ipc["address"])
        have = {ipaddress.ip_interface(a) for a in link_addresses(ipr, found["index"])}
        if want not in have:
            raise fail(f"Failed to match addr {want} on interface {ifname}")
        routes = _main_routes(ipr, 10 if want.version == 6 else 2)
        if not any(dst is not None and ipaddress.ip_network(dst) == want.network for dst, _ in routes):
            raise fail(f"Failed to find Gateway {ipc.get('gateway') or '<nil>'} for interface {ifname}")


def check_routes(ipr: Any, routes: List[Dict[str, Any]]) -> None:
    """Every result route is in the main table (dst, and gw unless it is a default route)."""
    import ipaddress  # noqa: PLC0415

    for route in routes:
        net = ipaddress.ip_network(route["dst"], strict=False)
        want_gw = route.get("gw")
        found = False
        for dst, gw in _main_routes(ipr, 10 if net.version == 6 else 2):
            if net.prefixlen == 0:
                found = dst is None or ipaddress.ip_network(dst).prefixlen == 0
            else:
                found = dst is not None and ipaddress.ip_network(dst) == net and (
                    (gw is None and not want_gw) or (gw is not None and want_gw is not None
                                                     and ipaddress.ip_address(gw) == ipaddress.ip_address(want_gw)))
            if found:
                break
        if not found:
            raise fail(f"Expected Route {go_route(net, want_gw)} not found in routing table")


def go_route(net: Any, gw: Optional[str]) -> str:
    """A types.Route as Go's %v prints it: {Dst:{IP:10.0.0.0 Mask:ffffff00} GW:<nil>}."""
    mask = net.netmask.packed.hex()
    return f"{{Dst:{{IP:{net.network_address} Mask:{mask}}} GW:{gw or '<nil>'}}}"
