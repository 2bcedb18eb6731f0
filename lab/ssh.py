"""An sshd per lab node, for rolling out over real SSH (`lab up --ssh`).

Each node runs its own sshd inside its own namespaces (never the controller's), listening on its
uplink address, key authentication only. The node's /etc (an overlay on its disk) gets a non-root
user `ops` with passwordless sudo, so plays connect as `ops` and `become` root like on a real fleet.
The controller's sandbox has no route into the lab's L2 network, so ssh reaches a node the way it
reaches a host behind a bastion: a ProxyCommand relays the TCP stream from the switch's netns
(`nsenter -t <switch> -n busybox nc <node> 22`) - the SSH session itself is end to end.
Keys (client key, one host key per node, known_hosts: strict host key checking) and an inventory
fragment live in `<state dir>/ssh-<lab>/`.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import time
from typing import Any, Dict, Optional

USER = "ops"
UID = 2000
RUNDIR = "/run/cnikit-sshd"  # on the node: fresh at every boot, like the sshd it serves

SSHD_CONFIG = """ListenAddress {ip}:22
HostKey {rundir}/host_key
PidFile {rundir}/sshd.pid
AuthorizedKeysFile {rundir}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes yes
Subsystem sftp internal-sftp
"""

# The operator account on the node's own /etc (an overlay: the controller's /etc is never written).
ACCOUNT = """set -e
grep -q '^{user}:' /etc/passwd || {{
  echo '{user}:x:{uid}:{uid}:cnikit lab operator:/home/{user}:/bin/sh' >> /etc/passwd
  echo '{user}:x:{uid}:' >> /etc/group
  echo '{user}:*:19000:0:99999:7:::' >> /etc/shadow
}}
mkdir -p /home/{user} && chown {uid}:{uid} /home/{user} && chmod 0755 /home/{user}
echo '{user} ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/cnikit-lab && chmod 0440 /etc/sudoers.d/cnikit-lab
grep -q ' {host}$' /etc/hosts || echo '127.0.1.1 {host}' >> /etc/hosts
mkdir -p /run/sshd {rundir} && chmod 0755 /run/sshd {rundir}
"""


def key_dir(path: Optional[str] = None) -> str:
    from . import state_path  # noqa: PLC0415

    target = os.path.abspath(state_path(path))
    tag = hashlib.sha1(target.encode()).hexdigest()[:8]
    return os.path.join(os.path.dirname(target), f"ssh-{tag}")


def _keygen(path: str) -> None:
    if not os.path.exists(path):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cnikit-lab", "-f", path], check=True)


def _write(pid: int, dest: str, data: str, mode: str) -> None:
    from . import nsenter  # noqa: PLC0415

    subprocess.run(nsenter(pid, ["sh", "-c", f'umask 077; cat > "$0" && chmod {mode} "$0"', dest]),
                   input=data, text=True, check=True)


def start(state: Dict[str, Any], node: Dict[str, Any], path: Optional[str] = None) -> None:
    """Start (at boot) the node's sshd with its host key and the lab's client key authorized."""
    from . import LabError, run_in  # noqa: PLC0415

    kd = key_dir(path)
    os.makedirs(kd, mode=0o700, exist_ok=True)
    _keygen(os.path.join(kd, "id_ed25519"))
    host_key = os.path.join(kd, f"host-{node['name']}")
    _keygen(host_key)
    pid = node["pid"]
    run_in(pid, ["sh", "-c", ACCOUNT.format(user=USER, uid=UID, host=node["name"], rundir=RUNDIR)])
    with open(host_key, encoding="ascii") as fh:
        _write(pid, f"{RUNDIR}/host_key", fh.read(), "0600")
    with open(os.path.join(kd, "id_ed25519.pub"), encoding="ascii") as fh:
        _write(pid, f"{RUNDIR}/authorized_keys", fh.read(), "0644")
    _write(pid, f"{RUNDIR}/sshd_config", SSHD_CONFIG.format(ip=node["ip"], rundir=RUNDIR), "0644")
    run_in(pid, ["/usr/sbin/sshd", "-f", f"{RUNDIR}/sshd_config", "-E", f"{RUNDIR}/sshd.log"])
    deadline = time.monotonic() + 10
    while run_in(pid, ["sh", "-c", f"ss -Hltn 'sport = :22' | grep -q {node['ip']}"], check=False).returncode:
        if time.monotonic() > deadline:
            raise LabError(f"sshd on {node['name']} did not listen: "
                           + run_in(pid, ["cat", f"{RUNDIR}/sshd.log"], check=False).stdout)
        time.sleep(0.05)
    write_inventory(state, path)
    close_master(node, path)  # a master connection to the node before this boot is dead


def control_path(path: Optional[str] = None) -> str:
    """ssh's multiplexing sockets: a short path (a unix socket path has ~100 bytes), one dir per lab."""
    short = os.path.join("/run/cnikit-lab-ssh", os.path.basename(key_dir(path)))
    os.makedirs(short, mode=0o700, exist_ok=True)
    return os.path.join(short, "%C")


