"""sbr: source-based routing for the container interface (Go plugins/meta/sbr, v1.1.1).

For each of CNI_IFNAME's prevResult IPs: the first table >= 100 no rule or route uses, a rule
`from <ip> lookup <table>`, a default route via the IP's gateway in that table, and the
interface's main-table routes copied there (those whose source or gateway is in the IP's subnet,
or that have neither); then the interface's main-table routes are deleted. Done in the container
netns under an flock on the netns file, as Go does. DEL removes the rules whose source is one of
the interface's addresses (or, when the link is gone, one of the prevResult's IPs).
"""
from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from typing import Any, Dict, Iterator, List, Set

from ... import netfilter
from ...net import addr, link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result
from .. import NetPlugin

FIRST_TABLE = 100
AF_INET, AF_INET6 = 2, 10
RTPROT_BOOT = 3


@contextlib.contextmanager
def _locked_netns(path: str) -> Iterator[None]:
    """Go withLockAndNetNS: an exclusive flock on the netns file, then run inside the netns."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ns.NetnsNotFound(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with ns.in_netns(path):
            yield
    finally:
        os.close(fd)


def ip_configs(result: Result, ifname: str) -> List[Dict[str, Any]]:
    """Go getIPCfgs: the IPs of the interface named ifname (or of no interface)."""
    if not result.get("ips"):
        raise CNIError(spec.ERR_INTERNAL, f"No IP addresses supplied on interface: {ifname}")
    ifaces = result.get("interfaces") or []
    out = []
    for ip in result["ips"]:
        idx = ip.get("interface")
        if idx is not None and 0 <= idx < len(ifaces) and ifaces[idx].get("name") != ifname:
            continue
        out.append(dict(ip, iface=netfilter.interface_networks([ip["address"]])[0]))  # CNIError if malformed
    return out


def _table_of(msg: Any, attr: str) -> int:
    return msg.get_attr(attr) or msg["table"]


def _default_pref(ipr: Any, family: int) -> int:
    """The preference the kernel gives a rule added without one (fib_default_rule_pref: one below
    the first non-zero preference); pyroute2 would otherwise send 32000."""
    prefs = sorted(r.get_attr("FRA_PRIORITY") or 0 for r in ipr.get_rules(family=family))
    nonzero = [p for p in prefs if p > 0]
    return nonzero[0] - 1 if nonzero else 0


def _next_table(used: Set[int], candidate: int) -> int:
    while candidate in used:
        candidate += 1
    return candidate


def _route_kw(route: Any, table: int) -> Dict[str, Any]:
    """A dumped route as request arguments for `table` (flags cleared, as Go does on the copy)."""
    kw: Dict[str, Any] = {"family": route["family"], "dst_len": route["dst_len"], "scope": route["scope"],
                          "proto": route["proto"], "type": route["type"], "table": table,
                          "oif": route.get_attr("RTA_OIF")}
    for attr, key in (("RTA_DST", "dst"), ("RTA_GATEWAY", "gateway"), ("RTA_PREFSRC", "prefsrc"),
                      ("RTA_PRIORITY", "priority")):
        if route.get_attr(attr) is not None:
            kw[key] = route.get_attr(attr)
    return kw


def _route_matches(net: Any, route: Any) -> bool:
    src, gw = route.get_attr("RTA_PREFSRC"), route.get_attr("RTA_GATEWAY")
    if src is None and gw is None:
        return True
    return any(a is not None and ipaddress.ip_address(a).version == net.version and ipaddress.ip_address(a) in net
               for a in (src, gw))


class Sbr(NetPlugin):
    name = "sbr"

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        result = conf.get("prevResult")
        if result is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "This plugin must be called as chained plugin")
        ipcfgs = ip_configs(result, ctx.ifname)
        with _locked_netns(ctx.netns), rtnl.iproute() as ipr:
            self._do_routes(ipr, ipcfgs, ctx.ifname)
        return result

    @staticmethod
    def _do_routes(ipr: Any, ipcfgs: List[Dict[str, Any]], ifname: str) -> None:
        used = {_table_of(r, "FRA_TABLE") for r in ipr.get_rules()}
        used |= {_table_of(r, "RTA_TABLE") for r in ipr.get_routes()}
        dev = link.get_link(ipr, ifname)
        if dev is None:
            raise CNIError(spec.ERR_INTERNAL, f"Cannot find network interface {ifname}: Link not found")
        routes = list(ipr.get_routes(oif=dev["index"], table=254))
        added: List[Dict[str, Any]] = []
        table = _next_table(used, FIRST_TABLE)
        try:
            for ipc in ipcfgs:
                iface = ipc["iface"]
                family = AF_INET if iface.version == 4 else AF_INET6
                rule = {"family": family, "table": table, "src": str(iface.ip), "src_len": iface.max_prefixlen,
                        "priority": _default_pref(ipr, family)}
                ipr.rule("add", **rule)
                added.append(rule)
                if ipc.get("gateway"):
                    ipr.route("add", family=family, dst_len=0, gateway=ipc["gateway"], table=table, oif=dev["index"],
                              proto=RTPROT_BOOT)  # what Go's netlink sends
                for route in routes:
                    if _route_matches(iface.network, route):
                        ipr.route("replace", **_route_kw(route, table))
                table = _next_table(used, table + 1)
        except Exception as exc:
            for rule in added:  # undo: the rules (their tables' routes go with them below)
                with contextlib.suppress(Exception):
                    ipr.rule("del", **rule)
                with contextlib.suppress(Exception):
                    ipr.flush_routes(table=rule["table"])
            if isinstance(exc, CNIError):
                raise
            raise rtnl.fail("failed to set up source-based routing", exc) from None
        for route in routes:
            ipr.route("del", **_route_kw(route, 254))

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        result = conf.get("prevResult")
        if result is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "This plugin must be called as chained plugin")
        wanted = {str(i["iface"].ip) for i in ip_configs(result, ctx.ifname)}
        with ns.in_netns(ctx.netns), rtnl.iproute() as ipr:
            have = {r.get_attr("FRA_SRC") for r in ipr.get_rules() if _table_of(r, "FRA_TABLE") >= FIRST_TABLE}
        missing = sorted(wanted - have)
        if missing:
            raise CNIError(spec.ERR_INTERNAL, f"no source-based routing rule for {', '.join(missing)}")

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        if not ctx.netns:
            return
        prev = conf.get("prevResult") or {}
        known = {str(i["iface"].ip)
                 for i in (ip_configs(prev, ctx.ifname) if prev.get("ips") else [])}
        try:
            with _locked_netns(ctx.netns), rtnl.iproute() as ipr:
                dev = link.get_link(ipr, ctx.ifname)
                if dev is not None:
                    known |= {a.split("/")[0] for a in addr.link_addresses(ipr, dev["index"])}
                for rule in ipr.get_rules():
                    src = rule.get_attr("FRA_SRC")
                    if src is not None and src in known:
                        ipr.rule("del", family=rule["family"], table=_table_of(rule, "FRA_TABLE"), src=src,
                                 src_len=rule["src_len"], priority=rule.get_attr("FRA_PRIORITY"))
        except ns.NetnsNotFound:
            return  # the container is gone, and its rules with it
