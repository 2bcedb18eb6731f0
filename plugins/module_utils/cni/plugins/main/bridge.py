"""bridge: a veth pair from the container to a Linux bridge on the host (Go plugins/main/bridge v1.1.1).

Options: bridge (cni0), isGateway, isDefaultGateway (implies isGateway), forceAddress, ipMasq
(+ ipMasqBackend: nftables default, "iptables" = Go's chains), mtu, hairpinMode, promiscMode (not
with hairpin), vlan (0..4094), macspoofchk (nft bridge table, as Go), enabledad,
mac (CNI_ARGS MAC < args.cni.mac < runtimeConfig.mac), ipam ({} = L2 only).
Result interfaces [bridge, host veth, container veth], ips[].interface = 2.

Deliberate differences from Go 1.1.1: a failed ADD deletes its veth pair (Go leaves it, plugins#29);
DEL removes the masquerade even when the netns or link is already gone (Go leaks it, plugins#810);
CHECK of an L2-only network skips the IPAM CHECK (Go fails looking for an IPAM plugin "").
"""
from __future__ import annotations

import ipaddress
import os
import time
from typing import Any, Dict, List, Optional, Tuple

from ... import faults, ipam, netfilter
from ...net import addr, check, link, ns, rtnl, sysctl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import MTU_RANGE, Conf, Result, conf_field, prev_result
from .. import NetPlugin, gc_masquerade

OPER_UP_WAITS_MS = (0, 50, 500, 1000, 1000)  # Go: how long the host veth may take to come up


