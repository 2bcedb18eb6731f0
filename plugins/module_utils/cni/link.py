"""Netlink and namespace primitives shared by every plugin, on pyroute2.

pyroute2 is imported lazily (its import is the single biggest cost of a plugin exec), and a
netlink socket for a namespace is opened by entering that namespace in the calling thread
(setns, as the Go `ns.Do` does) rather than pyroute2's fork-a-helper path.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

from . import spec
from .spec import CNIError

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python >= 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    import ctypes  # noqa: PLC0415 - only on interpreters without os.setns

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """Open a netns path (a /run/netns bind mount or /proc/<pid>/ns/net) read-only."""
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsNotFound(path, exc) from None


class NetnsNotFound(CNIError):
    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(spec.ERR_INTERNAL, f"failed to open netns {path!r}: {exc.strerror}")
        self.path = path
        self.errno = exc.errno


@contextlib.contextmanager
def in_netns(path: Optional[str]) -> Iterator[None]:
    """Run the block with this thread in the netns at `path` (None: stay where we are)."""
    if not path:
        yield
        return
    target = open_netns(path)
    origin = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as exc:  # it opens but is no netns (a leftover file after a reboot, a dir)
            raise NetnsNotFound(path, exc) from None
        try:
            yield
        finally:
            _setns(origin)
    finally:
        os.close(target)
        os.close(origin)


def skip_pyroute2_init() -> None:
    """Let `pyroute2.<sub>` imports skip the package `__init__`, which only re-exports ~50
    submodules (conntrack, ndb, ipset, nl80211, plan9, ...): ~80 ms of CPU per exec here, 372 ->
    296 modules (docs/performance.md). A bare package module with the real `__path__` goes in
    first; a process that already imported pyroute2 is left as it is."""
    import sys  # noqa: PLC0415

    if "pyroute2" in sys.modules:
        return
    import importlib.machinery  # noqa: PLC0415
    import importlib.util  # noqa: PLC0415

    found = importlib.util.find_spec("pyroute2")  # a top-level find_spec runs no code
    if found is None or not found.submodule_search_locations:
        return
    pkg = importlib.util.module_from_spec(importlib.machinery.ModuleSpec("pyroute2", None, is_package=True))
    pkg.__path__ = list(found.submodule_search_locations)
    sys.modules["pyroute2"] = pkg


def iproute(netns: Optional[str] = None) -> Any:
    """An IPRoute socket bound to `netns` (a path) or to the current netns."""
    skip_pyroute2_init()
    from pyroute2.iproute.linux import IPRoute  # noqa: PLC0415 - lazy on purpose

    with in_netns(netns):
        return IPRoute()


# rtnetlink request kinds as pyroute2's RTNL_API maps them (message type, NetlinkRequest flag set)
_RTNL_COMMANDS: Dict[str, Dict[str, Tuple[int, str]]] = {
    "link": {"add": (16, "create"), "set": (16, "req"), "del": (17, "req"), "get": (18, "get"),
             "dump": (18, "dump")},
    "addr": {"add": (20, "create"), "del": (21, "req"), "dump": (22, "dump")},
    "route": {"add": (24, "create"), "append": (24, "append"), "del": (25, "req"), "dump": (26, "dump")},
    "vlan_filter": {"add": (19, "req")},  # RTM_SETLINK
    "neigh": {"add": (28, "create"), "replace": (28, "replace"), "append": (28, "append"), "del": (29, "req"),
              "dump": (30, "dump")},  # neighbours and (family AF_BRIDGE) FDB entries: neigh.py
}
NLMSG_ERROR, NLMSG_DONE = 2, 3


class Rtnl:
    """An rtnetlink socket in the netns it was opened in, with the subset of pyroute2's IPRoute
    API the link plugins use (link, addr, route, get_addr, get_routes, brport, vlan_filter; neigh
    for the overlay's neighbour and FDB entries).

    pyroute2 still builds every request (its request filters and NetlinkRequest) and parses every
    reply (MarshalRtnl); this class only sends and receives on a plain blocking socket. pyroute2
    0.9's IPRoute runs an asyncio round per request and sets up an event loop per socket: ~0.2 ms
    per request and ~0.3 ms per socket here. IPRoute (`iproute()`) stays for everything else (tc,
    rules, full dumps). The pyroute2 internals used here are pinned by tests/integration/
    test_link_rtnl.py: each request must be the same bytes IPRoute sends."""

    def __init__(self, groups: int = 0) -> None:
        import socket  # noqa: PLC0415

        skip_pyroute2_init()
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl  # noqa: PLC0415 - lazy on purpose

        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)  # NETLINK_ROUTE
        self.sock.bind((0, groups))  # groups: multicast notifications to receive (RTMGRP_*)
        self.marshal = MarshalRtnl()
        # what pyroute2's NetlinkRequest reads from its socket
        self.status = {"nlm_echo": False, "strict_check": False}
        self.epid = 0
        self.addr_pool = self
        self._seq = 0

    def alloc(self) -> int:
        """The next sequence number (NetlinkRequest takes it from `addr_pool`)."""
        self._seq += 1
        return self._seq

    def free(self, *_args: Any, **_kwargs: Any) -> None:
        """Sequence numbers are not reused: nothing to free."""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.close()

    def request(self, mode: str, command: str, kwarg: Dict[str, Any]) -> List[Any]:
        """One request built by pyroute2's filters for `mode`; its data replies (a dump: the
        matching ones; a change: none, where IPRoute returns the bare ACK). A kernel refusal raises
        pyroute2's NetlinkError, as IPRoute does."""
        from pyroute2.iproute.linux import get_arguments_processor, get_dump_filter  # noqa: PLC0415
        from pyroute2.netlink.nlsocket import NetlinkRequest  # noqa: PLC0415
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg  # noqa: PLC0415
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg  # noqa: PLC0415
        from pyroute2.netlink.rtnl.ndmsg import ndmsg  # noqa: PLC0415
        from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: PLC0415

        msg = {"addr": ifaddrmsg, "route": rtmsg, "neigh": ndmsg}.get(mode, ifinfmsg)()
        parameters = {"strict_check": False} if mode == "route" else None  # what pyroute2's route() passes
        dump_filter, kwarg = get_dump_filter(mode, command, kwarg, parameters)
        arguments = get_arguments_processor(mode, command, kwarg, parameters)
        req = NetlinkRequest(self, msg, command, _RTNL_COMMANDS[mode], dump_filter, arguments)
        req.msg.encode()
        self.send(req.msg.data)
        dump = command == "dump"
        out = []
        while True:
            for reply in self.marshal.parse(self.sock.recv(65536)):
                if reply["header"]["sequence_number"] != req.msg_seq:
                    continue  # a late ACK of an earlier request
                if reply["header"]["error"] is not None:
                    raise reply["header"]["error"]
                kind = reply["header"]["type"]
                if kind == NLMSG_DONE or (kind == NLMSG_ERROR and not dump):
                    return out  # the end of a dump, or the ACK every non-dump request asks for
                if kind != NLMSG_ERROR and (req.dump_filter is None
                                            or req.match_one_message(req.dump_filter, reply)):
                    out.append(reply)

    def send(self, data: bytes) -> None:
        """The one place a request leaves (the netlink-level tests capture it here)."""
        self.sock.send(data)

    def link(self, command: str, **kwarg: Any) -> List[Any]:
        return self.request("link", command, kwarg)

    def addr(self, command: str, **kwarg: Any) -> List[Any]:
        return self.request("addr", command, kwarg)

    def route(self, command: str, **kwarg: Any) -> List[Any]:
        if command in ("add", "append"):  # pyroute2's defaults for a new route
            kwarg["proto"] = kwarg.get("proto", "static") or "static"
            kwarg["type"] = kwarg.get("type", "unicast") or "unicast"
        return self.request("route", command, kwarg)

    def get_addr(self, family: int = 0, **match: Any) -> List[Any]:
        return self.addr("dump", family=family, match=match)

    def get_routes(self, family: int = 255, **match: Any) -> List[Any]:
        return self.route("dump", family=family, match=match)

    def brport(self, command: str, index: int, **kwarg: Any) -> List[Any]:
        """Bridge-port settings (only "set"): a link request of kind bridge_slave, as in pyroute2."""
        return self.link(command, index=index, kind="bridge_slave", **kwarg)

    def neigh(self, command: str, **kwarg: Any) -> List[Any]:
        return self.request("neigh", command, kwarg)

    def vlan_filter(self, command: str, **kwarg: Any) -> List[Any]:
        return self.request("vlan_filter", command, dict(kwarg, family=7))  # AF_BRIDGE