def close_master(node: Dict[str, Any], path: Optional[str] = None) -> None:
    """End ssh's multiplexing master for the node (after a reboot or lab down it would hang)."""
    subprocess.run(["ssh", "-O", "exit", "-o", f"ControlPath={control_path(path)}", f"{USER}@{node['ip']}"],
                   capture_output=True, check=False, timeout=10)


def write_inventory(state: Dict[str, Any], path: Optional[str] = None) -> str:
    """`<key dir>/inventory.yml`: pass it after inventory/lab/hosts.yml (`-i hosts.yml -i this`) and
    the play connects over SSH as `ops` with sudo instead of nsenter."""
    kd = key_dir(path)
    known = []
    for n in state["nodes"]:
        _keygen(os.path.join(kd, f"host-{n['name']}"))
        with open(os.path.join(kd, f"host-{n['name']}.pub"), encoding="ascii") as fh:
            known.append(f"{n['ip']} {' '.join(fh.read().split()[:2])}")
    with open(os.path.join(kd, "known_hosts"), "w", encoding="ascii") as fh:
        fh.write("\n".join(known) + "\n")
    proxy = f"nsenter -t {state['underlay']['pid']} -n busybox nc %h %p"
    args = (f'-o ProxyCommand="{proxy}" -o UserKnownHostsFile={kd}/known_hosts -o StrictHostKeyChecking=yes '
            f"-o IdentitiesOnly=yes -o ServerAliveInterval=5 -o ConnectTimeout=20")
    lines = ["---", "# written by lab/ssh.py: the lab nodes over SSH (pass after inventory/lab/hosts.yml)",
             "all:", "  children:", "    k8s_cluster:", "      vars:",
             "        ansible_connection: ansible.builtin.ssh", f"        ansible_user: {USER}",
             "        ansible_become: true",
             f"        ansible_ssh_private_key_file: {kd}/id_ed25519",
             f"        ansible_ssh_common_args: '{args}'",
             f"        ansible_ssh_args: -o ControlMaster=auto -o ControlPersist=60s -o ControlPath={control_path(path)}",
             "      hosts:"]
    lines += [f"        {n['name']}: {{ansible_host: {n['ip']}}}" for n in state["nodes"]]
    out = os.path.join(kd, "inventory.yml")
    with open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return out


def reachable(node: Dict[str, Any], state: Dict[str, Any], path: Optional[str] = None) -> bool:
    """`ssh ops@node sudo -n true` with the lab's key and known_hosts."""
    kd = key_dir(path)
    proc = subprocess.run(["ssh", "-i", f"{kd}/id_ed25519", "-o", f"UserKnownHostsFile={kd}/known_hosts",
                           "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o",
                           f"ProxyCommand=nsenter -t {state['underlay']['pid']} -n busybox nc %h %p",
                           f"{USER}@{node['ip']}", "sudo", "-n", "true"], capture_output=True, timeout=30, check=False)
    return proc.returncode == 0


__all__ = ["start", "write_inventory", "key_dir", "close_master", "reachable"]
