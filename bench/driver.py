"""A small libcni-like exec driver: runs one plugin or a conflist the way a runtime does (a fresh
process per call, CNI_* in the environment, the config on stdin) and times every exec.

The same driver execs the Go reference plugins and ours, so the two are measured identically.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

PATH_ENV = "/usr/sbin:/usr/bin:/sbin:/bin"


class PluginFailed(RuntimeError):
    pass


@dataclass
class Call:
    rc: int
    stdout: bytes
    stderr: bytes
    seconds: float

    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None


def exec_plugin(binary: str, env: Dict[str, str], stdin: bytes) -> Call:
    start = time.perf_counter()
    proc = subprocess.run([binary], input=stdin, env=env, capture_output=True, check=False, timeout=120)
    return Call(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)


def cni_env(command: str, bindir: str, cid: str = "", netns: str = "", ifname: str = "eth0",
            args: str = "") -> Dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_PATH": bindir, "PATH": PATH_ENV}
    if command != "VERSION":
        env.update({"CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname})
    if args:
        env["CNI_ARGS"] = args
    return env


@dataclass
class Chain:
    """One attachment of a conflist (a single plugin config is a chain of one), like libcni:
    ADD in order with prevResult chained, DEL in reverse with the cached final result as
    prevResult, runtimeConfig injected for the capabilities a plugin declares."""

    conflist: Dict[str, Any]
    bindir: str
    cid: str
    netns: str
    ifname: str = "eth0"
    capability_args: Dict[str, Any] = field(default_factory=dict)
    prev: Optional[Dict[str, Any]] = None  # prevResult for the first plugin (a chain's tail alone)
    result: Optional[Dict[str, Any]] = None

    def _conf(self, plugin: Dict[str, Any], prev: Optional[Dict[str, Any]]) -> bytes:
        conf = dict(plugin)
        conf["name"] = self.conflist["name"]
        conf["cniVersion"] = self.conflist["cniVersion"]
        if prev is not None:
            conf["prevResult"] = prev
        caps = {k: v for k, v in self.capability_args.items() if (plugin.get("capabilities") or {}).get(k)}
        if caps:
            conf["runtimeConfig"] = caps
        return json.dumps(conf).encode()

    def _run(self, command: str, plugin: Dict[str, Any], prev: Optional[Dict[str, Any]]) -> Call:
        env = cni_env(command, self.bindir, self.cid, self.netns, self.ifname)
        call = exec_plugin(os.path.join(self.bindir, plugin["type"]), env, self._conf(plugin, prev))
        if call.rc != 0:
            raise PluginFailed(f"{plugin['type']} {command} rc={call.rc}: "
                               f"{(call.stdout or call.stderr).decode(errors='replace').strip()[:400]}")
        return call

    def add(self) -> float:
        total, prev = 0.0, self.prev
        for plugin in self.conflist["plugins"]:
            call = self._run("ADD", plugin, prev)
            total += call.seconds
            prev = call.json()
        self.result = prev
        return total

    def delete(self) -> float:
        total = 0.0
        for plugin in reversed(self.conflist["plugins"]):
            total += self._run("DEL", plugin, self.result).seconds
        self.result = None
        return total


def as_conflist(conf: Dict[str, Any]) -> Dict[str, Any]:
    """A single plugin config as a chain of one."""
    plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion")}
    return {"name": conf["name"], "cniVersion": conf["cniVersion"], "plugins": [plugin]}
