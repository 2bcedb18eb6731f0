"""Per-pod ingress allow-lists (policy-lite, felix's other half) for cnikit-routed, in nftables.

One table, `inet cnikit_ingress`: a forward-hook chain does one verdict-map lookup on the output
interface (`pods`: host veth name -> jump <pod chain>), and each pod with a list owns a chain
`pod-<host veth>`: established/related replies accept, one accept rule per allowed source
(CIDR, optionally protocol and destination port), then drop. A pod without a list has no map
element: everything reaches it (Kubernetes' default without a NetworkPolicy). Only forwarded
traffic is filtered — from other pods and other nodes; the node itself (kubelet probes) is not.
Every change is one nft transaction.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, Iterable, List, Set

from ..protocol import spec
from ..protocol.spec import CNIError
from . import nft

TABLE = "inet cnikit_ingress"
MAP = "pods"
PROTOCOLS = ("tcp", "udp", "sctp", "icmp")
Rule = Dict[str, Any]


def parse(raw: Any) -> List[Rule]:
    """Validate an allow-list: [{"cidr": "10.244.0.0/16", "protocol": "tcp", "port": 80}, ...]
    (protocol and port optional; a port needs tcp, udp or sctp). Code 7 on anything else."""
    if not isinstance(raw, list):
        raise CNIError(spec.ERR_INVALID_CONFIG, "ingressAllow must be a list of {cidr, protocol, port}")
    out = []
    for i, entry in enumerate(raw):
        where = f"ingressAllow[{i}]"
        if not isinstance(entry, dict) or set(entry) - {"cidr", "protocol", "port"}:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"{where} must be an object with cidr, protocol, port")
        try:
            net = ipaddress.ip_network(str(entry.get("cidr")), strict=False)
        except ValueError:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"{where}.cidr {entry.get('cidr')!r} is not a CIDR") from None
        proto = entry.get("protocol")
        if proto is not None and proto not in PROTOCOLS:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"{where}.protocol must be one of {', '.join(PROTOCOLS)}")
        port = entry.get("port")
        if port is not None:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise CNIError(spec.ERR_INVALID_CONFIG, f"{where}.port must be an integer 1-65535")
            if proto not in ("tcp", "udp", "sctp"):
                raise CNIError(spec.ERR_INVALID_CONFIG, f"{where}.port needs protocol tcp, udp or sctp")
        out.append({"cidr": net, "protocol": proto, "port": port})
    return out


def chain(host_veth: str) -> str:
    return f"pod-{host_veth}"


def _rule_text(rule: Rule) -> str:
    net = rule["cidr"]
    text = f"{'ip' if net.version == 4 else 'ip6'} saddr {net}"
    proto = rule["protocol"]
    if proto == "icmp":
        text += " meta l4proto " + ("icmp" if net.version == 4 else "ipv6-icmp")
    elif proto and rule["port"] is not None:
        text += f" {proto} dport {rule['port']}"
    elif proto:
        text += f" meta l4proto {proto}"
    return text + " accept"


def _base() -> List[str]:
    # the hook rule is re-made in the same transaction (flush + add), so the chain holds it once
    return [f"add table {TABLE}",
            f"add map {TABLE} {MAP} {{ type ifname : verdict; }}",
            f"add chain {TABLE} forward {{ type filter hook forward priority filter; policy accept; }}",
            f"flush chain {TABLE} forward",
            f"add rule {TABLE} forward oifname vmap @{MAP}"]


def setup(host_veth: str, allow: List[Rule]) -> None:
    """The pod's chain and its map element, in one transaction with the table if it is new."""
    name = chain(host_veth)
    lines = _base() + [f"add chain {TABLE} {name}", f"flush chain {TABLE} {name}",
                       f"add rule {TABLE} {name} ct state established,related accept"]
    lines += [f"add rule {TABLE} {name} {_rule_text(r)}" for r in allow]
    lines += [f"add rule {TABLE} {name} drop",
              f"add element {TABLE} {MAP} {{ {nft.quote(host_veth)} : jump {name} }}"]
    nft.run(lines)


def teardown(host_veth: str) -> None:
    """Remove the pod's element and chain, whether or not they exist (DEL, a failed ADD)."""
    name = chain(host_veth)
    nft.try_destroy(TABLE, [name], [(MAP, nft.quote(host_veth), f"jump {name}")])


def check(host_veth: str, allow: List[Rule]) -> None:
    """The pod's element jumps to its chain and the chain holds exactly its rules."""
    name = chain(host_veth)
    if nft.element_target(TABLE, MAP, nft.quote(host_veth)) != name:
        raise CNIError(spec.ERR_INTERNAL, f"cnikit-routed: ingress map element for {host_veth} not found")
    rc, listing, _ = nft.command(f"list chain {TABLE} {name}")
    have = [line.strip() for line in listing.splitlines()[2:-2]] if rc == 0 else None  # the rules' lines
    want = ["ct state established,related accept"] + [_rule_text(r) for r in allow] + ["drop"]
    if have is None or [_canon(h) for h in have] != [_canon(w) for w in want]:
        raise CNIError(spec.ERR_INTERNAL, f"cnikit-routed: ingress chain {name} does not hold the pod's allow-list",
                       f"want {want}, have {have}")


def _canon(text: str) -> str:
    """nft prints some matches in its own words (`meta l4proto tcp` as `meta l4proto tcp`, a
    /32 as the bare address): compare on a normal form."""
    words = []
    for word in text.split():
        if "/" in word:
            try:
                net = ipaddress.ip_network(word, strict=False)
                word = str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
            except ValueError:
                pass
        words.append(word)
    return " ".join(words)


def pod_chains() -> Set[str]:
    """The host veths that have a chain in the table (empty when there is no table)."""
    objs = nft.list_json("table", *TABLE.split()) or []
    return {o["chain"]["name"][len("pod-"):] for o in objs
            if "chain" in o and o["chain"]["name"].startswith("pod-")}


def gc(keep: Iterable[str]) -> None:
    """Remove the chains (and elements) of every host veth not in `keep`."""
    for veth in sorted(pod_chains() - set(keep)):
        teardown(veth)
