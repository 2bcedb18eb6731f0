"""Desired-state reconciliation for the Ansible modules: named netns, bridges, veth pairs, macvlan
links, CNI attachments (through the runtime), config files and port mappings (the portmap plugin).

Each `ensure_*` reads what the kernel has, compares it with what was asked for, changes only the
difference (nothing at all with `check_mode`) and returns a `Change`: whether anything changed
(or would), plus `before`/`after` views of the visible state for Ansible's diff. Errors are
`CNIError`s whose message says what to fix. The kernel is read and changed through the engine's
net/ layer (ns, rtnl, link, addr: the readers the plugins use; pyroute2 only there), port mappings
through the portmap plugin's CNI verbs (protocol/invoke.call_builtin), never its internals.
"""
from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import runtime
from ..net import addr, link, ns, rtnl
from ..protocol import fsutil, invoke, skel, spec
from ..protocol.spec import CNIError

NETNS_DIR = "/run/netns"
MACVLAN_MODES = tuple(link.MACVLAN_MODES)
State = Dict[str, Any]


@dataclass
class Change:
    changed: bool
    before: State
    after: State


@dataclass
class LinkAttrs:
    """What the caller manages on one interface; None leaves that property as the kernel has it."""

    name: str
    netns: Optional[str] = None  # a name under /run/netns or a path; None = the current netns
    mtu: Optional[int] = None
    mac: Optional[str] = None
    addresses: Optional[List[str]] = None  # exclusive: others are removed (IPv6 link-local kept)
    routes: Optional[List[Dict[str, Any]]] = None  # additive: listed routes are added when missing
    up: Optional[bool] = None
    mode: Optional[str] = None  # macvlan mode (changed in place, except into or out of passthru)
    bridge: Optional[str] = None  # make the link a port of this bridge (same netns)
    path: str = field(init=False, default="")

    def __post_init__(self) -> None:
        validate_ifname(self.name)
        self.path = netns_path(self.netns) if self.netns else ""
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid mtu {self.mtu} for {self.name}: must be 68..65535")
        if self.mac is not None:
            self.mac = normalize_mac(self.mac)
        if self.addresses is not None:
            self.addresses = sorted({normalize_cidr(a) for a in self.addresses})
        if self.routes is not None:
            self.routes = [normalize_route(r) for r in self.routes]
        if self.bridge is not None:
            validate_ifname(self.bridge)
        if self.mode is not None and self.mode not in MACVLAN_MODES:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid macvlan mode {self.mode!r}: one of {', '.join(MACVLAN_MODES)}")


# --- input normalisation ----------------------------------------------------------------

def validate_ifname(name: str) -> None:
    try:
        skel.validate_ifname(name)
    except CNIError as exc:  # the skel's message does not say which name
        raise CNIError(exc.code, f"invalid interface name {name!r}: {exc}") from None


def normalize_mac(mac: str) -> str:
    parts = mac.replace("-", ":").lower().split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdef" for c in p) for p in parts):
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid MAC address {mac!r}: expected six hex octets like 02:42:ac:11:00:02")
    if int(parts[0], 16) & 1:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid MAC address {mac!r}: a multicast address cannot be set on a link")
    return ":".join(parts)


def normalize_cidr(addr: str) -> str:
    try:
        iface = ipaddress.ip_interface(addr)
    except ValueError:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid address {addr!r}: expected ADDRESS/PREFIX like 10.40.80.11/24") from None
    if "/" not in addr:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"address {addr!r} has no prefix length: write it like {addr}/24")
    return iface.with_prefixlen


def normalize_route(route: Any) -> Dict[str, Any]:
    if isinstance(route, str):
        route = {"dst": route}
    if not isinstance(route, dict) or "dst" not in route:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid route {route!r}: expected a dict with dst (and optional gw, metric)")
    dst = "0.0.0.0/0" if route["dst"] == "default" else route["dst"]
    try:
        net = ipaddress.ip_network(dst, strict=False)
        gw = str(ipaddress.ip_address(route["gw"])) if route.get("gw") else None
    except ValueError as exc:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid route {route!r}: {exc}") from None
    out: Dict[str, Any] = {"dst": net.with_prefixlen}
    if gw:
        out["gw"] = gw
    if route.get("metric") is not None:
        out["metric"] = int(route["metric"])
    return out


