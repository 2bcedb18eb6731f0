"""bandwidth: rate-limit a veth-attached container (Go plugins/meta/bandwidth, v1.1.1 numbers).

Ingress (traffic to the container) is a TBF root qdisc on the host veth; egress (from the
container) is redirected by an ingress qdisc + u32 match-all filter + mirred action to an IFB
device `bwp<hash>` that carries the egress TBF. Rates are bits/s and bursts bits, converted to
bytes exactly as Go: buffer = ticks(burst/rate), limit = rate x 25 ms + burst. tc via pyroute2.
"""
from __future__ import annotations

import contextlib
import hashlib
from typing import Any, Dict, List, Optional, Tuple

from ...net import link, ns, rtnl
from ...protocol import skel, spec
from ...protocol.spec import CNIError
from ...protocol.plugin import Conf, Result, conf_field, prev_result
from .. import NetPlugin

IFB_PREFIX = "bwp"
MAX_IFNAME = 15
LATENCY_USEC = 25_000.0  # Go latencyInMillis = 25
TIME_UNITS_PER_SEC = 1_000_000
TBF_HANDLE = 0x10000  # 1:
TC_H_ROOT = 0xFFFFFFFF
INGRESS_HANDLE = 0xFFFF0000  # ffff:
ETH_P_ALL = 0x0003
KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


def ifb_name(network: str, container_id: str) -> str:
    """Go utils.MustFormatHashWithPrefix(15, "bwp", name+id)."""
    return (IFB_PREFIX + hashlib.sha512((network + container_id).encode()).hexdigest())[:MAX_IFNAME]


def _tick_in_usec() -> float:
    """As netlink/tc read it from /proc/net/psched (t2us / us2t x clock factor)."""
    try:
        with open("/proc/net/psched", encoding="ascii") as fh:
            t2us, us2t, clock_res, _ = (int(x, 16) for x in fh.read().split())
        return t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)
    except (OSError, ValueError):
        return 1.0


def tbf_numbers(rate_bits: int, burst_bits: int) -> Dict[str, int]:
    """Go createTBF's arithmetic (float64 then uint32 truncation, step by step)."""
    rate, burst = rate_bits // 8, burst_bits // 8
    buffer = int(float(int(burst * TIME_UNITS_PER_SEC / rate) & 0xFFFFFFFF) * _tick_in_usec()) & 0xFFFFFFFF
    limit = (int(rate * LATENCY_USEC / TIME_UNITS_PER_SEC) + burst) & 0xFFFFFFFF
    return {"rate": rate, "burst": burst, "buffer": buffer, "limit": limit}


def _validate(rate: int, burst: int) -> None:
    if burst == 0 and rate != 0:
        raise CNIError(spec.ERR_INVALID_CONFIG, "if rate is set, burst must also be set")
    if rate == 0 and burst != 0:
        raise CNIError(spec.ERR_INVALID_CONFIG, "if burst is set, rate must also be set")
    if burst // 8 >= 0xFFFFFFFF:
        raise CNIError(spec.ERR_INVALID_CONFIG, "burst cannot be more than 4GB")
    if rate // 8 >= 1 << 32:  # the tbf rate field is 32-bit (Go adds TCA_TBF_RATE64; we refuse)
        raise CNIError(spec.ERR_INVALID_CONFIG, "rate cannot be more than 34 Gbit/s")


def limits(conf: Conf) -> Optional[Dict[str, int]]:
    """Go getBandwidth: top-level keys win (if any is present) over runtimeConfig.bandwidth."""
    source: Any = conf if any(k in conf for k in KEYS) else None
    if source is None:
        runtime = conf_field(conf, "runtimeConfig", dict, {}, "PluginConf")
        source = runtime.get("bandwidth")
        if source is None:
            return None
        if not isinstance(source, dict):
            raise CNIError(spec.ERR_INVALID_CONFIG, "runtimeConfig.bandwidth must be an object")
    out = {}
    for key in KEYS:
        val = source.get(key) or 0
        if not isinstance(val, int) or isinstance(val, bool) or val < 0:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"{key} must be a non-negative integer", repr(val))
        out[key] = val
    _validate(out["ingressRate"], out["ingressBurst"])
    _validate(out["egressRate"], out["egressBurst"])
    return out