def rtnl(netns: Optional[str] = None) -> Rtnl:
    """An Rtnl socket bound to `netns` (a path) or to the current netns."""
    with in_netns(netns):
        return Rtnl()


def netlink_error_code(exc: BaseException) -> Optional[int]:
    return getattr(exc, "code", None) if type(exc).__name__ == "NetlinkError" else None


def is_enodev(exc: BaseException) -> bool:
    return netlink_error_code(exc) in (errno.ENODEV, errno.ENOENT)


# --- sysctl ------------------------------------------------------------------------------

def sysctl_path(key: str) -> str:
    """Map `net.ipv4.ip_forward` or `net/ipv4/ip_forward` to /proc/sys, refusing traversal."""
    rel = key.replace(".", "/") if "/" not in key else key
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts) or "\0" in rel:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid sysctl key {key!r}")
    return "/proc/sys/" + "/".join(parts)


def sysctl_get(key: str, netns: Optional[str] = None) -> str:
    with in_netns(netns):
        with open(sysctl_path(key), encoding="ascii") as fh:
            return fh.read().strip()


def sysctl_set(key: str, value: str, netns: Optional[str] = None) -> None:
    with in_netns(netns):
        with open(sysctl_path(key), "w", encoding="ascii") as fh:
            fh.write(str(value))


