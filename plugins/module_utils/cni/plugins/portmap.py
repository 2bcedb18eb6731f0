"""portmap: forward host ports to the container (Go plugins/meta/portmap, v1.1.1 semantics).

Two backends, chosen by `"backend"` in the config:

* `nftables` (default): one table `inet cnikit_hostport`. Host ports are keys of verdict maps
  (`ports4/6`: proto . port, `hostip4/6`: hostIP . proto . port) that jump to the container's own
  chain `CNI-DN-<hash>` holding its DNAT rules; hairpin/localhost masquerade is a postrouting map
  (`post4/6`: container IP) to `CNI-SN-<hash>`, matched on conntrack (original destination
  port), so no packet mark is needed. Adding a container adds map elements — existing mappings
  are never rescanned — and the whole ADD is one `nft -f -` transaction. Each DNAT rule's
  comment names the map elements it owns, so DEL needs neither the port mappings nor a scan.
* `iptables`: the Go chains exactly (CNI-HOSTPORT-DNAT/-SETMARK/-MASQ, CNI-DN-<hash>,
  multiport groups of 15, markMasqBit), written with one iptables-restore batch per family.

Unlike Go, DEL cleans up by container ID even when runtimeConfig.portMappings is absent.
"""
from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from .. import faults, link, netfilter, skel, spec
from ..netfilter import iptables as ipt
from ..netfilter import nft
from ..spec import CNIError
from . import Conf, Plugin, Result, conf_field, prev_result

PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_MARK_BIT = 13
NFT_TABLE = "cnikit_hostport"
TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MARK_MASQ = "CNI-HOSTPORT-MASQ"
OLD_TOP_SNAT = "CNI-HOSTPORT-SNAT"
MULTIPORT_MAX = 15
# what a DNAT rule's comment may name: "<map> <key>" entries joined by ";"
_NFT_KEY = re.compile(r"^(ports[46] [a-z]+ \. \d+|hostip[46] [0-9a-f.:]+ \. [a-z]+ \. \d+|post[46] [0-9a-f.:]+)$")


class PortMapping(NamedTuple):
    host_port: int
    container_port: int
    protocol: str
    host_ip: str


class Settings(NamedTuple):
    backend: str
    snat: bool
    masq_all: bool
    mark_bit: int
    setmark_chain: str
    external_setmark: bool
    conditions: Dict[int, List[str]]
    mappings: List[PortMapping]
    containers: Dict[int, Any]  # IP version -> ipaddress interface (container IP/prefix)


def _mappings(conf: Conf) -> List[PortMapping]:
    runtime = conf_field(conf, "runtimeConfig", dict, {}, "PortMapConf")
    raw = runtime.get("portMappings") or []
    if not isinstance(raw, list):
        raise CNIError(spec.ERR_INVALID_CONFIG, "runtimeConfig.portMappings must be a list")
    out = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise CNIError(spec.ERR_INVALID_CONFIG, "invalid port mapping", repr(entry))
        cport, hport = entry.get("containerPort", 0), entry.get("hostPort", 0)
        proto, host_ip = entry.get("protocol", ""), entry.get("hostIP", "") or ""
        if not isinstance(cport, int) or isinstance(cport, bool) or not 0 < cport <= 65535:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid container port number: {cport}")
        if not isinstance(hport, int) or isinstance(hport, bool) or not 0 < hport <= 65535:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid host port number: {hport}")
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid protocol: {proto!r}", "use tcp, udp or sctp")
        if host_ip:
            try:
                host_ip = str(ipaddress.ip_address(host_ip))
            except ValueError:
                raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid host IP: {host_ip!r}") from None
        out.append(PortMapping(hport, cport, proto.lower(), host_ip))
    return out


def _container_ips(prev: Optional[Result], ifname: str) -> Dict[int, Any]:
    """Go parseConfig: the first IPv4 and first IPv6 of the prevResult that belong to a sandbox
    interface named CNI_IFNAME (or to no interface at all)."""
    found: Dict[int, Any] = {}
    if prev is None:
        return found
    ifaces = prev.get("interfaces") or []
    for ip in prev.get("ips") or []:
        addr = netfilter.interface_networks([ip["address"]])[0]
        if addr.version in found:
            continue
        idx = ip.get("interface")
        if idx is not None and 0 <= idx < len(ifaces) and (
                ifaces[idx].get("name") != ifname or not ifaces[idx].get("sandbox")):
            continue
        found[addr.version] = addr
    return found


