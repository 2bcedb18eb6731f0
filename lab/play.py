"""Run ansible-playbook against the lab: the collection found from this checkout, the recap parsed."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Union

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INVENTORY = os.path.join(ROOT, "inventory", "lab", "hosts.yml")
RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)", re.M)


def collections_path() -> str:
    """A directory holding ansible_collections/cnikit/cni -> this checkout (made once, race-safe)."""
    base = os.path.join(ROOT, "build", "ansible")
    link = os.path.join(base, "ansible_collections", "cnikit", "cni")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        try:
            os.symlink(ROOT, link)
        except FileExistsError:
            pass
    return base


def engine_snapshot() -> str:
    """A frozen copy of the engine for one rollout: the roles install a version named by its content
    digest, so a source tree edited while a demo or test runs would otherwise look like an upgrade
    between the first run and the idempotence run. Returns the path to pass as cni_plugins_engine_src."""
    base = tempfile.mkdtemp(prefix="cnikit-engine-", dir=os.path.join(ROOT, "build"))
    dest = os.path.join(base, "cni")
    shutil.copytree(os.path.join(ROOT, "plugins", "module_utils", "cni"), dest,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest


def env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    e = dict(os.environ)
    e.update({
        "ANSIBLE_COLLECTIONS_PATH": collections_path(),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "False",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_LOCAL_TEMP": os.path.join(ROOT, "build", "ansible", "tmp"),
    })
    e.update(extra or {})
    return e


def ssh_inventory(state_file: Optional[str] = None) -> List[str]:
    """The inventory sources that reach a lab started with `ssh=True` over SSH (user ops, sudo)."""
    from lab import ssh  # noqa: PLC0415

    return [INVENTORY, os.path.join(ssh.key_dir(state_file), "inventory.yml")]


def summary(output: str) -> List[str]:
    """The lines of the site/reset playbooks' one-screen summary, from their output."""
    block = output.split("TASK [Summary]", 1)[-1].split("PLAY RECAP", 1)[0]
    return [json.loads(line.strip().rstrip(",")) for line in block.splitlines() if ": range " in line]


@dataclass
class PlayResult:
    rc: int
    output: str
    seconds: float
    recap: Dict[str, Dict[str, int]]

    @property
    def changed(self) -> int:
        return sum(h["changed"] for h in self.recap.values())

    @property
    def failed(self) -> int:
        return sum(h["failed"] + h["unreachable"] for h in self.recap.values())


def playbook(playbook_path: str, args: Sequence[str] = (), inventory: Union[str, Sequence[str]] = INVENTORY,
             extra_env: Optional[Dict[str, str]] = None, echo: bool = False) -> PlayResult:
    """Run one playbook; with `echo`, stream its output (the demo shows progress). `inventory` may be
    several sources (later ones win: the lab's SSH fragment after inventory/lab/hosts.yml)."""
    sources = [inventory] if isinstance(inventory, str) else list(inventory)
    argv: List[str] = [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
                       *[a for src in sources for a in ("-i", src)], playbook_path, *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=env(extra_env))
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if echo:
            sys.stdout.write("    " + line)
            sys.stdout.flush()
    rc = proc.wait()
    out = "".join(lines)
    recap = {m.group(1): dict(ok=int(m.group(2)), changed=int(m.group(3)), unreachable=int(m.group(4)),
                              failed=int(m.group(5)), skipped=int(m.group(6))) for m in RECAP.finditer(out)}
    return PlayResult(rc, out, time.monotonic() - t0, recap)
