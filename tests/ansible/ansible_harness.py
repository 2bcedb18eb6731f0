"""Run playbooks through ansible-playbook against localhost (inside the sandbox), with the collection
found through an `ansible_collections/cnikit/cni` symlink to this repository."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN = os.path.dirname(sys.executable)


def make_collections_root(root: str) -> str:
    """`root`/ansible_collections/cnikit/cni -> this repository; returns `root` for ANSIBLE_COLLECTIONS_PATH."""
    os.makedirs(os.path.join(root, "ansible_collections", "cnikit"))
    os.symlink(ROOT, os.path.join(root, "ansible_collections", "cnikit", "cni"))
    return root


class Play:
    """One ansible-playbook run; results by task name (the last result for a repeated name)."""

    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.rc = proc.returncode
        self.stderr = proc.stderr
        try:
            self.data = json.loads(proc.stdout)
        except ValueError:
            raise AssertionError(f"ansible-playbook printed no JSON (rc {proc.returncode}):\n"
                                 f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}") from None
        self.results: Dict[str, Dict[str, Any]] = {t["name"]: t["result"] for t in self.data["tasks"]}

    def __getitem__(self, name: str) -> Dict[str, Any]:
        if name not in self.results:
            raise AssertionError(f"task {name!r} did not run; ran: {list(self.results)}\n{self.stderr[-2000:]}")
        return self.results[name]

    def failure(self, name: str) -> str:
        """The message of a task that must have failed cleanly (a message, not a traceback)."""
        res = self[name]
        assert res["_status"] == "failed", f"task {name!r} did not fail: {res}"
        assert "Traceback" not in res["msg"] and "MODULE FAILURE" not in res["msg"], res
        return res["msg"]

    def ok(self) -> "Play":
        failed = {n: r.get("msg") for n, r in self.results.items()
                  if r["_status"] in ("failed", "unreachable") and not r["_ignore_errors"]}
        assert self.rc == 0 and not failed, f"playbook failed (rc {self.rc}): {failed}\n{self.stderr[-2000:]}"
        return self


def run_playbook(collections_root: str, book: str, extra_vars: Optional[Dict[str, Any]] = None,
                 timeout: int = 300) -> Play:
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections_root, ANSIBLE_STDOUT_CALLBACK="results_json",
               ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback"),
               ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
               ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_PIPELINING="true",
               ANSIBLE_LOCAL_TEMP=os.path.join(os.path.dirname(book), ".ansible-tmp"),
               ANSIBLE_HOME=os.path.join(os.path.dirname(book), ".ansible-home"),
               PATH=f"{BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}")
    cmd = [os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
           "-e", f"ansible_python_interpreter={sys.executable}", book]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    return Play(proc)
