"""Network namespaces: entering and leaving one (Go pkg/ns `ns.Do`), the current one, and THE test
of whether a path is a network namespace. The only place that knows CLONE_NEWNET."""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Iterator, Optional, Tuple

from .. import faults
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


def _open_netns_fd(path: str) -> int:
    """An fd of the network namespace at `path`; OSError if it is none. Only a regular file is
    opened, non-blocking (a FIFO or a device named as CNI_NETNS is never opened: it could hang the
    caller or act on the device), and the fd must answer NS_GET_NSTYPE with CLONE_NEWNET."""
    import fcntl  # noqa: PLC0415

    if not stat.S_ISREG(os.stat(path).st_mode):
        raise OSError(errno.EINVAL, "not a network namespace")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError:
        kind = -1  # a plain file left behind (ENOTTY) is no namespace
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise OSError(errno.EINVAL, "not a network namespace")
    return fd


def open_netns(path: str) -> int:
    """Open a netns path (a /run/netns bind mount or /proc/<pid>/ns/net) read-only."""
    try:
        return _open_netns_fd(path)
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
            faults.point("net.restore_netns")  # tests: a thread left in the target netns
            _setns(origin)
    finally:
        os.close(target)
        os.close(origin)


def thread_netns_id() -> Tuple[int, int]:
    """(dev, inode) of the calling thread's netns: equal ids, same netns."""
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def current_netns_fd() -> int:
    """An fd of the calling thread's netns (caller closes it): Go's `ns.GetCurrentNS()`."""
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h


def is_netns(path: str) -> bool:
    """True if `path` opens as a network namespace (a /run/netns bind mount or /proc/<pid>/ns/net).
    The one test of it: a bare file (what a failed `ip netns add` or a reboot leaves) is none."""
    try:
        os.close(_open_netns_fd(path))
        return True
    except OSError:
        return False


def create_named(path: str) -> None:
    """A new network namespace bind-mounted at `path` (`ip netns add`; pyroute2 does the unshare)."""
    from pyroute2 import netns as pr_netns  # noqa: PLC0415 - lazy on purpose

    pr_netns.create(path)


def remove_named(path: str) -> None:
    """Unmount and remove the network namespace bind mount at `path` (`ip netns del`)."""
    from pyroute2 import netns as pr_netns  # noqa: PLC0415 - lazy on purpose

    pr_netns.remove(path)
