"""Run a command on Debian's stock kernel: a qemu guest (software emulation) whose root is this
machine's root, shared read-only over 9p with a tmpfs overlay on top, so the project's venv,
build/bin, the Go plugins in /usr/lib/cni and the tests are all there unchanged.

    tools/stock_kernel.py prepare            # (network) download + extract the kernel, build the initramfs
    tools/stock_kernel.py run [--timeout S] -- CMD...   # boot, run CMD in the repo dir, exit with its code

`prepare` apt-get downloads the package `linux-image-amd64` depends on into build/kernel/ and
extracts it there with dpkg-deb (never installed, /boot untouched), builds modules.dep/alias with
`busybox depmod` (no kmod on these hosts) and an initramfs: busybox-static, /sbin/ip and the few
modules needed to reach the shared root (virtio, 9p, overlay). Every other module is loaded on
demand in the guest by `busybox modprobe` from the extracted tree, which the guest sees over 9p.

`run` boots `qemu-system-x86_64 -accel tcg` (the host's paravirtual KVM cannot run a stock
kernel) under `timeout -s KILL` and `nice`, so a hung guest is killed and reported as a failure.
The command's output is streamed on the serial console; its exit code comes back through a
small writable 9p share. Nothing leaves the guest but that share; the guest has no network device.
See docs/lab.md ("Stock kernel").
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("CNIKIT_KERNEL_CACHE", os.path.join(ROOT, "build", "kernel"))
META = "linux-image-amd64"
# needed before the shared root is mounted, in this order of need (dependencies resolved below)
BOOT_MODULES = ["virtio_pci", "virtio_blk", "9pnet_virtio", "9p", "overlay"]
# loaded at boot so a missing one fails loudly up front; the rest (netfilter, qdiscs) load on demand
LINK_MODULES = ["dummy numdummies=0", "8021q", "ipvlan", "vrf", "ipip", "macvlan", "vxlan", "veth", "bridge", "tun"]
# environment passed into the guest command (everything else is a clean login-like environment)
PASS_ENV = ("CNIKIT_FUZZ_DERANDOMIZE", "PYTEST_ADDOPTS")


def log(msg: str) -> None:
    print(f"stock-kernel: {msg}", file=sys.stderr, flush=True)


def kernel_package() -> str:
    """The versioned kernel package the meta package depends on (linux-image-6.1.0-NN-amd64)."""
    out = subprocess.run(["apt-cache", "depends", META], capture_output=True, text=True, check=True).stdout
    deps = re.findall(r"Depends: (linux-image-\S+)", out)
    if not deps:
        raise SystemExit(f"stock-kernel: apt-cache depends {META}: no linux-image dependency (apt-get update?)")
    return deps[0]


def kernel_dir() -> str:
    """The modules dir of the kernel `prepare` made last (its package name is in CACHE/current)."""
    try:
        with open(os.path.join(CACHE, "current")) as fh:
            pkg = fh.read().strip()
    except FileNotFoundError:
        raise SystemExit("stock-kernel: no kernel prepared; run `tools/stock_kernel.py prepare` (needs network)")
    dirs = glob.glob(os.path.join(CACHE, pkg, "lib", "modules", "*"))
    if len(dirs) != 1:
        raise SystemExit(f"stock-kernel: {CACHE}/{pkg} holds no single kernel; run prepare again")
    return dirs[0]


def prepare() -> None:
    os.makedirs(CACHE, exist_ok=True)
    pkg = kernel_package()
    tree = os.path.join(CACHE, pkg)
    if not os.path.isfile(os.path.join(tree, ".extracted")):
        debs = glob.glob(os.path.join(CACHE, f"{pkg}_*.deb"))
        if not debs:
            log(f"apt-get download {pkg}")
            subprocess.run(["apt-get", "download", "-q", pkg], cwd=CACHE, check=True)
            debs = glob.glob(os.path.join(CACHE, f"{pkg}_*.deb"))
        shutil.rmtree(tree, ignore_errors=True)
        log(f"extracting {os.path.basename(debs[0])}")
        subprocess.run(["dpkg-deb", "-x", debs[0], tree], check=True)
        kver = os.listdir(os.path.join(tree, "lib", "modules"))[0]
        subprocess.run(["busybox", "depmod", "-b", tree, kver], check=True)
        open(os.path.join(tree, ".extracted"), "w").close()
    with open(os.path.join(CACHE, "current"), "w") as fh:
        fh.write(pkg + "\n")
    build_initrd(kernel_dir())


def module_deps(moddir: str) -> Dict[str, List[str]]:
    """modules.dep as {module name: [its .ko path, then its dependencies' paths]}."""
    deps: Dict[str, List[str]] = {}
    with open(os.path.join(moddir, "modules.dep")) as fh:
        for line in fh:
            path, _, rest = line.partition(":")
            name = os.path.basename(path)[:-3].replace("-", "_")
            deps[name] = [path] + rest.split()
    return deps


def load_order(moddir: str, names: List[str]) -> List[str]:
    """The .ko paths to insmod for `names`, dependencies first, each once; built-ins skipped."""
    deps = module_deps(moddir)
    with open(os.path.join(moddir, "modules.builtin")) as fh:
        builtin = {os.path.basename(l.strip())[:-3].replace("-", "_") for l in fh}
    order: List[str] = []

    def visit(path: str) -> None:
        name = os.path.basename(path)[:-3].replace("-", "_")
        for dep in deps[name][1:]:
            visit(dep)
        if path not in order:
            order.append(path)

    for name in names:
        if name in deps:
            visit(deps[name][0])
        elif name not in builtin:
            raise SystemExit(f"stock-kernel: module {name} is neither in modules.dep nor built in")
    return order


INIT = r"""#!/bin/busybox sh
# cnikit stock-kernel guest init: mount the host root, overlay it, run the command, power off.
/bin/busybox mount -t devtmpfs dev /dev
exec </dev/console >/dev/console 2>&1
export PATH=/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
fail() { echo "stock-kernel guest: $*"; poweroff -f; sleep 5; reboot -f; }
while read -r ko; do insmod "/$ko" || fail "insmod $ko failed"; done </etc/boot-modules
mkdir -p /mnt/host /mnt/rw /mnt/root /mnt/xchg
mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 hostroot /mnt/host || fail "9p hostroot"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 xchg /mnt/xchg || fail "9p xchg"
. /mnt/xchg/guest.env
# modules on demand (kernel.modprobe = this initramfs's busybox modprobe) from the extracted tree
ln -s "/mnt/host$MODTREE" /lib/modules
IFS=";"; for m in $LINK_MODULES; do IFS=" "; modprobe $m || fail "modprobe $m failed"; done; unset IFS
# no fallback tunnel devices (tunl0, sit0, ...) in every new netns: tests compare link lists
echo 2 >/proc/sys/net/core/fb_tunnels_only_for_init_net
mount -t tmpfs -o size=60% tmpfs /mnt/rw && mkdir /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /mnt/root || fail overlay
R=/mnt/root
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
for d in /tmp /run /var/tmp; do mount -t tmpfs tmpfs $R$d; done
mkdir -p "$R$XCHG" && mount --bind /mnt/xchg "$R$XCHG"
echo "stock-kernel guest: $(uname -r) up in $(cut -d' ' -f1 /proc/uptime) s; running the command"
{ chroot $R /bin/bash "$XCHG/cmd.sh"; echo $? >/mnt/xchg/rc; } 2>&1 | tee /mnt/xchg/output
sync
poweroff -f
sleep 5
reboot -f
"""


def build_initrd(moddir: str) -> str:
    """initrd.gz next to the kernel tree: busybox, /sbin/ip (+ its libraries), the boot modules."""
    out = os.path.join(CACHE, "initrd.gz")
    busybox = shutil.which("busybox") or "/bin/busybox"
    if "not a dynamic executable" not in subprocess.run(["ldd", busybox], capture_output=True, text=True).stdout + \
            subprocess.run(["ldd", busybox], capture_output=True, text=True).stderr:
        raise SystemExit(f"stock-kernel: {busybox} is not static (install busybox-static)")
    with tempfile.TemporaryDirectory(dir=CACHE) as stage:
        for d in ("bin", "sbin", "dev", "proc", "sys", "mnt", "etc", "tmp", "lib"):
            os.makedirs(os.path.join(stage, d), exist_ok=True)
        shutil.copy2(busybox, os.path.join(stage, "bin", "busybox"))
        applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            # `busybox --list` names busybox itself; /sbin/ip stays iproute2's (copied below)
            if os.path.basename(applet) in ("busybox", "ip"):
                continue
            dest = os.path.join(stage, applet)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            if not os.path.lexists(dest):
                os.symlink("/bin/busybox", dest)
        ip = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "/sbin/ip"
        shutil.copy2(ip, os.path.join(stage, "sbin", "ip"))
        for lib in re.findall(r"(/\S+\.so[.\d]*)", subprocess.run(["ldd", ip], capture_output=True, text=True).stdout):
            dest = os.path.join(stage, lib.lstrip("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dest)
        order = load_order(moddir, BOOT_MODULES)
        for ko in order:
            dest = os.path.join(stage, "mods", ko)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            shutil.copy2(os.path.join(moddir, ko), dest)
        with open(os.path.join(stage, "etc", "boot-modules"), "w") as fh:
            fh.write("".join(f"mods/{ko}\n" for ko in order))
        with open(os.path.join(stage, "init"), "w") as fh:
            fh.write(INIT)
        os.chmod(os.path.join(stage, "init"), 0o755)
        files = subprocess.run("find . -mindepth 1", shell=True, cwd=stage, capture_output=True, check=True).stdout
        cpio = subprocess.run([busybox, "cpio", "-o", "-H", "newc"], input=files, cwd=stage,
                              capture_output=True, check=True).stdout
        tmp = out + ".tmp"
        with open(tmp, "wb") as fh:
            fh.write(subprocess.run(["gzip", "-1"], input=cpio, capture_output=True, check=True).stdout)
        os.replace(tmp, out)
    log(f"initramfs {out} ({os.path.getsize(out) // 1024} KiB, {len(order)} boot modules)")
    return out


def run(argv: List[str], timeout: int, memory: int) -> int:
    moddir = kernel_dir()
    tree = moddir.split("/lib/modules/")[0]
    kver = os.path.basename(moddir)
    vmlinuz = os.path.join(tree, "boot", f"vmlinuz-{kver}")
    initrd = os.path.join(CACHE, "initrd.gz")
    if not os.path.exists(initrd):
        build_initrd(moddir)
    runs = os.path.join(CACHE, "runs")
    os.makedirs(runs, exist_ok=True)
    xchg = tempfile.mkdtemp(prefix="run-", dir=runs)
    env_lines = [f"MODTREE={shlex.quote(os.path.dirname(moddir))}", f"XCHG={shlex.quote(xchg)}",
                 f"LINK_MODULES={shlex.quote(';'.join(LINK_MODULES))}"]
    with open(os.path.join(xchg, "guest.env"), "w") as fh:
        fh.write("\n".join(env_lines) + "\n")
    passed = "".join(f"export {k}={shlex.quote(os.environ[k])}\n" for k in PASS_ENV if k in os.environ)
    with open(os.path.join(xchg, "cmd.sh"), "w") as fh:
        fh.write("set -e\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "
                 "HOME=/root LANG=C.UTF-8 TERM=dumb CNIKIT_STOCK_KERNEL=1\n" + passed +
                 f"cd {shlex.quote(os.getcwd())}\nexec {shlex.join(argv)}\n")
    qemu = ["qemu-system-x86_64", "-accel", "tcg", "-m", str(memory), "-smp", "1", "-nographic",
            "-no-reboot", "-nodefaults", "-serial", "stdio", "-display", "none",
            "-fw_cfg", "name=etc/sercon-port,string=0",  # SeaBIOS: no screen-clearing escapes on the serial log
            "-kernel", vmlinuz, "-initrd", initrd,
            "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
            "-virtfs", f"local,path={xchg},mount_tag=xchg,security_model=none"]
    log(f"booting {kver} (tcg, {memory} MiB, killed after {timeout} s): {shlex.join(argv)}")
    start = time.monotonic()
    # KILL, not TERM: a wedged TCG guest may ignore TERM; `nice` keeps the shared cores usable
    proc = subprocess.run(["timeout", "-s", "KILL", str(timeout), "nice", "-n", "10"] + qemu,
                          stdin=subprocess.DEVNULL, check=False)
    wall = time.monotonic() - start
    rc_file = os.path.join(xchg, "rc")
    if proc.returncode == 137 or proc.returncode == -9:
        log(f"FAILED: guest killed after {wall:.0f} s (timeout {timeout} s)")
        rc = 124
    elif not os.path.exists(rc_file):
        log(f"FAILED: guest ended (qemu rc {proc.returncode}) without the command's exit code after {wall:.0f} s")
        rc = 125
    else:
        rc = int(open(rc_file).read().strip() or 125)
        log(f"guest command exit code {rc}, wall time {wall:.0f} s")
    shutil.rmtree(xchg, ignore_errors=True)
    return rc


def main(args: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="download + extract the kernel, build the initramfs (needs network)")
    r = sub.add_parser("run", help="boot the kernel and run a command in the repo directory")
    r.add_argument("--timeout", type=int, default=900, help="seconds before qemu is killed (default 900)")
    r.add_argument("--memory", type=int, default=1536, help="guest MiB (default 1536)")
    r.add_argument("command", nargs=argparse.REMAINDER)
    opts = parser.parse_args(args)
    if opts.cmd == "prepare":
        prepare()
        return 0
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("run: a command is required")
    return run(command, opts.timeout, opts.memory)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