class Bridge(NetPlugin):
    name = "bridge"

    def load(self, ctx: skel.Context, conf: Conf) -> Dict[str, Any]:
        """Go loadNetConf: typed keys, VLAN range, MAC precedence."""
        n: Dict[str, Any] = {"bridge": conf_field(conf, "bridge", str, "cni0") or "cni0"}
        for key in ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode", "promiscMode",
                    "macspoofchk", "enabledad"):
            n[key] = conf_field(conf, key, bool, False)
        n["mtu"] = conf_field(conf, "mtu", int, 0, bounds=MTU_RANGE)
        n["vlan"] = conf_field(conf, "vlan", int, 0)
        n["backend"] = conf_field(conf, "ipMasqBackend", str, None)
        if n["vlan"] < 0 or n["vlan"] > 4094:
            raise rtnl.fail(f"invalid VLAN ID {n['vlan']} (must be between 0 and 4094)")
        n["mac"] = skel.load_args(ctx.args, {"MAC": str}).get("MAC", "")
        cni_args = (conf_field(conf, "args", dict, {}) or {}).get("cni") or {}
        runtime = conf_field(conf, "runtimeConfig", dict, {})
        for source in (cni_args, runtime):
            if isinstance(source, dict) and isinstance(source.get("mac"), str) and source["mac"]:
                n["mac"] = source["mac"]
        if n["isDefaultGateway"]:
            n["isGateway"] = True
        return n

    # --- ADD -------------------------------------------------------------------------------

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        n = self.load(ctx, conf)
        if n["hairpinMode"] and n["promiscMode"]:
            raise rtnl.fail("cannot set hairpin mode and promiscuous mode at the same time.")
        with rtnl.rtnl() as ipr:
            br = ensure_bridge(ipr, n["bridge"], n["mtu"], n["promiscMode"], n["vlan"] != 0)
            host, cont = attach_veth(ipr, br, ctx.netns, ctx.ifname, n["mtu"], n["hairpinMode"], n["vlan"],
                                     n["mac"])
            result = spec.new_result(interfaces=[{"name": br["name"], "mac": br["mac"]},
                                                 {"name": host["name"], "mac": host["mac"]},
                                                 {"name": ctx.ifname, "mac": cont["mac"], "sandbox": ctx.netns}])
            done = {"ipam": False, "masq": False, "spoof": False}
            try:
                if n["macspoofchk"]:
                    done["spoof"] = True
                    spoofcheck_setup(host["name"], cont["mac"], f"{ctx.container_id}-{ctx.ifname}")
                br_now = None
                if ipam.ipam_type(conf):
                    br_now = self._add_l3(ctx, conf, n, ipr, cont, host, result, done)
                else:
                    with ns.in_netns(ctx.netns):
                        with rtnl.rtnl() as cipr:
                            link.set_link(cipr, link.require_link(cipr, ctx.ifname)["index"], state="up")
                if br_now is None:  # Go refetches: the MAC changes when the first port joins
                    br_now = link.get_link(ipr, n["bridge"])
                if br_now is None or br_now["kind"] != "bridge":
                    raise rtnl.fail(f"could not lookup {rtnl.json_quote(n['bridge'])}: Link not found")
                result["interfaces"][0]["mac"] = br_now["mac"]
            except BaseException:
                self._undo(ctx, conf, n, done)
                raise
        result["dns"] = spec.new_result(dns=conf.get("dns"))["dns"]
        return result

    def _add_l3(self, ctx: skel.Context, conf: Conf, n: Dict[str, Any], ipr: Any, cont: link.Iface,
                host: link.Iface, result: Result, done: Dict[str, bool]) -> Optional[link.Iface]:
        """IPAM, the container side, the gateway on the bridge, masquerade. Returns the bridge as
        refetched for the gateway when nothing after that can change it, else None."""
        got = ipam.delegate("ADD", ctx, conf)
        done["ipam"] = True
        faults.point("bridge.after_ipam_add")  # crash-safety tests (faults.py)
        result["ips"], result["routes"] = got["ips"], got["routes"]
        if not result["ips"]:
            raise rtnl.fail("IPAM plugin returned missing IP config")
        gateways = calc_gateways(result, n["isGateway"], n["isDefaultGateway"])
        with ns.in_netns(ctx.netns):
            if n["enabledad"]:
                sysctl.sysctl_try_set(f"net/ipv6/conf/{ctx.ifname}/enhanced_dad", "1")
                sysctl.sysctl_try_set(f"net/ipv6/conf/{ctx.ifname}/accept_dad", "1")
            else:
                sysctl.sysctl_try_set(f"net/ipv6/conf/{ctx.ifname}/accept_dad", "0")
            sysctl.sysctl_try_set(f"net/ipv4/conf/{ctx.ifname}/arp_notify", "1")
            with rtnl.rtnl() as cipr:
                link.configure_iface(cipr, ctx.ifname, result, cont)
        wait_oper_up(ipr, host["name"])
        br = None
        if n["isGateway"]:
            # refetch: a bridge whose ports all went (e.g. an ADD killed before its address was set)
            # has MAC 00:00:00:00:00:00 until this veth joined; pinning that stale MAC fails (Go #620)
            br = link.require_link(ipr, n["bridge"])
            target = br
            for family in (4, 6):
                for gw in gateways[family]:
                    if n["vlan"]:
                        target = ensure_vlan_gateway(ipr, br, n["vlan"], result)
                    ensure_addr(ipr, target, br["mac"], gw, n["forceAddress"],
                                "failed to set vlan interface for bridge with addr" if n["vlan"] else
                                "failed to set bridge addr")
                if gateways[family]:
                    sysctl.enable_forward(family)
        if n["ipMasq"]:
            netfilter.setup_ipmasq(conf["name"], ctx.container_id, [ip["address"] for ip in result["ips"]],
                                   n["backend"])
            done["masq"] = True
            faults.point("bridge.after_masq")
        return None if n["vlan"] else br  # a vlan gateway's veth joined the bridge after the refetch

    def _undo(self, ctx: skel.Context, conf: Conf, n: Dict[str, Any], done: Dict[str, bool]) -> None:
        """Take back a failed ADD: the veth pair (deleting one end deletes both), IPAM, masquerade.
        The bridge stays, as in Go: other containers may already use it."""
        try:
            link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=False)
        except CNIError:
            pass
        try:
            if done["spoof"]:
                spoofcheck_teardown(f"{ctx.container_id}-{ctx.ifname}")
            if done["masq"]:
                netfilter.teardown_ipmasq(conf["name"], ctx.container_id, None, n["backend"])
            if done["ipam"]:
                ipam.delegate("DEL", ctx, conf)
        except CNIError:
            pass  # the ADD error is what the runtime must see

    # --- DEL -------------------------------------------------------------------------------

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        n = self.load(ctx, conf)
        l3 = bool(ipam.ipam_type(conf))
        addrs = link.delete_link_in_netns(ctx.netns, ctx.ifname, addrs=l3 and n["ipMasq"])
        if l3:
            ipam.delegate("DEL", ctx, conf)  # after the link, like v1.1.1 (plugins#666)
        if n["macspoofchk"]:
            spoofcheck_teardown(f"{ctx.container_id}-{ctx.ifname}")
        if l3 and n["ipMasq"]:
            # addresses unknown (netns or link already gone): remove whatever is the container's
            netfilter.teardown_ipmasq(conf["name"], ctx.container_id, addrs or None, n["backend"])

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        gc_masquerade(conf)
        super().gc(ctx, conf)

    # --- CHECK -----------------------------------------------------------------------------

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        n = self.load(ctx, conf)
        os.close(ns.open_netns(ctx.netns))
        if ipam.ipam_type(conf):
            ipam.delegate("CHECK", ctx, conf)
        result = prev_result(conf, required=False)
        if result is None:
            raise rtnl.fail("Required prevResult missing")
        br_map: Dict[str, Any] = {}
        cont_map: Dict[str, Any] = {}
        for intf in result["interfaces"]:
            if intf.get("name") == n["bridge"]:
                br_map = intf
            elif intf.get("name") == ctx.ifname and intf.get("sandbox") == ctx.netns:
                cont_map = intf
        with rtnl.rtnl() as ipr:
            br = check_bridge(ipr, br_map, n["promiscMode"])
            if ctx.netns != cont_map.get("sandbox", ""):
                raise rtnl.fail(f"Sandbox in prevResult {cont_map.get('sandbox', '')} doesn't match configured "
                                f"netns: {ctx.netns}")
            with ns.in_netns(ctx.netns):
                with rtnl.rtnl() as cipr:
                    cont = check_container_veth(cipr, cont_map)
            found_veth = False
            for intf in result["interfaces"]:
                if intf.get("name") in (br_map.get("name"), cont_map.get("name")):
                    continue
                if check_host_veth(ipr, intf, br, cont):
                    found_veth = True
                    break
            if not found_veth:
                raise rtnl.fail(f"CNI veth created for bridge {n['bridge']} was not found")
        with ns.in_netns(ctx.netns):
            with rtnl.rtnl() as cipr:
                check.check_interface_ips(cipr, ctx.ifname, result["ips"])
                check.check_routes(cipr, result["routes"])
        if n["ipMasq"] and result["ips"]:
            netfilter.check_ipmasq(conf["name"], ctx.container_id, [ip["address"] for ip in result["ips"]],
                                   n["backend"])


