"""ipvlan: an ipvlan child of `master` in the container (Go plugins/main/ipvlan v1.1.1).

Options: master (default: the first default route's device, or when chained the single interface
of prevResult), mode l2|l3|l3s, mtu, ipam (without ipam, the prevResult's addresses are applied).
Tested live and against Go on a stock kernel (make test-kernel): this project's CI kernel has no ipvlan.
Deliberate difference: DEL does not look up the master (Go fails without a default route).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import MTU_RANGE, Conf, NetConf, Result, base_fields, conf_field, prev_result
from .single import SingleLinkPlugin, mode_field

MODES = {"l2": 0, "l3": 1, "l3s": 2}  # IPVLAN_MODE_*; the first is the default


@dataclass(frozen=True)
class IpvlanConf(NetConf):
    master: str = ""
    mtu: int = 0


class Ipvlan(SingleLinkPlugin):
    name = "ipvlan"
    mode_label = "IPVlan"  # Go's CHECK message spells it so

    def load(self, conf: Conf) -> IpvlanConf:
        return IpvlanConf(**base_fields(conf), mtu=conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE),
                          master=conf_field(conf, "master", str, ""))

    def master(self, ipr: Any, n: IpvlanConf, prev: Optional[Result]) -> str:
        if n.master:
            return n.master
        if prev is None:
            return link.default_route_interface(ipr)
        if len(prev["interfaces"]) == 1 and prev["interfaces"][0].get("name"):
            return prev["interfaces"][0]["name"]
        raise rtnl.fail("chained master failure. PrevResult lacks a single named interface")

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(conf)
        prev = prev_result(conf, required=False)
        preset = prev if not ipam.ipam_type(conf) and prev is not None and prev["ips"] else None
        if preset is None and not ipam.ipam_type(conf):
            raise rtnl.fail("ipvlan needs an IPAM configuration or a prevResult with addresses")
        with rtnl.rtnl() as ipr:
            master_name = self.master(ipr, n, prev)
            fd = ns.open_netns(ctx.netns)
            try:
                mode = mode_field(conf, self.name, MODES)
                master = link.get_link(ipr, master_name)
                if master is None:
                    raise rtnl.fail(f"failed to lookup master {rtnl.json_quote(master_name)}: Link not found")
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "ipvlan", "ipvlan", mtu=n.mtu,
                                            link=master["index"], ipvlan_mode=MODES[mode])
            finally:
                os.close(fd)
        return self.finish_add(ctx, conf, made, preset)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(conf)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        self.check_mode(ctx, conf, MODES, "IFLA_IPVLAN_MODE")
