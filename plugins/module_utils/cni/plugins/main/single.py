"""What macvlan, ipvlan, vlan, tap and dummy share: ADD makes one link called CNI_IFNAME in the
container, then the common tail (IPAM, arp_notify, ConfigureIface or just up, undo on failure);
DEL releases IPAM then deletes the link; CHECK matches prevResult, addresses and routes.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Tuple

from ... import faults, ipam
from ...net import check, link, ns, rtnl, sysctl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result, conf_field, prev_result
from .. import NetPlugin


class SingleLinkPlugin(NetPlugin):
    """Base class; subclasses create the link in `add` and hand it to `finish_add`."""

    arp_notify = True  # Go vlan and dummy do not set net.ipv4.conf.<if>.arp_notify
    dns_from_conf = True  # Go dummy keeps IPAM's dns; the others print the config's

    def finish_add(self, ctx: skel.Context, conf: Conf, made: link.Iface, preset: Optional[Result] = None) -> Result:
        """IPAM (ips on interface 0) and the container side; a failure undoes link and IPAM.
        `preset`: addresses/routes to apply instead of IPAM's (ipvlan chained after another plugin)."""
        result = spec.new_result(interfaces=[{"name": ctx.ifname, "mac": made["mac"], "sandbox": ctx.netns}])
        ipam_done = False
        try:
            faults.point(f"{self.name}.after_link_create")  # crash-safety tests (faults.py)
            if preset is not None:
                result["ips"] = [dict(ip, interface=0) for ip in preset["ips"]]
                result["routes"] = list(preset["routes"])
            elif ipam.ipam_type(conf):
                got = ipam.delegate("ADD", ctx, conf)
                ipam_done = True
                faults.point(f"{self.name}.after_ipam_add")
                if not got["ips"]:
                    raise rtnl.fail("IPAM plugin returned missing IP config")
                result["ips"] = [dict(ip, interface=0) for ip in got["ips"]]
                result["routes"] = got["routes"]
                result["dns"] = got.get("dns") or {}
            with ns.in_netns(ctx.netns):
                with rtnl.rtnl() as cipr:
                    if result["ips"]:
                        if self.arp_notify:
                            sysctl.sysctl_try_set(f"net/ipv4/conf/{ctx.ifname}/arp_notify", "1")
                        link.configure_iface(cipr, ctx.ifname, result, made)
                    else:
                        found = link.get_link(cipr, ctx.ifname)
                        if found is None:
                            raise rtnl.fail(f"failed to find interface name {rtnl.json_quote(ctx.ifname)}: "
                                            "Link not found")
                        link.set_link(cipr, found["index"], state="up")
        except BaseException:
            self.undo(ctx, conf, ipam_done)
            raise
        if self.dns_from_conf:
            result["dns"] = spec.new_result(dns=conf.get("dns"))["dns"]
        return result

    def undo(self, ctx: skel.Context, conf: Conf, ipam_done: bool) -> None:
        """A failed ADD leaves nothing: the link goes, and the IPAM reservation if one was made."""
        try:
            link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)
        finally:
            if ipam_done:
                try:
                    ipam.delegate("DEL", ctx, conf)
                except CNIError:
                    pass  # the ADD error is what the runtime must see

    def validate_del(self, ctx: skel.Context, conf: Conf) -> None:
        """Config checks DEL still makes (never lookups of things that may be gone)."""

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        self.validate_del(ctx, conf)
        if ipam.ipam_type(conf):
            ipam.delegate("DEL", ctx, conf)
        faults.point(f"{self.name}.del_after_ipam")
        link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)  # a gone netns took its link with it

    def check_mode(self, ctx: skel.Context, conf: Conf, modes: Dict[str, int], attr: str) -> None:
        """cmdCheck of macvlan/ipvlan: the link is of this kind and in the configured mode."""
        result, cont = check_prelude(ctx, conf)
        want = mode_field(conf, self.name, modes)

        def same_mode(found: link.Iface) -> None:
            have = link.info_data(found, attr)
            have_name = {v: k for k, v in modes.items()}.get(have, str(have))
            if have_name != want:
                raise rtnl.fail(f"Container {self.name} mode {have_name} does not match expected value: {want}")

        check_container(ctx, result, cont, self.name, self.name, same_mode)


def mode_field(conf: Conf, kind: str, modes: Dict[str, int]) -> str:
    """Go's modeFromString: the config's `mode`, the first of `modes` when empty."""
    mode = conf_field(conf, "mode", str, "") or next(iter(modes))
    if mode not in modes:
        raise rtnl.fail(f"unknown {kind} mode: {rtnl.json_quote(mode)}")
    return mode


def check_container(ctx: skel.Context, result: Result, cont: Dict[str, Any], kind: Optional[str] = None,
                    what: str = "", validate: Optional[Callable[[link.Iface], None]] = None,
                    prefix: str = "") -> None:
    """The container side of Go's cmdCheck: validateCniContainerInterface (present, of `kind` when
    given, `validate` e.g. the mode, MAC), then the prevResult's IPs and routes on it. `prefix`
    is the plugin's own start of Go's messages (ptp writes "ptp: ")."""
    with ns.in_netns(ctx.netns):
        with rtnl.rtnl() as cipr:
            found = link.get_link(cipr, cont["name"])
            if found is None:
                raise rtnl.fail(f"{prefix}Container Interface name in prevResult: {cont['name']} not found")
            if kind is not None and found["kind"] != kind:
                raise rtnl.fail(f"Error: Container interface {cont['name']} not of type {what}")
            if validate is not None:
                validate(found)
            if cont.get("mac") and cont["mac"] != found["mac"]:
                raise rtnl.fail(f"{prefix}Interface {cont['name']} Mac {cont['mac']} doesn't match container Mac: "
                                f"{found['mac']}")
            check.check_interface_ips(cipr, ctx.ifname, result["ips"])
            check.check_routes(cipr, result["routes"])


def check_prelude(ctx: skel.Context, conf: Conf, missing: str = "Required prevResult missing",
                  match: bool = True) -> Tuple[Result, Dict[str, Any]]:
    """The start of every Go cmdCheck here: the netns opens, IPAM CHECK, prevResult present and
    (when `match`) naming CNI_IFNAME in this netns. Returns (prevResult, its container interface)."""
    os.close(ns.open_netns(ctx.netns))
    if ipam.ipam_type(conf):
        ipam.delegate("CHECK", ctx, conf)
    result = prev_result(conf, required=False)
    if result is None:
        raise rtnl.fail(missing)
    if not match:
        return result, {}
    cont = next((i for i in result["interfaces"] if i.get("name") == ctx.ifname
                 and i.get("sandbox") == ctx.netns), {})
    if ctx.netns != cont.get("sandbox", ""):
        raise rtnl.fail(f"Sandbox in prevResult {cont.get('sandbox', '')} doesn't match configured netns: "
                        f"{ctx.netns}")
    return result, cont
