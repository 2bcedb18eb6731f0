"""loopback: bring `lo` up in the container (Go plugins/main/loopback, v1.1.1 behaviour).

CNI_IFNAME is ignored; the result names `lo` with its first IPv4 and IPv6 address, or echoes a
prevResult unchanged when chained. DEL sets `lo` down and succeeds when the netns is gone.
"""
from __future__ import annotations

import ipaddress

from ...net import addr, link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.plugin import Conf, Result
from .. import NetPlugin


class Loopback(NetPlugin):
    name = "loopback"

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        with ns.in_netns(ctx.netns):
            with rtnl.rtnl() as ipr:
                lo = link.require_link(ipr, "lo")
                link.set_link(ipr, lo["index"], state="up")
                first = {}
                for family in (2, 10):
                    addrs = addr.link_addresses(ipr, lo["index"], family)
                    for cidr in addrs:
                        if not ipaddress.ip_interface(cidr).ip.is_loopback:
                            raise rtnl.fail("loopback interface found with non-loopback address "
                                            + rtnl.json_quote(cidr.split("/")[0]))
                    if addrs:
                        first[family] = addrs[0]
        if conf.get("prevResult") is not None:
            return conf["prevResult"]
        ips = [{"interface": 0, "address": first[f]} for f in (2, 10) if f in first]
        return spec.new_result(interfaces=[{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": ctx.netns}], ips=ips)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        with ns.in_netns(ctx.netns):
            with rtnl.rtnl() as ipr:
                if not link.require_link(ipr, "lo")["up"]:
                    raise rtnl.fail("loopback interface is down")

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        if not ctx.netns:
            return
        try:
            with ns.in_netns(ctx.netns):
                with rtnl.rtnl() as ipr:
                    lo = link.require_link(ipr, "lo")
                    link.set_link(ipr, lo["index"], state="down")
        except ns.NetnsNotFound:
            return  # the container is gone already: nothing to undo
