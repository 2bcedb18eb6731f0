"""cnikit-routed: calico's pod plumbing — a veth, the pod's address alone, routed by the host.

Pod side: the address as /32 (/128), `169.254.1.1 dev eth0 scope link` and `default via
169.254.1.1` (v6: `default via fe80::ecee:eeff:feee:eeee`, the host end's own link-local from
its MAC). Nothing owns 169.254.1.1: the host end answers the pod's ARP by proxy ARP.
Host side: veth `<vethPrefix><11 hex of sha1(containerID/ifname)>`, no address, MAC
ee:ee:ee:ee:ee:ee, proxy_arp=1 with proxy_delay=0 (the default 80 makes the first ping ~600 ms),
accept_dad=0 (its link-local answers at once), and a route `<pod>/32 dev <veth> scope link`.
The node's routing daemon (BIRD, roles/cni_routed) announces the node's address blocks.

Config: ipam (required), mtu, vethPrefix (default "cali", at most 4 characters), dns; routes
come from IPAM, all via the fixed next hop (default: 0.0.0.0/0 and ::/0 per family present).
Policy-lite: with `"capabilities": {"ingressAllow": true}`, a pod's `runtimeConfig.ingressAllow`
([{cidr, protocol, port}]) becomes its nftables allow-list (netfilter/ingress.py), made before
the veth exists (the pod is never reachable without it) and removed on DEL and GC.
Result interfaces [host veth, container veth], ips[].interface = 1, gateway = the next hop.
A failed ADD leaves nothing (veth pair, IPAM lease). DEL: IPAM, then the pair (its host route
goes with the link); DEL of a gone netns or link succeeds. GC (skel runs it only with a
`cni.dev/valid-attachments` list) drops the allow-lists of pods not on it and forwards to IPAM.
"""
from __future__ import annotations

import hashlib
import ipaddress
import os
from typing import Any, Dict, List, Optional

from ... import faults, ipam
from ...net import addr, check, link, ns, rtnl, sysctl
from ...netfilter import ingress
from ...protocol import skel, spec
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field
from ...protocol.spec import CNIError
from .. import NetPlugin, enable_forwarding
from .single import check_prelude

NEXT_HOP_V4 = "169.254.1.1"
NEXT_HOP_V6 = "fe80::ecee:eeff:feee:eeee"  # EUI-64 link-local of HOST_MAC: the host end owns it
HOST_MAC = "ee:ee:ee:ee:ee:ee"
SCOPE_LINK, SCOPE_UNIVERSE = 253, 0


def host_veth_name(prefix: str, container_id: str, ifname: str) -> str:
    """A stable name per attachment (calico: cali + 11 hex of a hash), so CHECK finds it."""
    return prefix + hashlib.sha1(f"{container_id}/{ifname}".encode()).hexdigest()[:11]


def next_hop(version: int) -> str:
    return NEXT_HOP_V4 if version == 4 else NEXT_HOP_V6