# --- steps (kept module-level: the vlan gateway reuses attach_veth) ----------------------------

def ensure_bridge(ipr: Any, name: str, mtu: int, promisc: bool, vlan_filtering: bool) -> link.Iface:
    """Go ensureBridge: create (EEXIST is fine), promisc on if asked, accept_ra=0, up. An existing
    link is looked up first (Go's create fails with EEXIST then), and set up only when down."""
    attrs: Dict[str, Any] = {"mtu": mtu} if mtu else {}
    if vlan_filtering:
        attrs["br_vlan_filtering"] = 1
    br = link.get_link(ipr, name)
    if br is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", **attrs)
        except Exception as exc:  # noqa: BLE001
            if rtnl.netlink_error_code(exc) != 17:  # EEXIST: made meanwhile by a concurrent ADD
                raise rtnl.fail(f"failed to create bridge {rtnl.json_quote(name)}: could not add "
                                f"{rtnl.json_quote(name)}", exc) from None
        br = link.get_link(ipr, name)
    if br is None:
        raise rtnl.fail(f"failed to create bridge {rtnl.json_quote(name)}: could not lookup "
                        f"{rtnl.json_quote(name)}: Link not found")
    if promisc:
        ipr.link("set", index=br["index"], flags=link.IFF_PROMISC, change=link.IFF_PROMISC)
    if br["kind"] != "bridge":
        raise rtnl.fail(f"failed to create bridge {rtnl.json_quote(name)}: {rtnl.json_quote(name)} already "
                        "exists but is not a bridge")
    sysctl.sysctl_try_set(f"net/ipv6/conf/{name}/accept_ra", "0")
    if not br["up"]:
        link.set_link(ipr, br["index"], state="up")
    return br


