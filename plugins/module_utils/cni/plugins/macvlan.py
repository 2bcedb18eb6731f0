"""macvlan: a macvlan child of `master` in the container (Go plugins/main/macvlan, v1.1.1).

Options: master (default: the interface of the first default route), mode bridge|private|vepa|
passthru, mtu (0..master's MTU), mac (CNI_ARGS MAC < mac < runtimeConfig.mac), ipam ({} = L2).
Deliberate difference: DEL does not look the master up, so it succeeds when the master or the
netns is gone (Go 1.1.1 fails with "Link not found" there, plugins#953).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

from .. import faults, ipam, link, skel, spec
from . import Conf, Plugin, Result, conf_field, prev_result

MODES = ("bridge", "private", "vepa", "passthru")


def mode_of(conf: Conf) -> str:
    mode = conf_field(conf, "mode", str, "") or "bridge"
    if mode not in MODES:
        raise link.fail(f"unknown macvlan mode: {link.json_quote(mode)}")
    return mode


class Macvlan(Plugin):
    name = "macvlan"

    def load(self, ctx: skel.Context, conf: Conf, ipr: Any, lookup_master: bool = True) -> Dict[str, Any]:
        """Go loadConf: master (default route dev), MTU bound by the master's, MAC precedence."""
        n: Dict[str, Any] = {"master": conf_field(conf, "master", str, ""), "mtu": conf_field(conf, "mtu", int, 0),
                             "mac": conf_field(conf, "mac", str, "")}
        runtime = conf_field(conf, "runtimeConfig", dict, {})
        if lookup_master:
            if not n["master"]:
                n["master"] = link.default_route_interface(ipr)
            master = link.get_link(ipr, n["master"])
            if master is None:
                raise link.fail("Link not found")
            n["master_index"] = master["index"]
            if n["mtu"] < 0 or n["mtu"] > master["mtu"]:
                raise link.fail(f"invalid MTU {n['mtu']}, must be [0, master MTU({master['mtu']})]")
        env = skel.load_args(ctx.args, {"MAC": str})
        if env.get("MAC"):
            n["mac"] = env["MAC"]
        if isinstance(runtime.get("mac"), str) and runtime["mac"]:
            n["mac"] = runtime["mac"]
        return n

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        with link.iproute() as ipr:
            n = self.load(ctx, conf, ipr)
            fd = link.open_netns(ctx.netns)
            try:
                mode = mode_of(conf)
                mac: Optional[str] = None
                if n["mac"]:
                    try:
                        mac = link.parse_mac(n["mac"])
                    except ValueError as exc:
                        raise link.fail(f"invalid args {n['mac']} for MAC addr: {exc}") from None
                made = link.create_in_netns(ipr, fd, ctx.netns, ctx.ifname, "macvlan", "macvlan", mtu=n["mtu"],
                                            mac=mac, link=n["master_index"], macvlan_mode=mode)
            finally:
                os.close(fd)
        iface = {"name": ctx.ifname, "mac": made["mac"], "sandbox": ctx.netns}
        result = spec.new_result(interfaces=[iface])
        ipam_done = False
        try:
            faults.point("macvlan.after_link_create")
            if ipam.ipam_type(conf):
                got = ipam.delegate("ADD", ctx, conf)
                ipam_done = True
                faults.point("macvlan.after_ipam_add")
                if not got["ips"]:
                    raise link.fail("IPAM plugin returned missing IP config")
                result["ips"] = [dict(ip, interface=0) for ip in got["ips"]]
                result["routes"] = got["routes"]
            with link.in_netns(ctx.netns):
                with link.iproute() as cipr:
                    if result["ips"]:
                        link.sysctl_try_set(f"net/ipv4/conf/{ctx.ifname}/arp_notify", "1")
                        link.configure_iface(cipr, ctx.ifname, result)
                    else:
                        link.set_link(cipr, link.require_link(cipr, ctx.ifname)["index"], state="up")
        except BaseException:
            self._undo(ctx, conf, ipam_done)
            raise
        result["dns"] = spec.new_result(dns=conf.get("dns"))["dns"]
        return result

    def _undo(self, ctx: skel.Context, conf: Conf, ipam_done: bool) -> None:
        """A failed ADD leaves nothing: the link goes, and the IPAM reservation if one was made."""
        try:
            with link.in_netns(ctx.netns):
                with link.iproute() as cipr:
                    link.delete_link(cipr, ctx.ifname)
        finally:
            if ipam_done:
                try:
                    ipam.delegate("DEL", ctx, conf)
                except spec.CNIError:
                    pass  # the ADD error is what the runtime must see

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        self.load(ctx, conf, None, lookup_master=False)
        if ipam.ipam_type(conf):
            ipam.delegate("DEL", ctx, conf)
        faults.point("macvlan.del_after_ipam")
        if not ctx.netns:
            return
        try:
            with link.in_netns(ctx.netns):
                with link.iproute() as cipr:
                    link.delete_link(cipr, ctx.ifname)
        except link.NetnsNotFound:
            return  # the container is gone, and with it the macvlan

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        with link.iproute() as ipr:
            self.load(ctx, conf, ipr)
        os.close(link.open_netns(ctx.netns))  # Go opens the netns before the IPAM CHECK
        if ipam.ipam_type(conf):
            ipam.delegate("CHECK", ctx, conf)
        result = prev_result(conf, required=False)
        if result is None:
            raise link.fail("Required prevResult missing")
        cont = next((i for i in result["interfaces"] if i.get("name") == ctx.ifname
                     and i.get("sandbox") == ctx.netns), {})
        if cont.get("sandbox", "") != ctx.netns:
            raise link.fail(f"Sandbox in prevResult {cont.get('sandbox', '')} doesn't match configured netns: "
                            f"{ctx.netns}")
        with link.in_netns(ctx.netns):
            with link.iproute() as cipr:
                found = link.get_link(cipr, cont["name"])
                if found is None:
                    raise link.fail(f"Container Interface name in prevResult: {cont['name']} not found")
                if found["kind"] != "macvlan":
                    raise link.fail(f"Error: Container interface {cont['name']} not of type macvlan")
                have = found["data"].get_attr("IFLA_MACVLAN_MODE") if found["data"] is not None else None
                want = mode_of(conf)
                have_name = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru"}.get(have, str(have))
                if have_name != want:
                    raise link.fail(f"Container macvlan mode {have_name} does not match expected value: {want}")
                if cont.get("mac") and cont["mac"] != found["mac"]:
                    raise link.fail(f"Interface {cont['name']} Mac {cont['mac']} doesn't match container Mac: "
                                    f"{found['mac']}")
                link.check_interface_ips(cipr, ctx.ifname, result["ips"])
                link.check_routes(cipr, result["routes"])