class Routed(NetPlugin):
    name = "cnikit-routed"

    def _options(self, conf: Conf) -> Dict[str, Any]:
        mtu = conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE)
        prefix = conf_field(conf, "vethPrefix", str, "cali")
        if not prefix or len(prefix) > 4 or not prefix.isalnum():
            raise CNIError(spec.ERR_INVALID_CONFIG,
                           f"vethPrefix {prefix!r} must be 1-4 letters or digits (the name has 11 more)")
        if not ipam.ipam_type(conf):
            raise CNIError(spec.ERR_INVALID_CONFIG, "IPAM plugin type is missing")
        runtime = conf.get("runtimeConfig") if isinstance(conf.get("runtimeConfig"), dict) else {}
        caps = conf.get("capabilities") if isinstance(conf.get("capabilities"), dict) else {}
        raw = runtime.get("ingressAllow")
        return {"mtu": mtu, "prefix": prefix, "allow": None if raw is None else ingress.parse(raw),
                "policy": bool(caps.get("ingressAllow")) or raw is not None}

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        opts = self._options(conf)
        peer = host_veth_name(opts["prefix"], ctx.container_id, ctx.ifname)
        os.close(ns.open_netns(ctx.netns))  # a missing netns fails before IPAM hands out anything
        got = ipam.delegate("ADD", ctx, conf)
        veth_made = policy_made = False
        try:
            if not got["ips"]:
                raise rtnl.fail("IPAM plugin returned missing IP config")
            result = pod_result(got)
            if opts["allow"] is not None:
                policy_made = True  # (a failed batch applied nothing; the undo's teardown is a no-op then)
                ingress.setup(peer, opts["allow"])
            families = enable_forwarding(result["ips"])
            host_fd = ns.open_netns("/proc/thread-self/ns/net")
            try:
                with ns.in_netns(ctx.netns):
                    with rtnl.rtnl() as cipr:
                        host, cont = link.setup_veth(cipr, ctx.ifname, host_fd, opts["mtu"], host_name=peer,
                                                     host_mac=HOST_MAC, host_sysctls=host_sysctls(families))
                        veth_made = True
                        faults.point("routed.after_veth")  # crash-safety tests (faults.py)
                        result["interfaces"] = [{"name": host["name"], "mac": HOST_MAC},
                                                {"name": ctx.ifname, "mac": cont["mac"], "sandbox": ctx.netns}]
                        link.configure_iface(cipr, ctx.ifname, dict(result, routes=[]), cont)
                        pod_routes(cipr, cont["index"], result)
            finally:
                os.close(host_fd)
            with rtnl.rtnl() as ipr:
                for ipc in result["ips"]:
                    iface = ipaddress.ip_interface(ipc["address"])
                    try:
                        addr.add_route(ipr, str(iface), None, host["index"], scope=SCOPE_LINK)
                    except Exception as exc:  # noqa: BLE001
                        raise rtnl.fail(f"failed to add host route {iface} dev {host['name']}", exc) from None
        except BaseException:
            self._undo(ctx, conf, veth_made, peer if policy_made else None)
            raise
        dns = conf.get("dns")
        if isinstance(dns, dict) and any(dns.get(k) for k in ("nameservers", "search", "options", "domain")):
            result["dns"] = spec.new_result(dns=dns)["dns"]
        return result

    def _undo(self, ctx: skel.Context, conf: Conf, veth_made: bool, policy_of: Optional[str]) -> None:
        try:
            if veth_made:
                link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)
            if policy_of:
                ingress.teardown(policy_of)
            ipam.delegate("DEL", ctx, conf)
        except CNIError:
            pass  # the ADD error is what the runtime must see

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        opts = self._options(conf)
        ipam.delegate("DEL", ctx, conf)
        link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)  # the host route goes with the link
        if opts["policy"]:
            ingress.teardown(host_veth_name(opts["prefix"], ctx.container_id, ctx.ifname))

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        # skel.gc runs this only with a keep-list (without one, GC collects nothing)
        opts = self._options(conf)
        if opts["policy"]:
            ingress.gc(host_veth_name(opts["prefix"], cid, ifname) for cid, ifname in spec.valid_attachments(conf))
        super().gc(ctx, conf)

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        opts = self._options(conf)
        result, cont = check_prelude(ctx, conf, "cnikit-routed: Required prevResult missing")
        with ns.in_netns(ctx.netns):
            with rtnl.rtnl() as cipr:
                check_pod(cipr, ctx.ifname, cont, result)
        peer = host_veth_name(opts["prefix"], ctx.container_id, ctx.ifname)
        with rtnl.rtnl() as ipr:
            check_host(ipr, peer, result)
        if opts["allow"] is not None:
            ingress.check(peer, opts["allow"])


def pod_result(got: Result) -> Result:
    """IPAM's answer made the pod's: each address alone (/32, /128) with the fixed next hop as its
    gateway; IPAM's routes (or a default per family) via that next hop."""
    ips = []
    for ip in got["ips"]:
        iface = ipaddress.ip_interface(ip["address"])
        bits = 32 if iface.version == 4 else 128
        ips.append({"address": f"{iface.ip}/{bits}", "gateway": next_hop(iface.version), "interface": 1})
    families = {ipaddress.ip_interface(ip["address"]).version for ip in ips}
    routes = [{"dst": r["dst"], "gw": next_hop(ipaddress.ip_network(r["dst"], strict=False).version)}
              for r in got.get("routes") or []
              if ipaddress.ip_network(r["dst"], strict=False).version in families]
    if not routes:
        routes = [{"dst": "0.0.0.0/0" if v == 4 else "::/0", "gw": next_hop(v)} for v in sorted(families)]
    return spec.new_result(ips=ips, routes=routes, dns=got.get("dns"))