def attach_veth(ipr: Any, br: link.Iface, netns: Optional[str], ifname: str, mtu: int, hairpin: bool,
                vlan: int, mac: str) -> Tuple[link.Iface, link.Iface]:
    """Go setupVeth: a veth pair into `netns` (None: this netns, for the vlan gateway), the host end
    enslaved to the bridge with hairpin and the VLAN as untagged PVID. Returns (host, container)."""
    parsed = None
    if mac:
        try:
            parsed = link.parse_mac(mac)
        except ValueError as exc:
            raise rtnl.fail(str(exc)) from None
    host_fd = ns.current_netns_fd()
    try:
        with ns.in_netns(netns):
            with rtnl.rtnl() as cipr:
                host, cont = link.setup_veth(cipr, ifname, host_fd, mtu, parsed)
    finally:
        os.close(host_fd)
    try:
        try:
            link.set_link(ipr, host["index"], master=br["index"])
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"failed to connect {rtnl.json_quote(host['name'])} to bridge {br['name']}",
                            exc) from None
        if hairpin:  # a new bridge port starts with hairpin off: Go's "off" request changes nothing
            try:
                ipr.brport("set", index=host["index"], mode=1)
            except Exception as exc:  # noqa: BLE001
                raise rtnl.fail(f"failed to setup hairpin mode for {host['name']}", exc) from None
        if vlan:
            try:
                ipr.vlan_filter("add", index=host["index"], vlan_info={"vid": vlan, "flags": ["pvid", "untagged"]})
            except Exception as exc:  # noqa: BLE001
                raise rtnl.fail(f"failed to setup vlan tag on interface {rtnl.json_quote(host['name'])}",
                                exc) from None
    except CNIError:
        ipr.link("del", index=host["index"])  # takes the container end with it
        raise
    return host, cont


def calc_gateways(result: Result, is_gw: bool, is_default_gw: bool) -> Dict[int, List[str]]:
    """Go calcGateways: ips move to interface 2, gateway defaults to network+1 when isGateway, a
    default route per family when isDefaultGateway (unless IPAM gave one with a gw); returns the
    "gw/prefix" addresses the bridge must carry, per family."""
    gws: Dict[int, List[str]] = {4: [], 6: []}
    default_found = {4: False, 6: False}
    for ipc in result["ips"]:
        iface = ipaddress.ip_interface(ipc["address"])
        fam = iface.version
        ipc["interface"] = 2
        if not ipc.get("gateway") and is_gw:
            ipc["gateway"] = str(iface.network.network_address + 1)
        if is_default_gw and not default_found[fam]:
            zero = "0.0.0.0/0" if fam == 4 else "::/0"
            default_found[fam] = any(r.get("gw") and ipaddress.ip_network(r["dst"], strict=False)
                                     == ipaddress.ip_network(zero) for r in result["routes"])
            if not default_found[fam]:
                result["routes"].append({"dst": zero, **({"gw": ipc["gateway"]} if ipc.get("gateway") else {})})
                default_found[fam] = True
        if is_gw:
            gws[fam].append(f"{ipc['gateway']}/{iface.network.prefixlen}")
    return gws


