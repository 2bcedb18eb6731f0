"""CNI plugins, one module and one class each (see ../registry.py for the names)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .. import ipam, skel, spec
from ..spec import CNIError

Conf = Dict[str, Any]
Result = Dict[str, Any]


class Plugin:
    """A CNI plugin: `add` returns the internal result; `check`/`delete` raise CNIError on failure.

    GC and STATUS default to forwarding to the IPAM plugin, as the spec asks of main plugins.
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
        if ipam.ipam_type(conf):
            ipam.delegate("GC", ctx, conf)

    def status(self, ctx: skel.Context, conf: Conf) -> None:
        if ipam.ipam_type(conf):
            ipam.delegate("STATUS", ctx, conf)


def prev_result(conf: Conf, required: bool = True) -> Optional[Result]:
    prev = conf.get("prevResult")
    if prev is None and required:
        raise CNIError(spec.ERR_INVALID_CONFIG, f"must be called as chained plugin (missing prevResult)")
    return prev
