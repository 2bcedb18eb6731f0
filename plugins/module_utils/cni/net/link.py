"""Links: read, create, configure, move, delete-and-wait (Go pkg/ip link helpers, ipam.ConfigureIface).

Every function below works on a socket `ipr` (an Rtnl, or a pyroute2 IPRoute) the caller opened
in the right netns, and writes sysctls in the calling thread's netns: a plugin wraps
container-side work in `with in_netns(ctx.netns): ipr = rtnl()`, the Python counterpart of Go's
`netns.Do`."""
from __future__ import annotations

import errno
import os
from typing import Any, Dict, List, Optional, Tuple

from ..protocol import spec
from ..protocol.spec import CNIError
from .addr import add_address, add_route, is_global_unicast, link_addresses, settle_addresses
from .ns import NetnsNotFound, in_netns
from .rtnl import Rtnl, errstr, fail, is_enodev, json_quote, netlink_error_code
from .sysctl import sysctl_get, sysctl_set, sysctl_try_set


Iface = Dict[str, Any]  # {"name", "index", "mac", "mtu", "kind", "master", "link", "up", "alias", ...}


# The kernel's macvlan modes (MACVLAN_MODE_* of linux/if_link.h), the default first: the one list
# (the macvlan plugin takes all but `source`, as Go's does; the macvlan module takes them all).
MACVLAN_MODES: Dict[str, int] = {"bridge": 4, "private": 1, "vepa": 2, "passthru": 8, "source": 16}

IFF_UP = 0x1
IFF_PROMISC = 0x100


def random_veth_name() -> str:
    """Go ip.RandomVethName: "veth" + 8 random hex chars (NetworkManager ignores veth*)."""
    return "veth" + os.urandom(4).hex()


def iface_info(msg: Any) -> Iface:
    """The fields of an RTM_NEWLINK message the plugins use, as plain Python values ("linkinfo"
    stays a message: see info_data)."""
    info = msg.get_attr("IFLA_LINKINFO")
    return {"name": msg.get_attr("IFLA_IFNAME"), "index": msg["index"], "mac": msg.get_attr("IFLA_ADDRESS") or "",
            "mtu": msg.get_attr("IFLA_MTU") or 0, "kind": info.get_attr("IFLA_INFO_KIND") if info is not None else None,
            "linkinfo": info, "master": msg.get_attr("IFLA_MASTER"), "link": msg.get_attr("IFLA_LINK"),
            "up": bool(msg["flags"] & IFF_UP), "promisc": bool(msg["flags"] & IFF_PROMISC),
            "alias": msg.get_attr("IFLA_IFALIAS"), "operstate": msg.get_attr("IFLA_OPERSTATE")}


def info_data(iface: Iface, attr: str) -> Any:
    """One IFLA_INFO_DATA attribute of a link's kind (macvlan mode, vlan id, ...), decoded only
    when asked for: pyroute2 decodes nested attributes on first access, and a bridge has ~45 of
    them (~0.5 ms of CPU per lookup here)."""
    info = iface["linkinfo"]
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    return data.get_attr(attr) if data is not None else None


def get_link(ipr: Any, name: Optional[str] = None, index: Optional[int] = None) -> Optional[Iface]:
    """The link called `name` (or with `index`) in ipr's netns, None if there is none."""
    # One RTM_GETLINK (link_lookup + get_links made two; decoding a link message is the costly part)
    try:
        msgs = ipr.link("get", index=index) if index is not None else ipr.link("get", ifname=name)
        return iface_info(msgs[0])
    except Exception as exc:  # noqa: BLE001 - only "no such device" means absent
        # by name, EINVAL (a name the kernel cannot hold) is "not found" too, as with Go LinkByName
        if is_enodev(exc) or (index is None and netlink_error_code(exc) == errno.EINVAL):
            return None
        if netlink_error_code(exc) is not None:
            # any other refusal (ERANGE for a name over IFNAMSIZ) is Go's bare errno text
            raise fail(errstr(exc)) from None
        raise


def require_link(ipr: Any, name: str, what: str = "") -> Iface:
    """Like Go netlink.LinkByName: the link, or the error `failed to lookup "<what or name>"`."""
    found = get_link(ipr, name)
    if found is None:
        raise fail(f'failed to lookup {what or json_quote(name)}: Link not found')
    return found


