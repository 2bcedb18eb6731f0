"""IPAM delegation: ours in-process, foreign ones exec'd from CNI_PATH (Go `ipam.ExecAdd`), both
through protocol/invoke.py, the path the runtime takes too."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, Optional

from ..protocol import invoke, skel, spec
from ..protocol.spec import CNIError


def ipam_type(conf: Dict[str, Any]) -> str:
    """The IPAM type of a plugin config, "" for none (`ipam: {}` means L2 only)."""
    ipam = conf.get("ipam") or {}
    ptype = ipam.get("type", "")
    if not isinstance(ptype, str):
        raise CNIError(spec.ERR_INVALID_CONFIG, "ipam.type must be a string")
    return ptype


def delegate(command: str, ctx: skel.Context, conf: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Run IPAM `command` with the whole plugin config; returns the internal result for ADD."""
    ptype = ipam_type(conf)
    if not ptype:
        raise CNIError(spec.ERR_INVALID_CONFIG, "IPAM plugin type is missing")
    sub = dataclasses.replace(ctx, command=command)
    path = invoke.resolve(ptype, ctx.path, builtin_first=True)
    if path is None:
        return invoke.call_builtin(ptype, sub, dict(conf))
    payload = dict(conf)
    if isinstance(payload.get("prevResult"), dict):
        payload["prevResult"] = spec.result_to_dict(payload["prevResult"], conf["cniVersion"])
    return invoke.exec_result(path, sub.env_for(command), json.dumps(payload).encode(), command,
                              conf["cniVersion"], f"IPAM plugin {ptype}")
