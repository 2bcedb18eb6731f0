"""Netlink and namespace primitives shared by every plugin, on pyroute2.

pyroute2 is imported lazily (its import is the single biggest cost of a plugin exec), and a
netlink socket for a namespace is opened by entering that namespace in the calling thread
(setns, as the Go `ns.Do` does) rather than pyroute2's fork-a-helper path.
"""
from __future__ import annotations

import contextlib
import errno
import os
from typing import Any, Iterator, Optional

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
        _setns(target)
        try:
            yield
        finally:
            _setns(origin)
    finally:
        os.close(target)
        os.close(origin)


def iproute(netns: Optional[str] = None) -> Any:
    """An IPRoute socket bound to `netns` (a path) or to the current netns."""
    from pyroute2.iproute.linux import IPRoute  # noqa: PLC0415 - lazy on purpose

    with in_netns(netns):
        return IPRoute()


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
