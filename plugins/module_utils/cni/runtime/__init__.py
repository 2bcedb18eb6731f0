"""The runtime side of CNI, like Go `libcni` (api.go + conf.go): load a network configuration list,
run it as a chain (ADD/CHECK/DEL/GC/STATUS), inject capability args, keep the result cache.

Differences from libcni, on purpose (docs/runtime.md):
- plugins of ours are called in-process (no fork/exec); foreign ones are exec'd from CNI_PATH
  after a VERSION probe (cached per binary);
- DEL is best-effort across the chain: a failing plugin's DEL does not stop the others', errors are
  joined at the end (libcni stops at the first one and leaks the rest of the chain);
- a failed ADD is followed by a DEL of the whole chain (the spec asks runtimes to do that);
- ADD refuses an attachment that is already cached (spec: no second ADD without a DEL).
The cache file is byte-compatible with libcni's, so a node can switch between podman/containerd and
this runtime and both see the same attachments.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .. import faults
from ..protocol import fsutil, invoke, registry, skel, spec
from ..protocol.spec import CNIError

log = logging.getLogger(__name__)

DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_CACHE_DIR = "/var/lib/cni"
DEFAULT_CNI_PATH = "/opt/cni/bin"
CACHE_KIND = "cniCacheV1"
Result = Dict[str, Any]


def go_json(obj: Any, sort_keys: bool = False) -> str:
    """Compact JSON as Go's encoding/json writes it (HTML characters escaped, UTF-8 kept)."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys)
    for ch, esc in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


@dataclass
class RuntimeConf:
    """libcni RuntimeConf: one attachment of a network to a container."""

    container_id: str
    netns: str = ""
    ifname: str = "eth0"
    args: List[Tuple[str, str]] = field(default_factory=list)
    # None = "not given": DEL/CHECK then reuse the capability args cached by ADD
    capability_args: Optional[Dict[str, Any]] = None


@dataclass
class NetworkConfigList:
    """A parsed .conflist (a single .conf is wrapped into a one-plugin list)."""

    name: str
    cni_version: str
    plugins: List[Dict[str, Any]]
    raw: bytes  # the list as loaded; it goes into the cache file like libcni's `Bytes`
    disable_check: bool = False
    disable_gc: bool = False


# --- config loading (libcni conf.go) ------------------------------------------------------

def _invalid(msg: str, details: str = "") -> CNIError:
    return CNIError(spec.ERR_INVALID_CONFIG, msg, details)


def _pick_version(raw: Dict[str, Any]) -> str:
    """cniVersion, or (spec 1.1 `cniVersions`) the highest listed version not newer than ours."""
    version = raw.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIError(spec.ERR_DECODE, "error parsing configuration list",
                       f"invalid cniVersion type {type(version).__name__}")
    versions = raw.get("cniVersions")
    if versions is None:
        return version
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise CNIError(spec.ERR_DECODE, "error parsing configuration list", "cniVersions must be a list of strings")
    candidates = list(versions) + ([version] if version else [])
    usable = [v for v in candidates if spec.parse_version(v) <= spec.parse_version(spec.CURRENT_VERSION)]
    return max(usable, key=spec.parse_version) if usable else version


def network_from_bytes(data: bytes) -> NetworkConfigList:
    """Parse a conflist (or a single plugin config, which is up-converted) from JSON bytes."""
    raw = spec.decode_json(data, "configuration list")
    if not isinstance(raw, dict):
        raise CNIError(spec.ERR_DECODE, "error parsing configuration list", "not a JSON object")
    if "plugins" not in raw and "type" in raw:
        # libcni ConfListFromConf: re-marshal so that `raw` is the list that runs
        version = raw.get("cniVersion") or ""
        return network_from_bytes(go_json({"cniVersion": version, "name": raw.get("name"), "plugins": [raw]},
                                          sort_keys=True).encode())
    name = raw.get("name")
    if not isinstance(name, str):
        raise CNIError(spec.ERR_DECODE, "error parsing configuration list",
                       "no name" if name is None else f"invalid name type {type(name).__name__}")
    plugins = raw.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise _invalid("error parsing configuration list", "no plugins in list")
    for i, plugin in enumerate(plugins):
        if not isinstance(plugin, dict):
            raise _invalid(f"failed to parse plugin config {i}", "not a JSON object")
        if not plugin.get("type"):
            raise _invalid(f"failed to parse plugin config {i}", "missing 'type'")
    return NetworkConfigList(name=name, cni_version=_pick_version(raw), plugins=plugins, raw=bytes(data),
                             disable_check=spec.get_bool(raw, "disableCheck"),
                             disable_gc=spec.get_bool(raw, "disableGC"))


