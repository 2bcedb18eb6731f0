"""vrf: put the container interface into a VRF device of the container netns (Go plugins/meta/vrf,
v1.1.1). Chained: needs a prevResult, which it returns unchanged.

Options: vrfname (required), table (the VRF's routing table; 0 or absent = the lowest table id no
VRF of the netns uses, from 1). ADD finds or creates the VRF (created up), refuses an existing VRF
with another table, refuses an interface that already has a master, enslaves the interface and
puts back the IPv6 addresses the kernel drops when the link is cycled (IPv4 addresses stay;
routes other than the connected ones are not moved into the VRF table, as in Go 1.1.1). DEL
releases the interface and deletes the VRF when no interface is left in it.

Deliberate differences from Go 1.1.1: CHECK reports a missing VRF or an interface outside it (Go
computes that error and drops it, so its CHECK always passes); an ADD that fails after creating
the VRF deletes it again; DEL of an interface that is already gone is not an error (the VRF is
still deleted when empty).
"""
from __future__ import annotations

from typing import Any, List, Optional

from ...net import link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.plugin import Conf, Result, conf_field
from ...protocol.spec import CNIError
from .. import NetPlugin

AF_INET6 = 10
MAX_TABLE = 2**32 - 1
# address flags a user may set (IFA_F_NODAD, IFA_F_HOMEADDRESS, IFA_F_MANAGETEMPADDR,
# IFA_F_NOPREFIXROUTE, IFA_F_MCAUTOJOIN): kept when an IPv6 address is put back
_USER_ADDR_FLAGS = 0x02 | 0x10 | 0x100 | 0x200 | 0x400


class Vrf(NetPlugin):
    name = "vrf"
    supported_versions = tuple(v for v in spec.SUPPORTED_VERSIONS if spec.version_ge(v, "0.3.1"))

    @staticmethod
    def load(conf: Conf) -> tuple:
        name = conf_field(conf, "vrfname", str, "", struct="VRFNetConf")
        table = conf_field(conf, "table", int, 0, struct="VRFNetConf")
        if not 0 <= table <= MAX_TABLE:
            raise CNIError(spec.ERR_INTERNAL, f"failed to load netconf: json: cannot unmarshal number {table} "
                           "into Go struct field VRFNetConf.table of type uint32")
        if not name:
            raise CNIError(spec.ERR_INTERNAL, "configuration is expected to have a valid vrf name")
        return name, table

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        name, table = self.load(conf)
        result = conf.get("prevResult")
        if result is None:
            raise CNIError(spec.ERR_INTERNAL, "missing prevResult from earlier plugin")
        try:
            with ns.in_netns(ctx.netns), rtnl.iproute() as ipr:
                vrf = find_vrf(ipr, name)
                made = vrf is None
                if vrf is None:
                    vrf = create_vrf(ipr, name, table)
                elif table and link.info_data(vrf, "IFLA_VRF_TABLE") != table:
                    raise rtnl.fail(f"VRF {name} already exist with different routing table "
                                    f"{link.info_data(vrf, 'IFLA_VRF_TABLE')}")
                try:
                    enslave(ipr, vrf, ctx.ifname)
                except Exception:
                    if made:  # undo: the VRF we just made (Go leaves it)
                        ipr.link("del", index=vrf["index"])
                    raise
        except CNIError as exc:
            raise CNIError(exc.code, f"cmdAdd failed: {exc.msg}", exc.details) from None
        return result

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        name, _table = self.load(conf)
        if conf.get("prevResult") is None:
            raise CNIError(spec.ERR_INTERNAL, "missing prevResult from earlier plugin")
        with ns.in_netns(ctx.netns), rtnl.iproute() as ipr:
            vrf = find_vrf(ipr, name)
            if vrf is None:
                raise rtnl.fail(f"Link not found: VRF {name}")
            if ctx.ifname not in [m["name"] for m in members(ipr, vrf)]:
                raise rtnl.fail(f"Failed to find {ctx.ifname} associated to vrf {name}")

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        name, _table = self.load(conf)
        if not ctx.netns:
            return
        try:
            with ns.in_netns(ctx.netns), rtnl.iproute() as ipr:
                vrf = find_vrf(ipr, name)
                if vrf is None:
                    return
                dev = link.get_link(ipr, ctx.ifname)
                if dev is not None and dev["master"] == vrf["index"]:
                    try:
                        link.set_link(ipr, dev["index"], master=0)
                    except Exception as exc:  # noqa: BLE001
                        raise rtnl.fail(f"resetMaster: could reset master to {ctx.ifname}", exc) from None
                if not members(ipr, vrf):
                    ipr.link("del", index=vrf["index"])
        except ns.NetnsNotFound:
            return  # the container is gone, and the VRF with it


