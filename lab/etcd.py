"""Real etcd members for the lab and the tests: TLS (peer + client), one process per member.

`Cluster.in_lab(state, ...)` runs each member inside a lab node's namespaces (nsenter), on the
node's lab address — `lab down` kills them with the node. `Cluster.loopback(n, ...)` runs them
on 127.0.0.x inside the caller's namespace: only for tests already inside tools/sandbox.sh
(it refuses otherwise). Certificates come from the engine's PKI helper (cluster/pki.py), the
same code the `etcd` role runs on the controller.

The member command line is `member_args()`; roles/etcd renders the same flags into its config.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "plugins", "module_utils"))
from cni.cluster import pki  # noqa: E402
from cni.cluster.client import Client, EtcdConfig  # noqa: E402

from . import LabError, nsenter, require_sandbox  # noqa: E402

ETCD = "/usr/bin/etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380


@dataclass
class Member:
    name: str
    ip: str
    data_dir: str
    client_port: int = CLIENT_PORT
    peer_port: int = PEER_PORT
    prefix: List[str] = field(default_factory=list)  # nsenter argv into a lab node, or []
    alt_ip: str = ""  # a second client address (loopback tests cut one client off with iptables)
    proc: Optional[subprocess.Popen] = None

    @property
    def client_url(self) -> str:
        return f"https://{self.ip}:{self.client_port}"

    @property
    def alt_url(self) -> str:
        return f"https://{self.alt_ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.ip}:{self.peer_port}"


def member_args(m: Member, cluster: Sequence[Member], pki_dir: str, token: str, state: str = "new") -> List[str]:
    """etcd 3.4 flags for one TLS member (client and peer certificate auth on)."""
    crt, key, ca = (os.path.join(pki_dir, f) for f in (f"{m.name}.crt", f"{m.name}.key", "ca.crt"))
    return [ETCD, "--name", m.name, "--data-dir", m.data_dir,
            "--listen-client-urls", m.client_url + (f",{m.alt_url}" if m.alt_ip else ""),
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", ",".join(f"{o.name}={o.peer_url}" for o in cluster),
            "--initial-cluster-state", state, "--initial-cluster-token", token,
            "--cert-file", crt, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
            "--peer-cert-file", crt, "--peer-key-file", key, "--peer-trusted-ca-file", ca,
            "--peer-client-cert-auth", "--logger", "zap", "--log-level", "warn"]


class Cluster:
    def __init__(self, members: List[Member], pki_dir: str, token: str = "cnikit-lab") -> None:
        self.members, self.pki_dir, self.token = members, pki_dir, token
        pki.ensure_cluster(pki_dir, {m.name: [m.ip] + ([m.alt_ip] if m.alt_ip else []) for m in members},
                           clients=("client",))

    @classmethod
    def in_lab(cls, state: Dict, workdir: str, nodes: Optional[Sequence[str]] = None) -> "Cluster":
        """One member per named lab node (default: every node), data under `workdir/<name>`."""
        picked = [n for n in state["nodes"] if nodes is None or n["name"] in nodes]
        members = [Member(f"etcd-{n['name']}", n["ip"], os.path.join(workdir, "data", n["name"]),
                          prefix=nsenter(n["pid"], [])) for n in picked]
        return cls(members, os.path.join(workdir, "pki"))

    @classmethod
    def loopback(cls, count: int, workdir: str, base_port: int = 23790) -> "Cluster":
        require_sandbox()
        members = [Member(f"m{i}", f"127.0.0.{11 + i}", os.path.join(workdir, "data", f"m{i}"),
                          client_port=base_port, peer_port=base_port + 1, alt_ip=f"127.0.0.{21 + i}")
                   for i in range(count)]
        return cls(members, os.path.join(workdir, "pki"))

    def config(self, timeout: float = 1.5, members: Optional[Sequence[Member]] = None, alt: bool = False) -> EtcdConfig:
        return EtcdConfig(endpoints=tuple(m.alt_url if alt else m.client_url for m in (members or self.members)),
                          ca_file=os.path.join(self.pki_dir, "ca.crt"),
                          cert_file=os.path.join(self.pki_dir, "client.crt"),
                          key_file=os.path.join(self.pki_dir, "client.key"), timeout=timeout)

    def start(self, member: Optional[Member] = None, wait: bool = True) -> None:
        for m in [member] if member else self.members:
            if m.proc is not None and m.proc.poll() is None:
                continue
            state = "existing" if os.path.isdir(os.path.join(m.data_dir, "member")) else "new"
            os.makedirs(m.data_dir, mode=0o700, exist_ok=True)
            log = open(m.data_dir + ".log", "ab")  # noqa: SIM115 - handed to the child
            m.proc = subprocess.Popen(m.prefix + member_args(m, self.members, self.pki_dir, self.token, state),
                                      stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            log.close()
        if wait:
            self.wait_healthy()

    def wait_healthy(self, timeout: float = 20.0, members: Optional[Sequence[Member]] = None) -> float:
        """Seconds until every (given) member reports healthy; LabError after `timeout`."""
        t0 = time.monotonic()
        want = members or [m for m in self.members if m.proc is not None and m.proc.poll() is None]
        with Client(self.config(members=want)) as cli:
            while time.monotonic() - t0 < timeout:
                if all(cli.health().values()):
                    return time.monotonic() - t0
                time.sleep(0.1)
        raise LabError(f"etcd not healthy after {timeout} s: " + self.logs())

    def kill(self, member: Member, sig: int = signal.SIGKILL) -> None:
        """Stop one member and wait for it to be gone (a SIGTERMed member serves for a moment)."""
        if member.proc is None:
            return
        try:
            os.killpg(member.proc.pid, sig)
        except ProcessLookupError:
            pass
        member.proc.wait(timeout=15)
        # with nsenter in front, etcd is nsenter's child in the same process group
        member.proc = None

    def stop(self) -> None:
        for m in self.members:
            self.kill(m, signal.SIGKILL)

    def logs(self, tail: int = 20) -> str:
        out = []
        for m in self.members:
            try:
                with open(m.data_dir + ".log", encoding="utf-8", errors="replace") as fh:
                    out.append(f"--- {m.name}\n" + "".join(fh.readlines()[-tail:]))
            except OSError:
                pass
        return "\n".join(out)

    def leader(self) -> Member:
        import json  # noqa: PLC0415

        for m in self.members:
            if m.proc is None:
                continue
            with Client(self.config(members=[m])) as cli:
                try:
                    st = cli._post("status", "/maintenance/status", {})
                except Exception:  # noqa: BLE001
                    continue
            if st.get("leader") == st.get("header", {}).get("member_id"):
                return m
        raise LabError("no leader: " + json.dumps([m.name for m in self.members]))