def wait_oper_up(ipr: Any, name: str) -> None:
    """The host veth must reach oper UP (the bridge port left the disabled state)."""
    state = None
    for delay in OPER_UP_WAITS_MS:
        time.sleep(delay / 1000)
        found = link.get_link(ipr, name)
        if found is None:
            raise rtnl.fail("Link not found")
        state = found["operstate"]
        if state == "UP":
            return
    raise rtnl.fail(f"bridge port in error state: {(state or 'unknown').lower()}")


def ensure_addr(ipr: Any, dev: link.Iface, keep_mac: str, cidr: str, force: bool, context: str) -> None:
    """Go ensureAddr: `cidr` on the bridge (or vlan gateway); another IPv4 address, or an
    overlapping IPv6 one, is an error unless forceAddress (then it is replaced). The MAC is then
    pinned so that enslaving ports cannot change it."""
    want = ipaddress.ip_interface(cidr)
    for have_text in addr.link_addresses(ipr, dev["index"], 2 if want.version == 4 else 10):
        have = ipaddress.ip_interface(have_text)
        if have == want:
            return
        if want.version == 4 or want.ip in have.network or have.ip in want.network:
            if not force:
                raise rtnl.fail(f"{context}: {rtnl.json_quote(dev['name'])} already has an IP address different "
                                f"from {cidr}")
            try:
                ipr.addr("del", index=dev["index"], address=str(have.ip), prefixlen=have.network.prefixlen)
            except Exception as exc:  # noqa: BLE001
                raise rtnl.fail(f"{context}: could not remove IP address from {rtnl.json_quote(dev['name'])}",
                                exc) from None
    try:
        addr.add_address(ipr, dev["index"], cidr)
    except Exception as exc:  # noqa: BLE001
        if rtnl.netlink_error_code(exc) != 17:
            raise rtnl.fail(f"{context}: could not add IP address to {rtnl.json_quote(dev['name'])}", exc) from None
    try:
        link.set_link(ipr, dev["index"], address=keep_mac)
    except Exception as exc:  # noqa: BLE001
        raise rtnl.fail(f"{context}: could not set bridge's mac", exc) from None


def ensure_vlan_gateway(ipr: Any, br: link.Iface, vlan: int, result: Result) -> link.Iface:
    """Go ensureVlanInterface: `<bridge>.<vlan>`, a veth whose peer is a VLAN port of the bridge,
    carries the gateway address; it joins the result interfaces once."""
    name = f"{br['name']}.{vlan}"
    found = link.get_link(ipr, name)
    if found is None:
        try:
            _host, found = attach_veth(ipr, br, None, name, br["mtu"], False, vlan, "")
        except CNIError as err:
            raise rtnl.fail(f"failed to create vlan interface: faild to create vlan gateway "
                            f"{rtnl.json_quote(name)}: {err.msg}") from None
        link.set_link(ipr, found["index"], state="up")
    if not any(i.get("name") == name for i in result["interfaces"]):
        result["interfaces"].append({"name": name, "mac": found["mac"]})
    return found


# --- macspoofchk (Go pkg/link/spoofcheck.go: same table, chains, rules and comments) ----------------

