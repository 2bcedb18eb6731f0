"""The rtnetlink socket (a small IPRoute subset on pyroute2's marshal, opened in a netns by entering
it: setns in the calling thread, as Go's `ns.Do`, not pyroute2's fork-a-helper path) and the
mapping of netlink errors to Go's texts.

pyroute2 is imported lazily: its import is the single biggest cost of a plugin exec."""
from __future__ import annotations

import errno
import os
from typing import Any, Dict, List, Optional, Tuple

from ..protocol import spec
from ..protocol.spec import CNIError
from .ns import in_netns


def skip_pyroute2_init() -> None:
    """Let `pyroute2.<sub>` imports skip the package `__init__`, which only re-exports ~50
    submodules (conntrack, ndb, ipset, nl80211, plan9, ...): ~80 ms of CPU per exec here, 372 ->
    296 modules (docs/performance.md). A bare package module with the real `__path__` goes in
    first; a process that already imported pyroute2 is left as it is."""
    import logging  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # pyroute2 logs (and logging's last resort prints) errors with tracebacks on stderr: a plugin's
    # stderr carries only what the engine says, its failures arrive as exceptions anyway.
    quiet = logging.getLogger("pyroute2")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
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
}


NLMSG_ERROR, NLMSG_DONE = 2, 3


class Rtnl:
    """An rtnetlink socket in the netns it was opened in, with the subset of pyroute2's IPRoute
    API the link plugins use (link, addr, route, get_addr, get_routes, brport, vlan_filter).

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
        from pyroute2.netlink.rtnl.rtmsg import rtmsg  # noqa: PLC0415

        msg = {"addr": ifaddrmsg, "route": rtmsg}.get(mode, ifinfmsg)()
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


def json_quote(text: str) -> str:
    """Go's %q for plain strings."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
