"""CNI plugins: main (create the container interface) and meta (chained on a prevResult).

NetPlugin is their base: the protocol's Plugin plus GC/STATUS forwarded to the IPAM plugin, which
needs the IPAM layer below (protocol/plugin.py cannot import it: IPAM plugins derive from Plugin).
"""
from __future__ import annotations

from .. import ipam
from ..protocol import skel, spec
from ..protocol.plugin import Conf, Plugin, conf_field


class NetPlugin(Plugin):
    """A main or meta plugin: GC and STATUS go to its IPAM plugin, as the spec asks of main plugins."""

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        self._forward_to_ipam("GC", ctx, conf)

    def status(self, ctx: skel.Context, conf: Conf) -> None:
        self._forward_to_ipam("STATUS", ctx, conf)

    def _forward_to_ipam(self, command: str, ctx: skel.Context, conf: Conf) -> None:
        # An IPAM plugin sees its own type under `ipam`: forwarding would call itself forever.
        ptype = ipam.ipam_type(conf)
        if ptype and ptype != self.name:
            ipam.delegate(command, ctx, conf)


def gc_masquerade(conf: Conf) -> None:
    """GC step of the plugins with ipMasq (bridge, ptp): drop masquerade rules of gone containers."""
    from .. import netfilter  # noqa: PLC0415 - only GC needs it

    if conf_field(conf, "ipMasq", bool, False):
        keep = {cid for cid, _ in spec.valid_attachments(conf)}
        netfilter.gc_ipmasq(conf["name"], keep, conf_field(conf, "ipMasqBackend", str, None))


def enable_forwarding(ips: list) -> list:
    """Turn IP forwarding on for every family of the result's addresses (ptp's and cnikit-routed's
    host side routes the pod); Go ptp's error text. Returns the families, sorted."""
    import ipaddress  # noqa: PLC0415

    from ..net import rtnl, sysctl  # noqa: PLC0415 - no pyroute2 at import

    families = sorted({ipaddress.ip_interface(ip["address"]).version for ip in ips})
    for family in families:
        try:
            sysctl.enable_forward(family)
        except spec.CNIError as err:
            raise rtnl.fail(f"Could not enable IP forwarding: {err.msg}") from None
    return families