def network_from_dict(conf: Mapping[str, Any]) -> NetworkConfigList:
    """A conflist given as a dict (e.g. by the Ansible module); bytes as Go would marshal them."""
    return network_from_bytes(go_json(dict(conf), sort_keys=True).encode())


def _conf_files(conf_dir: str, extensions: Tuple[str, ...]) -> List[str]:
    try:
        names = os.listdir(conf_dir)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(conf_dir, n) for n in names
                  if os.path.splitext(n)[1] in extensions and not os.path.isdir(os.path.join(conf_dir, n)))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except OSError as exc:
        raise CNIError(spec.ERR_IO, f"error reading {path}", exc.strerror or str(exc)) from None


def load_network(conf_dir: str, name: str) -> NetworkConfigList:
    """libcni LoadNetworkConf: first *.conflist (lexical order) with that name, else *.conf/*.json."""
    lists = _conf_files(conf_dir, (".conflist",))
    for path in lists:
        net = network_from_bytes(_read(path))
        if net.name == name:
            return net
    singles = _conf_files(conf_dir, (".conf", ".json"))
    if not singles and not lists:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"no net configurations found in {conf_dir}")
    for path in singles:
        raw = spec.decode_json(_read(path), "configuration")
        if isinstance(raw, dict) and raw.get("name") == name:
            return network_from_bytes(_read(path))
    raise CNIError(spec.ERR_INVALID_CONFIG, f'no net configuration with name "{name}" in {conf_dir}')


def list_networks(conf_dir: str) -> List[Tuple[str, str]]:
    """(name, file) of every loadable network in `conf_dir`, in libcni's lookup order."""
    out = []
    for path in _conf_files(conf_dir, (".conflist",)) + _conf_files(conf_dir, (".conf", ".json")):
        try:
            out.append((network_from_bytes(_read(path)).name, path))
        except CNIError:
            continue
    return out


def cached_netns(att: Mapping[str, Any]) -> str:
    """The netns of a cached attachment. libcni before v1.2 (podman 4.3) did not store `netns`; the
    result's container interface still names it, and without it a DEL can't find the addresses
    (Go bridge then leaks its masquerade chain, plugins#810)."""
    if att.get("netns"):
        return str(att["netns"])
    result = att.get("result") if isinstance(att.get("result"), dict) else {}
    for iface in result.get("interfaces") or []:
        if isinstance(iface, dict) and iface.get("name") == att.get("ifName") and iface.get("sandbox"):
            return str(iface["sandbox"])
    return ""


# --- the runtime --------------------------------------------------------------------------

