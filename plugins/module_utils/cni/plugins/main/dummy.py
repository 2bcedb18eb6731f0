"""dummy: a dummy link in the container carrying the IPAM addresses (Go plugins/main/dummy, added in
plugins v1.2.0: not in the Go 1.1.1 package here). IPAM is required.
This kernel has no dummy driver: the plugin is tested at the netlink-request level (the
RTM_NEWLINK it sends) and for failing cleanly here, never on a live dummy link.
"""
from __future__ import annotations

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import Conf, Result
from .single import SingleLinkPlugin, check_container, check_prelude


class Dummy(SingleLinkPlugin):
    name = "dummy"
    arp_notify = False
    dns_from_conf = False

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        if not ipam.ipam_type(conf):
            raise rtnl.fail("dummy interface requires an IPAM configuration")
        with ns.in_netns(ctx.netns):
            with rtnl.iproute() as cipr:
                try:
                    cipr.link("add", ifname=ctx.ifname, kind="dummy")
                except Exception as exc:  # noqa: BLE001
                    raise rtnl.fail("failed to create dummy", exc) from None
                made = link.require_link(cipr, ctx.ifname)
        return self.finish_add(ctx, conf, made)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        result, cont = check_prelude(ctx, conf, "dummy: Required prevResult missing")

        def is_up(found: link.Iface) -> None:
            if not found["up"]:
                raise rtnl.fail(f"Interface {cont['name']} is down")

        check_container(ctx, result, cont, "dummy", "dummy", is_up)
