"""The host-local on-disk lease store, byte-compatible with the Go `disk` backend (plugins v1.1.1).

Layout of `<dataDir>/<network>/`:
    <ip>                  "<containerID>\\r\\n<ifname>" (no trailing newline), mode 0644
    last_reserved_ip.<n>  the textual IP last handed out by range set n
    lock                  flock(LOCK_EX)'d around every read-modify-write (go-filemutex, mode 0750)

Go binaries and this module can share one directory concurrently: same lock file, same flock
semantics, same names and contents. Where Go writes in place we write a temp file and then
link()/rename() it, so a reader (or a crash) never sees a half-written lease.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
from typing import Iterator, List, Optional, Tuple

from .. import faults
from ..protocol import fsutil, spec
from ..protocol.spec import CNIError

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"
# A lease is "<cid>\r\n<ifname>": cid and ifname are short, so anything longer is not a lease.
MAX_LEASE_BYTES = 4096
NO_HARDLINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS)

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _os_error(op: str, path: str, exc: OSError) -> CNIError:
    """Go's *PathError text: `open /x: permission denied`."""
    reason = (exc.strerror or str(exc)).lower()
    return CNIError(spec.ERR_INTERNAL, f"{op} {path}: {reason}")


def parse_ip(text: str) -> Optional[IPAddr]:
    """Go `net.ParseIP`: None for anything that is not a bare IPv4/IPv6 address."""
    if not text or "%" in text or "/" in text:
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # Go canonicalises ::ffff:a.b.c.d to IPv4
    return addr


def lease_key(container_id: str, ifname: str) -> bytes:
    return (container_id.strip() + LINE_BREAK + ifname).encode()


