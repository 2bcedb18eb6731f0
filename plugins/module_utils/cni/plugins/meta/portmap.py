"""portmap: forward host ports to the container (Go plugins/meta/portmap, v1.1.1 semantics).

Two backends, chosen by `"backend"` in the config:

* `nftables` (default): one table `inet cnikit_hostport` whose chains do not grow with the
  containers. Host ports are keys of data maps that DNAT directly (`ports4/6`: proto . port,
  `hostip4/6`: hostIP . proto . port; value container IP . port). Hairpin/localhost masquerade:
  `masq4/6` maps the container endpoint to the chain of its prefix length, which checks the
  source against `podnets4/6` (subnet address . container IP); `masqall4/6` for masqAll. Every
  element a container owns carries its owner comment, and a marker element (`owners`: hash ->
  fingerprint of the elements) sends a repeated ADD, or a DEL naming other mappings, to the slow
  path. nft fills its cache with every chain before any change, so a chain per container made
  each ADD slower with the number of containers; a hash-map element costs the same at 0 or 2000.
  The whole ADD is one transaction, and existing mappings are never listed on the common path.
* `iptables`: the Go chains exactly (CNI-HOSTPORT-DNAT/-SETMARK/-MASQ, CNI-DN-<hash>,
  multiport groups of 15, markMasqBit), written with one iptables-restore batch per family.

Unlike Go, DEL cleans up by container ID even when runtimeConfig.portMappings is absent.
"""
from __future__ import annotations

import ipaddress
import re
import sys
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ... import faults, netfilter
from ...net import addr, sysctl
from ...protocol import skel, spec
from ...netfilter import iptables as ipt
from ...netfilter import nft
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result, conf_field, prev_result
from .. import NetPlugin

PROTOCOLS = ("tcp", "udp", "sctp")
DEFAULT_MARK_BIT = 13
NFT_TABLE = "cnikit_hostport"
NFT_OWNERS = "owners"
TOP_DNAT = "CNI-HOSTPORT-DNAT"
SETMARK = "CNI-HOSTPORT-SETMARK"
MARK_MASQ = "CNI-HOSTPORT-MASQ"
OLD_TOP_SNAT = "CNI-HOSTPORT-SNAT"
MULTIPORT_MAX = 15


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
                addr = ipaddress.ip_address(host_ip)
            except (ValueError, TypeError):
                raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid host IP: {host_ip!r}") from None
            if getattr(addr, "scope_id", None) is not None:  # any bytes after `%` would reach nft/iptables
                raise CNIError(spec.ERR_INVALID_CONFIG, f"Invalid host IP: {host_ip!r}",
                               "an IPv6 zone (scope id) is not allowed in hostIP")
            host_ip = str(addr)
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
    ifname = addr.route_oif_name(str(cont.ip))
    if ifname:
        try:
            sysctl.sysctl_set(f"net/ipv4/conf/{ifname}/route_localnet", "1")
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
        from ...net import conntrack  # noqa: PLC0415 - only with UDP mappings

        conntrack.delete_udp_by_dport(ports, versions)
    except Exception as exc:  # noqa: BLE001 - as in Go, a failure here does not fail the ADD
        sys.stderr.write(f"portmap: failed to delete stale UDP conntrack entries: {exc}\n")


# --- nftables backend ------------------------------------------------------------------------

class _Plan(NamedTuple):
    """What one container's ADD writes: its own elements as (map, key, data) — data None for a
    set — each carrying the owner comment, and the shared chains it needs: one per distinct
    condition text, one per family and prefix length for hairpin."""
    owned: List[Tuple[str, str, Optional[str]]]
    gates: Dict[str, str]  # chain name -> conditions
    hairpins: Dict[str, Any]  # chain name -> the container interface whose prefix length it serves


