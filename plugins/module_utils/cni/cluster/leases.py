"""Node subnet leases and where they come from.

A lease is flannel's: the key `<subnet ip>-<prefix len>` (e.g. `10.244.1.0-24`) and the document
`{"PublicIP", "BackendType", "BackendData": {"VNI", "VtepMAC"}}` plus `"Node"` (the node's name, as the
etcd subnet leases of `cluster/subnets.py` write it). The daemon
reads the whole set from a `LeaseSource`; two sources share that one interface:

- `DirLeaseSource`: a directory with one `<key>.json` file per lease. Without etcd the role writes
  every node's lease (planned from the inventory) into it; in the lab one shared directory plays
  etcd's key space (a file appears = a node joins).
- `etcd_leases.EtcdLeaseSource`: the node subnet leases in etcd (`<prefix>/network/subnets/<key>`,
  subnets.py), listed and watched behind the same two methods.

`leases()` raises `LeaseSourceError` when the source cannot be read (an outage): the caller keeps
its last good set. Pure except for the directory reads; no netlink.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Optional, Protocol, Tuple

VXLAN, HOST_GW, UDP = "vxlan", "host-gw", "udp"
BACKENDS = (VXLAN, HOST_GW, UDP)
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the Linux kernel's VXLAN port, flannel's default
# VTEP MACs are derived from the node's subnet: locally administered, unicast, stable across
# restarts and re-creations of the device, known before the device exists (the inventory source
# has no node to ask), and recognisable — the daemon's FDB entries carry no protocol mark.
VTEP_MAC_PREFIX = "0e:c1"


class LeaseSourceError(RuntimeError):
    """The lease set cannot be read right now (the caller keeps its last good set)."""


class LeaseError(ValueError):
    """A malformed lease document or key."""


def vtep_mac(subnet: ipaddress.IPv4Network) -> str:
    """0e:c1:<the subnet's network address>, e.g. 10.244.1.0/24 -> 0e:c1:0a:f4:01:00."""
    return ":".join([VTEP_MAC_PREFIX] + [f"{b:02x}" for b in subnet.network_address.packed])


