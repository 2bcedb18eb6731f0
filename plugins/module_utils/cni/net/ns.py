"""Network namespaces: entering and leaving one (Go pkg/ns `ns.Do`), the current one, and THE test
of whether a path is a network namespace. The only place that knows CLONE_NEWNET."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from ..protocol import spec
from ..protocol.spec import CNIError


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


def current_netns_fd() -> int:
    """An fd of the calling thread's netns (caller closes it): Go's `ns.GetCurrentNS()`."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h


def is_netns(path: str) -> bool:
    """True if `path` opens as a network namespace (a /run/netns bind mount or /proc/<pid>/ns/net).
    The one test of it: a bare file (what a failed `ip netns add` or a reboot leaves) is none."""
    import fcntl  # noqa: PLC0415

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        # an nsfs inode answers NS_GET_NSTYPE; a plain file left behind (ENOTTY) is no namespace
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def create_named(path: str) -> None:
    """A new network namespace bind-mounted at `path` (`ip netns add`; pyroute2 does the unshare)."""
    from pyroute2 import netns as pr_netns  # noqa: PLC0415 - lazy on purpose

    pr_netns.create(path)


def remove_named(path: str) -> None:
    """Unmount and remove the network namespace bind mount at `path` (`ip netns del`)."""
    from pyroute2 import netns as pr_netns  # noqa: PLC0415 - lazy on purpose

    pr_netns.remove(path)
