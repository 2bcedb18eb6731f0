"""The udp backend's relay (flannel's first mode): userspace encapsulation between `flannel0` (a tun
device: the kernel hands it every packet routed to the cluster CIDR that is not for a local subnet)
and a UDP socket on the node IP, port 8285.

tun → look the destination up in the peer table (subnet → node IP; all subnets have one length, so
a mask and a dict lookup) → sendto(node IP, 8285) carrying the bare IP packet. UDP → a datagram from a
known peer's node IP → written into the tun. Packets to unknown subnets or from unknown senders are
dropped (counted). One thread; the daemon replaces the table as leases change. Debug / old-kernel
mode, as in flannel: every packet crosses into userspace twice (docs/overlay.md has the cost).
"""
from __future__ import annotations

import os
import select
import socket
import threading
from typing import Dict, Iterable, Optional

from ...cluster.leases import Lease
from ...net import link

DEFAULT_PORT = 8285


class Relay:
    def __init__(self, device: str, local_ip: str, port: int = DEFAULT_PORT) -> None:
        self.fd = link.open_tun(device, persist=True)  # attaches to the device ensure_node made
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((local_ip, port))
        self.port = port
        self.mask = 0
        self.routes: Dict[int, str] = {}  # subnet network address (int) -> peer node IP
        self.peers: frozenset = frozenset()
        self.stats = {"tx": 0, "rx": 0, "dropped": 0}
        self.stop = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def set_peers(self, own: Lease, leases: Iterable[Lease]) -> None:
        """Replace the peer table (one assignment: the relay thread reads either the old or the new)."""
        remote = [l for l in leases if l.subnet != own.subnet]
        self.mask = int(own.subnet.netmask)
        self.routes = {int(l.subnet.network_address): str(l.public_ip) for l in remote}
        self.peers = frozenset(str(l.public_ip) for l in remote)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.run, name="udp-relay", daemon=True)
        self.thread.start()

    def run(self) -> None:
        tun, sock = self.fd, self.sock
        while not self.stop.is_set():
            ready, _, _ = select.select([tun, sock], [], [], 0.5)
            if tun in ready:
                pkt = os.read(tun, 65535)
                if len(pkt) >= 20 and pkt[0] >> 4 == 4:
                    peer = self.routes.get(int.from_bytes(pkt[16:20], "big") & self.mask)
                    if peer:
                        sock.sendto(pkt, (peer, self.port))
                        self.stats["tx"] += 1
                        continue
                self.stats["dropped"] += 1
            if sock in ready:
                data, (src, _port) = sock.recvfrom(65535)
                if src in self.peers and len(data) >= 20:
                    os.write(tun, data)
                    self.stats["rx"] += 1
                else:
                    self.stats["dropped"] += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=2)
        self.sock.close()
        os.close(self.fd)
