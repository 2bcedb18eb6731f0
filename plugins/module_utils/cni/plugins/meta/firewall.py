"""firewall: let the pod's traffic through FORWARD (Go plugins/meta/firewall, v1.1.1), cniVersion >= 0.4.0.

Backends (`"backend"`):
* `iptables` (also the default, as Go picks it when firewalld is not running): the Go chains
  exactly — CNI-FORWARD first in FORWARD, CNI-ADMIN first in CNI-FORWARD, per pod IP
  `-d IP conntrack RELATED,ESTABLISHED ACCEPT` and `-s IP ACCEPT`; `ingressPolicy: same-bridge`
  adds Docker-style CNI-ISOLATION-STAGE-1/2. One iptables-save + one atomic restore per family.
* `nftables`: table `inet cnikit_filter` whose forward chain looks pod addresses up in sets
  (`pods4`/`pods6`, one element per pod) after jumping to an `admin` chain for overrides;
  same-bridge isolation is a verdict map from input bridge to a per-bridge drop chain. Note that an
  nftables accept cannot override a DROP in another table (e.g. an iptables FORWARD policy);
  it is the whole answer only on hosts whose filtering is nftables-only.
* `firewalld` needs D-Bus, which these nodes do not run: refused as a config error.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Tuple

from ... import netfilter
from ...protocol import skel, spec
from ...netfilter import iptables as ipt
from ...netfilter import nft
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result, conf_field
from .. import NetPlugin

PRIV_CHAIN = "CNI-FORWARD"
STAGE1, STAGE2 = "CNI-ISOLATION-STAGE-1", "CNI-ISOLATION-STAGE-2"
ISOLATION_COMMENT = "CNI firewall plugin rules (ingressPolicy: same-bridge)"
POLICIES = ("", "open", "same-bridge")
NFT_TABLE = "cnikit_filter"


def _settings(conf: Conf) -> Dict[str, Any]:
    backend = conf_field(conf, "backend", str, "", "FirewallNetConf")
    if backend == "firewalld":
        raise CNIError(spec.ERR_INVALID_CONFIG, "firewalld backend is not supported here (no D-Bus)",
                       "use backend iptables or nftables")
    backend = backend or netfilter.IPTABLES
    netfilter.backend_module(backend)
    policy = conf_field(conf, "ingressPolicy", str, "", "FirewallNetConf")
    if policy not in POLICIES:  # checked before any change (Go fails only after adding the rules)
        raise CNIError(spec.ERR_INVALID_CONFIG, f'unknown ingress policy: "{policy}"')
    admin = conf_field(conf, "iptablesAdminChainName", str, "", "FirewallNetConf") or "CNI-ADMIN"
    if not admin.replace("-", "").replace("_", "").isalnum() or len(admin) > 28:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid iptablesAdminChainName {admin!r}")
    return {"backend": backend, "policy": policy, "admin": admin}


def _pod_ips(result: Result) -> Dict[int, List[str]]:
    out: Dict[int, List[str]] = {4: [], 6: []}
    for ip in result.get("ips") or []:
        addr = netfilter.interface_networks([ip["address"]])[0].ip
        out[addr.version].append(f"{addr}/{addr.max_prefixlen}")  # Go ipString
    return out


def _bridge(result: Result, policy: str) -> str:
    ifaces = result.get("interfaces") or []
    if not ifaces:
        raise CNIError(spec.ERR_INVALID_CONFIG, f'interface needs to be set for ingress policy "{policy}", '
                                                'make sure to chain "firewall" plugin with "bridge"')
    if not ifaces[0].get("name"):
        raise CNIError(spec.ERR_INVALID_CONFIG, "got empty bridge name")
    return ifaces[0]["name"]


# --- iptables ----------------------------------------------------------------------------------

def _ipt_rules(ip: str) -> List[tuple]:
    return [("-d", ip, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT"),
            ("-s", ip, "-j", "ACCEPT")]


def _ipt_priv_rule() -> tuple:
    return ("-m", "comment", "--comment", "CNI firewall plugin rules", "-j", PRIV_CHAIN)


def _ipt_admin_rule(admin: str) -> tuple:
    return ("-m", "comment", "--comment", "CNI firewall plugin admin overrides", "-j", admin)


def _ipt_isolation(bridge: str) -> List[tuple]:
    """(chain, rule, prepend) in Go setupIsolationChains order, in iptables-save argument order."""
    tag = ("-m", "comment", "--comment", ISOLATION_COMMENT)
    return [("FORWARD", (*tag, "-j", STAGE1), True),
            (STAGE1, ("-i", bridge, "!", "-o", bridge, *tag, "-j", STAGE2), True),
            (STAGE1, (*tag, "-j", "RETURN"), False),
            (STAGE2, ("-o", bridge, *tag, "-j", "DROP"), True),
            (STAGE2, (*tag, "-j", "RETURN"), False)]


def ipt_add(s: Dict[str, Any], result: Result) -> None:
    for v, ips in _pod_ips(result).items():
        if not ips:
            continue

        def build(b: ipt.Batch, ips: List[str] = ips) -> None:
            b.ensure_chain(PRIV_CHAIN)
            b.ensure_chain(s["admin"])
            b.insert_unique("FORWARD", _ipt_priv_rule(), prepend=True)
            b.insert_unique(PRIV_CHAIN, _ipt_admin_rule(s["admin"]), prepend=True)
            for ip in ips:
                for rule in _ipt_rules(ip):
                    b.insert_unique(PRIV_CHAIN, rule)
            if s["policy"] == "same-bridge":
                b.ensure_chain(STAGE1)
                b.ensure_chain(STAGE2)
                for chain, rule, prepend in _ipt_isolation(_bridge(result, s["policy"])):
                    b.insert_unique(chain, rule, prepend)

        ipt.apply(v, "filter", build)


def ipt_del(result: Result) -> None:
    for v, ips in _pod_ips(result).items():
        if not ips:
            continue

        def build(b: ipt.Batch, ips: List[str] = ips) -> None:
            for ip in ips:
                for rule in _ipt_rules(ip):
                    b.delete_existing(PRIV_CHAIN, rule)

        ipt.apply(v, "filter", build)


def ipt_check(s: Dict[str, Any], result: Result) -> None:
    for v, ips in _pod_ips(result).items():
        if not ips:
            continue
        wanted = [("FORWARD", _ipt_priv_rule()), (PRIV_CHAIN, _ipt_admin_rule(s["admin"]))]
        wanted += [(PRIV_CHAIN, r) for ip in ips for r in _ipt_rules(ip)]
        for chain, rule in wanted:
            if not ipt.exists(v, "filter", chain, rule):
                raise CNIError(spec.ERR_INTERNAL, f"expected {chain} rule {' '.join(rule)} not found")


# --- nftables ----------------------------------------------------------------------------------

def _nft_base() -> List[str]:
    t = f"inet {NFT_TABLE}"
    lines = [f"add table {t}", f"add set {t} pods4 {{ type ipv4_addr; }}", f"add set {t} pods6 {{ type ipv6_addr; }}",
             f"add map {t} isolated {{ type ifname : verdict; }}", f"add set {t} bridges {{ type ifname; }}",
             f"add chain {t} admin",
             f"add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}",
             # flush + re-add in one transaction keeps the fixed rules unique without a listing
             f"flush chain {t} forward"]
    fixed = ["iifname vmap @isolated", "jump admin",
             "ip daddr @pods4 ct state related,established accept", "ip saddr @pods4 accept",
             "ip6 daddr @pods6 ct state related,established accept", "ip6 saddr @pods6 accept"]
    return lines + [f"add rule {t} forward {r}" for r in fixed]


def _nft_elems(result: Result) -> List[Tuple[str, str, None]]:
    return [(f"pods{v}", ip.split("/")[0], None) for v, ips in _pod_ips(result).items() for ip in ips]


def nft_add(s: Dict[str, Any], result: Result) -> None:
    t = f"inet {NFT_TABLE}"
    lines = _nft_base() + [f"add element {t} {m} {{ {ip} }}" for m, ip, _ in _nft_elems(result)]
    if s["policy"] == "same-bridge":
        bridge = _bridge(result, s["policy"])
        # chain names cannot be quoted in nft, interface names may hold any character: hash it
        chain = "iso-" + hashlib.sha256(bridge.encode()).hexdigest()[:16]
        name = nft.quote(bridge)
        lines += [f"add element {t} bridges {{ {name} }}", f"add chain {t} {chain}", f"flush chain {t} {chain}",
                  f"add rule {t} {chain} oifname != {name} oifname @bridges drop",
                  f"add element {t} isolated {{ {name} : jump {chain} }}"]
    nft.run(lines)


def nft_del(result: Result) -> None:
    elems = _nft_elems(result)
    if elems:  # one batch, present or not; it fails only when the table is missing (nothing to remove)
        nft.try_destroy(f"inet {NFT_TABLE}", [], elems)


def nft_check(result: Result) -> None:
    for v, ips in _pod_ips(result).items():
        for ip in ips:
            if not nft.has_element(f"inet {NFT_TABLE}", f"pods{v}", ip.split("/")[0]):
                raise CNIError(spec.ERR_INTERNAL, f"pod address {ip} missing from set pods{v} of inet {NFT_TABLE}")


class Firewall(NetPlugin):
    name = "firewall"
    supported_versions = tuple(v for v in spec.SUPPORTED_VERSIONS if spec.version_ge(v, "0.4.0"))

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        s = _settings(conf)
        result = conf.get("prevResult")
        if result is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "missing prevResult from earlier plugin")
        if s["policy"] == "same-bridge":
            _bridge(result, s["policy"])  # fail before any change
        (ipt_add if s["backend"] == netfilter.IPTABLES else nft_add)(s, result)
        return result

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        s = _settings(conf)
        result = conf.get("prevResult")
        if result is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, "missing prevResult from earlier plugin")
        if s["backend"] == netfilter.IPTABLES:
            ipt_check(s, result)
        else:
            nft_check(result)

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        s = _settings(conf)
        result = conf.get("prevResult") or spec.new_result()  # rules are keyed by pod IP only, as in Go
        (ipt_del if s["backend"] == netfilter.IPTABLES else nft_del)(result)