def set_link(ipr: Any, index: int, **attrs: Any) -> None:
    ipr.link("set", index=index, **attrs)


def default_route_interface(ipr: Any) -> str:
    """Go getDefaultRouteInterfaceName: the device of the first main-table route without a dst."""
    for family in (2, 10):  # AF_INET, AF_INET6 as netlink FAMILY_ALL lists them
        for route in ipr.get_routes(family=family, table=254):
            if route["dst_len"] == 0 and route.get_attr("RTA_OIF"):
                found = get_link(ipr, index=route.get_attr("RTA_OIF"))
                if found:
                    return found["name"]
    raise fail("no default route interface found")


def setup_veth(ipr: Any, ifname: str, host_netns: int, mtu: int = 0, mac: Optional[str] = None) -> Tuple[Iface, Iface]:
    """Go ip.SetupVeth, called from inside the container netns (ipr bound to it): create `ifname`
    with its peer `veth<8 hex>` in the netns open at fd `host_netns`, retrying on a name clash;
    the host side is set up with accept_ra=0. Returns (host, container) as they were made (the
    host end's "up" is its state before it was set up)."""
    # Go's LinkAttrs{} literal sends TxQLen 0 for both ends; MTU only when set
    extra: Dict[str, Any] = {"txqlen": 0, **({"mtu": mtu} if mtu else {})}
    for _ in range(10):
        peer = random_veth_name()
        try:
            ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer, "net_ns_fd": host_netns, **extra},
                     **extra, **({"address": mac} if mac else {}))
            break
        except Exception as exc:  # noqa: BLE001 - mapped to Go's messages below
            if netlink_error_code(exc) != errno.EEXIST:
                raise fail("failed to make veth pair", exc) from None
            if get_link(ipr, ifname) is not None:
                raise fail(f"container veth name provided ({ifname}) already exists") from None
    else:
        raise fail("failed to find a unique veth name")
    cont = require_link(ipr, ifname)
    with in_netns(f"/proc/self/fd/{host_netns}"):
        with Rtnl() as host_ipr:
            host = require_link(host_ipr, peer, json_quote(peer))
            set_link(host_ipr, host["index"], state="up")
            sysctl_try_set(f"net/ipv6/conf/{peer}/accept_ra", "0")
    return host, cont


def create_in_netns(ipr: Any, netns_fd: int, netns: str, ifname: str, kind: str, what: str,
                    mtu: int = 0, mac: Optional[str] = None, **attrs: Any) -> Iface:
    """Create a `kind` link from the host (ipr bound to the master's netns) straight into the
    container netns under a temporary name, then rename it to `ifname` there (Go: a kernel bug
    makes a direct create collide with host names). Deletes it again if the rename fails."""
    tmp = random_veth_name()
    extra: Dict[str, Any] = {"txqlen": 0, **attrs}  # Go's LinkAttrs{} literal sends TxQLen 0
    if mtu:
        extra["mtu"] = mtu
    if mac:
        extra["address"] = mac
    try:
        ipr.link("add", ifname=tmp, kind=kind, net_ns_fd=netns_fd, **extra)
    except Exception as exc:  # noqa: BLE001
        raise fail(f"failed to create {what}", exc) from None
    with in_netns(netns):
        with Rtnl() as cipr:
            made = require_link(cipr, tmp)
            try:
                set_link(cipr, made["index"], ifname=ifname)
            except Exception as exc:  # noqa: BLE001
                cipr.link("del", index=made["index"])
                raise fail(f"failed to rename {what} to {json_quote(ifname)}", exc) from None
    return dict(made, name=ifname)  # a rename changes nothing else: no second lookup


RTMGRP_LINK = 1
RTM_DELLINK = 17


