"""CNI spec model: versions, errors, config parsing/validation and results per version.

Pure stdlib (json, re) so that VERSION and argument validation never pull in pyroute2.
The result model follows the Go `types` packages: internally every result is kept in the
current (1.1.0) shape and converted on output to the shape the requested cniVersion emits.
"""
from __future__ import annotations

import json
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

# --- versions ---------------------------------------------------------------------------

CURRENT_VERSION = "1.1.0"
LEGACY_VERSIONS = ("0.1.0", "0.2.0")
SUPPORTED_VERSIONS: Tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# --- error codes (SPEC.md "Error") ------------------------------------------------------

ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11
ERR_NOT_AVAILABLE = 50
ERR_DEGRADED = 51
ERR_INTERNAL = 999

NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
# Names and container IDs become file names (dataDir/<net>, the result cache): one path component.
MAX_NAME = 255


class CNIError(Exception):
    """An error with a spec code; the skel prints it as the error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = int(code)
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: Optional[str] = None) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        if cni_version:
            out["cniVersion"] = cni_version
        out["code"] = self.code
        out["msg"] = self.msg
        if self.details:
            out["details"] = self.details
        return out

    def __str__(self) -> str:
        return f"{self.msg}: {self.details}" if self.details else self.msg


def parse_version(version: str) -> Tuple[int, int, int]:
    """Parse a semver string like the Go `version.ParseVersion` (major.minor.patch, ints)."""
    if not isinstance(version, str):
        raise CNIError(ERR_DECODE, "invalid version type", repr(type(version).__name__))
    parts = version.split(".")
    if len(parts) > 3 or not version:
        raise CNIError(ERR_DECODE, f'invalid version "{version}": too many dots')
    nums = []
    for p in parts:
        if not p.isdigit() or not p.isascii():
            raise CNIError(ERR_DECODE, f'failed to convert version "{version}"')
        nums.append(int(p))
    while len(nums) < 3:
        nums.append(0)
    return nums[0], nums[1], nums[2]


def version_ge(version: str, other: str) -> bool:
    return parse_version(version) >= parse_version(other)


def check_version_supported(version: str, supported: Iterable[str] = SUPPORTED_VERSIONS) -> None:
    supported = list(supported)
    if version not in supported:
        raise CNIError(ERR_INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports [{" ".join(json.dumps(v) for v in supported)}]')


def version_info(supported: Iterable[str] = SUPPORTED_VERSIONS) -> Dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(supported)}


# --- config -----------------------------------------------------------------------------

def decode_json(data: bytes | str, what: str = "network configuration") -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CNIError(ERR_DECODE, f"error parsing {what}", str(exc)) from None


def validate_name(name: Any, what: str = "network name") -> str:
    if not isinstance(name, str) or name == "":
        raise CNIError(ERR_INVALID_CONFIG, f"missing {what}")
    if not NAME_RE.match(name) or "\n" in name:
        raise CNIError(ERR_INVALID_CONFIG, f"invalid characters found in {what}", name)
    if len(name) > MAX_NAME:
        raise CNIError(ERR_INVALID_CONFIG, f"{what} is too long", f"at most {MAX_NAME} characters")
    return name


def load_netconf(data: bytes | str) -> Dict[str, Any]:
    """Decode and validate one plugin's network config (stdin of a plugin)."""
    conf = decode_json(data)
    if not isinstance(conf, dict):
        raise CNIError(ERR_DECODE, "error parsing network configuration", "config is not a JSON object")
    validate_name(conf.get("name"))
    version = conf.get("cniVersion", "")
    if version in (None, ""):
        version = "0.1.0"  # Go decoder: a config without cniVersion is 0.1.0
    if not isinstance(version, str):
        raise CNIError(ERR_DECODE, "error parsing network configuration", "cniVersion must be a string")
    conf["cniVersion"] = version
    ptype = conf.get("type")
    if ptype is not None and (not isinstance(ptype, str) or "/" in ptype or "\\" in ptype):
        raise CNIError(ERR_INVALID_CONFIG, "invalid plugin type", str(ptype))
    ipam = conf.get("ipam")
    if ipam is not None and not isinstance(ipam, dict):
        raise CNIError(ERR_DECODE, "error parsing network configuration", "ipam must be an object")
    return conf


GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


class NoKeepList(Exception):
    """A GC config that does not say what is valid (key absent, null or not a list of objects).

    Such a GC must collect nothing: upstream cnitool (libcni with no GCArgs) sends exactly this
    after DELing its own cached attachments, and "no list" read as "nothing is valid" would
    release the leases and rules of every other runtime on the node using the same network."""


def valid_attachments(conf: Dict[str, Any]) -> set[Tuple[str, str]]:
    """GC's keep-list as (containerID, ifname); libcni sends both the current and the pre-1.1 key.
    An explicit empty list means nothing is valid; no usable list raises NoKeepList (see there).
    skel.gc makes that decision once for every plugin's GC, so a plugin's gc() only ever sees a
    config with a list."""
    raw = conf.get(GC_KEYS[0])
    key = GC_KEYS[0]
    if raw is None and conf.get(GC_KEYS[1]) is not None:
        raw, key = conf[GC_KEYS[1]], GC_KEYS[1]
    if raw is None:
        raise NoKeepList(f"the config has no {GC_KEYS[0]} list")
    if not isinstance(raw, list) or not all(isinstance(a, dict) for a in raw):
        raise NoKeepList(f"{key} is not a list of objects")
    return {(str(a.get("containerID", "")).strip(), str(a.get("ifname", ""))) for a in raw}


