"""ipvlan: an ipvlan child of `master` in the container (Go plugins/main/ipvlan v1.1.1).

Options: master (default: the first default route's device, or when chained the single interface
of prevResult), mode l2|l3|l3s, mtu, ipam (without ipam, the prevResult's addresses are applied).
This kernel has no ipvlan: the plugin is tested at the netlink-request level (the RTM_NEWLINK it
sends) and for failing cleanly here, never on a live ipvlan link.
Deliberate difference: DEL does not look up the master (Go fails without a default route).
"""
from __future__ import annotations

import os
from typing import Any, Optional

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field, prev_result
from .single import SingleLinkPlugin, mode_field

MODES = {"l2": 0, "l3": 1, "l3s": 2}  # IPVLAN_MODE_*; the first is the default


class Ipvlan(SingleLinkPlugin):
    name = "ipvlan"

    def master(self, ipr: Any, conf: Conf, prev: Optional[Result]) -> str:
        master = conf_field(conf, "master", str, "")
        if master:
            return master
        if prev is None:
            return link.default_route_interface(ipr)
        if len(prev["interfaces"]) == 1 and prev["interfaces"][0].get("name"):
            return prev["interfaces"][0]["name"]
        raise rtnl.fail("chained master failure. PrevResult lacks a single named interface")

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        mtu = conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE)
        prev = prev_result(conf, required=False)
        preset = prev if not ipam.ipam_type(conf) and prev is not None and prev["ips"] else None
        if preset is None and not ipam.ipam_type(conf):
            raise rtnl.fail("ipvlan needs an IPAM configuration or a prevResult with addresses")
        with rtnl.rtnl() as ipr:
            master_name = self.master(ipr, conf, prev)
            fd = ns.open_netns(ctx.netns)
            try:
                mode = mode_field(conf, self.name, MODES)
                master = link.get_link(ipr, master_name)
                if master is None:
                    raise rtnl.fail(f"failed to lookup master {rtnl.json_quote(master_name)}: Link not found")
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "ipvlan", "ipvlan", mtu=mtu,
                                            link=master["index"], ipvlan_mode=MODES[mode])
            finally:
                os.close(fd)
        return self.finish_add(ctx, conf, made, preset)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        self.check_mode(ctx, conf, MODES, "IFLA_IPVLAN_MODE")
