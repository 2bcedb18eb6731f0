"""macvlan: a macvlan child of `master` in the container (Go plugins/main/macvlan, v1.1.1).

Options: master (default: the interface of the first default route), mode bridge|private|vepa|
passthru, mtu (0..master's MTU), mac (CNI_ARGS MAC < mac < runtimeConfig.mac), ipam ({} = L2).
Deliberate difference: DEL does not look the master up, so it succeeds when the master or the
netns is gone (Go 1.1.1 fails with "Link not found" there, plugins#953).
"""
from __future__ import annotations

import os
from typing import Any, Dict

from .. import link, skel
from . import Conf, Result, conf_field
from .single import SingleLinkPlugin, check_prelude

MODES = ("bridge", "private", "vepa", "passthru")


def mode_of(conf: Conf) -> str:
    mode = conf_field(conf, "mode", str, "") or "bridge"
    if mode not in MODES:
        raise link.fail(f"unknown macvlan mode: {link.json_quote(mode)}")
    return mode


class Macvlan(SingleLinkPlugin):
    name = "macvlan"

    def load(self, ctx: skel.Context, conf: Conf, ipr: Any, lookup_master: bool = True) -> Dict[str, Any]:
        """Go loadConf: master (default route dev), MTU bound by the master's, MAC precedence."""
        n: Dict[str, Any] = {"master": conf_field(conf, "master", str, ""), "mtu": conf_field(conf, "mtu", int, 0),
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
        with link.rtnl() as ipr:
            n = self.load(ctx, conf, ipr)
            fd = link.open_netns(ctx.netns)
            try:
                mode = mode_of(conf)
                mac = link.mac_arg(n["mac"])
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "macvlan", "macvlan", mtu=n["mtu"],
                                            mac=mac, link=n["master_index"], macvlan_mode=mode)
            finally:
                os.close(fd)
        return self.finish_add(ctx, conf, made)

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(ctx, conf, None, lookup_master=False)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        with link.rtnl() as ipr:
            self.load(ctx, conf, ipr)
        result, cont = check_prelude(ctx, conf)
        want = mode_of(conf)

        def same_mode(found: link.Iface) -> None:
            have = link.info_data(found, "IFLA_MACVLAN_MODE")
            have_name = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru"}.get(have, str(have))
            if have_name != want:
                raise link.fail(f"Container macvlan mode {have_name} does not match expected value: {want}")

        with link.in_netns(ctx.netns):
            with link.rtnl() as cipr:
                self.check_link(cipr, cont, "macvlan", "macvlan", same_mode)
                link.check_interface_ips(cipr, ctx.ifname, result["ips"])
                link.check_routes(cipr, result["routes"])