def get_bool(conf: Dict[str, Any], key: str, default: bool = False) -> bool:
    """libcni-style boolean: true/false or the strings "true"/"false" in any case."""
    val = conf.get(key, default)
    if isinstance(val, bool):
        return val
    if isinstance(val, str) and val.lower() in ("true", "false"):
        return val.lower() == "true"
    raise CNIError(ERR_INVALID_CONFIG, f"invalid value for {key!r}", repr(val))


# --- results ----------------------------------------------------------------------------

# Field order follows the Go structs so `json.dumps` output reads like Go's.
_IFACE_FIELDS = ("name", "mac", "mtu", "sandbox", "socketPath", "pciID")
_ROUTE_FIELDS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
_DNS_FIELDS = ("nameservers", "domain", "search", "options")


def _ip_family(cidr: str) -> str:
    return "6" if ":" in cidr else "4"


def _clean_dns(dns: Any) -> Dict[str, Any]:
    if not isinstance(dns, dict):
        return {}
    return {k: dns[k] for k in _DNS_FIELDS if dns.get(k)}


def _clean_route(route: Dict[str, Any], version: str) -> Dict[str, Any]:
    fields = _ROUTE_FIELDS if version_ge(version, "1.1.0") else ("dst", "gw")
    return {k: route[k] for k in fields if route.get(k) not in (None, "")}


def result_from_dict(raw: Any) -> Dict[str, Any]:
    """Convert a result of any version into the internal (current) shape."""
    if not isinstance(raw, dict):
        raise CNIError(ERR_DECODE, "failed to parse prevResult", "result is not a JSON object")
    version = raw.get("cniVersion") or "0.1.0"
    if not isinstance(version, str):
        raise CNIError(ERR_DECODE, "failed to parse prevResult", "cniVersion must be a string")
    parse_version(version)
    if version in LEGACY_VERSIONS:
        return _from_legacy(raw)
    try:
        interfaces = [{k: i[k] for k in _IFACE_FIELDS if k in i} for i in raw.get("interfaces") or []]
        ips = []
        for ip in raw.get("ips") or []:
            entry = {"address": str(ip["address"])}
            if ip.get("gateway"):
                entry["gateway"] = str(ip["gateway"])
            if ip.get("interface") is not None:
                entry["interface"] = int(ip["interface"])
            ips.append(entry)
        routes = [{k: r[k] for k in _ROUTE_FIELDS if k in r} for r in raw.get("routes") or []]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CNIError(ERR_DECODE, "failed to parse prevResult", f"malformed result: {exc}") from None
    return {"cniVersion": CURRENT_VERSION, "interfaces": interfaces, "ips": ips,
            "routes": routes, "dns": _clean_dns(raw.get("dns"))}


def _from_legacy(raw: Dict[str, Any]) -> Dict[str, Any]:
    ips, routes = [], []
    for key in ("ip4", "ip6"):
        block = raw.get(key)
        if not isinstance(block, dict) or not block.get("ip"):
            continue
        entry = {"address": block["ip"]}
        if block.get("gateway"):
            entry["gateway"] = block["gateway"]
        ips.append(entry)
        routes.extend({k: r[k] for k in ("dst", "gw") if k in r} for r in block.get("routes") or [])
    return {"cniVersion": CURRENT_VERSION, "interfaces": [], "ips": ips, "routes": routes,
            "dns": _clean_dns(raw.get("dns"))}


def result_to_dict(result: Dict[str, Any], version: str) -> Dict[str, Any]:
    """Shape an internal result exactly as the Go types emit it for `version`."""
    if version in LEGACY_VERSIONS:
        return _to_legacy(result, version)
    modern = version_ge(version, "1.1.0")
    with_version = not version_ge(version, "1.0.0")
    out: Dict[str, Any] = {"cniVersion": version}
    ifaces = []
    for i in result.get("interfaces") or []:
        fields = _IFACE_FIELDS if modern else ("name", "mac", "sandbox")
        ifaces.append({k: i[k] for k in fields if i.get(k) not in (None, "")})
    if ifaces:
        out["interfaces"] = ifaces
    ips = []
    for ip in result.get("ips") or []:
        entry: Dict[str, Any] = {}
        if with_version:
            entry["version"] = _ip_family(ip["address"])
        if ip.get("interface") is not None:
            entry["interface"] = ip["interface"]
        entry["address"] = ip["address"]
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        ips.append(entry)
    if ips:
        out["ips"] = ips
    routes = [_clean_route(r, version) for r in result.get("routes") or []]
    if routes:
        out["routes"] = routes
    out["dns"] = _clean_dns(result.get("dns"))
    return out


def _to_legacy(result: Dict[str, Any], version: str) -> Dict[str, Any]:
    out: Dict[str, Any] = {"cniVersion": version}
    for fam, key in (("4", "ip4"), ("6", "ip6")):
        ips = [ip for ip in result.get("ips") or [] if _ip_family(ip["address"]) == fam]
        if not ips:
            continue
        block: Dict[str, Any] = {"ip": ips[0]["address"]}
        if ips[0].get("gateway"):
            block["gateway"] = ips[0]["gateway"]
        routes = [_clean_route(r, "0.3.1") for r in result.get("routes") or []
                  if _ip_family(r.get("dst", "")) == fam]
        if routes:
            block["routes"] = routes
        out[key] = block
    out["dns"] = _clean_dns(result.get("dns"))
    return out


def new_result(interfaces: Optional[List[Dict[str, Any]]] = None, ips: Optional[List[Dict[str, Any]]] = None,
               routes: Optional[List[Dict[str, Any]]] = None, dns: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "interfaces": interfaces or [], "ips": ips or [],
            "routes": routes or [], "dns": _clean_dns(dns or {})}


def dumps(obj: Any) -> str:
    """Go's `json.MarshalIndent(v, "", "    ")` as the skel prints it."""
    return json.dumps(obj, indent=4, ensure_ascii=False)
