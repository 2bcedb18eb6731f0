"""The plugin base class and the shared config parsing every plugin (IPAM, main, meta) builds on.

A leaf below IPAM and the plugins: both import it, it imports only the protocol (see registry.py
for the type names and ../plugins/__init__.py for NetPlugin, the main/meta base)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from . import skel, spec
from .spec import CNIError

Conf = Dict[str, Any]
Result = Dict[str, Any]


class Plugin:
    """A CNI plugin: `add` returns the internal result; `check`/`delete` raise CNIError on failure.

    GC and STATUS do nothing here (each IPAM plugin has its own); main and meta plugins derive from
    plugins.NetPlugin, which forwards them to their IPAM plugin as the spec asks.
    """

    name = ""
    supported_versions: Tuple[str, ...] = spec.SUPPORTED_VERSIONS
    known_args: Tuple[str, ...] = ()  # CNI_ARGS keys the plugin understands

    def args(self, ctx: skel.Context) -> None:
        skel.check_known_args(ctx.args, self.known_args)

    def add(self, ctx: skel.Context, conf: Conf) -> Result:
        raise CNIError(spec.ERR_INTERNAL, f"{self.name}: ADD not implemented")

    def check(self, ctx: skel.Context, conf: Conf) -> None:
        raise CNIError(spec.ERR_INTERNAL, f"{self.name}: CHECK not implemented")

    def delete(self, ctx: skel.Context, conf: Conf) -> None:
        raise CNIError(spec.ERR_INTERNAL, f"{self.name}: DEL not implemented")

    def gc(self, ctx: skel.Context, conf: Conf) -> None:
        """Nothing to collect by default."""

    def status(self, ctx: skel.Context, conf: Conf) -> None:
        """Ready by default."""


def prev_result(conf: Conf, required: bool = True) -> Optional[Result]:
    prev = conf.get("prevResult")
    if prev is None and required:
        raise CNIError(spec.ERR_INVALID_CONFIG, "must be called as chained plugin (missing prevResult)")
    return prev


_GO_TYPES = {str: "string", int: "int", bool: "bool", list: "[]", dict: "map"}
_JSON_TYPES = {str: "string", int: "number", float: "number", bool: "bool", list: "array", dict: "object",
               type(None): "null"}


MTU_RANGE = (0, 65535)  # 0: the kernel's default; the kernel refuses what a device cannot take


def check_range(key: str, value: int, bounds: Tuple[int, int]) -> int:
    """An integer field within `bounds` (inclusive), else code 7 naming the field and the range -
    before any netlink call, so no out-of-range number reaches pyroute2's encoder."""
    low, high = bounds
    if not low <= value <= high:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid {key} {value}: must be between {low} and {high}")
    return value


def conf_field(conf: Conf, key: str, kind: type, default: Any = None, struct: str = "NetConf",
               bounds: Optional[Tuple[int, int]] = None) -> Any:
    """A typed config key, failing like Go's json.Unmarshal into the plugin's struct (code 999,
    "failed to load netconf: json: cannot unmarshal ..."); null and absent give the default. An
    integer with `bounds` is range-checked (check_range)."""
    val = conf.get(key)
    if val is None:
        return default
    ok = isinstance(val, kind) and not (kind is int and isinstance(val, bool))
    if kind is int and isinstance(val, float) and val.is_integer():
        val, ok = int(val), True
    if not ok:
        raise CNIError(spec.ERR_INTERNAL, "failed to load netconf: json: cannot unmarshal "
                       f"{_JSON_TYPES.get(type(val), 'value')} into Go struct field {struct}.{key} "
                       f"of type {_GO_TYPES.get(kind, kind.__name__)}")
    if bounds is not None and kind is int:
        check_range(key, val, bounds)
    return val