def find_vrf(ipr: Any, name: str) -> Optional[link.Iface]:
    """The VRF called `name`; None when no link has that name; an error for another kind of link."""
    found = link.get_link(ipr, name)
    if found is not None and found["kind"] != "vrf":
        raise rtnl.fail(f"Netlink {name} is not a VRF")
    return found


def create_vrf(ipr: Any, name: str, table: int) -> link.Iface:
    """A VRF with `table` (0: the lowest id from 1 that no VRF of this netns uses), set up."""
    if not table:
        taken = {link.info_data(link.iface_info(m), "IFLA_VRF_TABLE") for m in ipr.get_links()
                 if link.iface_info(m)["kind"] == "vrf"}
        table = next(t for t in range(1, MAX_TABLE + 1) if t not in taken)
    try:
        # txqlen 0: what Go's netlink.Vrf{LinkAttrs{Name}} literal sends (the kernel's default is 1000)
        ipr.link("add", ifname=name, kind="vrf", vrf_table=table, txqlen=0)
    except Exception as exc:  # noqa: BLE001
        raise rtnl.fail(f"could not add VRF {name}", exc) from None
    vrf = link.require_link(ipr, name)
    try:
        link.set_link(ipr, vrf["index"], state="up")
    except Exception as exc:  # noqa: BLE001
        ipr.link("del", index=vrf["index"])
        raise rtnl.fail(f"could not set link up for VRF {name}", exc) from None
    return vrf


def members(ipr: Any, vrf: link.Iface) -> List[link.Iface]:
    return [i for i in (link.iface_info(m) for m in ipr.get_links()) if i["master"] == vrf["index"]]


def enslave(ipr: Any, vrf: link.Iface, ifname: str) -> None:
    """Go addInterface: refuse an interface with a master; enslave; put back the IPv6 addresses
    the kernel flushed while cycling the link (unless keep_addr_on_down kept them)."""
    dev = link.get_link(ipr, ifname)
    if dev is None:
        raise rtnl.fail(f"could not get link by name {ifname}")
    if dev["master"]:
        master = link.get_link(ipr, index=dev["master"])
        raise rtnl.fail(f"interface {ifname} has already a master set: {master['name'] if master else '?'}")
    before = ipr.get_addr(index=dev["index"], family=AF_INET6)
    try:
        link.set_link(ipr, dev["index"], master=vrf["index"])
    except Exception as exc:  # noqa: BLE001
        raise rtnl.fail(f"could not set vrf {vrf['name']} as master of {ifname}", exc) from None
    after = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr(index=dev["index"], family=AF_INET6)}
    for addr in before:
        key = (addr.get_attr("IFA_ADDRESS"), addr["prefixlen"])
        if key in after:
            continue
        flags = (addr.get_attr("IFA_FLAGS") or addr["flags"]) & _USER_ADDR_FLAGS
        try:
            ipr.addr("add", index=dev["index"], address=key[0], prefixlen=key[1], scope=addr["scope"],
                     **({"flags": flags} if flags else {}))
        except Exception as exc:  # noqa: BLE001
            raise rtnl.fail(f"could not restore address {key[0]}/{key[1]} to {ifname} @ {vrf['name']}", exc) from None