def host_veth(result: Result, netns: str, ifname: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Go getHostInterface: the container interface's veth peer, which must be a host-side
    interface of the prevResult. Returns (result interface, host link)."""
    if not result.get("interfaces"):
        raise CNIError(spec.ERR_INTERNAL, "no interfaces provided")
    with ns.in_netns(netns):
        with rtnl.iproute() as ipr:
            cont = link.get_link(ipr, ifname)
    peer = cont.get("link") if cont and cont.get("kind") == "veth" else None
    if not peer:
        raise CNIError(spec.ERR_INTERNAL, f"container interface {ifname} has no veth peer")
    with rtnl.iproute() as ipr:
        host = link.get_link(ipr, index=peer)
    if host is None:
        raise CNIError(spec.ERR_INTERNAL, f"veth peer with index {peer} is not in host ns")
    for iface in result["interfaces"]:
        if not iface.get("sandbox") and iface.get("name") == host["name"]:
            return iface, host
    raise CNIError(spec.ERR_INTERNAL, "no veth peer of container interface found in host ns")


def _add_tbf(ipr: Any, index: int, rate_bits: int, burst_bits: int) -> None:
    n = tbf_numbers(rate_bits, burst_bits)
    # pyroute2 derives buffer from (rate, burst) with the same tick arithmetic; limit is given
    ipr.tc("add", "tbf", index, TBF_HANDLE, rate=n["rate"], burst=n["burst"], limit=n["limit"])


def _tbf_of(ipr: Any, index: int) -> Optional[Dict[str, int]]:
    for qdisc in ipr.get_qdiscs(index):
        if qdisc.get_attr("TCA_KIND") == "tbf":
            parms = qdisc.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
            return {"rate": parms["rate"], "limit": parms["limit"], "buffer": parms["buffer"]}
    return None


def _undo(ipr: Any, index: int, ifb: str, done: List[str]) -> None:
    """A failed ADD removes what it created, and only that (a link already called `ifb` stays)."""
    if "tbf" in done:
        with contextlib.suppress(Exception):
            ipr.tc("del", index=index, handle=TBF_HANDLE, parent=TC_H_ROOT)
    if "ingress" in done:  # removing the ingress qdisc removes its filter too
        with contextlib.suppress(Exception):
            ipr.tc("del", "ingress", index, INGRESS_HANDLE)
    if "ifb" in done:
        link.delete_link(ipr, ifb)


def _check_tbf(ipr: Any, index: int, rate_bits: int, burst_bits: int) -> None:
    want, have = tbf_numbers(rate_bits, burst_bits), _tbf_of(ipr, index)
    if have is None:
        raise CNIError(spec.ERR_INTERNAL, "Failed to find qdisc")
    for key, msg in (("rate", "Rate"), ("limit", "Limit"), ("buffer", "Buffer")):
        if have[key] != want[key]:
            raise CNIError(spec.ERR_INTERNAL, f"{msg} doesn't match")


class Bandwidth(NetPlugin):
    name = "bandwidth"
    supported_versions = tuple(v for v in spec.SUPPORTED_VERSIONS if spec.version_ge(v, "0.3.0"))

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        bw = limits(conf)
        if bw is None or not any(bw.values()):
            return conf.get("prevResult") or spec.new_result()
        result = prev_result(conf)
        _, host = host_veth(result, ctx.netns, ctx.ifname)
        ifb = ifb_name(conf["name"], ctx.container_id)
        done: List[str] = []  # what this ADD created, for the undo
        with rtnl.iproute() as ipr:
            try:
                if bw["ingressRate"]:
                    _add_tbf(ipr, host["index"], bw["ingressRate"], bw["ingressBurst"])
                    done.append("tbf")
                if bw["egressRate"]:
                    ipr.link("add", ifname=ifb, kind="ifb", mtu=host["mtu"], state="up")
                    done.append("ifb")
                    dev = link.require_link(ipr, ifb)
                    ipr.tc("add", "ingress", host["index"], INGRESS_HANDLE)
                    done.append("ingress")
                    ipr.tc("add-filter", "u32", host["index"], parent=INGRESS_HANDLE, prio=1, protocol=ETH_P_ALL,
                           target=0x10001, keys=["0x0/0x0+0"],
                           action={"kind": "mirred", "direction": "egress", "action": "redirect",
                                   "ifindex": dev["index"]})
                    _add_tbf(ipr, dev["index"], bw["egressRate"], bw["egressBurst"])
                    result = dict(result, interfaces=result["interfaces"] + [{"name": ifb, "mac": dev["mac"]}])
            except Exception as exc:
                _undo(ipr, host["index"], ifb, done)
                if isinstance(exc, CNIError):
                    raise
                raise rtnl.fail("failed to set up bandwidth limits", exc) from None
        return result

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        bw = limits(conf) or dict.fromkeys(KEYS, 0)
        result = prev_result(conf)
        _, host = host_veth(result, ctx.netns, ctx.ifname)
        with rtnl.iproute() as ipr:
            if bw["ingressRate"] and bw["ingressBurst"]:
                _check_tbf(ipr, host["index"], bw["ingressRate"], bw["ingressBurst"])
            if bw["egressRate"] and bw["egressBurst"]:
                dev = link.get_link(ipr, ifb_name(conf["name"], ctx.container_id))
                if dev is None:
                    raise CNIError(spec.ERR_INTERNAL, "get ifb device: Link not found")
                _check_tbf(ipr, dev["index"], bw["egressRate"], bw["egressBurst"])

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        limits(conf)  # Go parses (and validates) the config on DEL too
        with rtnl.iproute() as ipr:
            link.delete_link(ipr, ifb_name(conf["name"], ctx.container_id))