def spoofcheck_setup(host_veth: str, mac: str, ref: str) -> None:
    """Frames entering the bridge from `host_veth` must carry the container's MAC, else dropped."""
    from ...netfilter import nft  # noqa: PLC0415 - nft only when asked for

    chain, note = f"cni-br-iface-{ref}", f'comment "macspoofchk-{ref}"'
    try:
        nft.run(["add table bridge nat",
                 "add chain bridge nat PREROUTING { type filter hook prerouting priority -300; policy accept; }",
                 f"add chain bridge nat {chain}", f"add chain bridge nat {chain}-mac",
                 f"flush chain bridge nat {chain}", f"flush chain bridge nat {chain}-mac",
                 f'add rule bridge nat PREROUTING iifname "{host_veth}" jump {chain} {note}',
                 f"add rule bridge nat {chain} jump {chain}-mac {note}",
                 f"add rule bridge nat {chain}-mac ether saddr {mac} return {note}",
                 f"add rule bridge nat {chain}-mac drop {note}"])
    except CNIError as err:
        raise rtnl.fail(f"failed to setup spoof-check: {err}") from None


def spoofcheck_teardown(ref: str) -> None:
    """Remove the jump (found by its comment) and both chains; whatever is already gone is fine."""
    from ...netfilter import nft  # noqa: PLC0415

    chain = f"cni-br-iface-{ref}"
    lines = [f"delete rule bridge nat PREROUTING handle {rule['handle']}"
             for rule in nft.rules(nft.list_json("chain", "bridge", "nat", "PREROUTING"))
             if rule.get("comment") == f"macspoofchk-{ref}"]
    for name in (chain, f"{chain}-mac"):  # flush first: a chain with rules cannot be deleted
        if nft.list_json("chain", "bridge", "nat", name) is not None:
            lines += [f"flush chain bridge nat {name}", f"delete chain bridge nat {name}"]
    if lines:
        nft.run(lines)


# --- CHECK steps (Go validateCni*Interface) ------------------------------------------------------

def _existing(ipr: Any, intf: Dict[str, Any], in_sandbox: bool) -> link.Iface:
    if not intf.get("name"):
        raise rtnl.fail("Interface name missing ")
    found = link.get_link(ipr, intf["name"])
    if found is None:
        raise rtnl.fail(f"Interface name {intf['name']} not found")
    if in_sandbox and not intf.get("sandbox"):
        raise rtnl.fail(f"Interface {intf['name']} is expected to be in a sandbox")
    if not in_sandbox and intf.get("sandbox"):
        raise rtnl.fail(f"Interface {intf['name']} should not be in sandbox")
    return found


def check_bridge(ipr: Any, intf: Dict[str, Any], promisc: bool) -> link.Iface:
    br = _existing(ipr, intf, False)
    if br["kind"] != "bridge":
        raise rtnl.fail(f"Interface {intf['name']} does not have link type of bridge")
    if intf.get("mac") and intf["mac"] != br["mac"]:
        raise rtnl.fail(f"Bridge interface {intf['name']} Mac doesn't match: {intf['mac']}")
    if br["promisc"] != promisc:
        raise rtnl.fail(f"Bridge interface {intf['name']} configured Promisc Mode {str(promisc).lower()} doesn't "
                        f"match current state: {str(br['promisc']).lower()} ")
    return br


def check_container_veth(ipr: Any, intf: Dict[str, Any]) -> link.Iface:
    cont = _existing(ipr, intf, True)
    if cont["kind"] != "veth":
        raise rtnl.fail(f"Error: Container interface {cont['name']} not of type veth")
    if intf.get("mac") and intf["mac"] != cont["mac"]:
        raise rtnl.fail(f"Interface {intf['name']} Mac {intf['mac']} doesn't match container Mac: {cont['mac']}")
    return cont


def check_host_veth(ipr: Any, intf: Dict[str, Any], br: link.Iface, cont: link.Iface) -> bool:
    """True when `intf` is the host end of the container's veth and a port of the bridge."""
    veth = _existing(ipr, intf, False)
    if veth["kind"] != "veth":
        return False
    if veth["index"] != cont["link"] or cont["index"] != veth["link"] or veth["master"] != br["index"]:
        return False
    if intf.get("mac") and intf["mac"] != veth["mac"]:
        raise rtnl.fail(f"Interface {intf['name']} Mac doesn't match: {intf['mac']} not found")
    return True
