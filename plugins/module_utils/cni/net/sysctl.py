"""sysctl under /proc/sys in the calling thread's netns (Go pkg/utils/sysctl)."""
from __future__ import annotations

from typing import Optional

from ..protocol import spec
from ..protocol.spec import CNIError
from .ns import in_netns
from .rtnl import fail


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


def enable_forward(family: int) -> None:
    """Go ip.EnableIP4Forward / EnableIP6Forward in the calling thread's netns (written only when
    not already 1)."""
    key = "net/ipv4/ip_forward" if family == 4 else "net/ipv6/conf/all/forwarding"
    try:
        if sysctl_get(key) != "1":
            sysctl_set(key, "1")
    except OSError as exc:
        raise fail("failed to enable forwarding", exc) from None