def host_sysctls(families: List[int]) -> Dict[str, str]:
    out = {}
    if 4 in families:
        out.update({"net/ipv4/conf/{ifname}/proxy_arp": "1", "net/ipv4/neigh/{ifname}/proxy_delay": "0",
                    "net/ipv4/conf/{ifname}/forwarding": "1"})
    if 6 in families:
        out.update({"net/ipv6/conf/{ifname}/accept_dad": "0", "net/ipv6/conf/{ifname}/forwarding": "1"})
    return out


def pod_routes(cipr: Any, index: int, result: Result) -> None:
    """The on-link route to each family's next hop, then the result's routes via it."""
    for version in sorted({ipaddress.ip_interface(ip["address"]).version for ip in result["ips"]}):
        if version == 4:  # the v6 next hop is link-local: on-link by definition
            try:
                addr.add_route(cipr, f"{NEXT_HOP_V4}/32", None, index, scope=SCOPE_LINK)
            except Exception as exc:  # noqa: BLE001
                raise rtnl.fail(f"failed to add route {NEXT_HOP_V4} scope link", exc) from None
    for route in result["routes"]:
        try:
            addr.add_route(cipr, route["dst"], route["gw"], index, scope=SCOPE_UNIVERSE)
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"failed to add route {route['dst']} via {route['gw']}", exc) from None


def check_pod(cipr: Any, ifname: str, cont: Dict[str, Any], result: Result) -> None:
    found = link.get_link(cipr, ifname)
    if found is None:
        raise rtnl.fail(f"cnikit-routed: Container Interface name in prevResult: {ifname} not found")
    if found["kind"] != "veth":
        raise rtnl.fail(f"Error: Container interface {ifname} not of type veth")
    if cont.get("mac") and cont["mac"] != found["mac"]:
        raise rtnl.fail(f"cnikit-routed: Interface {ifname} Mac {cont['mac']} doesn't match container Mac: "
                        f"{found['mac']}")
    have = {ipaddress.ip_interface(a) for a in addr.link_addresses(cipr, found["index"])}
    for ipc in result["ips"]:
        if ipaddress.ip_interface(ipc["address"]) not in have:
            raise rtnl.fail(f"Failed to match addr {ipc['address']} on interface {ifname}")
    if any(ipaddress.ip_interface(ip["address"]).version == 4 for ip in result["ips"]):
        check.check_routes(cipr, [{"dst": f"{NEXT_HOP_V4}/32"}])
    check.check_routes(cipr, result["routes"])


def check_host(ipr: Any, peer: str, result: Result) -> None:
    found = link.get_link(ipr, peer)
    if found is None:
        raise rtnl.fail(f"cnikit-routed: host veth {peer} not found")
    if found["mac"] != HOST_MAC:
        raise rtnl.fail(f"cnikit-routed: host veth {peer} MAC {found['mac']} is not {HOST_MAC}")
    families = sorted({ipaddress.ip_interface(ip["address"]).version for ip in result["ips"]})
    for key, want in host_sysctls(families).items():
        path = key.format(ifname=peer)
        try:
            have = sysctl.sysctl_get(path)
        except OSError as exc:
            raise rtnl.fail(f"cnikit-routed: cannot read {path}", exc) from None
        if have != want:
            raise rtnl.fail(f"cnikit-routed: {path} is {have}, expected {want}")
    for ipc in result["ips"]:
        iface = ipaddress.ip_interface(ipc["address"])
        routes = ipr.get_routes(family=10 if iface.version == 6 else 2, table=254, oif=found["index"])
        if not any(r.get_attr("RTA_DST") == str(iface.ip) and r["dst_len"] == iface.network.prefixlen
                   for r in routes):
            raise rtnl.fail(f"cnikit-routed: host route {iface} dev {peer} not found")