# --- named network namespaces -----------------------------------------------------------

def validate_netns_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise CNIError(spec.ERR_INVALID_CONFIG,
                       f"invalid network namespace name {name!r}: use a plain file name (no '/'), 1..255 characters")


def netns_path(ref: str) -> str:
    """A netns reference as the modules take it: an absolute path, or a name under /run/netns."""
    if ref.startswith("/"):
        if "\0" in ref or "/../" in ref + "/":
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid network namespace path {ref!r}")
        return ref
    validate_netns_name(ref)
    return os.path.join(NETNS_DIR, ref)


def require_netns(ref: Optional[str]) -> str:
    """The path of an existing netns (empty for the current one), or an actionable error."""
    if not ref:
        return ""
    path = netns_path(ref)
    if not ns.is_netns(path):
        raise CNIError(spec.ERR_INVALID_CONFIG,
                       f"network namespace {ref!r} not found ({path} is not a mounted netns); "
                       "create it first, e.g. with cnikit.cni.netns")
    return path


def _netns_view(name: str, path: str, loopback_up: Optional[bool]) -> State:
    if not ns.is_netns(path):
        # a bare file is what a failed `ip netns add` leaves behind
        return {"name": name, "state": "stale" if os.path.lexists(path) else "absent"}
    view: State = {"name": name, "state": "present", "path": path}
    if loopback_up is not None:
        with rtnl.iproute(path) as ipr:
            view["loopback"] = "up" if link.get_link(ipr, index=1)["up"] else "down"
    return view


def ensure_netns(name: str, present: bool = True, loopback_up: Optional[bool] = True,
                 check_mode: bool = False) -> Change:
    """Like `ip netns add/del NAME` (+ `ip -n NAME link set lo up`), idempotent.

    `loopback_up` None leaves the loopback as it is.
    """
    validate_netns_name(name)
    path = os.path.join(NETNS_DIR, name)
    before = _netns_view(name, path, loopback_up if present else None)
    if not present:
        if before["state"] != "absent" and not check_mode:
            if before["state"] == "present":
                ns.remove_named(path)
            else:
                os.unlink(path)
        return Change(before["state"] != "absent", before, {"name": name, "state": "absent"})
    want: State = {"name": name, "state": "present", "path": path}
    if loopback_up is not None:
        want["loopback"] = "up" if loopback_up else "down"
    if before == want or check_mode:
        return Change(before != want, before, want)
    if before["state"] != "present":
        _create_netns(path)
    if loopback_up is not None:
        with rtnl.iproute(path) as ipr:
            ipr.link("set", index=1, state="up" if loopback_up else "down")
    return Change(True, before, _netns_view(name, path, loopback_up))


def _create_netns(path: str) -> None:
    if os.path.lexists(path):
        os.unlink(path)  # stale
    os.makedirs(NETNS_DIR, exist_ok=True)
    try:
        ns.create_named(path)
    except Exception as exc:
        if os.path.lexists(path) and not ns.is_netns(path):
            os.unlink(path)  # undo: leave no half-made netns behind
        raise CNIError(spec.ERR_INTERNAL, f"failed to create network namespace {path}: {exc}") from None
    if not ns.is_netns(path):
        raise CNIError(spec.ERR_INTERNAL, f"failed to create network namespace {path}")


# --- reading links ----------------------------------------------------------------------


# The kernel is read through the engine's net readers (link.get_link, addr.link_addresses,
# addr.main_routes): one reader set for the plugins and the modules.

def _addresses(ipr: Any, index: int) -> List[str]:
    out = set()
    for cidr in addr.link_addresses(ipr, index):
        iface = ipaddress.ip_interface(cidr)
        if iface.version == 6 and iface.ip.is_link_local:
            continue  # the kernel's own fe80:: address is not the caller's to manage
        out.add(iface.with_prefixlen)
    return sorted(out)


