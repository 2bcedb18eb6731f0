"""The namespace lab: a small cluster of "nodes" on one machine, for the rollout, molecule and the demo.

A node is a long-lived process (`sleep infinity` exec'd by `unshare`) in its own network, mount
and UTS namespaces, with hostname k8s-master, k8s-node01, ... and private tmpfs over /run
(so /run/netns, /run/cni are its own), /etc/cni, /opt/cni and /var/lib/cni. Its `ens33` is a veth
whose other end is a port of the bridge `br0` in the underlay — one more such process, the
"switch", holding the gateway 192.168.80.2. Switch ports have hairpin on by default (a
reflective-relay switch, so macvlan `vepa` pods on one node reach each other); `hairpin(False)`
makes it a plain switch. A JSON state file records the PIDs so `status`, `down` and the Ansible
connection plugin `cnikit.cni.nsenter` can find the nodes.

Every command runs inside those namespaces (`nsenter -t PID`); nothing touches the caller's
network. `up` refuses to run outside tools/sandbox.sh all the same.
"""
from __future__ import annotations

import hashlib
import ipaddress
import shutil
import json
import os
import signal
import subprocess
import time
from typing import Any, Dict, List, Optional, Sequence

DEFAULT_STATE = "/run/cnikit-lab/state.json"
SUBNET = "192.168.80.0/24"
GATEWAY = "192.168.80.2"
FIRST_NODE_IP = "192.168.80.100"  # the seed's apiserver address; workers follow
MAX_NODES = 20
UPLINK = "ens33"
BRIDGE = "br0"

# The node process: private mounts, hostname, lo up, report ready, then hold the namespaces.
# A node has a persistent "disk" (lab.disk_dir): /etc, /opt, /var/lib and /home are overlays on the
# controller's (reads fall through, writes stay on the node's disk), /etc/cni, /opt/cni and
# /var/lib/cni start empty; /run is a fresh tmpfs at every (re)boot, like a real host's.
NODE_SCRIPT = """set -e
mount --make-rprivate /
disk="$2"
for d in {overlays}; do
  up="$disk/overlay$d"; mkdir -p "$up/upper" "$up/work"
  mount -t overlay overlay -o "lowerdir=$d,upperdir=$up/upper,workdir=$up/work" "$d"
done
for d in {binds}; do mkdir -p "$disk/private$d" "$d"; mount --bind "$disk/private$d" "$d"; done
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/lock /run/cni /etc/cni/net.d /opt/cni/bin
hostname "$1"
ip link set lo up
echo ready
exec sleep infinity
"""
OVERLAY_DIRS = ("/etc", "/opt", "/var/lib", "/home")
PRIVATE_BINDS = ("/etc/cni", "/opt/cni", "/var/lib/cni")
DISKS = "/run/cnikit-lab-disks"  # the sandbox's /run: the disks go with the sandbox


class LabError(RuntimeError):
    pass


def state_path(path: Optional[str] = None) -> str:
    return path or os.environ.get("CNIKIT_LAB_STATE") or DEFAULT_STATE


def node_names(count: int) -> List[str]:
    """The seed's names: one control-plane node, then k8s-node01, k8s-node02, ..."""
    if count < 1:
        raise LabError("a lab needs at least one node")
    return ["k8s-master"] + [f"k8s-node{i:02d}" for i in range(1, count)]


def nsenter(pid: int, argv: Sequence[str], mount: bool = True) -> List[str]:
    return ["nsenter", "-t", str(pid), "-n", "-u"] + (["-m"] if mount else []) + ["--"] + list(argv)


