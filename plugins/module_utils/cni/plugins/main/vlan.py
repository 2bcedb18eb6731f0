"""vlan: an 802.1Q sub-interface of `master` in the container (Go plugins/main/vlan v1.1.1).

Options: master (required), vlanId (0..4094, required), mtu (0..master's MTU), ipam (required).
Tested live and against Go on a stock kernel (make test-kernel): this project's CI kernel has no 8021q.
Deliberate differences: CHECK's messages for a wrong VLAN id or MTU name what is wrong (Go 1.1.1
reports a wrong id as "Tuning link ... configured promisc", a copy-paste slip); the missing-IPAM
error comes before anything is created (Go creates the link, fails, and leaves it); DEL does not
look up the master.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ... import ipam
from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import MTU_RANGE, Conf, NetConf, Result, base_fields, conf_field
from .single import SingleLinkPlugin, check_container, check_prelude


@dataclass(frozen=True)
class VlanConf(NetConf):
    master: str = ""
    vlanId: int = 0
    mtu: int = 0


class Vlan(SingleLinkPlugin):
    name = "vlan"
    arp_notify = False

    def load(self, conf: Conf) -> VlanConf:
        n = VlanConf(**base_fields(conf), master=conf_field(conf, "master", str, ""),
                     vlanId=conf_field(conf, "vlanId", int, 0), mtu=conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE))
        if not n.master:
            raise rtnl.fail('"master" field is required. It specifies the host interface name to create the VLAN '
                            "for.")
        if n.vlanId < 0 or n.vlanId > 4094:
            raise rtnl.fail(f"invalid VLAN ID {n.vlanId} (must be between 0 and 4095 inclusive)")
        return n

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(conf)
        with rtnl.rtnl() as ipr:
            master = link.master_link(ipr, n.master, n.mtu)
            if not ipam.ipam_type(conf):
                raise rtnl.fail("failed to execute IPAM delegate: vlan needs an IPAM configuration")
            fd = ns.open_netns(ctx.netns)
            try:
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "vlan", "vlan", mtu=n.mtu,
                                            link=master["index"], vlan_id=n.vlanId)
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
            if have != n.vlanId:
                raise rtnl.fail(f"Error: Container interface {cont['name']} vlan id {have} does not match "
                                f"expected value: {n.vlanId}")
            if n.mtu and found["mtu"] != n.mtu:
                raise rtnl.fail(f"Error: Container interface {cont['name']} MTU {found['mtu']} does not match "
                                f"expected value: {n.mtu}")

        check_container(ctx, result, cont, "vlan", "vlan", same_id)