class Runtime:
    """libcni's CNIConfig: runs network lists against attachments.

    `cni_path` is searched like libcni's FindInPath; a type found there that is one of our launchers,
    or not found at all but built in, runs in this process.
    """

    def __init__(self, conf_dir: str = DEFAULT_CONF_DIR, cni_path: Union[str, Sequence[str], None] = None,
                 cache_dir: str = DEFAULT_CACHE_DIR, environ: Optional[Mapping[str, str]] = None) -> None:
        self.conf_dir = conf_dir
        if cni_path is None:
            cni_path = os.environ.get("CNI_PATH") or DEFAULT_CNI_PATH
        if isinstance(cni_path, str):
            cni_path = [p for p in cni_path.split(os.pathsep) if p]
        self.cni_path: List[str] = list(cni_path)
        self.cache_dir = cache_dir
        self.environ: Dict[str, str] = dict(os.environ if environ is None else environ)
        self._versions: Dict[Tuple[str, int, int], List[str]] = {}

    # -- configs

    def load_network(self, name: str) -> NetworkConfigList:
        return load_network(self.conf_dir, name)

    @staticmethod
    def network_from_dict(conf: Mapping[str, Any]) -> NetworkConfigList:
        return network_from_dict(conf)

    # -- plugin resolution and invocation

    def resolve(self, ptype: str) -> Optional[str]:
        """None to run `ptype` in-process, else the path of the foreign binary to exec."""
        try:
            return invoke.resolve(ptype, self.cni_path)
        except CNIError:
            raise _invalid(f'failed to find plugin "{ptype}" in path {self.cni_path}') from None

    def version_info(self, ptype: str) -> List[str]:
        """Versions a plugin supports (VERSION for foreign binaries, cached per binary)."""
        path = self.resolve(ptype)
        if path is None:
            return list(registry.load(ptype).supported_versions)
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size)
        if key not in self._versions:
            env = self._env("VERSION", RuntimeConf(container_id="", netns="dummy", ifname="dummy"))
            env["CNI_PATH"] = "dummy"  # libcni: fake values for plugins built on an old skel
            try:
                info = invoke.exec_plugin(path, env, go_json({"cniVersion": spec.CURRENT_VERSION}).encode())
            except CNIError as err:
                if err.msg != "unknown CNI_COMMAND: VERSION":
                    raise
                info = {"supportedVersions": ["0.1.0"]}
            versions = (info or {}).get("supportedVersions") or ["0.1.0", "0.2.0"]
            self._versions[key] = [str(v) for v in versions]
        return self._versions[key]

    def validate(self, net: NetworkConfigList) -> List[str]:
        """libcni ValidateNetworkList: every plugin found and speaking the list's version.
        Returns the capabilities the list declares."""
        spec.validate_name(net.name)
        version = net.cni_version or "0.1.0"
        spec.parse_version(version)
        errors, caps = [], set()
        for plugin in net.plugins:
            ptype = plugin.get("type")
            if not isinstance(ptype, str) or "/" in ptype:
                errors.append(_invalid("invalid plugin type", repr(ptype)))
                continue
            try:
                if version not in self.version_info(ptype):
                    errors.append(CNIError(spec.ERR_INCOMPATIBLE_VERSION,
                                           f'plugin {ptype} does not support config version "{version}"'))
            except CNIError as err:
                errors.append(err)
            caps.update(k for k, v in (plugin.get("capabilities") or {}).items() if v is True)
        if errors:
            raise CNIError(errors[0].code, "; ".join(str(e) for e in errors))
        return sorted(caps)

    def _env(self, command: str, rt: RuntimeConf) -> Dict[str, str]:
        """invoke.Args.AsEnv: our environment plus the CNI_* variables."""
        env = dict(self.environ)
        env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": rt.container_id, "CNI_NETNS": rt.netns,
                    "CNI_ARGS": ";".join(f"{k}={v}" for k, v in rt.args), "CNI_IFNAME": rt.ifname,
                    "CNI_PATH": os.pathsep.join(self.cni_path)})
        return env

    def _plugin_conf(self, net: NetworkConfigList, plugin: Dict[str, Any], rt: Optional[RuntimeConf],
                     prev: Optional[Result] = None, extra: Optional[Dict[str, Any]] = None) -> bytes:
        """libcni buildOneConfig: name/cniVersion from the list, prevResult, runtimeConfig."""
        conf = dict(plugin)
        conf["name"] = net.name
        conf["cniVersion"] = net.cni_version
        if prev is not None:
            conf["prevResult"] = spec.result_to_dict(prev, net.cni_version)
        if rt is not None and rt.capability_args:
            caps = plugin.get("capabilities") or {}
            rc = {k: v for k, v in rt.capability_args.items() if caps.get(k) is True}
            if rc:
                conf["runtimeConfig"] = rc
        conf.update(extra or {})
        return go_json(conf, sort_keys=True).encode()

    def _invoke(self, command: str, net: NetworkConfigList, plugin: Dict[str, Any], rt: RuntimeConf,
                prev: Optional[Result] = None, extra: Optional[Dict[str, Any]] = None,
                with_rt: bool = True) -> Optional[Result]:
        """Run one verb of one plugin; ADD returns the internal result."""
        ptype = plugin["type"]
        data = self._plugin_conf(net, plugin, rt if with_rt else None, prev, extra)
        env = self._env(command, rt)
        path = self.resolve(ptype)
        if path is not None:
            return invoke.exec_result(path, env, data, command, net.cni_version, f"plugin {ptype}")
        # in-process: the same steps as skel.execute, without the JSON round trip of the result
        try:
            ctx = skel.context_from_env(env)
            conf = spec.load_netconf(data)
            if command not in ("GC", "STATUS"):
                skel.validate_attachment(ctx)
            result = invoke.call_builtin(ptype, ctx, conf)
        except CNIError:
            raise
        except Exception as exc:  # noqa: BLE001 - a plugin bug must surface as a CNI error, like an exec'd one
            log.debug("plugin %s %s crashed:\n%s", ptype, command, traceback.format_exc())
            raise CNIError(spec.ERR_INTERNAL, str(exc) or type(exc).__name__) from exc
        if result is None:
            return None
        # what an exec'd plugin would have printed for this version, read back
        return spec.result_from_dict(spec.result_to_dict(result, net.cni_version))

    @staticmethod
    def _describe(plugin: Dict[str, Any]) -> str:
        out = f'type="{plugin.get("type")}"'
        if plugin.get("name"):
            out += f' name="{plugin["name"]}"'
        return out

    def _wrap(self, err: CNIError, plugin: Dict[str, Any], verb: str) -> CNIError:
        return CNIError(err.code, f"plugin {self._describe(plugin)} failed ({verb}): {err.msg}", err.details)

    @staticmethod
    def _check_attachment(net: NetworkConfigList, rt: RuntimeConf) -> None:
        skel.validate_container_id(rt.container_id)
        spec.validate_name(net.name)
        skel.validate_ifname(rt.ifname)

    # -- the verbs

    def add(self, net: NetworkConfigList, rt: RuntimeConf) -> Result:
        """AddNetworkList: ADD in order with prevResult chained; cache and return the final result
        (shaped for the list's cniVersion). On failure the whole chain is DELed, then the error raised."""
        self._check_attachment(net, rt)
        if self.cached_result(net, rt) is not None:
            raise CNIError(spec.ERR_INTERNAL,
                           f'network "{net.name}" is already attached to container "{rt.container_id}" '
                           f'as "{rt.ifname}" (cached result exists); DEL it first')
        self.validate(net)
        result: Optional[Result] = None
        for plugin in net.plugins:
            try:
                result = self._invoke("ADD", net, plugin, rt, result)
            except CNIError as err:
                failure = self._wrap(err, plugin, "add")
                try:
                    self._delete_chain(net, rt, result)
                except CNIError as cleanup:
                    failure.details = "; ".join(x for x in (failure.details, f"cleanup: {cleanup}") if x)
                raise failure from None
        if result is None:  # a validated list has at least one plugin; never emit an empty result
            raise CNIError(spec.ERR_INVALID_CONFIG, f"network {net.name!r} has no plugins")
        out = spec.result_to_dict(result, net.cni_version)
        faults.point("runtime.before_cache_write")
        self._cache_write(net, rt, out)
        return out

    def check(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """CheckNetworkList: every plugin in order, each given the cached result."""
        if not spec.version_ge(net.cni_version or "0.1.0", "0.4.0"):
            raise CNIError(spec.ERR_INCOMPATIBLE_VERSION,
                           f'configuration version "{net.cni_version}" does not support the CHECK command')
        if net.disable_check:
            return
        self._check_attachment(net, rt)
        cached = self._cache_read(net, rt)
        if cached is None:
            raise CNIError(spec.ERR_UNKNOWN_CONTAINER,
                           f'no cached result for network "{net.name}", container "{rt.container_id}", '
                           f'interface "{rt.ifname}": nothing to CHECK (was ADD run?)')
        rt = self._with_cached_caps(rt, cached)
        prev = spec.result_from_dict(cached["result"])
        self.validate(net)
        for plugin in net.plugins:
            try:
                self._invoke("CHECK", net, plugin, rt, prev)
            except CNIError as err:
                raise self._wrap(err, plugin, "check") from None

    def delete(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        """DelNetworkList, best-effort: every plugin in reverse order gets DEL with the cached result
        even if an earlier one failed; errors are joined. The cache entry goes only when all succeed."""
        skel.validate_container_id(rt.container_id)
        spec.validate_name(net.name)
        skel.validate_ifname(rt.ifname)  # it becomes part of the cache file's path
        prev = None
        cached = None
        if spec.version_ge(net.cni_version or "0.1.0", "0.4.0"):
            try:
                cached = self._cache_read(net, rt)
            except CNIError:
                self._cache_remove(net, rt)  # libcni: an unreadable cache is dropped, DEL goes on
            if cached is not None:
                prev = spec.result_from_dict(cached["result"]) if cached.get("result") else None
        self._delete_chain(net, self._with_cached_caps(rt, cached), prev)
        self._cache_remove(net, rt)

    def _delete_chain(self, net: NetworkConfigList, rt: RuntimeConf, prev: Optional[Result]) -> None:
        errors = []
        for plugin in reversed(net.plugins):
            try:
                self._invoke("DEL", net, plugin, rt, prev)
            except CNIError as err:
                errors.append(self._wrap(err, plugin, "delete"))
            faults.point("runtime.del_after_plugin")
        if errors:
            raise CNIError(errors[0].code, "; ".join(e.msg for e in errors),
                           "; ".join(e.details for e in errors if e.details))

    def gc(self, net: NetworkConfigList, valid_attachments: Optional[Iterable[Mapping[str, str]]] = None) -> None:
        """GCNetworkList: DEL every cached attachment of this network that is not valid, then (1.1+)
        send GC with the valid list to every plugin. The list sent is always explicit (None = []:
        nothing is valid); the plugins collect nothing from a GC without one (spec.NoKeepList)."""
        if net.disable_gc:
            return
        valid = [{"containerID": a["containerID"], "ifname": a["ifname"]} for a in (valid_attachments or [])]
        keep = {(a["containerID"], a["ifname"]) for a in valid}
        errors: List[str] = []
        code = 0
        for att in self.cached_attachments():
            if att["networkName"] != net.name or (att["containerId"], att["ifName"]) in keep:
                continue
            rt = RuntimeConf(container_id=att["containerId"], netns=cached_netns(att), ifname=att["ifName"],
                             args=[(k, v) for k, v in att.get("cniArgs") or []],
                             capability_args=att.get("capabilityArgs"))
            try:
                self.delete(net, rt)
            except CNIError as err:
                code = code or err.code
                errors.append(f"failed to delete stale attachment {rt.container_id} {rt.ifname}: {err}")
        if spec.version_ge(net.cni_version or "0.1.0", "1.1.0"):
            # both keys: the spec's old name and the fixed one (cni#1101), as libcni sends them
            extra = {"cni.dev/valid-attachments": valid, "cni.dev/attachments": valid}
            for plugin in net.plugins:
                try:
                    self._invoke("GC", net, plugin, RuntimeConf(container_id="", ifname=""), extra=extra,
                                 with_rt=False)
                except CNIError as err:
                    code = code or err.code
                    errors.append(f"failed to GC plugin {plugin['type']}: {err}")
        if errors:
            raise CNIError(code, "; ".join(errors))

    def status(self, net: NetworkConfigList) -> None:
        """GetStatusNetworkList: 1.1+ only; stops at the first plugin that is not ready."""
        if not spec.version_ge(net.cni_version or "0.1.0", "1.1.0"):
            return
        for plugin in net.plugins:
            self._invoke("STATUS", net, plugin, RuntimeConf(container_id="", ifname=""), with_rt=False)

    # -- the result cache (libcni format and path)

    def cache_path(self, net_name: str, rt: RuntimeConf) -> str:
        if not net_name or not rt.container_id or not rt.ifname:
            raise CNIError(spec.ERR_INVALID_ENV, "cache file path requires network name, container ID and "
                           f"interface name ({net_name!r}, {rt.container_id!r}, {rt.ifname!r})")
        spec.validate_name(net_name)  # each a single path component, whichever verb asks
        skel.validate_container_id(rt.container_id)
        skel.validate_ifname(rt.ifname)
        return os.path.join(self.cache_dir, "results", f"{net_name}-{rt.container_id}-{rt.ifname}")

    def _cache_write(self, net: NetworkConfigList, rt: RuntimeConf, result: Dict[str, Any]) -> None:
        # field order of libcni's cachedInfo struct; the map-typed fields come out key-sorted
        cached: Dict[str, Any] = {"kind": CACHE_KIND, "containerId": rt.container_id,
                                  "config": base64.b64encode(net.raw).decode(), "ifName": rt.ifname,
                                  "networkName": net.name}
        if rt.netns:
            cached["netns"] = rt.netns
        if rt.args:
            cached["cniArgs"] = [[k, v] for k, v in rt.args]
        if rt.capability_args:
            cached["capabilityArgs"] = rt.capability_args
        cached["result"] = result
        text = go_json({k: v for k, v in cached.items() if k not in ("capabilityArgs", "result")})
        tail = "".join(f',"{k}":{go_json(cached[k], sort_keys=True)}' for k in ("capabilityArgs", "result")
                       if k in cached)
        path = self.cache_path(net.name, rt)
        fsutil.state_dir(os.path.dirname(path), 0o700)
        fsutil.write_atomic(path, (text[:-1] + tail + "}").encode(), 0o600)

    def _cache_read(self, net: NetworkConfigList, rt: RuntimeConf) -> Optional[Dict[str, Any]]:
        """The cached entry (None if absent); CNIError if it is unreadable or of another kind."""
        try:
            with open(self.cache_path(net.name, rt), "rb") as fh:
                data = fh.read()
        except OSError:
            return None
        cached = spec.decode_json(data, f'cached network "{net.name}" config')
        if not isinstance(cached, dict):
            raise CNIError(spec.ERR_DECODE, f'cached network "{net.name}" config is not an object')
        if cached.get("kind") != CACHE_KIND:
            if "cniVersion" in cached:  # libcni's legacy cache: the bare result
                return {"result": cached}
            raise CNIError(spec.ERR_DECODE, f'read cached network "{net.name}" config has wrong kind: '
                           f'{cached.get("kind")}')
        return cached

    def _cache_remove(self, net: NetworkConfigList, rt: RuntimeConf) -> None:
        try:
            os.unlink(self.cache_path(net.name, rt))
        except (OSError, CNIError):
            pass

    @staticmethod
    def _with_cached_caps(rt: RuntimeConf, cached: Optional[Dict[str, Any]]) -> RuntimeConf:
        if rt.capability_args is not None or not cached:
            return rt
        return RuntimeConf(container_id=rt.container_id, netns=rt.netns, ifname=rt.ifname, args=rt.args,
                           capability_args=cached.get("capabilityArgs") or {})

    def cached_result(self, net: NetworkConfigList, rt: RuntimeConf) -> Optional[Result]:
        """GetNetworkListCachedResult: the cached final result shaped for the list's version, or None."""
        try:
            cached = self._cache_read(net, rt)
        except CNIError:
            return None
        if not cached or not cached.get("result"):
            return None
        return spec.result_to_dict(spec.result_from_dict(cached["result"]), net.cni_version)

    def cached_attachments(self, container_id: str = "") -> List[Dict[str, Any]]:
        """GetCachedAttachments: the decoded cache entries (optionally of one container), sorted by file."""
        directory = os.path.join(self.cache_dir, "results")
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if container_id and f"-{container_id}-" not in name:
                continue
            try:
                with open(os.path.join(directory, name), "rb") as fh:
                    cached = json.loads(fh.read())
            except (OSError, ValueError):
                continue
            if not isinstance(cached, dict) or cached.get("kind") != CACHE_KIND:
                continue
            if container_id and cached.get("containerId") != container_id:
                continue
            if not cached.get("ifName") or not cached.get("networkName"):
                continue
            out.append(cached)
        return out