def del_link_and_wait(name: str) -> None:
    """RTM_DELLINK of `name` in this thread's netns, returning once the kernel has announced the
    link deleted (its RTM_DELLINK notification), not when the request's ACK comes back.

    The kernel unregisters a link in two phases inside the one request: under RTNL it unlists the
    device, runs the NETDEV_UNREGISTER notifiers (addresses, routes, bridge port, neighbours go)
    and sends the RTM_DELLINK notification; after RTNL it waits in `rcu_barrier()` and for the
    last references before freeing the memory, ~15 ms here (docs/performance.md), and only then
    ACKs. Nothing in the namespace can see the link after the notification, so that is when the
    DEL's work is done; the request thread is left to collect the ACK (a process exits only after
    it has: Python joins it). Raises the request's error (NetlinkError) if it fails instead."""
    import select  # noqa: PLC0415
    import threading  # noqa: PLC0415

    watch, deleter = Rtnl(RTMGRP_LINK), Rtnl()  # both bound to this netns before the request leaves
    wake_r, wake_w = os.pipe2(os.O_CLOEXEC)
    failed: List[BaseException] = []

    def request() -> None:
        try:
            deleter.link("del", ifname=name)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            failed.append(exc)
        finally:
            deleter.close()
            try:
                os.write(wake_w, b"x")
            except OSError:  # the waiter already left (it saw the notification)
                pass
            os.close(wake_w)

    worker = threading.Thread(target=request, name=f"cnikit-dellink-{name}")
    try:
        worker.start()
        announced = False
        while not announced:
            ready = select.select([watch.sock, wake_r], [], [])[0]
            if wake_r in ready:
                break  # the request ended first: its outcome is the answer
            try:
                data = watch.sock.recv(1 << 16)
            except OSError:  # ENOBUFS: notifications were dropped; wait for the ACK instead
                worker.join()
                break
            announced = any(msg["header"]["type"] == RTM_DELLINK and msg["family"] == 0  # not AF_BRIDGE port news
                            and msg.get_attr("IFLA_IFNAME") == name for msg in watch.marshal.parse(data))
    finally:
        watch.close()
        os.close(wake_r)
    if failed:
        raise failed[0]


def delete_link(ipr: Any, name: str, addrs: bool = True) -> Optional[List[str]]:
    """Go ip.DelLinkByNameAddr: delete `name` (the link in ipr's netns, which must be this
    thread's), return its global unicast addresses (None: no link). Without `addrs` (Go
    ip.DelLinkByName) it is the delete alone, and [] when deleted."""
    import ipaddress  # noqa: PLC0415

    kept: List[str] = []
    if addrs:
        found = get_link(ipr, name)
        if found is None:
            return None
        kept = [a for a in link_addresses(ipr, found["index"]) if is_global_unicast(ipaddress.ip_interface(a).ip)]
    try:
        del_link_and_wait(name)
    except Exception as exc:  # noqa: BLE001
        if is_enodev(exc):
            return None
        raise fail(f"failed to delete {json_quote(name)}", exc) from None
    return kept


def delete_link_in_netns(netns: str, name: str, addrs: bool = True) -> Optional[List[str]]:
    """delete_link inside the netns at `netns`; None when the netns or the link is already gone
    (DEL and undo treat both as done)."""
    if not netns:
        return None
    try:
        with in_netns(netns):
            with Rtnl() as ipr:
                return delete_link(ipr, name, addrs)
    except NetnsNotFound:
        return None


def configure_iface(ipr: Any, ifname: str, result: Dict[str, Any], found: Optional[Iface] = None) -> None:
    """Go ipam.ConfigureIface, in the container netns: the addresses whose `interface` index
    names `ifname` (re-enabling IPv6 on lo and the link first if needed), link up, DAD settle when
    there is an IPv6 gateway, then the routes (a missing gw = the first gateway of the family).
    `found`: the link, when the caller just made it (saves looking it up by name)."""
    import ipaddress  # noqa: PLC0415

    if not result.get("interfaces"):
        raise fail("no interfaces to configure")
    if found is None:
        found = require_link(ipr, ifname, json_quote(ifname))
    v4gw = v6gw = None
    ipv6_enabled = False
    for ipc in result.get("ips") or []:
        if ipc.get("interface") is None:
            continue
        idx = ipc["interface"]
        if idx < 0 or idx >= len(result["interfaces"]) or result["interfaces"][idx].get("name") != ifname:
            raise fail(f"failed to add IP addr {ipc['address']} to {json_quote(ifname)}: invalid interface index")
        iface = ipaddress.ip_interface(ipc["address"])
        if iface.version == 6 and not ipv6_enabled:
            for dev in ("lo", ifname):
                key = f"net/ipv6/conf/{dev}/disable_ipv6"
                try:
                    if sysctl_get(key) != "0":
                        sysctl_set(key, "0")
                except OSError:
                    continue  # Go logs a failed read and goes on
            ipv6_enabled = True
        try:
            add_address(ipr, found["index"], ipc["address"])
        except Exception as exc:  # noqa: BLE001
            raise fail(f"failed to add IP addr {ipc['address']} to {json_quote(ifname)}", exc) from None
        gw = ipc.get("gateway")
        if gw and ":" not in gw and v4gw is None:
            v4gw = gw
        elif gw and ":" in gw and v6gw is None:
            v6gw = gw
    try:
        set_link(ipr, found["index"], state="up")
    except Exception as exc:  # noqa: BLE001
        raise fail(f"failed to set {json_quote(ifname)} UP", exc) from None
    if v6gw:
        settle_addresses(ipr, found["index"])
    for route in result.get("routes") or []:
        dst = route["dst"]
        gw = route.get("gw") or (v6gw if ":" in dst else v4gw)
        try:
            add_route(ipr, dst, gw, found["index"], append=True)
        except Exception as exc:  # noqa: BLE001
            raise fail(f"failed to add route '{dst} via {gw} dev {ifname}'", exc) from None