class Store:
    """One network's directory. Use `with store.locked():` around every operation."""

    def __init__(self, network: str, data_dir: str = "") -> None:
        spec.validate_name(network)
        data_dir = data_dir or DEFAULT_DATA_DIR
        if not isinstance(data_dir, str) or "\0" in data_dir or ".." in data_dir.split("/"):  # no traversal
            raise CNIError(spec.ERR_INVALID_CONFIG, "invalid dataDir", repr(data_dir))
        self.dir = os.path.join(data_dir, network)
        # The network name is a single path component (validate_name), so the directory can
        # only be a direct child of dataDir; checked again on the normalised path.
        if os.path.dirname(os.path.normpath(self.dir)) != os.path.normpath(data_dir):
            raise CNIError(spec.ERR_INVALID_CONFIG, "network name escapes dataDir", network)
        self._lock_fd = -1

    # --- locking ------------------------------------------------------------------------

    def open(self) -> None:
        try:
            os.makedirs(self.dir, 0o755, exist_ok=True)
        except OSError as exc:
            raise _os_error("mkdir", exc.filename or self.dir, exc) from None
        why = fsutil.unsafe_dir(self.dir)  # others could swap leases or the lock for links
        if why:
            raise CNIError(spec.ERR_IO, f"refusing dataDir {self.dir}: {why}")
        path = os.path.join(self.dir, "lock")
        try:
            # go-filemutex: open(O_CREAT|O_RDONLY, 0750) and flock on that descriptor.
            self._lock_fd = os.open(path, os.O_CREAT | os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW, 0o750)
        except OSError as exc:
            raise _os_error("open", path, exc) from None

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    @contextlib.contextmanager
    def locked(self) -> Iterator["Store"]:
        self.open()
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        finally:
            self.close()

    # --- writes -------------------------------------------------------------------------

    def _write_new(self, name: str, data: bytes, replace: bool) -> bool:
        """Write `name` atomically with mode 0644 (minus umask): False if it exists and not `replace`."""
        final = os.path.join(self.dir, name)
        if not replace and os.path.lexists(final):
            return False  # the common case while skipping taken addresses: no temp file for it
        tmp = ""
        try:
            fd, tmp = fsutil.create_temp(os.path.join(self.dir, f".{name}"), 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            if replace:
                os.replace(tmp, final)
                return True
            try:
                os.link(tmp, final)  # atomic O_EXCL create, with the content already in place
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno not in NO_HARDLINKS:
                    raise
                return self._create_excl(final, data)
            finally:
                os.unlink(tmp)
            return True
        except OSError as exc:
            with contextlib.suppress(OSError):
                if tmp:
                    os.unlink(tmp)
            raise _os_error("open", final, exc) from None

    @staticmethod
    def _create_excl(path: str, data: bytes) -> bool:
        """Go's way, for filesystems without hard links: O_EXCL create, then write."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return True

    def reserve(self, container_id: str, ifname: str, ip: IPAddr, range_id: int) -> bool:
        """Go `Store.Reserve`: create the lease if free, then record it as last reserved."""
        if not self._write_new(str(ip), lease_key(container_id, ifname), replace=False):
            return False
        try:
            faults.point("host_local.after_lease_write")
            self._write_new(LAST_IP_PREFIX + str(range_id), str(ip).encode(), replace=True)
        except BaseException:  # Go would leave the lease behind here; a failed ADD must not
            self.release(ip)
            raise
        return True

    def release(self, ip: IPAddr) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.dir, str(ip)))

    # --- reads --------------------------------------------------------------------------

    def last_reserved_ip(self, range_id: int) -> Optional[IPAddr]:
        try:
            with open(os.path.join(self.dir, LAST_IP_PREFIX + str(range_id)), "rb") as fh:
                data = fh.read(256)
        except OSError:
            return None
        return parse_ip(data.decode("ascii", "replace"))

    def _scan(self, recursive: bool = True) -> Iterator[Tuple[str, Optional[bytes]]]:
        """(path, trimmed content, None if oversized) of every regular file under the directory
        (recursive like Go's filepath.Walk; no caller depends on the order).

        Symlinks are not followed (Go would read through them) and unreadable files are skipped,
        so a torn or garbage file can never break a scan. scandir + os.read, because this runs
        over every lease on every ADD/DEL, as in Go."""
        stack = [self.dir]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if recursive:
                            stack.append(entry.path)
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
                except OSError:
                    continue
                try:
                    data = os.read(fd, MAX_LEASE_BYTES + 1)
                except OSError:
                    continue
                finally:
                    os.close(fd)
                yield entry.path, (data.strip() if len(data) <= MAX_LEASE_BYTES else None)

    def _files(self) -> Iterator[Tuple[str, bytes]]:
        return ((path, data) for path, data in self._scan() if data is not None)

    def _release_matching(self, match: bytes) -> bool:
        found = False
        for path, data in self._files():
            if data == match:
                try:
                    os.unlink(path)
                except OSError:
                    continue
                found = True
                faults.point("host_local.after_release_one")
        return found

    def release_by_id(self, container_id: str, ifname: str) -> None:
        """Go `ReleaseByID`: every `cid\\r\\nifname` file, else legacy files holding just `cid`."""
        if not self._release_matching(lease_key(container_id, ifname)):
            self._release_matching(container_id.strip().encode())

    def find_by_id(self, container_id: str, ifname: str) -> bool:
        key, old = lease_key(container_id, ifname), container_id.strip().encode()
        files = list(self._files())
        return any(d == key for _, d in files) or any(d == old for _, d in files)

    def get_by_id(self, container_id: str, ifname: str) -> List[IPAddr]:
        """IPs leased to (cid, ifname), legacy cid-only leases included (Go `GetByID`)."""
        key, old = lease_key(container_id, ifname), container_id.strip().encode()
        ips = []
        for path, data in self._files():
            if data in (key, old):
                ip = parse_ip(os.path.basename(path))
                if ip is not None:
                    ips.append(ip)
        return ips

    def leases(self) -> Iterator[Tuple[IPAddr, Optional[bytes]]]:
        """(ip, trimmed content or None) of every lease file directly in the directory (GC)."""
        for path, data in self._scan(recursive=False):
            ip = parse_ip(os.path.basename(path))
            if ip is not None:
                yield ip, data

    def remove_stale_temps(self) -> None:
        """Temp files a killed writer left behind (ours are only written under the lock, so
        while the caller holds it no temp file is in use)."""
        for name in os.listdir(self.dir):
            if name.startswith(".") and ".tmp" in name:
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.dir, name))

    def exists(self, ip: IPAddr) -> bool:
        return os.path.lexists(os.path.join(self.dir, str(ip)))
