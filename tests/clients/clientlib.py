"""Real CNI clients (podman 4.3 with its CNI backend, containerd 1.6 `ctr run --cni`) inside the
sandbox, with no registry image: a busybox-static rootfs. The recipes (ulimits, cgroups, configs)
come from shared/reference/clients-and-timings.md §3/§4; where the sandbox differs it says why."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from typing import Dict, List, Optional

import cnitest
from cni.node.installer import write_executables

BUSYBOX = "/bin/busybox"
PAGE = "hello from busybox httpd on cnikit\n"


def build_rootfs(root: str) -> str:
    """busybox-static + applet symlinks + passwd/group + a page for httpd (no image needed)."""
    for sub in ("bin", "etc", "var/www", "proc", "sys", "dev", "tmp"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = os.path.join(root, "bin", applet)
        if applet != "busybox" and not os.path.lexists(link):
            os.symlink("busybox", link)
    with open(os.path.join(root, "etc", "passwd"), "w", encoding="utf-8") as fh:
        fh.write("root:x:0:0:root:/:/bin/sh\n")
    with open(os.path.join(root, "etc", "group"), "w", encoding="utf-8") as fh:
        fh.write("root:x:0:\n")
    with open(os.path.join(root, "var", "www", "index.html"), "w", encoding="utf-8") as fh:
        fh.write(PAGE)
    return root


def our_bin(dest: str, agent_socket: Optional[str] = None) -> str:
    """A private CNI bin dir holding our executables (what `make plugins DEST=...` writes)."""
    write_executables(dest, sys.executable, cnitest.LIB, socket=agent_socket)
    return dest


def private_cgroup_root() -> Optional[str]:
    """crun refuses a non-cgroup filesystem on /sys/fs/cgroup (the sandbox's fresh sysfs leaves it
    empty) and refuses the host's hybrid v1+v2 layout. With `--cgroups=disabled` it only needs a
    plain v1-looking /sys/fs/cgroup: a tmpfs in the sandbox's own mount namespace. Returns what to
    unmount afterwards (None if nothing was mounted)."""
    if os.path.ismount("/sys/fs/cgroup/unified"):
        subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=True)
    if os.listdir("/sys/fs/cgroup"):
        return None
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "cnikit-cgroup", "/sys/fs/cgroup"], check=True)
    return "/sys/fs/cgroup"


class Podman:
    """podman with the CNI backend, private storage/config under `work`, plugins from `cni_dir`."""

    def __init__(self, work: str, cni_dir: str, rootfs: str) -> None:
        self.work, self.cni_dir, self.rootfs = work, cni_dir, rootfs
        self.net_dir = os.path.join(work, "net.d")
        os.makedirs(self.net_dir, exist_ok=True)
        self.conf = os.path.join(work, "containers.conf")
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(f"""[containers]
log_driver = "k8s-file"
# the VM lacks CAP_SYS_RESOURCE: podman's default nofile/nproc limits are refused by crun
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{work}/events.log"
runtime = "crun"
tmp_dir = "/run/libpod"
static_dir = "{work}/storage/libpod"
volume_path = "{work}/storage/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{cni_dir}"]
network_config_dir = "{self.net_dir}"
""")
        self.storage = os.path.join(work, "storage.conf")
        with open(self.storage, "w", encoding="utf-8") as fh:
            fh.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{work}/storage"\nrunroot = "/run/containers/storage"\n')
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": work,
                    "CONTAINERS_CONF": self.conf, "CONTAINERS_STORAGE_CONF": self.storage}

    def network(self, name: str, conflist: Dict) -> None:
        with open(os.path.join(self.net_dir, f"{name}.conflist"), "w", encoding="utf-8") as fh:
            json.dump(conflist, fh)

    def __call__(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(["podman", *args], capture_output=True, text=True, env=self.env, timeout=timeout,
                              check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def run_args(self, network: str, *extra: str) -> List[str]:
        # options must come before --rootfs: everything after the directory is the command
        return ["run", "--cgroups=disabled", "--network", network, *extra, "--rootfs", self.rootfs]


def fetch(url: str, timeout: float = 3.0, tries: int = 20) -> str:
    """GET with urllib (busybox wget segfaults on this kernel); retries while httpd starts."""
    last: Exception = AssertionError("no try")
    for _ in range(tries):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - sandbox-local URL
                return resp.read().decode()
        except OSError as exc:
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"GET {url} failed: {last}")


def ruleset_text() -> str:
    """Everything netfilter holds in the sandbox netns (nft view plus iptables-save)."""
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    ipt = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    # without iptables-save's timestamp comments, so two snapshots compare
    text = nft + "\n" + "\n".join(line for line in ipt.splitlines() if not line.startswith("#"))
    return re.sub(r"counter packets \d+ bytes \d+|\[\d+:\d+\]", "<counter>", text)


def leases(data_dir: str, net: str) -> List[str]:
    d = os.path.join(data_dir, net)
    if not os.path.isdir(d):
        return []
    return sorted(n for n in os.listdir(d) if n != "lock" and not n.startswith("last_reserved_ip"))


def cache_entries(cache_dir: str = "/var/lib/cni") -> List[str]:
    d = os.path.join(cache_dir, "results")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []
