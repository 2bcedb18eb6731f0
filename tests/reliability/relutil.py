"""Helpers of the reliability suite: protocol-outcome checks and state snapshots."""
from __future__ import annotations

import json
import os
import re
import subprocess
from typing import Any, Dict, Iterable, List, Optional, Tuple

import cnitest
from cni.protocol import registry

SPEC_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999}


def importable_plugins() -> List[str]:
    """Registered plugin types whose module has landed (others are being written)."""
    names = []
    for name in registry.PLUGINS:
        try:
            registry.load(name)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names


def check_outcome(rc: int, out: str, err: str, command: str) -> Optional[Dict[str, Any]]:
    """The protocol contract for any input: exit 0/1, stdout empty or one JSON object, an error
    with a spec code, no traceback on stdout and no unexpected exception (a bug shows as a
    traceback on stderr). Returns the parsed stdout."""
    assert rc in (0, 1), (rc, out, err)
    assert "Traceback" not in out, out
    assert "Traceback" not in err, f"unhandled exception for {command}:\n{err}"
    data = json.loads(out) if out.strip() else None
    if rc == 1:
        assert isinstance(data, dict), out
        assert data.get("code") in SPEC_CODES, data
        assert isinstance(data.get("msg"), str) and data["msg"], data
    elif command == "ADD":
        assert isinstance(data, dict) and "cniVersion" in data, out
    elif command == "VERSION":
        assert isinstance(data, dict) and "supportedVersions" in data, out
    else:
        assert data is None, out
    return data


def fs_snapshot(roots: Iterable[str]) -> Dict[str, Tuple[str, int]]:
    """Every path under `roots` → (kind, size); enough to see a file created or changed."""
    snap: Dict[str, Tuple[str, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            snap[dirpath] = ("d", 0)
            for name in filenames:
                path = os.path.join(dirpath, name)
                try:
                    snap[path] = ("f", os.lstat(path).st_size)
                except FileNotFoundError:
                    pass
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return snap


def link_names(netns: Optional[str] = None) -> List[str]:
    return sorted(link["ifname"] for link in cnitest.ip_json("link show", netns))


def lease_files(datadir: str) -> Dict[str, str]:
    """IP-named lease files under a host-local dataDir → content (lock/last_reserved_ip skipped)."""
    leases = {}
    for dirpath, _, filenames in os.walk(datadir):
        for name in filenames:
            if name == "lock" or name.startswith("last_reserved_ip"):
                continue
            with open(os.path.join(dirpath, name), encoding="utf-8", errors="replace", newline="") as fh:
                leases[os.path.join(os.path.relpath(dirpath, datadir), name)] = fh.read()
    return leases


def is_store_bookkeeping(path: str, store_dirs: Iterable[str]) -> bool:
    """A host-local dataDir, its per-network dir, `lock` or `last_reserved_ip.N`: what a store
    keeps after every lease is released (Go's does too). Lease files are not bookkeeping."""
    for root in store_dirs:
        if path == root:
            return True
        if path.startswith(root.rstrip("/") + "/"):
            parts = path[len(root.rstrip("/")) + 1:].split("/")
            if len(parts) == 1 or (len(parts) == 2 and (parts[1] == "lock" or parts[1].startswith("last_reserved_ip."))):
                return True
    return False


ENGINE = os.path.join(cnitest.LIB, "cni")
_SHELL_RE = re.compile(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|subprocess\.getstatusoutput"
                       r"|\[\s*['\"](?:/bin/)?(?:ba)?sh['\"]\s*,\s*['\"]-c['\"]")


def shell_uses() -> List[str]:
    """Places in the engine that could hand a string to a shell."""
    hits = []
    for dirpath, _, filenames in os.walk(ENGINE):
        for name in filenames:
            if not name.endswith(".py"):
                continue
            path = os.path.join(dirpath, name)
            with open(path, encoding="utf-8") as fh:
                for no, line in enumerate(fh, 1):
                    if _SHELL_RE.search(line):
                        hits.append(f"{os.path.relpath(path, ENGINE)}:{no}: {line.strip()}")
    return hits


def nft_ruleset() -> str:
    proc = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False)
    return proc.stdout
