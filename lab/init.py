"""The lab's stand-in for systemd at boot: start the units enabled on a node's disk.

A lab node has no init system. After a (re)boot (lab.boot) this starts what `systemctl enable` put in
/etc/systemd/system/multi-user.target.wants, in After=/Before= order, with the subset of unit
semantics our roles' units use: ExecStartPre= and ExecStart= lines (a leading `-` ignores a
failure), Type=oneshot (run to completion, in order) and Type=simple (started in the background,
in the node's namespaces, in its own session). `$$` and `%%` are unescaped as systemd does. Units
are read, never written: what runs is exactly what the roles wrote for a real systemd.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Dict, List

WANTS = "/etc/systemd/system/multi-user.target.wants"
KEYS = ("Type", "ExecStartPre", "ExecStart", "After", "Before")


def parse(text: str) -> Dict[str, List[str]]:
    unit: Dict[str, List[str]] = {k: [] for k in KEYS}
    for raw in text.splitlines():
        line = raw.strip()
        if "=" not in line or line.startswith(("#", ";", "[")):
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key in unit:
            unit[key].append(value.replace("$$", "$").replace("%%", "%"))
    return unit


def order(units: Dict[str, Dict[str, List[str]]]) -> List[str]:
    """Names in dependency order (After=/Before= between the enabled units), else by name."""
    after = {name: set() for name in units}
    for name, unit in units.items():
        for dep in " ".join(unit["After"]).split():
            if dep in units:
                after[name].add(dep)
        for dep in " ".join(unit["Before"]).split():
            if dep in units:
                after[dep].add(name)
    done: List[str] = []
    while len(done) < len(units):
        ready = sorted(n for n in units if n not in done and after[n] <= set(done))
        done.append(ready[0] if ready else sorted(set(units) - set(done))[0])  # a cycle: break it by name
    return done


def start_enabled_units(pid: int) -> List[str]:
    """Start the node's enabled units; return the failures ("unit: command rc N: stderr")."""
    from . import run_in  # noqa: PLC0415

    listing = run_in(pid, ["sh", "-c", f'for f in {WANTS}/*.service; do [ -e "$f" ] && echo "$f"; done; true'])
    units = {os.path.basename(path): parse(run_in(pid, ["cat", path]).stdout) for path in listing.stdout.split()}
    failures = []
    for name in order(units):
        unit = units[name]
        oneshot = (unit["Type"] or ["simple"])[-1] == "oneshot"
        for line in unit["ExecStartPre"] + (unit["ExecStart"] if oneshot else []):
            argv = shlex.split(line.lstrip("-@+!"))
            proc = run_in(pid, argv, check=False)
            if proc.returncode != 0 and not line.startswith("-"):
                failures.append(f"{name}: {argv[0]} rc {proc.returncode}: {proc.stderr.strip()}")
        if not oneshot and unit["ExecStart"]:
            from . import nsenter  # noqa: PLC0415

            subprocess.Popen(nsenter(pid, shlex.split(unit["ExecStart"][-1].lstrip("-@+!"))),
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    return failures