def run_in(pid: int, argv: Sequence[str], check: bool = True, mount: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(nsenter(pid, argv, mount), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} (in pid {pid}) failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def disk_dir(node: str, path: Optional[str] = None) -> str:
    """The node's persistent disk (overlay uppers and the private CNI dirs), kept across `reboot`."""
    key = hashlib.sha1(os.path.abspath(state_path(path)).encode()).hexdigest()[:12]
    return os.path.join(DISKS, key, node)


def _spawn(hostname: str, disk: str) -> int:
    """Start one namespace holder on `disk` and wait until its mounts and hostname are in place."""
    os.makedirs(disk, exist_ok=True)
    proc = subprocess.Popen(
        ["unshare", "--net", "--mount", "--uts", "sh", "-c",
         NODE_SCRIPT.format(overlays=" ".join(OVERLAY_DIRS), binds=" ".join(PRIVATE_BINDS)),
         "lab-node", hostname, disk],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        start_new_session=True,  # survives the caller (molecule's create playbook, a shell)
    )
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        raise LabError(f"node {hostname} did not start: {proc.stderr.read().strip()}")
    proc.stdout.close()
    proc.stderr.close()
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # a zombie or a recycled PID is not our node
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().startswith(b"sleep\0infinity")
    except OSError:
        return False


def load(path: Optional[str] = None) -> Optional[Dict[str, Any]]:
    try:
        with open(state_path(path), encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None


def _save(state: Dict[str, Any], path: Optional[str]) -> None:
    target = state_path(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, target)


def require_sandbox() -> None:
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        raise LabError("the lab runs only inside the private sandbox: tools/sandbox.sh python -m lab ...")


def up(count: int, hairpin: bool = True, path: Optional[str] = None, *, ssh: bool = False,
       go_plugins: bool = False) -> Dict[str, Any]:
    """Create the underlay switch and `count` nodes; return the state (also written to the state file).
    `ssh`: an sshd per node (lab/ssh.py); `go_plugins`: the Go reference plugins pre-installed in each
    node's /opt/cni/bin, like a host where a distro package or kubeadm put them."""
    require_sandbox()
    old = load(path)
    if old and any(alive(n["pid"]) for n in old["nodes"] + [old["underlay"]]):
        raise LabError(f"a lab is already up (state {state_path(path)}); run `lab down` first")
    first = ipaddress.ip_address(FIRST_NODE_IP)
    names = node_names(count)
    if count > MAX_NODES:  # node addresses .100-.119 stay clear of the seed's pod pool at .120
        raise LabError(f"at most {MAX_NODES} nodes (addresses from {first}; the pod pool starts at .120)")
    shutil.rmtree(os.path.dirname(disk_dir("x", path)), ignore_errors=True)  # a crashed lab's disks
    state: Dict[str, Any] = {"subnet": SUBNET, "gateway": GATEWAY, "uplink": UPLINK, "hairpin": hairpin,
                             "underlay": {"name": "lab-underlay", "pid": 0}, "nodes": [], "ssh": ssh}
    try:
        sw = state["underlay"]["pid"] = _spawn("lab-underlay", disk_dir("lab-underlay", path))
        _save(state, path)  # from here on `down` can clean up whatever exists
        run_in(sw, ["ip", "link", "add", BRIDGE, "type", "bridge", "stp_state", "0"])
        run_in(sw, ["ip", "addr", "add", f"{GATEWAY}/{ipaddress.ip_network(SUBNET).prefixlen}", "dev", BRIDGE])
        run_in(sw, ["ip", "link", "set", BRIDGE, "up"])
        for i, name in enumerate(names):
            node = {"name": name, "pid": _spawn(name, disk_dir(name, path)), "ip": str(first + i), "port": f"swp{i}"}
            state["nodes"].append(node)
            _save(state, path)
            _wire(state, node)
            _save(state, path)  # with its MAC, kept across reboots
            if go_plugins:
                run_in(node["pid"], ["sh", "-c", "cp -a /usr/lib/cni/. /opt/cni/bin/"])
        set_hairpin(hairpin, path, state)
        for node in state["nodes"]:
            boot(state, node, path)
    except BaseException:
        down(path)
        raise
    return state


def _wire(state: Dict[str, Any], node: Dict[str, Any]) -> None:
    """The node's uplink: a veth made in the switch's netns with its peer placed straight into the node's."""
    sw, pid, port = state["underlay"]["pid"], node["pid"], node["port"]
    # a NIC keeps its MAC across reboots (else the switch's neighbours point at a dead one for ~30 s)
    node.setdefault("mac", "02:1a:b0:00:00:%02x" % (int(port[3:]) + 1))
    run_in(sw, ["ip", "link", "add", port, "type", "veth", "peer", "name", UPLINK, "address", node["mac"],
                "netns", str(pid)])
    run_in(sw, ["ip", "link", "set", port, "master", BRIDGE, "up"])
    run_in(pid, ["ip", "addr", "add", f"{node['ip']}/{ipaddress.ip_network(SUBNET).prefixlen}", "dev", UPLINK])
    run_in(pid, ["ip", "link", "set", UPLINK, "up"])
    run_in(pid, ["ip", "route", "add", "default", "via", GATEWAY])


def boot(state: Dict[str, Any], node: Dict[str, Any], path: Optional[str] = None) -> None:
    """What a node's init does after the network is up: the lab's sshd, then the systemd units
    enabled on the node's disk (lab/init.py). Other lab services hook in here."""
    from . import init, ssh  # noqa: PLC0415

    if state.get("ssh"):
        ssh.start(state, node, path)
    init.start_enabled_units(node["pid"])


def reboot(node_name: str, path: Optional[str] = None) -> Dict[str, Any]:
    """Power-cycle one node: every process in it dies (pods, agent, sshd), its netns with every link and
    its /run go; it comes back on the same disk (/etc, /opt, /var/lib kept) with a fresh /run, the
    uplink re-plugged into the same switch port, and boots (sshd, enabled units). Returns the node."""
    state = load(path)
    if not state:
        raise LabError("the lab is down")
    node = next((n for n in state["nodes"] if n["name"] == node_name), None)
    if node is None:
        raise LabError(f"no lab node named {node_name!r}")
    _kill_namespace_members([node["pid"]])
    node["pid"] = _spawn(node_name, disk_dir(node_name, path))
    _save(state, path)
    _wire(state, node)
    run_in(state["underlay"]["pid"], ["ip", "link", "set", node["port"], "type", "bridge_slave",
                                      "hairpin", "on" if state["hairpin"] else "off"])
    boot(state, node, path)
    return node


def set_hairpin(on: bool, path: Optional[str] = None, state: Optional[Dict[str, Any]] = None) -> None:
    """Switch every port between reflective relay (hairpin on) and a plain switch."""
    state = state or load(path)
    if not state:
        raise LabError("the lab is down")
    for node in state["nodes"]:
        run_in(state["underlay"]["pid"], ["ip", "link", "set", node["port"], "type", "bridge_slave",
                                          "hairpin", "on" if on else "off"])
    state["hairpin"] = on
    _save(state, path)


def _ns_id(pid: int, kind: str) -> Optional[str]:
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def down(path: Optional[str] = None) -> int:
    """Stop every process of the lab (nodes, switch, and anything started in a node: pods' busybox);
    the namespaces, links and private mounts go with them, and so do the nodes' disks. Returns how
    many processes were stopped."""
    state = load(path)
    if not state:
        return 0
    holders = [n["pid"] for n in state["nodes"]] + [state["underlay"]["pid"]]
    if state.get("ssh"):
        from . import ssh  # noqa: PLC0415

        for node in state["nodes"]:
            ssh.close_master(node, path)
        shutil.rmtree(ssh.key_dir(path), ignore_errors=True)
        shutil.rmtree(os.path.dirname(ssh.control_path(path)), ignore_errors=True)
    _kill_namespace_members(holders)
    shutil.rmtree(os.path.dirname(disk_dir("x", path)), ignore_errors=True)
    try:
        os.unlink(state_path(path))
    except FileNotFoundError:
        pass
    return len(holders)


def _kill_namespace_members(holders: List[int]) -> None:
    """SIGKILL every process sharing a holder's UTS namespace (`ip netns exec` keeps it) and reap them."""
    utsns = {_ns_id(pid, "uts") for pid in holders if pid and alive(pid)} - {None}
    victims = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and _ns_id(int(entry), "uts") in utsns:
            victims.add(int(entry))
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    deadline = time.monotonic() + 5
    while victims and time.monotonic() < deadline:
        for pid in list(victims):
            if not os.path.exists(f"/proc/{pid}"):
                victims.discard(pid)
            elif _is_zombie(pid):
                try:  # our own child (we started the holders): reap it
                    os.waitpid(pid, 0)
                except ChildProcessError:  # someone else's: its parent reaps it
                    pass
                victims.discard(pid)
        time.sleep(0.02)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def status(path: Optional[str] = None) -> List[Dict[str, Any]]:
    """One row per node (and the switch): name, pid, alive, address, uplink state."""
    state = load(path)
    if not state:
        return []
    rows = []
    for node in [dict(state["underlay"], ip=state["gateway"], port="-")] + state["nodes"]:
        ok = bool(node["pid"]) and alive(node["pid"])
        link = "-"
        if ok:
            dev = BRIDGE if node["port"] == "-" else UPLINK
            out = run_in(node["pid"], ["ip", "-br", "link", "show", dev], check=False).stdout.split()
            link = out[1] if len(out) > 1 else "missing"
        rows.append({"name": node["name"], "pid": node["pid"], "alive": ok, "ip": node["ip"], "link": link,
                     "hairpin": state["hairpin"] if node["port"] != "-" else "-"})
    return rows


def pid_of(node: str, path: Optional[str] = None) -> int:
    state = load(path)
    if not state:
        raise LabError(f"the lab is down (no state at {state_path(path)})")
    for n in state["nodes"]:
        if n["name"] == node:
            if not alive(n["pid"]):
                raise LabError(f"lab node {node} (pid {n['pid']}) is not running")
            return n["pid"]
    raise LabError(f"no lab node named {node!r} (nodes: {', '.join(n['name'] for n in state['nodes'])})")
