"""Exec'ing a foreign plugin binary like libcni's `invoke` package (FindInPath + ExecPlugin)."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List, Mapping, Optional

from . import spec
from .spec import CNIError


def find_in_path(plugin: str, paths: List[str]) -> str:
    if not plugin or "/" in plugin or plugin in (".", ".."):
        raise CNIError(spec.ERR_INVALID_CONFIG, f"invalid plugin name {plugin!r}")
    if not paths:
        raise CNIError(spec.ERR_INVALID_ENV, f"no paths provided to find plugin {plugin!r}")
    for directory in paths:
        candidate = os.path.join(directory, plugin)
        if os.path.isfile(candidate):
            return candidate
    raise CNIError(spec.ERR_INVALID_CONFIG, f'failed to find plugin "{plugin}" in path {paths}')


def exec_plugin(path: str, env: Mapping[str, str], stdin: bytes, timeout: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """Run a plugin; return its decoded stdout (None when empty) or raise its CNI error."""
    try:
        proc = subprocess.run([path], input=stdin, env=dict(env), capture_output=True, timeout=timeout, check=False)
    except OSError as exc:
        raise CNIError(spec.ERR_INTERNAL, f"failed to exec plugin {path}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise CNIError(spec.ERR_TRY_AGAIN, f"plugin {path} timed out") from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        if out:
            try:
                err = json.loads(out)
                raise CNIError(int(err.get("code", spec.ERR_INTERNAL)), str(err.get("msg", "")), str(err.get("details", "") or ""))
            except (ValueError, AttributeError, TypeError):
                pass
        text = proc.stderr.decode(errors="replace").strip()
        raise CNIError(spec.ERR_INTERNAL, f'netplugin failed: "{text or out.decode(errors="replace")}"')
    if not out:
        return None
    return spec.decode_json(out, "plugin result")
