# Copyright: cnikit maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run Ansible tasks inside a lab node: nsenter into the namespaces of the node's process."""
from __future__ import annotations

DOCUMENTATION = r"""
name: nsenter
short_description: Run tasks inside another process's namespaces (a cnikit lab node)
description:
  - Executes commands with C(nsenter --target PID --net --uts --mount), so a task sees the node's network,
    hostname and private mounts (C(/etc/cni), C(/opt/cni), C(/var/lib/cni), C(/run)).
  - The PID is O(nsenter_pid) when set, otherwise it is looked up by node name (O(lab_node), default the
    inventory hostname) in the lab's state file O(lab_state), as written by C(python -m lab up).
  - Files are copied through the node's mount namespace, so private mounts are honoured.
    Supports pipelining. Like C(community.docker.nsenter), it runs as the controller's user (root) and ignores
    the remote user.
author: cnikit maintainers (@cnikit)
version_added: 1.0.0
options:
  nsenter_pid:
    description: PID of a process in the target namespaces; overrides the lab lookup.
    type: int
    vars:
      - name: ansible_nsenter_pid
    env:
      - name: ANSIBLE_NSENTER_PID
  lab_state:
    description: The lab's state file.
    type: path
    default: /run/cnikit-lab/state.json
    vars:
      - name: cnikit_lab_state
    env:
      - name: CNIKIT_LAB_STATE
  lab_node:
    description: The node's name in the lab state file.
    type: str
    vars:
      - name: inventory_hostname
      - name: cnikit_lab_node
extends_documentation_fragment:
  - connection_pipelining
notes:
  - Needs root on the controller and C(nsenter) from util-linux.
"""

import json
import os
import shlex
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()


class Connection(ConnectionBase):
    transport = "cnikit.cni.nsenter"
    has_pipelining = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pid = None

    def _target_pid(self) -> int:
        pid = self.get_option("nsenter_pid")
        if pid:
            return int(pid)
        node = self.get_option("lab_node") or self._play_context.remote_addr
        path = self.get_option("lab_state")
        try:
            with open(path, encoding="utf-8") as fh:
                state = json.load(fh)
        except (OSError, ValueError) as exc:
            raise AnsibleConnectionFailure(f"cannot read the lab state {path} (is the lab up?): {exc}") from None
        for entry in state.get("nodes", []):
            if entry.get("name") == node:
                return int(entry["pid"])
        raise AnsibleConnectionFailure(f"node {node!r} is not in the lab state {path}")

    def _connect(self):
        if not self._connected:
            self._pid = self._target_pid()
            if not os.path.exists(f"/proc/{self._pid}/ns/net"):
                raise AnsibleConnectionFailure(f"the process {self._pid} holding node namespaces is gone")
            display.vvv(f"NSENTER to pid {self._pid}", host=self._play_context.remote_addr)
            self._connected = True
        return self

    def _argv(self, argv):
        return ["nsenter", "--target", str(self._pid), "--net", "--uts", "--mount", "--"] + list(argv)

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        self._connect()
        shell = self._play_context.executable or "/bin/sh"
        display.vvv(f"EXEC {cmd}", host=self._play_context.remote_addr)
        proc = subprocess.Popen(self._argv([shell, "-c", cmd]), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(in_data)
        return proc.returncode, stdout, stderr

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        self._connect()
        if not os.path.exists(to_bytes(in_path)):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        with open(to_bytes(in_path), "rb") as src:
            proc = subprocess.run(self._argv(["/bin/sh", "-c", f"cat > {shlex.quote(out_path)}"]),
                                  stdin=src, capture_output=True, check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"failed to write {out_path} on the node: {to_text(proc.stderr)}")

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        self._connect()
        with open(to_bytes(out_path), "wb") as dst:
            proc = subprocess.run(self._argv(["cat", "--", in_path]), stdout=dst, stderr=subprocess.PIPE, check=False)
        if proc.returncode != 0:
            raise AnsibleError(f"failed to read {in_path} on the node: {to_text(proc.stderr)}")

    def close(self):
        self._connected = False
