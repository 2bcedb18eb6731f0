"""Packet filtering behind one small interface: nftables (default) and Go-compatible iptables.

Callers (bridge/ptp ipMasq, portmap, firewall) name a backend ("nftables" | "iptables"); the
functions here pick the module and keep the naming shared by both (chain names, comments) in
one place. Every change is one atomic batch (`nft -f -` or `iptables-restore --noflush -w`).
"""
from __future__ import annotations

import hashlib
import importlib
import ipaddress
import re
from typing import Any, Iterable, List, Optional

from ..protocol import spec
from ..protocol.spec import CNIError

NFTABLES = "nftables"
IPTABLES = "iptables"
BACKENDS = (NFTABLES, IPTABLES)
DEFAULT_BACKEND = NFTABLES
MAX_CHAIN = 28  # Go utils.MustFormatChainNameWithPrefix: iptables chain names are cut to 28 chars


def backend_module(backend: Optional[str]) -> Any:
    """The module implementing `backend` (None/"" = the default)."""
    name = backend or DEFAULT_BACKEND
    if name not in BACKENDS:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"unknown netfilter backend {name!r}",
                       f"use one of {', '.join(BACKENDS)}")
    return importlib.import_module("." + ("nft" if name == NFTABLES else "iptables"), __package__)


def chain_name(network: str, container_id: str, prefix: str = "") -> str:
    """Go `utils.FormatChainName`: "CNI-" + prefix + hex(sha512(name+id)), 28 chars."""
    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return f"CNI-{prefix}{digest}"[:MAX_CHAIN]


def go_comment(network: str, container_id: str) -> str:
    """Go `utils.FormatComment`."""
    return f'name: "{network}" id: "{container_id}"'


def owner_comment(network: str, container_id: str) -> str:
    """The comment our nftables chains carry, so GC can tell whose they are (no quotes: nft has
    no escape for them; names and IDs are validated to [A-Za-z0-9_.-])."""
    return f"net {network} id {container_id}"


def parse_owner(comment: str) -> Optional[tuple]:
    """(network, container ID) from an owner_comment or a Go comment, None for anything else."""
    found = re.fullmatch(r'(?:dnat )?name: "([^"]+)" id: "([^"]+)"|net (\S+) id (\S+)', comment)
    if not found:
        return None
    groups = [g for g in found.groups() if g is not None]
    return groups[0], groups[1]


def interface_networks(addresses: List[str]) -> List[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    """Parse "ip/prefix" strings (a result's ips[].address), rejecting anything else as config error."""
    out = []
    for addr in addresses:
        try:
            out.append(ipaddress.ip_interface(addr))
        except ValueError:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid IP address {addr!r}") from None
    return out


# --- ipMasq (bridge, ptp) ----------------------------------------------------------------

def setup_ipmasq(network: str, container_id: str, addresses: List[str], backend: Optional[str] = None) -> None:
    """Masquerade traffic from `addresses` leaving their own subnet (not multicast)."""
    backend_module(backend).setup_masq(network, container_id, interface_networks(addresses))


def teardown_ipmasq(network: str, container_id: str, addresses: Optional[List[str]],
                    backend: Optional[str] = None) -> None:
    """Remove the masquerade of (network, container_id). With addresses None, whatever belongs to
    the pair is found and removed, so a DEL whose netns is already gone leaks nothing. Idempotent."""
    ifaces = interface_networks(addresses) if addresses is not None else None
    backend_module(backend).teardown_masq(network, container_id, ifaces)


def gc_ipmasq(network: str, valid_container_ids: Iterable[str], backend: Optional[str] = None) -> List[str]:
    """Spec 1.1 GC: remove the masquerade of every container of `network` not in the valid set;
    returns the container IDs cleaned up."""
    mod = backend_module(backend)
    valid = set(valid_container_ids)
    stale = sorted({cid for net, cid in mod.masq_owners() if net == network and cid not in valid})
    for cid in stale:
        mod.teardown_masq(network, cid, None)
    return stale


def check_ipmasq(network: str, container_id: str, addresses: List[str], backend: Optional[str] = None) -> None:
    """Raise CNIError unless the masquerade for every address is in place."""
    backend_module(backend).check_masq(network, container_id, interface_networks(addresses))
