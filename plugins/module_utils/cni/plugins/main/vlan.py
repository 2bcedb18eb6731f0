"""vlan: an 802.1Q sub-interface of `master` in the container (Go plugins/main/vlan v1.1.1).

Options: master (required), vlanId (0..4094, required), mtu (0..master's MTU), ipam (required).
This kernel has no 8021q: the plugin is tested at the netlink-request level (the RTM_NEWLINK it
sends) and for failing cleanly here, never on a live vlan link.
Deliberate differences: the missing-IPAM error comes before anything is created (Go creates the
link, fails, and leaves it); DEL does not look up the master.
"""
from __future__ import annotations

import os
from typing import Any, Dict

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field
from .single import SingleLinkPlugin, check_container, check_prelude


class Vlan(SingleLinkPlugin):
    name = "vlan"
    arp_notify = False

    def load(self, conf: Conf) -> Dict[str, Any]:
        n = {"master": conf_field(conf, "master", str, ""), "vlanId": conf_field(conf, "vlanId", int, 0),
             "mtu": conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE)}
        if not n["master"]:
            raise rtnl.fail('"master" field is required. It specifies the host interface name to create the VLAN '
                            "for.")
        if n["vlanId"] < 0 or n["vlanId"] > 4094:
            raise rtnl.fail(f"invalid VLAN ID {n['vlanId']} (must be between 0 and 4095 inclusive)")
        return n

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(conf)
        with rtnl.rtnl() as ipr:
            master = link.master_link(ipr, n["master"], n["mtu"])
            if not ipam.ipam_type(conf):
                raise rtnl.fail("failed to execute IPAM delegate: vlan needs an IPAM configuration")
            fd = ns.open_netns(ctx.netns)
            try:
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "vlan", "vlan", mtu=n["mtu"],
                                            link=master["index"], vlan_id=n["vlanId"])
            finally:
                os.close(fd)
        return self.finish_add(ctx, conf, made)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(conf)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        n = self.load(conf)
        result, cont = check_prelude(ctx, conf)

        def same_id(found: link.Iface) -> None:
            have = link.info_data(found, "IFLA_VLAN_ID")
            if have != n["vlanId"]:
                raise rtnl.fail(f"Error: Container interface {cont['name']} vlan id {have} does not match "
                                f"expected value: {n['vlanId']}")

        check_container(ctx, result, cont, "vlan", "vlan", same_id)