def _conditions(conf: Conf, key: str, backend: str) -> List[str]:
    val = conf_field(conf, key, list, [], "PortMapConf")
    if not all(isinstance(c, str) for c in val):
        raise CNIError(spec.ERR_INVALID_CONFIG, f"{key} must be a list of strings")
    if backend == netfilter.NFTABLES and any(re.search(r'[;\n#{}"]', c) for c in val):
        raise CNIError(spec.ERR_INVALID_CONFIG, f"{key}: nftables conditions must be plain match expressions")
    return val


def settings(conf: Conf, ifname: str) -> Settings:
    backend = conf_field(conf, "backend", str, "", "PortMapConf") or netfilter.DEFAULT_BACKEND
    netfilter.backend_module(backend)  # validates the name
    mark_bit = conf_field(conf, "markMasqBit", int, None, "PortMapConf")
    external = conf_field(conf, "externalSetMarkChain", str, None, "PortMapConf")
    if mark_bit is not None and external is not None:
        raise CNIError(spec.ERR_INVALID_CONFIG, "Cannot specify externalSetMarkChain and markMasqBit")
    mark_bit = DEFAULT_MARK_BIT if mark_bit is None else mark_bit
    if not 0 <= mark_bit <= 31:
        raise CNIError(spec.ERR_INVALID_CONFIG, "MasqMarkBit must be between 0 and 31")
    snat = conf_field(conf, "snat", bool, True, "PortMapConf")
    return Settings(backend=backend, snat=snat, masq_all=conf_field(conf, "masqAll", bool, False, "PortMapConf"),
                    mark_bit=mark_bit, setmark_chain=external or SETMARK, external_setmark=external is not None,
                    conditions={4: _conditions(conf, "conditionsV4", backend),
                                6: _conditions(conf, "conditionsV6", backend)},
                    mappings=_mappings(conf), containers=_container_ips(conf.get("prevResult"), ifname))


def _for_family(mappings: List[PortMapping], version: int) -> List[Tuple[PortMapping, bool]]:
    """(mapping, has a specific host IP) for the mappings that apply to one family; a hostIP of the
    other family is skipped, an unspecified one (0.0.0.0, ::) means any address."""
    out = []
    for m in mappings:
        if m.host_ip:
            hip = ipaddress.ip_address(m.host_ip)
            if hip.version != version:
                continue
            out.append((m, not hip.is_unspecified))
        else:
            out.append((m, False))
    return out


def _target(ip: Any, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _enable_route_localnet(cont: Any) -> None:
    """Hairpin/localhost to a host port needs route_localnet on the interface toward the container."""
    ifname = link.route_oif_name(str(cont.ip))
    if ifname:
        try:
            link.sysctl_set(f"net/ipv4/conf/{ifname}/route_localnet", "1")
        except OSError as exc:
            raise CNIError(spec.ERR_INTERNAL, f"unable to enable route_localnet: {exc.strerror}") from None


def _flush_udp_conntrack(mappings: List[PortMapping], versions: List[int]) -> None:
    """Go deletePortmapStaleConnections: conntrack entries for a UDP host port made before the
    mapping existed would keep steering datagrams past the DNAT. Best effort (Go only logs);
    pyroute2's conntrack socket is imported only when there are UDP mappings."""
    ports = sorted({m.host_port for m in mappings if m.protocol == "udp"})
    if not ports:
        return
    try:
        from pyroute2.conntrack import Conntrack, NFCTAttrTuple  # noqa: PLC0415 - lazy on purpose

        with contextlib.closing(Conntrack()) as ct:
            for v in versions:
                family = socket.AF_INET if v == 4 else socket.AF_INET6
                for port in ports:
                    tup = NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP, dport=port)
                    for entry in list(ct.dump_entries(tuple_orig=tup)):
                        ct.delete(entry)
    except Exception as exc:  # noqa: BLE001 - as in Go, a failure here does not fail the ADD
        sys.stderr.write(f"portmap: failed to delete stale UDP conntrack entries: {exc}\n")


# --- nftables backend ------------------------------------------------------------------------

