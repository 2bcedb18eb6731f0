"""Node-level leak reclaim behind `cnikit reclaim` (alias `cnikit gc`; the CNI GC verb is another thing): what a missed DEL, a deleted netns or a reboot
(the netns tmpfs wiped, /var/lib/cni kept) leaves behind.

The runtime's result cache (libcni's format, `<cacheDir>/results/<net>-<cid>-<ifname>`) records
every attachment with the exact config it was made with. An attachment whose netns is gone is
collected the way libcni's GCNetworkList does it: a full DEL of its cached config with its cached
prevResult, netns path and CNI_ARGS (that frees the interfaces, leases, masquerade/portmap rules
and the cache entry). With `gc_verb=True` every network of cniVersion >= 1.1.0 then gets the spec
GC verb with its still-valid attachments (host-local frees every lease not listed: only safe when
this cache is the whole truth and no ADD is in flight). With `orphans=True`, host-local
leases that no cache entry accounts for (a runtime killed before it wrote the cache) are DELed
through their network's config in the conf dir, which takes their rules along, or just freed; temp
files of a killed writer are removed. Orphans are only touched after `grace` seconds, so an ADD in
flight is never disturbed.

An attachment is valid while its netns path is a live network namespace; an entry without a
netns path is never collected (nothing proves it gone). Corrupt cache files are reported, kept.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Set, Tuple

from ..net import ns
from ..protocol import skel, spec
from ..protocol.spec import CNIError

MAX_OWNER = 4096  # a lease holds "<cid>\r\n<ifname>"; read no more than that
# atomic writers (the store, the runtime cache) write `<name>.tmp<pid>` and rename it into place
TEMP_RE = re.compile(r"\.tmp\d+$")


@dataclass
class Attachment:
    """One cached attachment (libcni cniCacheV1 entry)."""

    path: str
    network: str
    container_id: str
    ifname: str
    netns: str
    config: bytes  # the network list exactly as it ran
    cni_args: List[Tuple[str, str]] = field(default_factory=list)
    capability_args: Dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> Tuple[str, str, str]:
        return self.network, self.container_id, self.ifname


@dataclass
class Report:
    collected: List[str] = field(default_factory=list)   # stale attachments DEL'd
    kept: List[str] = field(default_factory=list)        # live attachments
    corrupt: List[str] = field(default_factory=list)     # unreadable cache files (kept)
    orphan_leases: List[str] = field(default_factory=list)
    stray_files: List[str] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, List[str]]:
        return dict(self.__dict__)


def _parse_entry(path: str) -> Attachment:
    from ..runtime import CACHE_KIND  # noqa: PLC0415

    with open(path, "rb") as fh:
        raw = json.loads(fh.read())
    if not isinstance(raw, dict) or raw.get("kind") != CACHE_KIND:
        raise ValueError("not a cniCacheV1 entry")
    network, cid, ifname = raw.get("networkName"), raw.get("containerId"), raw.get("ifName")
    spec.validate_name(network)
    if not all(isinstance(v, str) and v for v in (cid, ifname)):
        raise ValueError("containerId/ifName missing")
    config = base64.b64decode(raw.get("config") or "", validate=True)
    args = [(str(k), str(v)) for k, v in raw.get("cniArgs") or []]
    caps = raw.get("capabilityArgs") or {}
    return Attachment(path, network, cid, ifname, raw.get("netns") or "", config, args,
                      caps if isinstance(caps, dict) else {})


def cached_attachments(cache_dir: str) -> Tuple[List[Attachment], List[str]]:
    """Every readable cache entry, and the paths of those that are not (torn, garbage, wrong kind)."""
    results = os.path.join(cache_dir, "results")
    try:
        names = sorted(os.listdir(results))
    except FileNotFoundError:
        return [], []
    good, bad = [], []
    for name in names:
        path = os.path.join(results, name)
        if not os.path.isfile(path) or TEMP_RE.search(name):
            continue
        try:
            good.append(_parse_entry(path))
        except (OSError, ValueError, TypeError, binascii.Error, CNIError):
            bad.append(path)
    return good, bad


def _label(att: Attachment) -> str:
    return f"{att.network}/{att.container_id}/{att.ifname}"


def _delete(runtime: Any, rt: Any, att: Attachment) -> None:
    """DEL one attachment with the config it was made with."""
    net = runtime.network_from_bytes(att.config)
    rt.delete(net, runtime.RuntimeConf(container_id=att.container_id, netns=att.netns, ifname=att.ifname,
                                       args=att.cni_args, capability_args=att.capability_args))


def collect(cache_dir: str = "", cni_path: Sequence[str] = (), data_dirs: Sequence[str] = (),
            orphans: bool = False, grace: float = 60.0, dry_run: bool = False, conf_dir: str = "",
            gc_verb: bool = False) -> Report:
    """Defaults: the runtime's cache and conf dirs, host-local's default dataDir."""
    from .. import runtime  # noqa: PLC0415 - the CLI's other commands do not need it
    from ..ipam.store import DEFAULT_DATA_DIR  # noqa: PLC0415

    cache_dir = cache_dir or runtime.DEFAULT_CACHE_DIR
    conf_dir = conf_dir or runtime.DEFAULT_CONF_DIR
    data_dirs = list(data_dirs) or [DEFAULT_DATA_DIR]

    report = Report()
    atts, report.corrupt = cached_attachments(cache_dir)
    rt = runtime.Runtime(conf_dir=conf_dir, cni_path=list(cni_path), cache_dir=cache_dir)
    live: Set[Tuple[str, str, str]] = set()
    nets: Dict[str, bytes] = {}  # network -> a config it ran with, for the GC verb
    for att in atts:
        nets.setdefault(att.network, att.config)
        if not att.netns or ns.is_netns(att.netns):
            live.add(att.key)
            report.kept.append(_label(att))
            continue
        report.collected.append(_label(att))
        if not dry_run:
            try:
                _delete(runtime, rt, att)
            except Exception as err:  # noqa: BLE001 - one failed attachment must not stop the rest
                report.errors.append(f"DEL {_label(att)}: {err}")
    if gc_verb and not dry_run:
        for name, config in sorted(nets.items()):
            valid = [{"containerID": c, "ifname": i} for n, c, i in sorted(live) if n == name]
            try:
                net = runtime.network_from_bytes(config)
                if spec.version_ge(net.cni_version or "0.1.0", "1.1.0"):
                    rt.gc(net, valid)  # the stale ones are gone already: this only sends the GC verb
            except Exception as err:  # noqa: BLE001
                report.errors.append(f"GC {name}: {err}")
    if orphans:
        from ..ipam.store import LINE_BREAK  # noqa: PLC0415

        _stray_cache_files(cache_dir, grace, dry_run, report)
        for data_dir in data_dirs:
            for network, owner, ip in _orphan_leases(data_dir, live, grace, dry_run, report):
                cid, _, ifname = owner.decode("utf-8", "replace").partition(LINE_BREAK)
                report.orphan_leases.append(f"{network}/{ip} ({cid} {ifname})".rstrip())
                if not dry_run:
                    _release_orphan(runtime, rt, data_dir, network, owner, ip, report)
    return report


def _release_orphan(runtime: Any, rt: Any, data_dir: str, network: str, owner: bytes, ip: Any,
                    report: Report) -> None:
    """DEL the orphan through its network's current config when there is one (no cache entry means
    no prevResult, so every plugin cleans up by container ID: rules go with the lease), then free
    the lease itself if that DEL did not (another dataDir in the config, no config, legacy lease)."""
    from ..ipam.store import LINE_BREAK, Store  # noqa: PLC0415

    cid, _, ifname = owner.decode("utf-8", "replace").partition(LINE_BREAK)
    try:
        skel.validate_container_id(cid)
        skel.validate_ifname(ifname)
        net = rt.load_network(network)
    except CNIError:
        net = None  # garbage owner, legacy cid-only lease or no config left: only the lease to free
    if net is not None:
        try:
            rt.delete(net, runtime.RuntimeConf(container_id=cid, netns="", ifname=ifname))
        except Exception as err:  # noqa: BLE001
            report.errors.append(f"DEL orphan {network}/{cid}/{ifname}: {err}")
    store = Store(network, data_dir)
    with store.locked():
        path = os.path.join(store.dir, str(ip))
        try:
            with open(path, "rb") as fh:
                now = fh.read(MAX_OWNER).strip()
        except OSError:
            return
        if now == owner:  # still the orphan (or garbage), not a lease made since
            store.release(ip)


def _stray_cache_files(cache_dir: str, grace: float, dry_run: bool, report: Report) -> None:
    results = os.path.join(cache_dir, "results")
    cutoff = time.time() - grace
    try:
        names = sorted(os.listdir(results))
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(results, name)
        if TEMP_RE.search(name) and os.path.isfile(path) and os.lstat(path).st_mtime <= cutoff:
            report.stray_files.append(path)
            if not dry_run:
                os.unlink(path)


def _orphan_leases(data_dir: str, live: Set[Tuple[str, str, str]], grace: float, dry_run: bool,
                   report: Report) -> List[Tuple[str, bytes, Any]]:
    """(network, owner bytes, ip) of host-local leases no live cache entry accounts for (garbage
    or torn contents included); temp files of a killed writer are removed on the way."""
    from ..ipam.store import LINE_BREAK, Store, parse_ip  # noqa: PLC0415

    try:
        networks = sorted(os.listdir(data_dir))
    except FileNotFoundError:
        return []
    cutoff = time.time() - grace
    found = []
    for network in networks:
        if not os.path.isdir(os.path.join(data_dir, network)):
            continue
        try:
            store = Store(network, data_dir)
        except CNIError:
            continue  # not a network directory we would have made
        with store.locked():
            for name in sorted(os.listdir(store.dir)):
                path = os.path.join(store.dir, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode) or st.st_mtime > cutoff:
                    continue
                if TEMP_RE.search(name):  # a writer killed before its rename
                    report.stray_files.append(path)
                    if not dry_run:
                        os.unlink(path)
                    continue
                ip = parse_ip(name)
                if ip is None:
                    continue
                with open(path, "rb") as fh:
                    owner = fh.read(MAX_OWNER).strip()
                cid, _, ifname = owner.decode("utf-8", "replace").partition(LINE_BREAK)
                if (network, cid, ifname) in live or (not ifname and any(
                        k[0] == network and k[1] == cid for k in live)):
                    continue
                found.append((network, owner, ip))
    return found


def main(args: Any) -> int:
    """`cnikit reclaim`: print the report as JSON; exit 1 if any collection failed."""
    cni_path = [p for p in (args.cni_path or os.environ.get("CNI_PATH", "")).split(os.pathsep) if p]
    report = collect(cache_dir=args.cache_dir, cni_path=cni_path, data_dirs=args.data_dir or [],
                     orphans=args.orphans, grace=args.grace, dry_run=args.dry_run,
                     conf_dir=args.conf_dir or os.environ.get("NETCONFPATH", ""), gc_verb=args.gc_verb)
    print(spec.dumps(report.to_dict()))
    return 1 if report.errors else 0


def add_parser(sub: Any) -> None:
    """Register `cnikit reclaim` (and its older name `cnikit gc`) on the CLI's subparsers."""
    p = sub.add_parser("reclaim", aliases=["gc"], help="collect leases, rules and cache entries of containers that are gone")
    p.add_argument("--cache-dir", default="", help="libcni cache dir (default /var/lib/cni)")
    p.add_argument("--data-dir", action="append", help="host-local dataDir to scan for orphans (repeatable; "
                   "default /var/lib/cni/networks)")
    p.add_argument("--cni-path", default=None, help="plugin dirs (default: $CNI_PATH)")
    p.add_argument("--conf-dir", default=None, help="network configs for orphans (default: $NETCONFPATH or "
                   "/etc/cni/net.d)")
    p.add_argument("--orphans", action="store_true", help="also free leases no cache entry accounts for, "
                   "DELing them through their network's config when it exists")
    p.add_argument("--gc-verb", action="store_true", help="also send the spec GC verb (cniVersion >= 1.1.0) "
                   "with this cache's live attachments as the valid list: only when every runtime on the "
                   "node uses this cache dir and none is mid-ADD (the verb has no grace period)")
    p.add_argument("--grace", type=float, default=60.0, help="never touch files younger than this (s)")
    p.add_argument("--dry-run", action="store_true", help="report only")
    p.set_defaults(func=main)