def _routes(ipr: Any, index: int, wanted: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The wanted routes that exist through this link (main table)."""
    have = set()
    for family in {4 if ":" not in r["dst"] else 6 for r in wanted}:
        for dst, gw, oif, metric in addr.main_routes(ipr, 2 if family == 4 else 10):
            if oif != index:
                continue
            have.add((ipaddress.ip_network(dst or ("0.0.0.0/0" if family == 4 else "::/0")).with_prefixlen, gw, metric))
    out = []
    for r in wanted:
        # a route asked for without a metric matches that route at any metric
        if any(h[0] == r["dst"] and h[1] == r.get("gw") and (r.get("metric") is None or h[2] == r["metric"])
               for h in have):
            out.append(r)
    return out


def _view(ipr: Any, found: link.Iface, attrs: LinkAttrs) -> State:
    kind = found["kind"] or ""
    view: State = {"name": attrs.name, "state": "present", "kind": kind or "unknown",
                   "mtu": found["mtu"], "mac": found["mac"] or None,
                   "up": found["up"], "addresses": _addresses(ipr, found["index"])}
    if attrs.netns:
        view["netns"] = attrs.netns
    mode = link.info_data(found, "IFLA_MACVLAN_MODE") if kind == "macvlan" else None
    if mode is not None:
        view["mode"] = mode
        view["master_index"] = found["link"]
    if attrs.routes is not None:
        view["routes"] = _routes(ipr, found["index"], attrs.routes)
    if attrs.bridge is not None:
        master = found["master"]
        view["bridge"] = (link.get_link(ipr, index=master) or {}).get("name") if master else None
    return view


def _absent(attrs: LinkAttrs) -> State:
    view: State = {"name": attrs.name, "state": "absent"}
    if attrs.netns:
        view["netns"] = attrs.netns
    return view


# --- changing links ---------------------------------------------------------------------

def _netlink(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one netlink request; a kernel refusal becomes an error naming what was attempted."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        code = rtnl.netlink_error_code(exc)
        if code is None:
            raise
        raise CNIError(spec.ERR_INTERNAL, f"{what}: {os.strerror(code)}") from None


def _wanted(current: State, attrs: LinkAttrs) -> State:
    """`current` with the managed properties replaced by the wanted ones."""
    after = dict(current)
    for key in ("mode", "mtu", "mac", "bridge", "up", "addresses", "routes"):
        val = getattr(attrs, key)
        if val is not None:
            after[key] = val
    return after


def _apply(ipr: Any, index: int, current: State, attrs: LinkAttrs) -> None:
    """Bring one existing link to `attrs`; only the differences are sent."""
    name = attrs.name
    if attrs.mode is not None and current.get("mode") != attrs.mode:
        _netlink(f"failed to set macvlan mode {attrs.mode} on {name}", ipr.link, "set", index=index,
                 kind="macvlan", macvlan_mode=attrs.mode)
    if attrs.mtu is not None and current["mtu"] != attrs.mtu:
        _netlink(f"failed to set mtu {attrs.mtu} on {name}", ipr.link, "set", index=index, mtu=attrs.mtu)
    if attrs.mac is not None and current["mac"] != attrs.mac:
        _netlink(f"failed to set MAC {attrs.mac} on {name}", ipr.link, "set", index=index, address=attrs.mac)
    if attrs.bridge is not None and current.get("bridge") != attrs.bridge:
        bridge = link.get_link(ipr, attrs.bridge)
        if bridge is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"bridge {attrs.bridge!r} for {name} not found; create it first")
        _netlink(f"failed to add {name} to bridge {attrs.bridge}", ipr.link, "set", index=index, master=bridge["index"])
    if attrs.addresses is not None:
        for addr in current["addresses"]:
            if addr not in attrs.addresses:
                ip = ipaddress.ip_interface(addr)
                _netlink(f"failed to remove {addr} from {name}", ipr.addr, "del", index=index,
                         address=str(ip.ip), prefixlen=ip.network.prefixlen)
        for addr in attrs.addresses:
            if addr not in current["addresses"]:
                ip = ipaddress.ip_interface(addr)
                _netlink(f"failed to add {addr} to {name}", ipr.addr, "add", index=index,
                         address=str(ip.ip), prefixlen=ip.network.prefixlen)
    if attrs.up is not None and current["up"] != attrs.up:
        _netlink(f"failed to set {name} {'up' if attrs.up else 'down'}", ipr.link, "set", index=index,
                 state="up" if attrs.up else "down")
    for route in attrs.routes or ():
        if route in current.get("routes", ()):
            continue
        kw: Dict[str, Any] = {"dst": route["dst"], "oif": index}
        if route.get("gw"):
            kw["gateway"] = route["gw"]
        else:
            kw["scope"] = 253  # on-link, as `ip route add DST dev IF` makes it
        if route.get("metric") is not None:
            kw["priority"] = route["metric"]
        _netlink(f"failed to add route {route} via {name}", ipr.route, "add", **kw)


def _stub(attrs: LinkAttrs, kind: str) -> State:
    view: State = {"name": attrs.name, "state": "present", "kind": kind}
    if attrs.netns:
        view["netns"] = attrs.netns
    return view


def _reconcile(ipr: Any, msg: link.Iface, attrs: LinkAttrs, check_mode: bool) -> Change:
    """Bring an existing link to `attrs`."""
    before = _view(ipr, msg, attrs)
    after = _wanted(before, attrs)
    if after == before or check_mode:
        return Change(after != before, before, after)
    _apply(ipr, msg["index"], before, attrs)
    return Change(True, before, _view(ipr, link.get_link(ipr, attrs.name), attrs))


def _configure_new(ipr: Any, attrs: LinkAttrs) -> State:
    msg = link.get_link(ipr, attrs.name)
    if msg is None:
        raise CNIError(spec.ERR_INTERNAL, f"{attrs.name} vanished right after it was created")
    _apply(ipr, msg["index"], _view(ipr, msg, attrs), attrs)
    return _view(ipr, link.get_link(ipr, attrs.name), attrs)


def _delete(ipr: Any, msg: link.Iface, name: str) -> None:
    try:
        ipr.link("del", index=msg["index"])
    except Exception as exc:
        if not rtnl.is_enodev(exc):  # gone meanwhile (e.g. with its veth peer): that is what we wanted
            raise CNIError(spec.ERR_INTERNAL, f"failed to delete {name}: {exc}") from None


def _refuse_foreign(msg: link.Iface, attrs: LinkAttrs, kind: str) -> None:
    have = msg["kind"] or "device without link kind"
    if have != kind:
        where = f" in netns {attrs.netns}" if attrs.netns else ""
        raise CNIError(spec.ERR_INVALID_CONFIG, f"{attrs.name}{where} already exists and is a {have}, not a {kind}; "
                       "choose another name or remove that interface first")


def remove_link(attrs: LinkAttrs, check_mode: bool = False) -> Change:
    """Delete a link if it exists; a missing netns means there is nothing to delete."""
    if attrs.path and not ns.is_netns(attrs.path):
        return Change(False, _absent(attrs), _absent(attrs))
    with rtnl.iproute(attrs.path or None) as ipr:
        msg = link.get_link(ipr, attrs.name)
        if msg is None:
            return Change(False, _absent(attrs), _absent(attrs))
        before = _view(ipr, msg, attrs)
        if not check_mode:
            _delete(ipr, msg, attrs.name)
    return Change(True, before, _absent(attrs))


# --- bridge -----------------------------------------------------------------------------

def ensure_bridge(attrs: LinkAttrs, check_mode: bool = False) -> Change:
    """A Linux bridge (like `ip link add NAME type bridge`), reconciled like any link."""
    require_netns(attrs.netns)
    with rtnl.iproute(attrs.path or None) as ipr:
        msg = link.get_link(ipr, attrs.name)
        if msg is not None:
            _refuse_foreign(msg, attrs, "bridge")
            return _reconcile(ipr, msg, attrs, check_mode)
        if check_mode:
            return Change(True, _absent(attrs), _wanted(_stub(attrs, "bridge"), attrs))
        _netlink(f"failed to create bridge {attrs.name}", ipr.link, "add", ifname=attrs.name, kind="bridge")
        try:
            after = _configure_new(ipr, attrs)
        except BaseException:
            _delete(ipr, link.get_link(ipr, attrs.name), attrs.name)
            raise
        return Change(True, _absent(attrs), after)


# --- veth -------------------------------------------------------------------------------

def _paired(a: link.Iface, b: link.Iface) -> bool:
    return a["kind"] == b["kind"] == "veth" and a["link"] == b["index"] and b["link"] == a["index"]


def ensure_veth(end: LinkAttrs, peer: LinkAttrs, check_mode: bool = False) -> Change:
    """A veth pair `end` <-> `peer`, each in its own netns, both ends reconciled.

    A veth named like either end but paired elsewhere is replaced; any other kind of link with
    one of the names is an error (it is not ours to delete).
    """
    require_netns(end.netns)
    require_netns(peer.netns)
    with rtnl.iproute(end.path or None) as ipa, rtnl.iproute(peer.path or None) as ipb:
        ma, mb = link.get_link(ipa, end.name), link.get_link(ipb, peer.name)
        if ma is not None and mb is not None and _paired(ma, mb):
            ca = _reconcile(ipa, ma, end, check_mode)
            cb = _reconcile(ipb, mb, peer, check_mode)
            return Change(ca.changed or cb.changed, {"end": ca.before, "peer": cb.before},
                          {"end": ca.after, "peer": cb.after})
        for msg, attrs in ((ma, end), (mb, peer)):
            if msg is not None:
                _refuse_foreign(msg, attrs, "veth")
        before = {"end": _view(ipa, ma, end) if ma is not None else _absent(end),
                  "peer": _view(ipb, mb, peer) if mb is not None else _absent(peer)}
        if check_mode:
            return Change(True, before, {"end": _wanted(_stub(end, "veth"), end),
                                         "peer": _wanted(_stub(peer, "veth"), peer)})
        for ipr, msg, attrs in ((ipa, ma, end), (ipb, mb, peer)):
            if msg is not None:
                _delete(ipr, msg, attrs.name)
        # the peer is created straight into its netns (this thread's own netns when it has none)
        fd = os.open(peer.path or "/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _netlink(f"failed to create veth {end.name} <-> {peer.name}", ipa.link, "add", ifname=end.name,
                     kind="veth", peer={"ifname": peer.name, "net_ns_fd": fd})
        finally:
            os.close(fd)
        try:
            after = {"end": _configure_new(ipa, end), "peer": _configure_new(ipb, peer)}
        except BaseException:
            _delete(ipa, link.get_link(ipa, end.name), end.name)  # undo: no half-configured pair left
            raise
        return Change(True, before, after)


def remove_veth(end: LinkAttrs, peer: Optional[LinkAttrs] = None, check_mode: bool = False) -> Change:
    """Delete a veth pair by either end (deleting one end deletes its peer)."""
    ends = {"end": end, **({"peer": peer} if peer is not None else {})}
    seen = {key: remove_link(attrs, check_mode=True) for key, attrs in ends.items()}
    if not check_mode:
        for attrs in ends.values():
            remove_link(attrs)
    return Change(any(c.changed for c in seen.values()), {k: c.before for k, c in seen.items()},
                  {k: c.after for k, c in seen.items()})


# --- macvlan ----------------------------------------------------------------------------

def ensure_macvlan(attrs: LinkAttrs, master: str, check_mode: bool = False) -> Change:
    """A macvlan on `master` (in this netns), itself in `attrs.netns` or here.

    A macvlan on another master, or one moving into or out of passthru, is re-created; the mode
    otherwise changes in place.
    """
    validate_ifname(master)
    require_netns(attrs.netns)
    mode = attrs.mode or "bridge"
    attrs.mode = mode
    with rtnl.iproute() as host:
        mmsg = link.get_link(host, master)
        if mmsg is None:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"master interface {master!r} not found in the host network "
                           "namespace; set master to an existing interface (ip link show)")
        master_mtu = mmsg["mtu"]
        if attrs.mtu is not None and attrs.mtu > master_mtu:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"mtu {attrs.mtu} is larger than master {master}'s mtu {master_mtu}")
        with rtnl.iproute(attrs.path or None) as ipr:
            msg = link.get_link(ipr, attrs.name)
            if msg is not None:
                _refuse_foreign(msg, attrs, "macvlan")
                current = _view(ipr, msg, attrs)
                same_master = current.get("master_index") == mmsg["index"]
                if same_master and (current.get("mode") == "passthru") == (mode == "passthru"):
                    return _named(_reconcile(ipr, msg, attrs, check_mode), master, mmsg["index"])
                before = current
            else:
                before = _absent(attrs)
            if check_mode:
                return _named(Change(True, before, _wanted(_stub(attrs, "macvlan"), attrs)), master, mmsg["index"])
            if msg is not None:
                _delete(ipr, msg, attrs.name)
            kw: Dict[str, Any] = {"ifname": attrs.name, "kind": "macvlan", "link": mmsg["index"], "macvlan_mode": mode}
            fd = ns.open_netns(attrs.path) if attrs.path else None
            if fd is not None:
                kw["net_ns_fd"] = fd  # created straight in the netns: no name clash with host links
            hint = " (passthru needs the master to itself: no other macvlan on it)" if mode == "passthru" else ""
            try:
                _netlink(f"failed to create macvlan {attrs.name} on {master}{hint}", host.link, "add", **kw)
            finally:
                if fd is not None:
                    os.close(fd)
            try:
                after = _configure_new(ipr, attrs)
            except BaseException:
                _delete(ipr, link.get_link(ipr, attrs.name), attrs.name)
                raise
            return _named(Change(True, before, after), master, mmsg["index"])


def _named(change: Change, master: str, index: int) -> Change:
    """Show the master by name in both views (the kernel reports an ifindex)."""
    for view in (change.before, change.after):
        if view.get("state") == "present":
            idx = view.pop("master_index", index)
            view["master"] = master if idx == index else f"ifindex {idx}"
    return change


# --- CNI attachments (cnitool-like, through the runtime) ----------------------------------

def _attachment_view(net: runtime.NetworkConfigList, rt: runtime.RuntimeConf,
                     result: Optional[Dict[str, Any]]) -> State:
    view: State = {"network": net.name, "container_id": rt.container_id, "ifname": rt.ifname,
                   "state": "attached" if result is not None else "detached"}
    if result is not None:
        view["result"] = result
    return view


def _holds(rtm: runtime.Runtime, net: runtime.NetworkConfigList, rt: runtime.RuntimeConf) -> Optional[str]:
    """None when the cached attachment still holds (CHECK passes), else why not."""
    if not spec.version_ge(net.cni_version or "0.1.0", "0.4.0"):
        return None  # CHECK does not exist before 0.4.0: the cached result is all there is to go by
    try:
        rtm.check(net, rt)
    except CNIError as err:
        return str(err)
    return None


def ensure_attachment(rtm: runtime.Runtime, net: runtime.NetworkConfigList, rt: runtime.RuntimeConf,
                      state: str = "present", check_mode: bool = False) -> Tuple[Change, Dict[str, Any]]:
    """Bring one attachment (network, container, ifname) to `state`; returns the change and extras.

    present: ADD, unless a cached result exists and CHECK still passes (then nothing); a cached
             attachment that fails CHECK is DELed and ADDed again (the reason is returned).
    absent:  DEL when a cached result exists (nothing is known to be attached otherwise).
    checked: CHECK only; fails when nothing is cached or CHECK fails.
    """
    cached = rtm.cached_result(net, rt)
    before = _attachment_view(net, rt, cached)
    extra: Dict[str, Any] = {}
    if state == "absent":
        if cached is not None and not check_mode:
            rtm.delete(net, rt)
        return Change(cached is not None, before, _attachment_view(net, rt, None)), extra
    if rt.netns:
        require_netns(rt.netns)
    if state == "checked":
        if cached is None:
            raise CNIError(spec.ERR_UNKNOWN_CONTAINER, f"network {net.name!r} is not attached to container "
                           f"{rt.container_id!r} as {rt.ifname!r} (no cached result): nothing to check")
        rtm.check(net, rt)
        return Change(False, before, before), extra
    if cached is not None:
        reason = _holds(rtm, net, rt)
        if reason is None:
            return Change(False, before, before), extra
        extra["reattached"] = reason
    rtm.validate(net)
    if check_mode:
        return Change(True, before, {**_attachment_view(net, rt, None), "state": "attached"}), extra
    if cached is not None:
        rtm.delete(net, rt)
    return Change(True, before, _attachment_view(net, rt, rtm.add(net, rt))), extra


def gc_network(rtm: runtime.Runtime, net: runtime.NetworkConfigList, valid: List[Dict[str, str]],
               check_mode: bool = False) -> Change:
    """Spec GC: DEL every cached attachment of `net` not in `valid`, then GC every plugin.
    `changed` counts the stale cached attachments (what GC will visibly remove)."""
    keep = {(a["containerID"], a["ifname"]) for a in valid}
    cached = sorted(f"{a['containerId']}/{a['ifName']}" for a in rtm.cached_attachments()
                    if a.get("networkName") == net.name)
    stale = [a for a in cached if tuple(a.split("/", 1)) not in keep]
    if not check_mode:
        rtm.gc(net, valid)
    return Change(bool(stale), {"network": net.name, "attachments": cached},
                  {"network": net.name, "attachments": [a for a in cached if a not in stale]})


# --- network configuration files ----------------------------------------------------------

CONF_EXTENSIONS = (".conflist", ".conf", ".json")


def render_config(name: str, config: Dict[str, Any], cni_path: Optional[List[str]] = None,
                  validate_plugins: bool = True) -> str:
    """The file text of a conf/conflist after the engine's validation (nothing is written here).

    The network name goes into the config when it has none; the list is parsed like libcni loads it,
    each plugin config like a plugin reads it, and (with `validate_plugins`) every plugin type must be
    built in or found on `cni_path` and speak the list's cniVersion.
    """
    spec.validate_name(name)
    conf = dict(config)
    if conf.setdefault("name", name) != name:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"config names network {conf['name']!r} but name is {name!r}")
    text = json.dumps(conf, indent=2) + "\n"
    net = runtime.network_from_bytes(text.encode())
    spec.check_version_supported(net.cni_version or "0.1.0")
    for plugin in net.plugins:
        spec.load_netconf(json.dumps({**plugin, "name": net.name, "cniVersion": net.cni_version}))
    if validate_plugins:
        runtime.Runtime(cni_path=cni_path or [runtime.DEFAULT_CNI_PATH]).validate(net)
    return text


def config_filename(name: str, config: Optional[Dict[str, Any]], priority: int, filename: Optional[str]) -> str:
    if filename is None:
        ext = ".conf" if config is not None and "plugins" not in config else ".conflist"
        filename = f"{priority:02d}-{name}{ext}"
    if "/" in filename or filename.startswith(".") or os.path.splitext(filename)[1] not in CONF_EXTENSIONS:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid config file name {filename!r}: a plain file name ending in "
                       f"{', '.join(CONF_EXTENSIONS)} (libcni reads no other)")
    return filename


def file_mode(mode: Any) -> int:
    """A file mode given as an octal string ("0644") or an int (YAML's 0644 is already 420)."""
    try:
        value = int(mode, 8) if isinstance(mode, str) else int(mode)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value <= 0o7777:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid file mode {mode!r}: use an octal string like '0644'")
    return value


def ensure_config_file(path: str, text: Optional[str], mode: int = 0o600, check_mode: bool = False) -> Change:
    """Write `text` to `path` atomically (tmp + rename) when it differs; None removes the file."""
    try:
        with open(path, encoding="utf-8") as fh:
            current: Optional[str] = fh.read()
        current_mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        current, current_mode = None, None
    except (OSError, UnicodeDecodeError) as exc:
        raise CNIError(spec.ERR_IO, f"cannot read {path}: {exc}") from None
    changed = current != text or (text is not None and current_mode != mode)
    if changed and not check_mode:
        if text is None:
            os.unlink(path)
        else:
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fsutil.write_atomic(path, text.encode(), mode)
    return Change(changed, {"path": path, "content": current or ""}, {"path": path, "content": text or ""})


# --- host port mappings (the engine's portmap plugin, called in-process through its CNI API) -----

PORTMAP_STATE_DIR = "/var/lib/cni/cnikit/portmap"


def ensure_portmap(network: str, container_id: str, container_ips: List[str], mappings: List[Dict[str, Any]],
                   present: bool = True, backend: Optional[str] = None, snat: bool = True, ifname: str = "eth0",
                   netns: str = "", state_dir: str = PORTMAP_STATE_DIR, check_mode: bool = False) -> Change:
    """The port mappings of one container, as a set owned by (network, container_id).

    The plugin's CHECK tells whether the wanted mappings are installed, not whether others are too,
    so the set last applied is recorded in `state_dir` (like the runtime's result cache). present:
    nothing when CHECK passes and the record equals the wanted set; else DEL (the recorded set, then
    the wanted one) and ADD. absent: DEL when CHECK passes or a record exists.
    """
    spec.validate_name(network)
    skel.validate_container_id(container_id)
    ips = []
    for ip in container_ips:
        try:
            ips.append(ipaddress.ip_interface(ip).with_prefixlen)
        except ValueError:
            raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid container IP {ip!r}") from None
    if not ips:
        raise CNIError(spec.ERR_INVALID_CONFIG, "container_ip: at least one container address is needed")
    wanted = {"mappings": mappings, "container_ips": ips, "backend": backend or "nftables", "snat": snat}
    record = os.path.join(state_dir, f"{network}-{container_id}.json")

    def run(command: str, applied: Dict[str, Any]) -> None:
        conf = {"cniVersion": "1.0.0", "name": network, "type": "portmap", "snat": applied["snat"],
                "backend": applied["backend"], "runtimeConfig": {"portMappings": applied["mappings"]},
                "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": a} for a in applied["container_ips"]]}}
        ctx = skel.Context(command=command, container_id=container_id, netns=netns, ifname=ifname)
        invoke.call_builtin("portmap", ctx, spec.load_netconf(json.dumps(conf)))

    try:
        run("CHECK", wanted)
        installed = True
    except CNIError as err:
        if err.code == spec.ERR_INVALID_CONFIG:
            raise  # a bad mapping, protocol or backend: not a question of what is installed
        installed = False
    try:
        with open(record, encoding="utf-8") as fh:
            recorded: Optional[Dict[str, Any]] = json.load(fh)
    except (OSError, ValueError):
        recorded = None
    view = {"network": network, "container_id": container_id}
    before = {**view, "state": "present" if installed or recorded else "absent",
              **(recorded or (wanted if installed else {}))}
    after = {**view, "state": "present", **wanted} if present else {**view, "state": "absent"}
    if (present and installed and recorded == wanted) or (not present and not installed and recorded is None):
        return Change(False, before, before)
    if not check_mode:
        if recorded is not None and recorded != wanted:
            run("DEL", recorded)
        run("DEL", wanted)
        if present:
            run("ADD", wanted)
            ensure_config_file(record, json.dumps(wanted, sort_keys=True), 0o600)
        elif recorded is not None:
            os.unlink(record)
    return Change(True, before, after)
