"""static IPAM, like the Go plugin of containernetworking/plugins v1.1.1 (plugins/ipam/static).

Addresses come from `ipam.addresses`, plus CNI_ARGS `IP=` (a comma list, appended; `GATEWAY=`
assigns gateways to those CNI_ARGS addresses by subnet). `args.cni.ips` replaces the list and
`runtimeConfig.ips` replaces it again (so it wins). Every address must be CIDR.
"""
from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Optional

from ..protocol import skel, spec
from ..protocol.plugin import Plugin, prev_result
from ..protocol.spec import CNIError
from .host_local import ERR, json_ip, parse_cidr, parse_routes, type_error
from .store import IPAddr, parse_ip

Address = Dict[str, Any]  # {"ip": IPAddr (host bits kept), "prefix": int, "gateway": IPAddr|None}


def _cidr(text: Any, message: str) -> Address:
    try:
        ip, prefix = parse_cidr(text)
    except CNIError:
        raise CNIError(ERR, message.format(text)) from None
    return {"ip": ip, "prefix": prefix, "gateway": None}


def _replacement(raw: Any) -> List[Address]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise type_error(raw, "[]string")
    return [_cidr(item, "an entry in the 'ips' field is NOT in CIDR notation, got: '{}'") for item in raw]


def load_addresses(conf: Dict[str, Any], ctx: skel.Context) -> List[Address]:
    """Go static `LoadIPAMConfig`: the final address list, validated."""
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise CNIError(ERR, "IPAM config missing 'ipam' key")
    configured = ipam.get("addresses") or []
    if not isinstance(configured, list) or not all(isinstance(a, dict) for a in configured):
        raise type_error(configured, "[]main.Address")
    # Config addresses are parsed last (Go fills them in after CNI_ARGS), so GATEWAY= only
    # ever applies to the addresses that came from CNI_ARGS.
    pending = [(a.get("address", ""), json_ip(a, "gateway")) for a in configured]
    from_env: List[Address] = []
    env = skel.load_args(ctx.args, {"IP": str, "GATEWAY": str})
    for item in env.get("IP", "").split(",") if env.get("IP") else []:
        from_env.append(_cidr(item.strip(), "the 'ip' field is expected to be in CIDR notation, got: '{}'"))
    for item in env.get("GATEWAY", "").split(",") if env.get("GATEWAY") else []:
        gw = parse_ip(item.strip())
        if gw is None:
            raise CNIError(ERR, f"invalid gateway address: {item}")
        for addr in from_env:
            if gw.version == addr["ip"].version and gw in _network(addr):
                addr["gateway"] = gw

    args = conf.get("args") if isinstance(conf.get("args"), dict) else {}
    runtime = conf.get("runtimeConfig") if isinstance(conf.get("runtimeConfig"), dict) else {}
    addresses: Optional[List[Address]] = None
    for raw in ((args.get("cni") or {}).get("ips"), runtime.get("ips")):
        if raw:
            addresses = _replacement(raw)
    if addresses is None:
        addresses = []
        for text, gw in pending:
            addr = _cidr(text, "the 'address' field is expected to be in CIDR notation, got: '{}'")
            addr["gateway"] = gw
            addresses.append(addr)
        addresses += from_env
    v4 = sum(1 for a in addresses if a["ip"].version == 4)
    if (v4 > 1 or len(addresses) - v4 > 1) and not spec.version_ge(conf["cniVersion"], "0.3.0"):
        raise CNIError(ERR, f"CNI version {conf['cniVersion']} does not support more than 1 address per family")
    return addresses


def _network(addr: Address) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{addr['ip']}/{addr['prefix']}", strict=False)


def _dns(ipam: Dict[str, Any]) -> Dict[str, Any]:
    dns = ipam.get("dns") or {}
    if not isinstance(dns, dict):
        raise type_error(dns, "types.DNS")
    return dns


class Static(Plugin):
    name = "static"

    def add(self, ctx: skel.Context, conf: Dict[str, Any]) -> Dict[str, Any]:
        addresses = load_addresses(conf, ctx)
        ipam = conf["ipam"]
        ips = []
        for addr in addresses:
            entry = {"address": f"{addr['ip']}/{addr['prefix']}"}
            if addr["gateway"] is not None:
                entry["gateway"] = str(addr["gateway"])
            ips.append(entry)
        return spec.new_result(ips=ips, routes=parse_routes(ipam.get("routes")), dns=_dns(ipam))

    def check(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        addresses = load_addresses(conf, ctx)
        prev = prev_result(conf, required=False)
        if prev is None:
            raise CNIError(ERR, "Required prevResult missing")
        have: Dict[IPAddr, Optional[IPAddr]] = {}
        for ip in prev["ips"]:
            address = ipaddress.ip_interface(ip["address"]).ip
            have.setdefault(address, parse_ip(ip.get("gateway") or ""))
        for addr in addresses:
            if addr["ip"] not in have:
                # Stricter than Go 1.1.1, which lets CHECK pass when the address is missing.
                raise CNIError(ERR, f"static: Failed to find addr {addr['ip']} on interface {ctx.ifname}")
            if addr["gateway"] is not None and have[addr["ip"]] != addr["gateway"]:
                raise CNIError(ERR, f"static: Failed to match addr {addr['ip']} on interface {ctx.ifname}")

    def delete(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Nothing was allocated, so nothing to release (Go: no-op, not even config parsing)."""

    def gc(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Nothing is stored, nothing to collect (the inherited GC would delegate to itself forever)."""

    def status(self, ctx: skel.Context, conf: Dict[str, Any]) -> None:
        """Always available: static keeps no state."""