def move_link(ipr: Any, index: int, netns_fd: int, new_name: Optional[str] = None) -> None:
    """Move a link into the netns open at `netns_fd` (down first: the kernel keeps flags)."""
    set_link(ipr, index, state="down")
    attrs: Dict[str, Any] = {"net_ns_fd": netns_fd}
    if new_name:
        attrs["ifname"] = new_name
    set_link(ipr, index, **attrs)


def mac_arg(text: str, code: int = spec.ERR_INTERNAL) -> Optional[str]:
    """A MAC from config/args ("" = none), parsed like Go; a bad one fails with Go's plugin message."""
    if not text:
        return None
    try:
        return parse_mac(text)
    except ValueError as exc:
        raise CNIError(code, f"invalid args {text} for MAC addr: {exc}") from None


def parse_mac(text: str) -> str:
    """Go net.ParseMAC for 6-byte addresses (colon, dash or dotted form), as lowercase colon form;
    ValueError carries Go's message."""
    import re  # noqa: PLC0415

    hexes: List[str] = []
    if re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}", text) and len(set(text[2::3])) == 1:
        hexes = re.split(r"[:-]", text)
    elif re.fullmatch(r"([0-9A-Fa-f]{4}\.){2}[0-9A-Fa-f]{4}", text):
        flat = text.replace(".", "")
        hexes = [flat[i:i + 2] for i in range(0, 12, 2)]
    if not hexes:
        raise ValueError(f"address {text}: invalid MAC address")
    return ":".join(h.lower() for h in hexes)


# tun/tap ioctls (linux/if_tun.h); the device is made in the calling thread's netns
TUNSETIFF, TUNSETPERSIST, TUNSETOWNER, TUNSETGROUP = 0x400454CA, 0x400454CB, 0x400454CC, 0x400454CE
IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE = 0x0002, 0x1000, 0x0100


def create_tap(name: str, multi_queue: bool = False, owner: Optional[int] = None, group: Optional[int] = None) -> None:
    """A persistent tap device `name` (what `ip tuntap add mode tap` does), owned by uid/gid if given."""
    import fcntl  # noqa: PLC0415
    import struct  # noqa: PLC0415

    flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if multi_queue else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
        # the ioctl argument is a C int here and an unsigned long in the kernel, which keeps the low
        # 32 bits (uid_t): uids from 2**31 on travel as their two's complement
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner - (1 << 32) if owner >= 1 << 31 else owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group - (1 << 32) if group >= 1 << 31 else group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


def master_link(ipr: Any, name: str, mtu: Optional[int] = None) -> Iface:
    """The parent of a macvlan/ipvlan/vlan, failing like Go's getMTUByName ("Link not found"); with
    `mtu`, also Go's bound check of the child MTU against the master's."""
    found = get_link(ipr, name)
    if found is None:
        raise fail("Link not found")
    if mtu is not None and (mtu < 0 or mtu > found["mtu"]):
        raise fail(f"invalid MTU {mtu}, must be [0, master MTU({found['mtu']})]")
    return found