def _nft_base() -> List[str]:
    t = f"inet {NFT_TABLE}"
    lines = [f"add table {t}", f"add map {t} {NFT_OWNERS} {{ type ifname : mark; }}"]
    for v, addr in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        target = f"{addr} . inet_service"
        lines += [f"add map {t} ports{v} {{ type inet_proto . inet_service : {target}; }}",
                  f"add map {t} hostip{v} {{ type {addr} . inet_proto . inet_service : {target}; }}",
                  f"add map {t} gate{v} {{ type inet_proto . inet_service : verdict; }}",
                  f"add map {t} gatehostip{v} {{ type {addr} . inet_proto . inet_service : verdict; }}",
                  f"add map {t} masq{v} {{ type {addr} . inet_proto . inet_service : verdict; }}",
                  f"add set {t} masqall{v} {{ type {addr} . inet_proto . inet_service; }}",
                  # subnet address . container IP; a hash set (an interval set's elements are
                  # loaded by nft on every change, growing with the containers)
                  f"add set {t} podnets{v} {{ type {addr} . {addr}; }}"]
    lines += [f"add chain {t} hostports",
              f"add chain {t} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
              f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
              f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}"]
    # flush + re-add in the same transaction keeps these few rules unique without a listing
    fixed = {"prerouting": ["fib daddr type local jump hostports"],
             "output": ["fib daddr type local jump hostports"],
             # a port with conditionsV4/V6 first passes its gate chain (returns on a match)
             "hostports": ["ip daddr . meta l4proto . th dport vmap @gatehostip4",
                           "ip6 daddr . meta l4proto . th dport vmap @gatehostip6",
                           "meta nfproto ipv4 meta l4proto . th dport vmap @gate4",
                           "meta nfproto ipv6 meta l4proto . th dport vmap @gate6",
                           # host-IP mappings first: the first DNAT wins
                           "dnat ip to ip daddr . meta l4proto . th dport map @hostip4",
                           "dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip6",
                           "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @ports4",
                           "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @ports6"],
             # hairpin and localhost go on to the chain of the container's prefix length; masqAll
             "postrouting": ["ct status dnat ip daddr . meta l4proto . th dport vmap @masq4",
                             "ct status dnat ip6 daddr . meta l4proto . th dport vmap @masq6",
                             "ct status dnat ip daddr . meta l4proto . th dport @masqall4 masquerade",
                             "ct status dnat ip6 daddr . meta l4proto . th dport @masqall6 masquerade"]}
    for chain, rules in fixed.items():
        lines.append(f"flush chain {t} {chain}")
        lines += [f"add rule {t} {chain} {r}" for r in rules]
    return lines


def _marker(network: str, cid: str) -> str:
    """The owners-map key of (network, container): 15 hex characters of the Go chain-name hash
    (nft's only string key type, ifname, holds 15)."""
    return '"' + netfilter.chain_name(network, cid)[len("CNI-"):][:15] + '"'


def _nft_plan(s: Settings, network: str, cid: str) -> _Plan:
    owned: List[Tuple[str, str, Optional[str]]] = []
    gates: Dict[str, str] = {}
    hairpins: Dict[str, Any] = {}

    def own(elem: Tuple[str, str, Optional[str]]) -> None:
        if all(o[:2] != elem[:2] for o in owned):  # a repeated key: the first mapping wins
            owned.append(elem)

    for v, cont in sorted(s.containers.items()):
        for m, specific in sorted(_for_family(s.mappings, v), key=lambda e: not e[1]):
            name, key = (f"hostip{v}", f"{m.host_ip} . {m.protocol} . {m.host_port}") if specific \
                else (f"ports{v}", f"{m.protocol} . {m.host_port}")
            own((name, key, f"{cont.ip} . {m.container_port}"))
            if s.conditions[v]:
                conds = " ".join(s.conditions[v])
                gate = netfilter.chain_name(conds, str(v), "CD-")
                gates[gate] = conds
                own((name.replace("ports", "gate").replace("hostip", "gatehostip"), key, f"jump {gate}"))
            endpoint = f"{cont.ip} . {m.protocol} . {m.container_port}"
            if s.snat and s.masq_all:
                own((f"masqall{v}", endpoint, None))
            elif s.snat:
                hairpin = f"hairpin{v}-{cont.network.prefixlen}"
                hairpins[hairpin] = cont
                own((f"masq{v}", endpoint, f"jump {hairpin}"))
                own((f"podnets{v}", f"{cont.network.network_address} . {cont.ip}", None))
    if owned:  # the marker's value fingerprints the rest: a DEL naming other mappings is not blind
        fingerprint = zlib.crc32(repr(sorted(owned, key=repr)).encode())
        owned.append((NFT_OWNERS, _marker(network, cid), f"0x{fingerprint:08x}"))  # as nft prints it
    return _Plan(owned, gates, hairpins)