def sysctl_try_set(key: str, value: str, netns: Optional[str] = None) -> bool:
    """Best-effort sysctl write (Go plugins ignore failures of arp_notify/accept_ra); True if written."""
    try:
        sysctl_set(key, value, netns)
        return True
    except OSError:
        return False


# --- link steps shared by the main plugins ----------------------------------------------------
# Every function below works on a socket `ipr` (an Rtnl, or a pyroute2 IPRoute) the caller opened
# in the right netns, and writes sysctls in the calling thread's netns: a plugin wraps
# container-side work in `with in_netns(ctx.netns): ipr = rtnl()`, the Python counterpart of Go's
# `netns.Do`.

Iface = Dict[str, Any]  # {"name", "index", "mac", "mtu", "kind", "master", "link", "up", "alias", ...}

IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
IFF_UP = 0x1
IFF_PROMISC = 0x100


def errstr(exc: BaseException) -> str:
    """An OS/netlink error as Go prints a syscall.Errno ("file exists", "no such device")."""
    code = netlink_error_code(exc) or getattr(exc, "errno", None)
    if code:
        text = os.strerror(abs(code))
        return text[:1].lower() + text[1:]
    return str(exc)


def fail(msg: str, exc: Optional[BaseException] = None) -> CNIError:
    """A plugin-logic failure: Go returns a plain error, which the skel prints as code 999."""
    return CNIError(spec.ERR_INTERNAL, f"{msg}: {errstr(exc)}" if exc is not None else msg)


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


