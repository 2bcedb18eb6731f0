"""Running a plugin: in-process if it is ours, else exec'd from CNI_PATH like libcni's `invoke`
package (FindInPath + ExecPlugin). The one path both the runtime and IPAM delegation take."""
from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Dict, List, Mapping, Optional

from . import registry, skel, spec
from .spec import CNIError


Result = Dict[str, Any]

# A script on CNI_PATH whose head names our engine is one of our launchers (node/installer.py writes
# them): run it in-process. So is our compiled relay, an ELF binary with ELF_MARK in a note section
# near its start (node/relay.c). Other ELF binaries (the Go plugins) and other scripts are exec'd.
LAUNCHER_MARKS = (b"cni.node.main", b"cnikit")
ELF_MARK = b"cnikit.launcher"


def is_our_launcher(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    if head.startswith(b"\x7fELF"):
        return ELF_MARK in head
    return head.startswith(b"#!") and any(mark in head for mark in LAUNCHER_MARKS)


def resolve(ptype: str, paths: List[str], builtin_first: bool = False) -> Optional[str]:
    """None to run `ptype` in-process, else the path of the foreign binary to exec.

    Ours run in-process when CNI_PATH has one of our launchers for them or nothing at all by that
    name; `builtin_first` (IPAM delegation from inside one of our plugins) skips the search for ours.
    Raises find_in_path's error for a foreign type that is not there."""
    if builtin_first and registry.is_builtin(ptype):
        return None
    try:
        path = find_in_path(ptype, paths)
    except CNIError:
        if registry.is_builtin(ptype):
            return None
        raise
    if registry.is_builtin(ptype) and is_our_launcher(path):
        return None
    return path


def call_builtin(ptype: str, ctx: skel.Context, conf: Dict[str, Any]) -> Optional[Result]:
    """One of ours, in this process (skel.call: known args, then the verb)."""
    return skel.call(registry.load(ptype)(), ctx, conf)


def exec_result(path: str, env: Mapping[str, str], stdin: bytes, command: str, version: str,
                what: str) -> Optional[Result]:
    """Exec a foreign plugin; for ADD its result in the internal form (libcni fixupResultVersion:
    a result without cniVersion has the config's)."""
    raw = exec_plugin(path, env, stdin)
    if command != "ADD":
        return None
    if raw is None:
        raise CNIError(spec.ERR_INTERNAL, f"{what} returned no result")
    raw.setdefault("cniVersion", version)
    return spec.result_from_dict(raw)


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