def _nft_add_lines(p: _Plan, owner: str) -> List[str]:
    t, comment = f"inet {NFT_TABLE}", nft.quote(owner)
    lines = []
    for gate, conds in p.gates.items():
        lines += [f"add chain {t} {gate}", f"flush chain {t} {gate}",
                  f"add rule {t} {gate} {conds} return", f"add rule {t} {gate} accept"]
    for hairpin, cont in p.hairpins.items():
        f = nft.fam(cont)
        # masquerade a source in the container's own subnet (hairpin) and, IPv4, localhost
        lines += [f"add chain {t} {hairpin}", f"flush chain {t} {hairpin}",
                  f"add rule {t} {hairpin} {f} saddr & {cont.network.netmask} . {f} daddr "
                  f"@podnets{cont.version} masquerade"]
        if cont.version == 4:
            lines.append(f"add rule {t} {hairpin} ip saddr 127.0.0.1 masquerade")
    # `create`: a key another container holds fails the whole batch
    lines += [f"create element {t} {m} {{ {k} comment {comment}{f' : {d}' if d else ''} }}" for m, k, d in p.owned]
    return lines


def _text(obj: Any) -> str:
    """An element key or value of `nft -j list` in the text form the plan writes."""
    if isinstance(obj, dict):
        if "elem" in obj:
            return _text(obj["elem"]["val"])
        if "concat" in obj:
            return " . ".join(_text(part) for part in obj["concat"])
        if "prefix" in obj:
            return f"{obj['prefix']['addr']}/{obj['prefix']['len']}"
        if "jump" in obj:
            return f"jump {obj['jump']['target']}"
    return str(obj)


Listed = Tuple[str, str, Optional[str], str]  # an element of the table: (map or set, key, data, comment)


def _nft_listing() -> Optional[List[Listed]]:
    """Every element of the table as (map or set, key, data, comment); None without the table."""
    objs = nft.list_json("table", "inet", NFT_TABLE)
    if objs is None:
        return None
    out = []
    for obj in objs:
        body = obj.get("map") or obj.get("set")
        for elem in (body or {}).get("elem", []):
            key, data = (elem[0], elem[1]) if "map" in obj else (elem, None)
            comment = key.get("elem", {}).get("comment", "") if isinstance(key, dict) else ""
            text = f'"{_text(key)}"' if body["name"] == NFT_OWNERS else _text(key)
            out.append((body["name"], text, None if data is None else _text(data), comment))
    return out


def _nft_removal(listing: List[Listed], network: str, cid: str) -> List[str]:
    owner = netfilter.owner_comment(network, cid)
    return [f"delete element inet {NFT_TABLE} {m} {{ {k} }}" for m, k, _, c in listing if c == owner]


