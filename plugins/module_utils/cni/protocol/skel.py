"""The plugin side of the protocol, like the Go `pkg/skel`: environment parsing and validation,
dispatch of CNI_COMMAND to a plugin object, and turning results/errors into stdout + exit code.

`execute()` is pure (env dict + stdin bytes in, exit code + stdout + stderr out) so the same call
serves the executable, the in-process runtime, the node agent and the tests.
"""
from __future__ import annotations

import json
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import spec
from .spec import CNIError

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
MAX_IFNAME = 15


@dataclass
class Context:
    """Everything a plugin call gets from the runtime besides the config."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: List[Tuple[str, str]] = field(default_factory=list)
    path: List[str] = field(default_factory=list)
    environ: Mapping[str, str] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)  # for the runtime's stderr (success says why)

    def arg(self, key: str, default: Optional[str] = None) -> Optional[str]:
        for k, v in self.args:
            if k == key:
                return v
        return default

    def env_for(self, command: str) -> Dict[str, str]:
        """The environment to exec a delegate with: ours, with CNI_COMMAND replaced (Go DelegateAdd)."""
        env = dict(self.environ)
        env["CNI_COMMAND"] = command
        return env


def validate_container_id(cid: str) -> None:
    if cid == "":
        raise CNIError(spec.ERR_UNKNOWN_CONTAINER, "missing containerID")
    if not spec.NAME_RE.match(cid) or "\n" in cid:
        raise CNIError(spec.ERR_INVALID_ENV, "invalid characters in containerID", cid)
    if len(cid) > spec.MAX_NAME:
        raise CNIError(spec.ERR_INVALID_ENV, "containerID is too long", f"at most {spec.MAX_NAME} characters")


def validate_ifname(name: str) -> None:
    if name == "":
        raise CNIError(spec.ERR_INVALID_ENV, "interface name is empty")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_IFNAME:
        raise CNIError(spec.ERR_INVALID_ENV, "interface name is too long",
                       f"interface name should be less than {MAX_IFNAME + 1} characters")
    if name in (".", ".."):
        raise CNIError(spec.ERR_INVALID_ENV, "interface name is . or ..")
    try:  # bytes that are not UTF-8 arrive as surrogates; every later use (store, netlink) needs text
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CNIError(spec.ERR_INVALID_ENV, "interface name is not valid UTF-8") from None
    for ch in name:
        if ch in "/:" or ch.isspace() or ch == "\0":
            raise CNIError(spec.ERR_INVALID_ENV, "interface name contains / or : or whitespace characters")


def parse_cni_args(raw: str) -> List[Tuple[str, str]]:
    """Split CNI_ARGS `K=V;K2=V2` exactly like Go `types.LoadArgs` splits it."""
    pairs: List[Tuple[str, str]] = []
    if not raw:
        return pairs
    for item in raw.split(";"):
        kv = item.split("=")
        if len(kv) != 2:
            raise CNIError(spec.ERR_INVALID_ENV, f'ARGS: invalid pair "{item}"')
        pairs.append((kv[0], kv[1]))
    return pairs


def check_known_args(args: List[Tuple[str, str]], known: Tuple[str, ...]) -> None:
    """Go LoadArgs: unknown keys are an error unless IgnoreUnknown is 1/true."""
    ignore = any(k == "IgnoreUnknown" and v.lower() in ("1", "true") for k, v in args)
    if ignore:
        return
    unknown = [f"{k}={v}" for k, v in args if k not in known and k != "IgnoreUnknown"]
    if unknown:
        raise CNIError(spec.ERR_INVALID_ENV, f"ARGS: unknown args {unknown!r}".replace("'", '"'))


def _go_bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true"):
        return True
    if low in ("0", "false"):
        return False
    raise ValueError(f"boolean unmarshal error: invalid input {text}")


def load_args(args: List[Tuple[str, str]], parsers: Mapping[str, Callable[[str], Any]],
              code: int = spec.ERR_INTERNAL) -> Dict[str, Any]:
    """Go `types.LoadArgs` into a struct whose fields are `parsers` (+ IgnoreUnknown), with Go's
    messages. Plugins call it from their own code, so Go reports its errors as 999 (ErrInternal)."""
    values: Dict[str, Any] = {}
    unknown: List[str] = []
    for key, val in args:
        pair = f"{key}={val}"
        parse = _go_bool if key == "IgnoreUnknown" else parsers.get(key)
        if parse is None:
            unknown.append(pair)
            continue
        try:
            values[key] = parse(val)
        except ValueError as exc:
            raise CNIError(code, f"ARGS: error parsing value of pair {json.dumps(pair)}: {exc}") from None
    if unknown and not values.get("IgnoreUnknown", False):
        raise CNIError(code, "ARGS: unknown args [" + " ".join(json.dumps(u) for u in unknown) + "]")
    return values


# Which variables each verb needs (skel v1.0.1 table; spec 1.1 adds CNI_PATH for GC).
_REQUIRED = {
    "CNI_CONTAINERID": ("ADD", "CHECK", "DEL"),
    "CNI_NETNS": ("ADD", "CHECK"),
    "CNI_IFNAME": ("ADD", "CHECK", "DEL"),
    "CNI_PATH": ("ADD", "CHECK", "DEL", "GC"),
}


def context_from_env(environ: Mapping[str, str]) -> Context:
    """Validate the environment in the Go skel's order (missing vars, then per-verb checks)."""
    command = environ.get("CNI_COMMAND", "")
    missing = [] if command else ["CNI_COMMAND"]
    missing += [name for name, verbs in _REQUIRED.items() if command in verbs and not environ.get(name)]
    if missing:
        raise CNIError(spec.ERR_INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    ctx = Context(command=command, environ=environ,
                  container_id=environ.get("CNI_CONTAINERID", ""), netns=environ.get("CNI_NETNS", ""),
                  ifname=environ.get("CNI_IFNAME", ""),
                  path=[p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p])
    return ctx


def validate_attachment(ctx: Context) -> None:
    """Per-attachment checks the Go skel makes after the config check (not for GC/STATUS)."""
    validate_container_id(ctx.container_id)
    validate_ifname(ctx.ifname)
    if "\0" in ctx.netns:
        raise CNIError(spec.ERR_INVALID_ENV, "invalid CNI_NETNS", "contains NUL")
    if ctx.command not in COMMANDS:
        raise CNIError(spec.ERR_INVALID_ENV, f"unknown CNI_COMMAND: {ctx.command}")
    ctx.args = parse_cni_args(ctx.environ.get("CNI_ARGS", ""))


# --- dispatch ---------------------------------------------------------------------------

PluginFactory = Callable[[], Any]


def call(plugin: Any, ctx: Context, conf: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Run one verb on a plugin object; returns the internal result for ADD, else None.

    `conf` has been through spec.load_netconf. prevResult is converted into the internal
    result shape under the key "prevResult" before the plugin sees it.
    """
    version = conf["cniVersion"]
    spec.check_version_supported(version, plugin.supported_versions)
    if ctx.command == "CHECK" and not spec.version_ge(version, "0.4.0"):
        raise CNIError(spec.ERR_INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    if ctx.command in ("GC", "STATUS") and not spec.version_ge(version, "1.1.0"):
        raise CNIError(spec.ERR_INCOMPATIBLE_VERSION, f"config version does not allow {ctx.command}")
    if conf.get("prevResult") is not None:
        conf["prevResult"] = spec.result_from_dict(conf["prevResult"])
    if ctx.command == "ADD":
        return plugin.add(ctx, conf)
    if ctx.command == "CHECK":
        plugin.check(ctx, conf)
    elif ctx.command == "DEL":
        plugin.delete(ctx, conf)
    elif ctx.command == "GC":
        gc(plugin, ctx, conf)
    elif ctx.command == "STATUS":
        plugin.status(ctx, conf)
    return None


def gc(plugin: Any, ctx: Context, conf: Dict[str, Any]) -> None:
    """GC, decided here once for every plugin: no usable keep-list collects nothing and succeeds
    (cnitool sends none), saying why on stderr; an explicit list, even empty, is obeyed."""
    try:
        spec.valid_attachments(conf)
    except spec.NoKeepList as why:
        ctx.notes.append(f"{conf.get('type') or 'plugin'} GC: nothing collected: {why} "
                         f"(an explicit list, even an empty one, says what is still valid)")
        return
    plugin.gc(ctx, conf)


def execute(factory: PluginFactory, environ: Mapping[str, str], stdin: bytes,
            supported: Tuple[str, ...] = spec.SUPPORTED_VERSIONS) -> Tuple[int, str, str]:
    """The whole executable: (exit code, stdout, stderr). Never raises, never prints a traceback
    on stdout; an unexpected exception becomes code 999 with the traceback on stderr."""
    command = environ.get("CNI_COMMAND", "")
    if command == "":
        return 0, "", f"CNI cnikit plugin\nCNI protocol versions supported: {', '.join(supported)}\n"
    if command == "VERSION":
        return 0, spec.dumps(spec.version_info(supported)) + "\n", ""
    version = ""
    try:
        ctx = context_from_env(environ)
        conf = spec.load_netconf(stdin)
        version = conf["cniVersion"]
        if command not in ("GC", "STATUS"):
            validate_attachment(ctx)
        result = call(factory(), ctx, conf)
        notes = "".join(f"{note}\n" for note in ctx.notes)
        if result is None:
            return 0, "", notes
        return 0, spec.dumps(spec.result_to_dict(result, version)), notes
    except CNIError as err:
        return 1, spec.dumps(err.to_dict(version or None)) + "\n", ""
    except Exception as exc:  # noqa: BLE001 - the protocol demands an error JSON, not a crash
        err = CNIError(spec.ERR_INTERNAL, str(exc) or type(exc).__name__)
        return 1, spec.dumps(err.to_dict(version or None)) + "\n", traceback.format_exc()
