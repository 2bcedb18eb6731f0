"""macvlan: a macvlan child of `master` in the container (Go plugins/main/macvlan, v1.1.1).

Options: master (default: the interface of the first default route), mode bridge|private|vepa|
passthru, mtu (0..master's MTU), mac (CNI_ARGS MAC < mac < runtimeConfig.mac), ipam ({} = L2).
Deliberate difference: DEL does not look the master up, so it succeeds when the master or the
netns is gone (Go 1.1.1 fails with "Link not found" there, plugins#953).
"""
from __future__ import annotations

import os
from typing import Any, Dict

from ...net import link, ns, rtnl
from ...protocol import skel
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field
from .single import SingleLinkPlugin, mode_field

# Go's macvlan plugin has no `source` mode (it needs a MAC list); the first is the default
MODES = {name: value for name, value in link.MACVLAN_MODES.items() if name != "source"}


class Macvlan(SingleLinkPlugin):
    name = "macvlan"

    def load(self, ctx: skel.Context, conf: Conf, ipr: Any, lookup_master: bool = True) -> Dict[str, Any]:
        """Go loadConf: master (default route dev), MTU bound by the master's, MAC precedence."""
        n: Dict[str, Any] = {"master": conf_field(conf, "master", str, ""), "mtu": conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE),
                             "mac": conf_field(conf, "mac", str, "")}
        runtime = conf_field(conf, "runtimeConfig", dict, {})
        if lookup_master:
            if not n["master"]:
                n["master"] = link.default_route_interface(ipr)
            n["master_index"] = link.master_link(ipr, n["master"], n["mtu"])["index"]
        env = skel.load_args(ctx.args, {"MAC": str})
        if env.get("MAC"):
            n["mac"] = env["MAC"]
        if isinstance(runtime.get("mac"), str) and runtime["mac"]:
            n["mac"] = runtime["mac"]
        return n

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        with rtnl.rtnl() as ipr:
            n = self.load(ctx, conf, ipr)
            fd = ns.open_netns(ctx.netns)
            try:
                mode = mode_field(conf, self.name, MODES)
                mac = link.mac_arg(n["mac"])
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "macvlan", "macvlan", mtu=n["mtu"],
                                            mac=mac, link=n["master_index"], macvlan_mode=mode)
            finally:
                os.close(fd)
        return self.finish_add(ctx, conf, made)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(ctx, conf, None, lookup_master=False)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        with rtnl.rtnl() as ipr:
            self.load(ctx, conf, ipr)
        self.check_mode(ctx, conf, MODES, "IFLA_MACVLAN_MODE")
