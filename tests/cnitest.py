"""Shared test helpers: run a plugin (ours or Go's) through the real exec protocol or in-process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "plugins", "module_utils")
if LIB not in sys.path:
    sys.path.insert(0, LIB)

OUR_BIN = os.environ.get("CNIKIT_BIN", os.path.join(ROOT, "build", "bin"))
GO_BIN = "/usr/lib/cni"
IN_SANDBOX = os.environ.get("CNIKIT_SANDBOX") == "1"


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    @property
    def code(self) -> Optional[int]:
        data = self.json
        return data.get("code") if self.rc != 0 and isinstance(data, dict) else None


def cni_env(command: str, cid: str = "ctr1", netns: str = "", ifname: str = "eth0",
            args: str = "", path: str = OUR_BIN, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    if args:
        env["CNI_ARGS"] = args
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


def exec_plugin(binary: str, env: Dict[str, str], conf: Any) -> Outcome:
    """Exec a plugin binary as a runtime does: env + JSON on stdin."""
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    if isinstance(data, str):
        data = data.encode()
    proc = subprocess.run([binary], input=data, env=env, capture_output=True, timeout=60, check=False)
    return Outcome(proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"))


def run(plugin: str, command: str, conf: Any, *, go: bool = False, **kw: Any) -> Outcome:
    """Exec our plugin (or the Go one with go=True) with CNI_PATH pointing at the same flavour."""
    bindir = GO_BIN if go else OUR_BIN
    kw.setdefault("path", bindir)
    return exec_plugin(os.path.join(bindir, plugin), cni_env(command, **kw), conf)


def inproc(plugin: str, command: str, conf: Any, **kw: Any) -> Outcome:
    """Our plugin called in-process through the same skel as the executable."""
    from cni.protocol import registry, skel  # noqa: PLC0415

    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    if isinstance(data, str):
        data = data.encode()
    rc, out, err = skel.execute(lambda: registry.load(plugin)(), cni_env(command, **kw), data)
    return Outcome(rc, out, err)


def sh(cmd: str, check: bool = True) -> str:
    """Run a shell command of the test itself (never with data from the code under test)."""
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def ip_json(args: str, netns: Optional[str] = None) -> Any:
    prefix = f"ip -n {netns} -j " if netns else "ip -j "
    out = sh(prefix + args)
    return json.loads(out) if out.strip() else []