def json_quote(text: str) -> str:
    """Go's %q for plain strings."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


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


def route_oif_name(dst: str) -> Optional[str]:
    """Go getRoutableHostIF for an IPv4 address: the device of the longest-prefix main-table route
    to `dst`, read from /proc/net/route so that portmap needs no pyroute2 import (~200 ms) for it.
    (Policy rules are not consulted; a container subnet's route is a plain main-table route.)"""
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415

    target = int(ipaddress.IPv4Address(dst))
    best: Optional[Tuple[int, int, str]] = None  # (prefix length, -metric, device)
    try:
        with open("/proc/net/route", encoding="ascii") as fh:
            next(fh, None)
            for row in fh:
                cols = row.split()
                if len(cols) < 8 or not int(cols[3], 16) & 0x1:  # RTF_UP
                    continue
                # the kernel prints the network-order words as host integers
                net, mask = socket.ntohl(int(cols[1], 16)), socket.ntohl(int(cols[7], 16))
                if target & mask == net & mask:
                    cand = (bin(mask).count("1"), -int(cols[6]), cols[0])
                    best = cand if best is None or cand[:2] > best[:2] else best
    except OSError:
        return None
    return best[2] if best else None


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


def link_addresses(ipr: Any, index: int, family: int = 0) -> List[str]:
    """The addresses of a link as "ip/prefix" strings (IFA_LOCAL first: it is ours on a ptp link)."""
    out = []
    for msg in ipr.get_addr(index=index, **({"family": family} if family else {})):
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        out.append(f"{addr}/{msg['prefixlen']}")
    return out


RTMGRP_LINK = 1
RTM_DELLINK = 17


def remove_link(name: str) -> None:
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
        remove_link(name)
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


def is_global_unicast(ip: Any) -> bool:
    """Go net.IP.IsGlobalUnicast (private ranges count; link-local, loopback, multicast do not)."""
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or str(ip) == "255.255.255.255")


def settle_addresses(ipr: Any, index: int, timeout: float = 10.0) -> None:
    """Go ip.SettleAddresses: wait until no IPv6 address is tentative (DAD), ignoring a timeout."""
    import time  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flags = [m.get_attr("IFA_FLAGS") or m["flags"] for m in ipr.get_addr(index=index, family=10)]
        if any(f & IFA_F_DADFAILED for f in flags):
            return
        if not any(f & IFA_F_TENTATIVE for f in flags):
            return
        time.sleep(0.05)


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


def add_address(ipr: Any, index: int, cidr: str) -> None:
    """One address; IPv4 gets the subnet broadcast as Go's netlink.AddrAdd computes it."""
    import ipaddress  # noqa: PLC0415

    iface = ipaddress.ip_interface(cidr)
    extra: Dict[str, Any] = {}
    if iface.version == 4 and iface.network.prefixlen < 31:
        extra["broadcast"] = str(iface.network.broadcast_address)
    ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen, **extra)


def add_route(ipr: Any, dst: str, gw: Optional[str], oif: int, scope: Optional[int] = None,
              append: bool = False, **attrs: Any) -> None:
    """One route; `append` is Go's RouteAddEcmp (NLM_F_APPEND), otherwise NLM_F_EXCL."""
    import ipaddress  # noqa: PLC0415

    net = ipaddress.ip_network(dst, strict=False)
    # proto boot (3) like Go's netlink.RouteAdd, not pyroute2's default "static"
    kw: Dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen, "oif": oif,
                          "family": 10 if net.version == 6 else 2, "proto": 3, **attrs}
    if gw:
        kw["gateway"] = gw
    if scope is not None:
        kw["scope"] = scope
    ipr.route("append" if append else "add", **kw)


# --- CHECK helpers (Go ip.ValidateExpectedInterfaceIPs / ValidateExpectedRoute) -----------------

def _main_routes(ipr: Any, family: int) -> List[Tuple[str, Optional[str]]]:
    out = []
    for r in ipr.get_routes(family=family, table=254):
        dst = r.get_attr("RTA_DST")
        out.append((f"{dst}/{r['dst_len']}" if dst else None, r.get_attr("RTA_GATEWAY")))
    return out