def nft_add(s: Settings, network: str, cid: str) -> None:
    plan = _nft_plan(s, network, cid)
    if not plan.owned:
        return
    owner = netfilter.owner_comment(network, cid)
    # the marker is created too, so a repeated ADD fails here: only then is the table read, and
    # the container's old elements are replaced within one transaction
    err = nft.try_run(_nft_base() + _nft_add_lines(plan, owner))
    if err is not None and nft.list_json("map", "inet", NFT_TABLE, "post4") is not None:
        # the same names with other types: nft only says "File exists"
        raise CNIError(spec.ERR_INTERNAL, f"table inet {NFT_TABLE} has the layout of an older cnikit "
                       "(a chain per container)", "DEL its containers with that version, or delete the table")
    if err is not None:
        err = nft.try_run(_nft_base() + _nft_removal(_nft_listing() or [], network, cid) +
                          _nft_add_lines(plan, owner))
    if err is not None:
        busy = " (a host port is already mapped to another container)" if "File exists" in err else ""
        raise CNIError(spec.ERR_INTERNAL, f"unable to set up port mappings{busy}", err)


def nft_del(network: str, cid: str, s: Optional[Settings] = None) -> None:
    table = f"inet {NFT_TABLE}"
    # the DEL's own mappings name the elements: one blind batch, unless they are not the whole
    # story (the marker's fingerprint differs) or a key is another container's
    planned = _nft_plan(s, network, cid).owned if s is not None else []
    if planned and nft.try_destroy(table, [], planned):
        return
    if not planned and not nft.has_element(table, NFT_OWNERS, _marker(network, cid)):
        return  # no mappings named and none recorded: the common DEL of a pod without ports
    _nft_apply_listed(lambda listing: _nft_removal(listing, network, cid), "unable to remove port mappings")


def nft_check(s: Settings, network: str, cid: str) -> None:
    """Each element of the plan is there, with this container's comment and data: one `get
    element` per map (no listing of the table)."""
    owned = _nft_plan(s, network, cid).owned
    comment = f"comment {nft.quote(netfilter.owner_comment(network, cid))}"
    for name in dict.fromkeys(m for m, _, _ in owned):
        elems = [(k, d) for m, k, d in owned if m == name]
        rc, out, err = nft.command(f"get element inet {NFT_TABLE} {name} {{ {', '.join(k for k, _ in elems)} }}")
        listed = " ".join(out.split()).replace("{ ", ", ").replace(" }", ",")  # ", <elem>," each
        for k, d in elems:
            if rc != 0 or f", {k} {comment}{f' : {d}' if d else ''}," not in listed:
                raise CNIError(spec.ERR_INTERNAL, f"port mapping {name} {{ {k} }} of this container not found",
                               err.strip())


def nft_gc(network: str, valid: set) -> None:
    """Remove the elements of every container of `network` not in `valid`: one listing, one batch."""
    def stale(listing: List[Listed]) -> List[str]:
        owners = {c: netfilter.parse_owner(c) for *_, c in listing}
        return [f"delete element inet {NFT_TABLE} {m} {{ {k} }}" for m, k, _, c in listing
                if owners[c] and owners[c][0] == network and owners[c][1] not in valid]

    _nft_apply_listed(stale, "unable to remove stale port mappings")


def _nft_apply_listed(build: Callable[[List[Listed]], List[str]], failure: str) -> None:
    """Read the table's elements, apply the batch `build` makes of them (nothing: done); a
    concurrent DEL may change the table first and fail the batch as a whole: re-read and retry."""
    err = None
    for _ in range(3):
        lines = build(_nft_listing() or [])
        if not lines:
            return
        err = nft.try_run(lines)
        if err is None:
            return
    raise CNIError(spec.ERR_INTERNAL, failure, err or "")


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

class Portmap(NetPlugin):
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
            nft_gc(conf["name"], valid)
            return
        owners = {o for v in (4, 6) for o in ipt.comment_owners(ipt.save(v, "nat"), TOP_DNAT)}
        for network, cid in sorted(owners):
            if network == conf["name"] and cid not in valid:
                ipt_del(network, cid)

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
