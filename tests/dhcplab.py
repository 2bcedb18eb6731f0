"""A DHCP test bed inside the sandbox: dnsmasq serving bridge br0 (10.77.0.1/24) in a "server" netns,
pods are netns whose eth0 (down, no address) is a veth into br0. Used by the dhcp IPAM tests."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import List, Optional

from cnitest import sh

DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
GO_DHCP = "/usr/lib/cni/dhcp"


def enter(name: str) -> None:
    """preexec_fn: move the child into netns `name` before it execs."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    os.setns(fd, os.CLONE_NEWNET)
    os.close(fd)


class Lab:
    def __init__(self, srv: str, pod: str, tmp: str) -> None:
        self.srv, self.pod, self.tmp = srv, pod, tmp
        self.leases = os.path.join(tmp, "dnsmasq.leases")
        self.procs: List[subprocess.Popen] = []
        sh(f"ip -n {srv} link add br0 type bridge && ip -n {srv} addr add 10.77.0.1/24 dev br0 "
           f"&& ip -n {srv} link set br0 up")
        self.plug(pod)

    def _spawn(self, argv: List[str], log: str, netns: Optional[str]) -> subprocess.Popen:
        with open(os.path.join(self.tmp, log), "w") as err:
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                    preexec_fn=(lambda: enter(netns)) if netns else None)
        self.procs.append(proc)
        return proc

    def _wait(self, proc: subprocess.Popen, ready, what: str) -> None:
        deadline = time.time() + 5
        while not ready():
            assert time.time() < deadline and proc.poll() is None, f"{what} did not start"
            time.sleep(0.02)

    def start(self, *extra: str) -> None:
        proc = self._spawn(
            [DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0", "--user=root", "--group=root",
             "--interface=br0", "--bind-interfaces", "--no-ping",
             "--dhcp-range=10.77.0.50,10.77.0.59,255.255.255.0,1h", f"--dhcp-leasefile={self.leases}",
             "--pid-file", "--dhcp-option=option:router,10.77.0.1", "--log-dhcp", *extra],
            "dnsmasq.log", self.srv)
        self._wait(proc, lambda: ":67 " in sh(f"ip netns exec {self.srv} ss -lunH"), "dnsmasq")

    def start_go_daemon(self) -> str:
        """The Go reference dhcp daemon (runs in the sandbox's own netns, enters pods itself)."""
        sock = os.path.join(self.tmp, "dhcp.sock")
        proc = self._spawn([GO_DHCP, "daemon", "-socketpath", sock], "go-dhcp.log", None)
        self._wait(proc, lambda: os.path.exists(sock), "Go dhcp daemon")
        return sock

    def plug(self, pod: str, ifname: str = "eth0") -> None:
        port = f"p{pod[-6:]}{ifname[-1]}"
        sh(f"ip -n {self.srv} link add {port} type veth peer name {ifname} netns {pod}")
        sh(f"ip -n {self.srv} link set {port} master br0 up")

    def leased(self) -> dict:
        """{ip: client-id hex} from dnsmasq's lease file."""
        try:
            with open(self.leases) as fh:
                lines = fh.read().split("\n")
        except FileNotFoundError:
            return {}
        return {f[2]: f[4] for f in (line.split() for line in lines) if len(f) >= 5}

    def expiries(self) -> dict:
        """{ip: lease expiry (epoch seconds)} from dnsmasq's lease file."""
        with open(self.leases) as fh:
            return {f[2]: int(f[0]) for f in (line.split() for line in fh) if len(f) >= 5}

    def wait_released(self, timeout: float = 5.0) -> dict:
        deadline = time.time() + timeout
        while self.leased() and time.time() < deadline:
            time.sleep(0.05)
        return self.leased()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(10)
