"""The overlay node daemon (`cnikit overlayd`): keeps this node's datapath equal to the lease set.

Its own process, not part of the CNI agent: the agent is an optional speed-up for CNI calls (the
plugins run without it, and it is restarted whenever the engine is upgraded), while the datapath
must be kept whether or not pods are being added, and a bug in one must not stop the other.

Loop: read the lease set (LeaseSource) → if it changed, or every `resync` seconds (to repair drift),
reconcile: ensure the device, compute the wanted entries, read ours, change only the difference.
A source that cannot be read (an outage, a malformed lease) changes nothing: the last good state
stays in the kernel until the source answers again. A restart reads the kernel and finds nothing
to change when it is already right. On exit nothing is removed (flannel's behaviour: pods keep
working across a daemon restart); `--remove` takes the datapath down.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ...cluster.client import Client, EtcdConfig
from ...cluster.etcd_leases import EtcdLeaseSource, NodeSubnet
from ...cluster.leases import DirLeaseSource, Lease, LeaseError, LeaseSource, LeaseSourceError
from ...cluster.subnets import DEFAULT_TTL as DEFAULT_LEASE_TTL
from ...protocol.spec import CNIError
from ...net import link
from ...net.rtnl import rtnl
from . import datapath, udp

DEFAULT_CONFIG = "/etc/cni/cnikit/overlay.json"
DEFAULT_RUN_DIR = "/run/cnikit/overlay"


@dataclass(frozen=True)
class Config:
    node: str
    cluster_cidr: str
    backend: datapath.Backend
    lease_dir: str = ""
    run_dir: str = DEFAULT_RUN_DIR
    masquerade: bool = True
    resync: float = 30.0
    # lease_source "etcd": the node's own lease is acquired and kept in etcd (`public_ip` is what
    # peers send to), every lease is read from there; "dir": leases are files in lease_dir.
    lease_source: str = "dir"
    etcd: Optional[Dict[str, Any]] = None
    public_ip: str = ""
    subnet_len: int = 24
    lease_ttl: int = DEFAULT_LEASE_TTL

    @classmethod
    def load(cls, path: str) -> "Config":
        try:
            with open(path, encoding="utf-8") as fh:
                doc = json.load(fh)
            b = doc.get("backend") or {}
            kind = str(b.get("type", "vxlan"))
            port = int(b.get("port") or (udp.DEFAULT_PORT if kind == datapath.UDP else 8472))
            source = str(doc.get("lease_source", "dir"))
            if source not in ("dir", "etcd"):
                raise ValueError(f"lease_source {source!r} is not dir or etcd")
            if source == "dir" and not doc.get("lease_dir"):
                raise KeyError("lease_dir")
            if source == "etcd":
                for key in ("etcd", "public_ip"):
                    if not doc.get(key):
                        raise ValueError(f"lease_source etcd needs {key!r}")
                EtcdConfig.from_dict(doc["etcd"], "etcd")  # fail here, with the key named
            return cls(node=str(doc["node"]), cluster_cidr=str(doc["cluster_cidr"]),
                       backend=datapath.Backend(kind, int(b.get("vni", 1)), port, str(b.get("uplink", "")),
                                                str(doc["cluster_cidr"])),
                       lease_dir=str(doc.get("lease_dir", "")), run_dir=str(doc.get("run_dir", DEFAULT_RUN_DIR)),
                       masquerade=bool(doc.get("masquerade", True)), resync=float(doc.get("resync", 30.0)),
                       lease_source=source, etcd=doc.get("etcd"), public_ip=str(doc.get("public_ip", "")),
                       subnet_len=int(doc.get("subnet_len", 24)),
                       lease_ttl=int(doc.get("lease_ttl", DEFAULT_LEASE_TTL)))
        except (OSError, ValueError, KeyError, TypeError, CNIError) as exc:
            raise SystemExit(f"overlayd: cannot use config {path}: {exc}") from None

    def etcd_config(self) -> EtcdConfig:
        return EtcdConfig.from_dict(self.etcd, "etcd")


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} overlayd: {msg}\n")
    sys.stderr.flush()


def own_lease(cfg: Config, leases: Dict[str, Lease]) -> Optional[Lease]:
    for lease in leases.values():
        if lease.node == cfg.node:
            return lease
    return None


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return
    except OSError:
        pass
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def subnet_env(cfg: Config, own: Lease, mtu: int) -> str:
    """flannel's /run/flannel/subnet.env, for whoever renders the pods' config."""
    return (f"FLANNEL_NETWORK={cfg.cluster_cidr}\nFLANNEL_SUBNET={own.gateway}/{own.subnet.prefixlen}\n"
            f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if cfg.masquerade else 'false'}\n")


class Daemon:
    def __init__(self, cfg: Config, source: Optional[LeaseSource] = None, own: Optional[NodeSubnet] = None) -> None:
        self.cfg = cfg
        self.source = source or DirLeaseSource(cfg.lease_dir)
        self.own_subnet = own  # etcd: this node's lease, (re-)acquired by the daemon itself
        self.last: Optional[Dict[str, Lease]] = None
        self.error: Optional[str] = None
        self.stop = False
        self.ipr: Any = None
        self.node: Optional[datapath.Node] = None
        self.own: Optional[Lease] = None
        self.applied: Optional[datapath.Entries] = None  # our entries as the last pass left them
        self.changed_at: Optional[float] = None
        self.relay: Optional[udp.Relay] = None
        self.serve_relay = False  # the udp backend's relay runs in the long-lived daemon only

    def step(self, force: bool = False, check: bool = False) -> Optional[Dict[str, Any]]:
        """One read-and-reconcile; None when nothing was done (source unreadable or unchanged)."""
        try:
            leases = self.source.leases()
        except (LeaseSourceError, LeaseError) as exc:
            if str(exc) != self.error:
                log(f"lease source unavailable, keeping the last good state: {exc}")
            self.error = str(exc)
            return None
        if self.own_subnet is not None and not check:
            try:
                if self.own_subnet.ensure(leases):
                    log(f"holding subnet {self.own_subnet.lease.subnet} in etcd")  # type: ignore[union-attr]
                    leases = self.source.leases()
            except (CNIError, LeaseSourceError, LeaseError) as exc:
                log(f"cannot acquire this node's subnet lease yet: {exc}")
                self.error = str(exc)
                return None
        if self.error:
            log("lease source back")
            self.error = None
        if leases == self.last and not force:
            return None
        own = own_lease(self.cfg, leases)
        if own is None:
            if self.error != "no own lease":
                log(f"no lease for node {self.cfg.node!r} yet ({len(leases)} leases): waiting")
            self.error = "no own lease"
            return None
        if check:
            ipr = rtnl()
            try:
                return self._check(ipr, own, leases)
            finally:
                ipr.close()
        if self.ipr is None:
            self.ipr = rtnl()  # one socket for the daemon's life
        ipr = self.ipr
        if self.cfg.masquerade and self.last is None:
            datapath.ensure_masq(self.cfg.cluster_cidr)
            link.sysctl_set("net/ipv4/ip_forward", "1")
        # A full pass reads the kernel (start, resync, after an error or a conflict, a changed own lease);
        # otherwise the difference is taken against what the last pass left (a join costs its 3 requests).
        full = force or self.applied is None or self.node is None or own != self.own
        started = time.monotonic()
        done = datapath.reconcile(ipr, own, leases.values(), self.cfg.backend,
                                  None if full else self.node, None if full else self.applied)
        took = time.monotonic() - started
        changes, refused, node, want = done.changes, done.refused, done.node, done.want
        self.node, self.own = node, own
        self.applied = None if done.conflicts else want
        if self.serve_relay and self.cfg.backend.kind == datapath.UDP:
            if self.relay is None:
                self.relay = udp.Relay(self.cfg.backend.device, str(own.public_ip), self.cfg.backend.port)
                self.relay.start()
            self.relay.set_peers(own, leases.values())
        for msg in refused:
            log(msg)
        if changes["added"] or changes["removed"] or self.last is None:
            log(f"{len(leases)} leases: +{changes['added']} -{changes['removed']} entries in {took * 1000:.1f} ms"
                f"{' (full pass)' if full else ''}")
        self.last = leases
        now = time.time()
        if changes["added"] or changes["removed"] or self.changed_at is None:
            self.changed_at = now
        status = {"node": self.cfg.node, "subnet": str(own.subnet), "gateway": str(own.gateway), "backend": self.cfg.backend.kind,
                  "mtu": node.mtu, "leases": len(leases), "entries": want.counts(), "refused": refused,
                  "changes": changes, "full": full, "reconcile_ms": round(took * 1000, 2), "at": now,
                  "changed_at": self.changed_at}  # when the kernel last had to change (a join, a leave)
        _write(os.path.join(self.cfg.run_dir, "subnet.env"), subnet_env(self.cfg, own, node.mtu))
        _write(os.path.join(self.cfg.run_dir, "status.json"), json.dumps(status, indent=1) + "\n")
        return status

    def close(self) -> None:
        if self.ipr is not None:
            self.ipr.close()
            self.ipr = None

    def shutdown(self) -> None:
        """Close everything; an etcd lease stays (its TTL outlives a restart: same subnet after it)."""
        self.close()
        if self.own_subnet is not None:
            self.own_subnet.close()
        if isinstance(self.source, EtcdLeaseSource):
            self.source.close()
            self.source.client.close()

    def _check(self, ipr: Any, own: Lease, leases: Dict[str, Lease]) -> Dict[str, Any]:
        """What a reconcile would change, touching nothing (a missing device: every entry is new)."""
        has_dev = self.cfg.backend.kind in (datapath.VXLAN, datapath.UDP)
        dev = link.get_link(ipr, self.cfg.backend.device) if has_dev else None
        up = datapath._uplink(ipr, self.cfg.backend, own)  # noqa: SLF001 - same lookup, no changes
        mtu = up["mtu"] - datapath.OVERHEAD[self.cfg.backend.kind]
        node = datapath.Node(up["index"], up["mtu"], datapath._nets(ipr, up["index"]),  # noqa: SLF001
                             dev["index"] if dev else 0, mtu)
        want, refused = datapath.desired(own, leases.values(), self.cfg.backend, node)
        have = datapath.current(ipr, node) if dev or not has_dev else datapath.Entries()
        device_ok = not has_dev or (dev is not None and dev["mtu"] == mtu)
        return {"node": self.cfg.node, "subnet": str(own.subnet), "gateway": str(own.gateway), "mtu": mtu, "refused": refused,
                "changes": {"added": len(want.routes - have.routes) + len(want.fdb - have.fdb)
                            + len(want.neighbours - have.neighbours),
                            "removed": len(have.routes - want.routes) + len(have.fdb - want.fdb)
                            + len(have.neighbours - want.neighbours), "device": not device_ok}}

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", True))
        self.serve_relay = True
        where = self.cfg.lease_dir if self.cfg.lease_source == "dir" else "etcd"
        log(f"node {self.cfg.node}, backend {self.cfg.backend.kind}, leases in {where}")
        next_resync = 0.0
        while not self.stop:
            force = time.monotonic() >= next_resync
            try:
                self.step(force=force)
            except Exception as exc:  # noqa: BLE001 - a failed pass is retried (in full); the daemon stays up
                log(f"reconcile failed, retrying: {exc}")
                self.last, self.applied = None, None
                self.close()
                time.sleep(0.5)
            if force:
                next_resync = time.monotonic() + self.cfg.resync
            self.source.wait(min(1.0, max(0.0, next_resync - time.monotonic())))
        self.shutdown()
        if self.relay is not None:
            self.relay.close()
        log("stopped (entries left in place)")
        return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("overlayd", help="the overlay node daemon: keep routes/ARP/FDB equal to the subnet leases")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="reconcile once, print the status as JSON, exit")
    mode.add_argument("--check", action="store_true", help="print what --once would change; change nothing")
    mode.add_argument("--remove", action="store_true", help="remove everything the daemon wrote")


def build(cfg: Config, check: bool = False) -> Daemon:
    """The daemon on its lease source: etcd (and, unless only checking, this node's own lease) or
    the lease directory."""
    if cfg.lease_source != "etcd":
        return Daemon(cfg)
    econf = cfg.etcd_config()
    own = None if check else NodeSubnet(econf, cfg.node, cfg.public_ip, cfg.cluster_cidr, cfg.subnet_len,
                                        cfg.backend.kind, cfg.backend.vni, cfg.lease_ttl)
    return Daemon(cfg, EtcdLeaseSource(Client(econf)), own)


def main(args: argparse.Namespace) -> int:
    cfg = Config.load(args.config)
    daemon = build(cfg, check=args.check or args.remove)
    if args.remove:
        ipr = rtnl()
        try:
            removed = datapath.remove(ipr, cfg.backend)
        finally:
            ipr.close()
        for name in ("subnet.env", "status.json"):
            try:
                os.unlink(os.path.join(cfg.run_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
        out: Dict[str, Any] = {"removed": removed}
        if cfg.lease_source == "etcd":  # a reset gives the subnet back
            holder = NodeSubnet(cfg.etcd_config(), cfg.node, cfg.public_ip, cfg.cluster_cidr, cfg.subnet_len)
            try:
                out["released"] = holder.release()
            except CNIError as exc:
                out["released"] = False
                out["error"] = f"etcd: {exc.msg} {exc.details}".strip()
            finally:
                holder.close()
        daemon.shutdown()
        print(json.dumps(out))
        return 1 if "error" in out else 0
    if args.once or args.check:
        try:
            status = daemon.step(force=True, check=args.check)
        finally:
            daemon.shutdown()
        if status is None:
            print(json.dumps({"error": daemon.error}))
            return 1
        print(json.dumps(status))
        return 1 if status["refused"] else 0
    return daemon.run()