@dataclass(frozen=True)
class Lease:
    subnet: ipaddress.IPv4Network
    public_ip: ipaddress.IPv4Address
    backend: str = VXLAN
    vni: int = DEFAULT_VNI
    vtep_mac: str = ""
    node: str = ""

    @property
    def key(self) -> str:
        return f"{self.subnet.network_address}-{self.subnet.prefixlen}"

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The address on cni0 (the pods' gateway): the subnet's .1."""
        return self.subnet.network_address + 1

    @property
    def vtep_ip(self) -> ipaddress.IPv4Address:
        """The VTEP's address on flannel.<VNI> (and the next hop others route this subnet to): .0."""
        return self.subnet.network_address

    def document(self) -> Dict[str, object]:
        doc: Dict[str, object] = {"PublicIP": str(self.public_ip), "BackendType": self.backend}
        if self.backend == VXLAN:
            doc["BackendData"] = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        if self.node:
            doc["Node"] = self.node
        return doc

    def text(self) -> str:
        return json.dumps(self.document(), sort_keys=True) + "\n"


def parse_key(key: str) -> ipaddress.IPv4Network:
    try:
        ip, plen = key.rsplit("-", 1)
        return ipaddress.IPv4Network(f"{ip}/{int(plen)}", strict=True)
    except ValueError:
        raise LeaseError(f"lease key {key!r} is not <subnet ip>-<prefix length> (e.g. 10.244.1.0-24)") from None


def parse(key: str, text: str) -> Lease:
    subnet = parse_key(key)
    try:
        doc = json.loads(text)
        public_ip = ipaddress.IPv4Address(doc["PublicIP"])
        backend = doc.get("BackendType") or VXLAN
        data = doc.get("BackendData") or {}
        node = str(doc.get("Node") or "")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LeaseError(f"lease {key}: not a lease document ({exc})") from None
    if backend not in BACKENDS:
        raise LeaseError(f"lease {key}: unknown BackendType {backend!r} (known: {', '.join(BACKENDS)})")
    vni = data.get("VNI", DEFAULT_VNI) if isinstance(data, dict) else DEFAULT_VNI
    mac = (data.get("VtepMAC") if isinstance(data, dict) else None) or vtep_mac(subnet)
    return Lease(subnet, public_ip, backend, int(vni), str(mac).lower(), node)


class LeaseSource(Protocol):
    def leases(self) -> Dict[str, Lease]:
        """Every lease, by key; raises LeaseSourceError when the source is unreachable."""

    def wait(self, timeout: float) -> None:
        """Return when the set may have changed, or after `timeout` seconds."""


class DirLeaseSource:
    """One `<key>.json` file per lease in `path`. Files are written atomically (a dot-file renamed
    into place), so a reader never sees half a lease; dot-files and other names are ignored."""

    def __init__(self, path: str, poll: float = 0.05) -> None:
        self.path = path
        self.poll = poll
        self._seen: Optional[Tuple[float, int]] = None
        self._cache: Dict[str, Tuple[Tuple[int, int, int], Lease]] = {}  # parsed leases by file identity
        self._watch: Optional["_Inotify"] = None

    def _stamp(self) -> Optional[Tuple[float, int]]:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime, st.st_ino)  # rename into / unlink from the dir moves its mtime

    def leases(self) -> Dict[str, Lease]:
        self._seen = self._stamp()
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            raise LeaseSourceError(f"lease directory {self.path}: {exc.strerror}") from None
        out: Dict[str, Lease] = {}
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(".json"):
                continue
            key = name[:-5]
            try:
                st = os.stat(os.path.join(self.path, name))
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)  # a rewrite is a new inode (rename)
                cached = self._cache.get(key)
                if cached and cached[0] == stamp:
                    out[key] = cached[1]
                    continue
                with open(os.path.join(self.path, name), encoding="utf-8") as fh:
                    text = fh.read()
            except FileNotFoundError:  # removed between listdir and open: a leave
                continue
            except OSError as exc:
                raise LeaseSourceError(f"lease {key}: {exc.strerror}") from None
            out[key] = parse(key, text)
            self._cache[key] = (stamp, out[key])
        for gone in set(self._cache) - set(out):
            del self._cache[gone]
        return out

    def wait(self, timeout: float) -> None:
        """inotify on the directory (no wake-ups while nothing happens); polling its mtime every
        `poll` seconds while it is missing (an outage) or inotify is not available."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._stamp() != self._seen:
                return
            left = max(0.0, deadline - time.monotonic())
            if self._inotify_wait(left):
                continue  # an event or the timeout: the stamp check above decides
            time.sleep(min(self.poll, left))

    def _inotify_wait(self, timeout: float) -> bool:
        """Block until the directory reports an event or `timeout`; False when inotify cannot be used."""
        import select  # noqa: PLC0415

        if self._watch is None:
            self._watch = _Inotify.open(self.path)
            if self._watch is None:
                return False
        ready, _, _ = select.select([self._watch.fd], [], [], timeout)
        if ready and not self._watch.drain():  # the directory itself went away: watch again later
            self._watch.close()
            self._watch = None
        return True

    # writing (the role and the lab; a daemon only reads)
    def put(self, lease: Lease) -> None:
        write_lease(self.path, lease)

    def remove(self, key: str) -> None:
        try:
            os.unlink(os.path.join(self.path, f"{key}.json"))
        except FileNotFoundError:
            pass


class _Inotify:
    """A directory watch (inotify through libc: the stdlib has no binding)."""
    IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x8, 0x40, 0x80, 0x100, 0x200
    IN_DELETE_SELF, IN_MOVE_SELF, IN_IGNORED = 0x400, 0x800, 0x8000
    MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def open(cls, path: str) -> Optional["_Inotify"]:
        try:
            import ctypes  # noqa: PLC0415

            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            if fd < 0:
                return None
            if libc.inotify_add_watch(fd, os.fsencode(path), cls.MASK) < 0:
                os.close(fd)
                return None
            return cls(fd)
        except (OSError, AttributeError):
            return None

    def drain(self) -> bool:
        """Read the pending events; False when the watched directory was removed or moved."""
        import struct  # noqa: PLC0415

        alive = True
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return alive
            pos = 0
            while pos + 16 <= len(data):
                _wd, mask, _cookie, length = struct.unpack_from("iIII", data, pos)
                if mask & (self.IN_DELETE_SELF | self.IN_MOVE_SELF | self.IN_IGNORED):
                    alive = False
                pos += 16 + length

    def close(self) -> None:
        os.close(self.fd)


def write_lease(directory: str, lease: Lease) -> bool:
    """Write one lease file atomically; False when it already holds exactly this text."""
    os.makedirs(directory, exist_ok=True)
    target = os.path.join(directory, f"{lease.key}.json")
    text = lease.text()
    try:
        with open(target, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    tmp = os.path.join(directory, f".{lease.key}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return True