def _nft_base() -> List[str]:
    t = f"inet {NFT_TABLE}"
    lines = [f"add table {t}"]
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        lines += [f"add map {t} ports{v} {{ type inet_proto . inet_service : verdict; }}",
                  f"add map {t} hostip{v} {{ type {addr} . inet_proto . inet_service : verdict; }}",
                  f"add map {t} post{v} {{ type {addr} : verdict; }}"]
    lines += [f"add chain {t} hostports",
              f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
              f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
              f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"]
    # flush + re-add in the same transaction keeps these few rules unique without a listing
    fixed = {"prerouting": ["fib daddr type local jump hostports"],
             "output": ["fib daddr type local jump hostports"],
             "hostports": ["ip daddr . meta l4proto . th dport vmap @hostip4",
                           "ip6 daddr . meta l4proto . th dport vmap @hostip6",
                           "meta nfproto ipv4 meta l4proto . th dport vmap @ports4",
                           "meta nfproto ipv6 meta l4proto . th dport vmap @ports6"],
             "postrouting": ["ct status dnat ip daddr vmap @post4", "ct status dnat ip6 daddr vmap @post6"]}
    for chain, rules in fixed.items():
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {r}" for r in rules]
    return lines


def _nft_owned(dn_chain: str) -> Optional[List[Tuple[str, str]]]:
    """The (map, key) elements a container's DNAT chain owns, from its rule comments; None if
    the chain does not exist."""
    objs = nft.list_json("chain", "inet", NFT_TABLE, dn_chain)
    if objs is None:
        return None
    owned: List[Tuple[str, str]] = []
    for rule in nft.rules(objs):
        for entry in (rule.get("comment") or "").split(";"):
            if _NFT_KEY.match(entry) and tuple(entry.split(" ", 1)) not in owned:
                owned.append(tuple(entry.split(" ", 1)))  # type: ignore[arg-type]
    return owned


def _nft_removal(dn_chain: str, sn_chain: str, owned: List[Tuple[str, str]]) -> List[str]:
    t = f"inet {NFT_TABLE}"
    lines = [f"delete element {t} {m} {{ {k} }}" for m, k in owned]
    lines.append(f"delete chain {t} {dn_chain}")
    if any(m.startswith("post") for m, _ in owned):
        lines.append(f"delete chain {t} {sn_chain}")
    return lines


def _nft_plan(s: Settings, network: str, cid: str) -> Tuple[List[str], List[Tuple[str, str, str]]]:
    """The lines creating the container's chains, rules and map elements, and the elements
    as (map, key, chain it jumps to)."""
    t = f"inet {NFT_TABLE}"
    dn, sn = netfilter.chain_name(network, cid, "DN-"), netfilter.chain_name(network, cid, "SN-")
    comment = nft.quote(netfilter.owner_comment(network, cid))
    rules: List[str] = []
    snat_rules: List[str] = []
    elements: List[Tuple[str, str]] = []
    for v, cont in sorted(s.containers.items()):
        f, nfp = ("ip", "ipv4") if v == 4 else ("ip6", "ipv6")
        post = (f"post{v}", str(cont.ip))
        # host-IP rules first: the chain is entered by either map and the first DNAT wins
        for m, specific in sorted(_for_family(s.mappings, v), key=lambda e: not e[1]):
            key = (f"hostip{v}", f"{m.host_ip} . {m.protocol} . {m.host_port}") if specific \
                else (f"ports{v}", f"{m.protocol} . {m.host_port}")
            owns = [key] + ([post] if s.snat else [])
            match = f"meta nfproto {nfp} " + (f"{f} daddr {m.host_ip} " if specific else "") + \
                f"meta l4proto {m.protocol} th dport {m.host_port}"
            conds = "".join(c + " " for c in s.conditions[v])
            rules.append(f"add rule {t} {dn} {match} {conds}dnat {f} to {_target(cont.ip, m.container_port)} "
                         f"comment {nft.quote(';'.join(' '.join(o) for o in owns))}")
            elements += [o for o in owns if o not in elements]
            if not s.snat:
                continue
            orig = (f"ct original {f} daddr {m.host_ip} " if specific else "") + f"ct original proto-dst {m.host_port}"
            base = f"add rule {t} {sn} meta nfproto {nfp} meta l4proto {m.protocol} th dport {m.container_port} {orig}"
            if s.masq_all:
                snat_rules.append(f"{base} masquerade")
                continue
            snat_rules.append(f"{base} {f} saddr {cont.network} masquerade")  # hairpin from the pod subnet
            if v == 4:
                snat_rules.append(f"{base} ip saddr 127.0.0.1 masquerade")  # localhost (route_localnet)
    if not rules:
        return [], []
    lines = [f"add chain {t} {dn} {{ comment {comment}; }}"] + rules
    if snat_rules:
        lines += [f"add chain {t} {sn} {{ comment {comment}; }}"] + snat_rules
    targets = [(m, k, sn if m.startswith("post") else dn) for m, k in elements]
    lines += [f"add element {t} {m} {{ {k} : jump {c} }}" for m, k, c in targets]
    return lines, targets


def nft_add(s: Settings, network: str, cid: str) -> None:
    dn, sn = netfilter.chain_name(network, cid, "DN-"), netfilter.chain_name(network, cid, "SN-")
    plan, _ = _nft_plan(s, network, cid)
    if not plan:
        return
    # `create chain` fails the whole batch if the container already has mappings: only then is its
    # chain read, and the repeated ADD replaces the old mappings within one transaction
    err = nft.try_run(_nft_base() + [plan[0].replace("add chain", "create chain", 1)] + plan[1:])
    if err is not None:
        old = _nft_owned(dn)
        if old is not None:
            err = nft.try_run(_nft_base() + _nft_removal(dn, sn, old) + plan)
    if err is not None:
        busy = " (a host port is already mapped to another container)" if "File exists" in err else ""
        raise CNIError(spec.ERR_INTERNAL, f"unable to set up port mappings{busy}", err)


def nft_del(network: str, cid: str, s: Optional[Settings] = None) -> None:
    dn, sn = netfilter.chain_name(network, cid, "DN-"), netfilter.chain_name(network, cid, "SN-")
    # the DEL's own mappings name the elements: one blind batch, unless they are not the whole story
    planned = _nft_plan(s, network, cid)[1] if s is not None else []
    if planned and nft.try_destroy(f"inet {NFT_TABLE}", [dn, sn], planned):
        return
    err = None
    for _ in range(3):  # a concurrent DEL of the same container may win; re-read and retry
        owned = _nft_owned(dn)
        if owned is None:
            return
        err = nft.try_run(_nft_removal(dn, sn, owned))
        if err is None:
            return
    raise CNIError(spec.ERR_INTERNAL, "unable to remove port mappings", err or "")


def nft_check(s: Settings, network: str, cid: str) -> None:
    dn = netfilter.chain_name(network, cid, "DN-")
    _, wanted = _nft_plan(s, network, cid)
    owned = _nft_owned(dn)
    if wanted and owned is None:
        raise CNIError(spec.ERR_INTERNAL, f"chain {dn} not found in nftables table inet {NFT_TABLE}")
    for m, k, chain in wanted:
        if (m, k) not in (owned or []):
            raise CNIError(spec.ERR_INTERNAL, f"port mapping {m} {{ {k} }} missing from chain {dn}")
        if nft.element_target(f"inet {NFT_TABLE}", m, k) != chain:
            raise CNIError(spec.ERR_INTERNAL, f"map {m} has no element {{ {k} }}")


# --- iptables backend (Go-identical chains) --------------------------------------------------

def _mark(bit: int) -> str:
    value = 1 << bit
    return f"{value:#x}/{value:#x}"


def _ipt_dnat_rules(s: Settings, network: str, cid: str, v: int) -> Tuple[str, List[tuple], List[tuple]]:
    """Go fillDnatRules: the CNI-DN chain, its entry rules (in CNI-HOSTPORT-DNAT) and its rules."""
    cont = s.containers[v]
    dn = netfilter.chain_name(network, cid, "DN-")
    comment = f'dnat name: "{network}" id: "{cid}"'
    comment = comment if len(comment) <= 255 else comment[:253] + "..."
    entries: List[tuple] = []
    for proto in sorted({m.protocol for m in s.mappings}):
        ports = [str(m.host_port) for m in s.mappings if m.protocol == proto]
        for i in range(0, len(ports), MULTIPORT_MAX):
            entries.append(("-m", "comment", "--comment", comment, "-m", "multiport", "-p", proto,
                            "--destination-ports", ",".join(ports[i:i + MULTIPORT_MAX]),
                            *s.conditions[v], "-j", dn))
    rules: List[tuple] = []
    for m, specific in _for_family(s.mappings, v):
        base = ("-p", m.protocol, "--dport", str(m.host_port)) + (("-d", m.host_ip) if specific else ())
        if s.snat:
            src = ("0.0.0.0/0" if v == 4 else "::/0") if s.masq_all else str(cont)
            rules.append(base + ("-s", src, "-j", s.setmark_chain))
            if v == 4 and not s.masq_all:
                rules.append(base + ("-s", "127.0.0.1", "-j", s.setmark_chain))
        rules.append(base + ("-j", "DNAT", "--to-destination", _target(cont.ip, m.container_port)))
    return dn, entries, rules


def ipt_add(s: Settings, network: str, cid: str, v: int) -> None:
    dn, entries, rules = _ipt_dnat_rules(s, network, cid, v)

    def build(b: ipt.Batch) -> None:
        if s.snat and not s.external_setmark:
            b.ensure_chain(SETMARK)
            b.insert_unique(SETMARK, ("-m", "comment", "--comment", "CNI portfwd masquerade mark",
                                      "-j", "MARK", "--set-xmark", _mark(s.mark_bit)))
            b.ensure_chain(MARK_MASQ)
            b.insert_unique(MARK_MASQ, ("-m", "mark", "--mark", _mark(s.mark_bit), "-j", "MASQUERADE"))
            b.insert_unique("POSTROUTING", ("-m", "comment", "--comment", "CNI portfwd requiring masquerade",
                                            "-j", MARK_MASQ), prepend=True)
        b.ensure_chain(TOP_DNAT)
        for parent in ("PREROUTING", "OUTPUT"):
            b.insert_unique(parent, ("-m", "addrtype", "--dst-type", "LOCAL", "-j", TOP_DNAT))
        if b.has_chain(dn):  # repeated ADD: rebuild this container's chain and its entries
            b.remove_jumps(TOP_DNAT, dn)
            b.lines.append(f"-F {dn}")
        else:
            b.ensure_chain(dn)
        for r in rules:
            b.append(dn, r)
        for e in entries:
            b.append(TOP_DNAT, e)

    ipt.apply(v, "nat", build)


def ipt_del(network: str, cid: str) -> None:
    def build(b: ipt.Batch) -> None:
        b.remove_chain(TOP_DNAT, netfilter.chain_name(network, cid, "DN-"))
        b.remove_chain(OLD_TOP_SNAT, netfilter.chain_name(network, cid, "SN-"))

    for v in (4, 6):
        ipt.apply(v, "nat", build)


def ipt_check(s: Settings, network: str, cid: str, v: int) -> None:
    dn, entries, rules = _ipt_dnat_rules(s, network, cid, v)
    for chain, rule in [(dn, r) for r in rules] + [(TOP_DNAT, e) for e in entries]:
        if not ipt.exists(v, "nat", chain, rule):
            raise CNIError(spec.ERR_INTERNAL, f"rule {' '.join(rule)} in chain {chain} not found in table nat")


# --- the plugin ------------------------------------------------------------------------------

class Portmap(Plugin):
    name = "portmap"

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        s = settings(conf, ctx.ifname)
        prev = prev_result(conf)
        if not s.mappings:
            return prev
        if s.snat and 4 in s.containers:
            _enable_route_localnet(s.containers[4])
        if s.backend == netfilter.NFTABLES:
            nft_add(s, conf["name"], ctx.container_id)
            faults.point("portmap.after_rules")
            _flush_udp_conntrack(s.mappings, sorted(s.containers))
        else:
            done = []
            try:
                for v in sorted(s.containers):
                    ipt_add(s, conf["name"], ctx.container_id, v)
                    done.append(v)
                    _flush_udp_conntrack(s.mappings, [v])
                    faults.point("portmap.after_family")
            except CNIError:
                if done:  # undo the family already written
                    ipt_del(conf["name"], ctx.container_id)
                raise
        return prev

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        s = settings(conf, ctx.ifname)
        if conf.get("prevResult") is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "Required prevResult missing")
        if not s.mappings:
            return
        if s.backend == netfilter.NFTABLES:
            nft_check(s, conf["name"], ctx.container_id)
        else:
            for v in sorted(s.containers):
                ipt_check(s, conf["name"], ctx.container_id, v)

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        """Spec 1.1 GC: drop the mappings of this network's containers that are not valid attachments."""
        s = settings(conf, ctx.ifname)
        valid = {cid for cid, _ in spec.valid_attachments(conf)}
        if s.backend == netfilter.NFTABLES:
            owners = set(nft.chain_owners(f"inet {NFT_TABLE}").values())
        else:
            owners = {o for v in (4, 6) for o in ipt.comment_owners(ipt.save(v, "nat"), TOP_DNAT)}
        for network, cid in sorted(owners):
            if network == conf["name"] and cid not in valid:
                (nft_del if s.backend == netfilter.NFTABLES else ipt_del)(network, cid)

    def status(self, ctx: skel.Context, conf: Conf) -> None:
        """Spec 1.1 STATUS: ready when the backend's tool runs."""
        s = settings(conf, ctx.ifname)
        try:
            nft.list_json("tables") if s.backend == netfilter.NFTABLES else ipt.save(4, "nat")
        except CNIError as err:
            raise CNIError(spec.ERR_NOT_AVAILABLE, f"portmap backend {s.backend} is not usable", str(err)) from None

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        s = settings(conf, ctx.ifname)
        if s.backend == netfilter.NFTABLES:
            nft_del(conf["name"], ctx.container_id, s)
        else:
            ipt_del(conf["name"], ctx.container_id)