def check_interface_ips(ipr: Any, ifname: str, ips: List[Dict[str, Any]]) -> None:
    """Every result IP is on `ifname`, and a main-table route to its subnet exists."""
    import ipaddress  # noqa: PLC0415

    for ipc in ips:
        found = get_link(ipr, ifname)
        if found is None:
            raise fail(f"Cannot find container link {ifname}")
        want = ipaddress.ip_interface(ipc["address"])
        have = {ipaddress.ip_interface(a) for a in link_addresses(ipr, found["index"])}
        if want not in have:
            raise fail(f"Failed to match addr {want} on interface {ifname}")
        routes = _main_routes(ipr, 10 if want.version == 6 else 2)
        if not any(dst is not None and ipaddress.ip_network(dst) == want.network for dst, _ in routes):
            raise fail(f"Failed to find Gateway {ipc.get('gateway') or '<nil>'} for interface {ifname}")


def check_routes(ipr: Any, routes: List[Dict[str, Any]]) -> None:
    """Every result route is in the main table (dst, and gw unless it is a default route)."""
    import ipaddress  # noqa: PLC0415

    for route in routes:
        net = ipaddress.ip_network(route["dst"], strict=False)
        want_gw = route.get("gw")
        found = False
        for dst, gw in _main_routes(ipr, 10 if net.version == 6 else 2):
            if net.prefixlen == 0:
                found = dst is None or ipaddress.ip_network(dst).prefixlen == 0
            else:
                found = dst is not None and ipaddress.ip_network(dst) == net and (
                    (gw is None and not want_gw) or (gw is not None and want_gw is not None
                                                     and ipaddress.ip_address(gw) == ipaddress.ip_address(want_gw)))
            if found:
                break
        if not found:
            raise fail(f"Expected Route {go_route(net, want_gw)} not found in routing table")


def go_route(net: Any, gw: Optional[str]) -> str:
    """A types.Route as Go's %v prints it: {Dst:{IP:10.0.0.0 Mask:ffffff00} GW:<nil>}."""
    mask = net.netmask.packed.hex()
    return f"{{Dst:{{IP:{net.network_address} Mask:{mask}}} GW:{gw or '<nil>'}}}"


def move_link(ipr: Any, index: int, netns_fd: int, new_name: Optional[str] = None) -> None:
    """Move a link into the netns open at `netns_fd` (down first: the kernel keeps flags)."""
    set_link(ipr, index, state="down")
    attrs: Dict[str, Any] = {"net_ns_fd": netns_fd}
    if new_name:
        attrs["ifname"] = new_name
    set_link(ipr, index, **attrs)


def current_netns_fd() -> int:
    """An fd of the calling thread's netns (caller closes it): Go's `ns.GetCurrentNS()`."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


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


def enable_forward(family: int) -> None:
    """Go ip.EnableIP4Forward / EnableIP6Forward in the calling thread's netns (written only when
    not already 1)."""
    key = "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding"
    try:
        if sysctl_get(key) != "1":
            sysctl_set(key, "1")
    except OSError as exc:
        raise fail("failed to enable forwarding", exc) from None


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
        if owner is not None:
            fcntl.ioctl(fd, TUNSETOWNER, owner)
        if group is not None:
            fcntl.ioctl(fd, TUNSETGROUP, group)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    finally:
        os.close(fd)


IFF_TUN = 0x0001


def open_tun(name: str, persist: bool = False) -> int:
    """Attach to (or create) the tun device `name` (IP packets, no packet info); returns its fd, which
    reads and writes the device's packets. `persist`: the device outlives the fd (the overlay's udp
    backend: a daemon restart re-attaches instead of re-creating)."""
    import fcntl  # noqa: PLC0415
    import struct  # noqa: PLC0415

    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
        if persist:
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError:
        os.close(fd)
        raise
    return fd


def master_link(ipr: Any, name: str, mtu: Optional[int] = None) -> Iface:
    """The parent of a macvlan/ipvlan/vlan, failing like Go's getMTUByName ("Link not found"); with
    `mtu`, also Go's bound check of the child MTU against the master's."""
    found = get_link(ipr, name)
    if found is None:
        raise fail("Link not found")
    if mtu is not None and (mtu < 0 or mtu > found["mtu"]):
        raise fail(f"invalid MTU {mtu}, must be [0, master MTU({found['mtu']})]")
    return found
