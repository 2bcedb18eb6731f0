"""ptp: a point-to-point veth, routed by the host (Go plugins/main/ptp v1.1.1).

The host end carries each gateway as /32 (/128) and a host route to the container address; in the
container the subnet route is replaced by an on-link route to the gateway plus the subnet via the
gateway. Options: ipMasq (+ ipMasqBackend), mtu, ipam (required), dns (wins over IPAM's when set).
Result interfaces [host veth, container veth], ips[].interface = 1.
Deliberate differences: a failed ADD also deletes the veth pair and the masquerade (Go only
releases IPAM); DEL removes the masquerade even when the netns is gone.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Any, Optional

from ... import faults, ipam, netfilter
from ...net import addr, link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import MTU_RANGE, Conf, NetConf, Result, base_fields, conf_field
from .. import NetPlugin, enable_forwarding, gc_masquerade
from .single import check_container, check_prelude


@dataclass(frozen=True)
class PtpConf(NetConf):
    mtu: int = 0
    ipMasq: bool = False
    ipMasqBackend: Optional[str] = None


class Ptp(NetPlugin):
    name = "ptp"

    def load(self, conf: Conf) -> PtpConf:
        """Go's json.Unmarshal into NetConf: every typed key, before anything is done."""
        return PtpConf(**base_fields(conf), mtu=conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE),
                       ipMasq=conf_field(conf, "ipMasq", bool, False),
                       ipMasqBackend=conf_field(conf, "ipMasqBackend", str, None))

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(conf)
        got = ipam.delegate("ADD", ctx, conf)
        veth_made = masq_done = False
        try:
            result = spec.new_result(ips=got["ips"], routes=got["routes"], dns=got.get("dns"))
            if not result["ips"]:
                raise rtnl.fail("IPAM plugin returned missing IP config")
            enable_forwarding(result["ips"])
            host_fd = ns.open_netns("/proc/thread-self/ns/net")
            try:
                with ns.in_netns(ctx.netns):
                    with rtnl.rtnl() as cipr:
                        host, cont = link.setup_veth(cipr, ctx.ifname, host_fd, n.mtu)
                        veth_made = True
                        faults.point("ptp.after_veth")  # crash-safety tests (faults.py)
                        for ip in result["ips"]:
                            ip["interface"] = 1
                        result["interfaces"] = [{"name": host["name"], "mac": host["mac"]},
                                                {"name": ctx.ifname, "mac": cont["mac"], "sandbox": ctx.netns}]
                        link.configure_iface(cipr, ctx.ifname, result, cont)
                        container_routes(cipr, cont["index"], result)
            finally:
                os.close(host_fd)
            with rtnl.rtnl() as ipr:
                host_side(ipr, host, result)
            if n.ipMasq:
                netfilter.setup_ipmasq(n.name, ctx.container_id, [ip["address"] for ip in result["ips"]],
                                       n.ipMasqBackend)
                masq_done = True
        except BaseException:
            self._undo(ctx, conf, veth_made, masq_done, n.ipMasqBackend)
            raise
        if any(conf.get("dns", {}).get(k) for k in ("nameservers", "search", "options", "domain")) \
                if isinstance(conf.get("dns"), dict) else False:
            result["dns"] = spec.new_result(dns=conf["dns"])["dns"]
        return result

    def _undo(self, ctx: skel.Context, conf: Conf, veth_made: bool, masq_done: bool, backend: Optional[str]) -> None:
        try:
            if veth_made:
                link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)
            if masq_done:
                netfilter.teardown_ipmasq(conf["name"], ctx.container_id, None, backend)
            ipam.delegate("DEL", ctx, conf)
        except CNIError:
            pass  # the ADD error is what the runtime must see

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        n = self.load(conf)
        ipam.delegate("DEL", ctx, conf)  # IPAM first, like v1.1.1 ptp
        addrs = link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=n.ipMasq)
        if n.ipMasq:
            # Go skips this when the netns/link is gone and leaks the chain; we remove it anyway
            netfilter.teardown_ipmasq(n.name, ctx.container_id, addrs or None, n.ipMasqBackend)

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        gc_masquerade(conf)
        super().gc(ctx, conf)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        n = self.load(conf)
        result, cont = check_prelude(ctx, conf, "ptp: Required prevResult missing")
        check_container(ctx, result, cont, "veth", "veth/p2p", prefix="ptp: ")
        if n.ipMasq:
            netfilter.check_ipmasq(n.name, ctx.container_id, [ip["address"] for ip in result["ips"]],
                                   n.ipMasqBackend)


def container_routes(cipr: Any, index: int, result: Result) -> None:
    """Replace each subnet route by an on-link /32 (/128) route to the gateway and the subnet via it."""
    for ipc in result["ips"]:
        iface = ipaddress.ip_interface(ipc["address"])
        net = str(iface.network)
        try:
            # proto 0 / scope NOWHERE are wildcards; pyroute2 would otherwise match only "static" routes
            cipr.route("del", dst=str(iface.network.network_address), dst_len=iface.network.prefixlen, oif=index,
                       family=10 if iface.version == 6 else 2, proto=0, scope=255)
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"failed to delete route {net}", exc) from None
        bits = 32 if iface.version == 4 else 128
        gw = ipc.get("gateway")
        try:
            addr.add_route(cipr, f"{gw}/{bits}", None, index, scope=253, prefsrc=str(iface.ip))
            addr.add_route(cipr, net, gw, index, scope=0, prefsrc=str(iface.ip))
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"failed to add route {net} via {gw}", exc) from None


def host_side(ipr: Any, veth: link.Iface, result: Result) -> None:
    """Each gateway as /32 (/128) on the host veth and a host-scope route to the container IP."""
    for ipc in result["ips"]:
        iface = ipaddress.ip_interface(ipc["address"])
        bits = 32 if iface.version == 4 else 128
        try:
            addr.add_address(ipr, veth["index"], f"{ipc['gateway']}/{bits}")
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"failed to add IP addr ({ipc['gateway']}/{bits}) to veth", exc) from None
        try:
            addr.add_route(ipr, f"{iface.ip}/{bits}", None, veth["index"], scope=254)
        except Exception as exc:  # noqa: BLE001
            if rtnl.netlink_error_code(exc) != 17:
                raise rtnl.fail("failed to add route on host", exc) from None
