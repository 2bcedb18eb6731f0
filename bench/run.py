"""`make bench`: our CNI executables against the Go reference plugins (/usr/lib/cni), side by side.

Every case runs in its own nested sandbox (fresh netns, /run, /var/lib/cni, nftables/iptables), so
no case sees another's leftovers. Inside a case the flavours are interleaved cycle by cycle (go,
ours, ours-inproc, go, ...), so machine noise hits them alike and the ratio comes from one run.

Flavours:
  go           the Go reference plugins 1.1.1, /usr/lib/cni
  ours         our executables with the node agent up (the production path: sh launcher -> relay ->
               agent)
  ours-inproc  our executables with no agent (the fallback: the engine imported in the process)

Every call goes through the real exec protocol (bench/driver.py): env + stdin, a fresh process.
Results: bench/results/<time>.json, the table printed and written into docs/performance.md.

    python -m bench.run [--cycles N] [--cases 1,2,5] [--no-docs]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

from .driver import Chain, PluginFailed, as_conflist, cni_env, exec_plugin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "plugins", "module_utils")
GO_BIN = "/usr/lib/cni"
WORK = "/run/cnikit-bench"
AGENT_SOCK = f"{WORK}/agent.sock"
BINDIRS = {"go": GO_BIN, "ours": f"{WORK}/bin-agent", "ours-inproc": f"{WORK}/bin-inproc"}
RESULTS = os.path.join(ROOT, "bench", "results")
DOC = os.path.join(ROOT, "docs", "performance.md")
WARMUP = 3

# case id -> (title, target ratio ours/go on the ADD+DEL median, flavours)
CASES: Dict[str, Dict[str, Any]] = {
    "1": {"title": "macvlan + host-local (seed config)", "target": 0.7},
    "2": {"title": "bridge + host-local, no ipMasq", "target": 0.7},
    "3": {"title": "bridge + host-local, ipMasq", "target": 0.3},
    "4": {"title": "conflist bridge(ipMasq) -> portmap (1 mapping)", "target": 0.3},
    "5": {"title": "VERSION", "target": 1.5},
    "6": {"title": "portmap ADD with 0/100/1000 existing mappings", "target": 1.5},
    "7": {"title": "podman run --rm, bridge(ipMasq)+portmap", "target": 0.5},
    "8": {"title": "3-node lab rollout (playbooks/site.yml)", "target": 60.0},
    "9": {"title": "agent resident size with 1000 attachments", "target": 60.0},
}


def sh(cmd: str) -> str:
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd!r}: {proc.stderr.strip()}")
    return proc.stdout


# --- inside a case sandbox ------------------------------------------------------------------

class Agent:
    """The node agent of the `ours` flavour, as the cni_plugins role starts it."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([os.path.join(BINDIRS["ours"], "cnikit"), "agent", "--socket", AGENT_SOCK],
                                     stdout=subprocess.DEVNULL, stderr=open(f"{WORK}/agent.log", "w"))
        deadline = time.monotonic() + 30
        while not os.path.exists(AGENT_SOCK):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("agent did not start: " + open(f"{WORK}/agent.log").read()[-800:])
            time.sleep(0.02)

    def rss_kb(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def setup_sandbox(flavours: List[str]) -> Optional[Agent]:
    if os.environ.get("CNIKIT_SANDBOX") != "1":
        raise SystemExit("bench cases must run inside tools/sandbox.sh")
    sys.path.insert(0, LIB)
    from cni.node.installer import write_executables  # noqa: PLC0415

    py = os.path.join(ROOT, ".venv", "bin", "python3")
    write_executables(BINDIRS["ours"], py, LIB, socket=AGENT_SOCK)
    write_executables(BINDIRS["ours-inproc"], py, LIB, socket=f"{WORK}/no-agent.sock")
    return Agent() if "ours" in flavours else None


def netns(name: str) -> str:
    sh(f"ip netns add {name} && ip -n {name} link set lo up")
    return f"/run/netns/{name}"


def cycles(flavours: List[str], n: int, make: Callable[[str, int], Chain]) -> Dict[str, Any]:
    """Interleaved ADD+DEL cycles; per flavour the ADD and DEL seconds (or the first error)."""
    out: Dict[str, Any] = {f: {"add": [], "del": []} for f in flavours}
    live = list(flavours)
    for i in range(WARMUP + n):
        for flav in list(live):
            chain = make(flav, i)
            try:
                t_add = chain.add()
                t_del = chain.delete()
            except PluginFailed as exc:
                out[flav] = {"error": str(exc)}
                live.remove(flav)
                try:
                    chain.delete()
                except PluginFailed:
                    pass
                continue
            if i >= WARMUP:
                out[flav]["add"].append(t_add)
                out[flav]["del"].append(t_del)
    return out


FLAVOUR_NET = {"go": 1, "ours": 2, "ours-inproc": 3}


def case_1(flavours: List[str], n: int) -> Dict[str, Any]:
    sh("ip link add ens33 type veth peer name ens33p && ip link set ens33 up && ip link set ens33p up")
    nss = {f: netns(f"c-{f}") for f in flavours}

    def make(flav: str, i: int) -> Chain:
        conf = {"cniVersion": "1.0.0", "name": f"macvlannet-{flav}", "type": "macvlan", "master": "ens33",
                "mode": "vepa", "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": "192.168.80.0/24", "rangeStart": "192.168.80.120",
                         "rangeEnd": "192.168.80.129", "gateway": "192.168.80.2",
                         "routes": [{"dst": "0.0.0.0/0"}]}}
        return Chain(as_conflist(conf), BINDIRS[flav], f"{flav}-{i}", nss[flav])

    return cycles(flavours, n, make)


def bridge_conf(flav: str, ipmasq: bool) -> Dict[str, Any]:
    k = FLAVOUR_NET[flav]
    return {"type": "bridge", "bridge": f"cni-{flav}"[:15], "isGateway": True, "ipMasq": ipmasq,
            "ipam": {"type": "host-local", "subnet": f"10.88.{k}.0/24", "routes": [{"dst": "0.0.0.0/0"}]}}


def case_bridge(flavours: List[str], n: int, ipmasq: bool) -> Dict[str, Any]:
    nss = {f: netns(f"c-{f}") for f in flavours}

    def make(flav: str, i: int) -> Chain:
        conf = {"cniVersion": "1.0.0", "name": f"br-{flav}", **bridge_conf(flav, ipmasq)}
        return Chain(as_conflist(conf), BINDIRS[flav], f"{flav}-{i}", nss[flav])

    return cycles(flavours, n, make)


def case_4(flavours: List[str], n: int) -> Dict[str, Any]:
    nss = {f: netns(f"c-{f}") for f in flavours}

    def make(flav: str, i: int) -> Chain:
        conflist = {"cniVersion": "1.0.0", "name": f"pm-{flav}",
                    "plugins": [bridge_conf(flav, True),
                                {"type": "portmap", "capabilities": {"portMappings": True}}]}
        caps = {"portMappings": [{"hostPort": 8080 + FLAVOUR_NET[flav], "containerPort": 80, "protocol": "tcp"}]}
        return Chain(conflist, BINDIRS[flav], f"{flav}-{i}", nss[flav], capability_args=caps)

    return cycles(flavours, n, make)


def case_5(flavours: List[str], n: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    flavours = [f for f in flavours if f != "ours-inproc"]  # the launcher answers VERSION either way
    samples: Dict[str, List[float]] = {f: [] for f in flavours}
    for i in range(WARMUP + 3 * n):
        for flav in flavours:
            call = exec_plugin(os.path.join(BINDIRS[flav], "bridge"), cni_env("VERSION", BINDIRS[flav]), b"")
            if call.rc != 0:
                out[flav] = {"error": call.stdout.decode(errors="replace")}
            elif i >= WARMUP:
                samples[flav].append(call.seconds)
    for flav in flavours:
        out.setdefault(flav, {"add": samples[flav], "del": [0.0] * len(samples[flav])})
    return out


def portmap_chain(flav: str, idx: int, ns: str) -> Chain:
    """portmap alone, chained after a synthetic prevResult (container 10.99.x.y)."""
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": ns}],
            "ips": [{"address": f"10.99.{idx // 250}.{idx % 250 + 2}/16", "interface": 0}]}
    conflist = {"cniVersion": "1.0.0", "name": "pmscale",
                "plugins": [{"type": "portmap", "capabilities": {"portMappings": True}}]}
    caps = {"portMappings": [{"hostPort": 20000 + idx, "containerPort": 80, "protocol": "tcp"}]}
    return Chain(conflist, BINDIRS[flav], f"pm{idx}", ns, capability_args=caps, prev=prev)


def case_6(flavours: List[str], n: int, agent: Optional[Agent]) -> Dict[str, Any]:
    """One flavour per sandbox (the other's rules would be in the way): existing mappings are
    made with the flavour's own portmap, then ADD+DEL of one more is timed at each level."""
    out: Dict[str, Any] = {}
    flav = flavours[0]
    ns = netns("c-pm")
    made = 0
    try:
        for level in (0, 100, 1000):
            while made < level:
                portmap_chain(flav, made, ns).add()
                made += 1
            adds, dels = [], []
            for i in range(WARMUP + n):
                chain = portmap_chain(flav, 5000 + i, ns)
                t_add = chain.add()
                t_del = chain.delete()
                if i >= WARMUP:
                    adds.append(t_add)
                    dels.append(t_del)
            out[f"{flav}@{level}"] = {"add": adds, "del": dels}
        if agent is not None:
            out["agent_rss_kb_with_1000_mappings"] = agent.rss_kb()
    except PluginFailed as exc:
        out[f"{flav}@{made}"] = {"error": str(exc)}
    return out


def case_9(flavours: List[str], n: int, agent: Optional[Agent]) -> Dict[str, Any]:
    """1000 bridge+host-local attachments held through the agent; its RSS before/after."""
    if agent is None:
        return {}
    out: Dict[str, Any] = {"agent_rss_kb_idle": agent.rss_kb()}
    conf = {"cniVersion": "1.0.0", "name": "mem", "type": "bridge", "bridge": "cni-mem",
            "ipam": {"type": "host-local", "subnet": "10.77.0.0/16"}}
    chains = []
    nss = [netns(f"m{k}") for k in range(10)]
    try:
        for i in range(1000):
            chain = Chain(as_conflist(conf), BINDIRS["ours"], f"mem-{i}", nss[i % 10], ifname=f"e{i // 10}")
            chain.add()
            chains.append(chain)
        out["attachments"] = len(chains)
        out["agent_rss_kb_1000"] = agent.rss_kb()
        for chain in chains:
            chain.delete()
        out["agent_rss_kb_after_del"] = agent.rss_kb()
    except PluginFailed as exc:
        out["error"] = f"after {len(chains)} attachments: {exc}"
    return out


PODMAN_CONF = """[containers]
log_driver = "k8s-file"
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{w}/events.log"
runtime = "crun"
tmp_dir = "/run/libpod"
static_dir = "{w}/storage/libpod"
volume_path = "{w}/storage/volumes"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bindir}"]
network_config_dir = "/etc/cni/net.d"
"""


def podman_setup(w: str) -> None:
    """A busybox rootfs, storage in the sandbox's /run, and the sysfs of this netns with the host's
    cgroup tree bound under it (crun wants it; --cgroups=disabled keeps it untouched). The recipe
    and the VM-specific settings are from clients-and-timings.md §3."""
    os.makedirs(f"{w}/rootfs/bin", exist_ok=True)
    os.makedirs(f"{w}/rootfs/etc", exist_ok=True)
    os.makedirs(f"{w}/cg", exist_ok=True)
    sh(f"cp /bin/busybox {w}/rootfs/bin/busybox && ln -sf busybox {w}/rootfs/bin/true")
    with open(f"{w}/rootfs/etc/passwd", "w") as fh:
        fh.write("root:x:0:0:root:/root:/bin/sh\n")
    # a sandbox's own sysfs hides the host's, and with it /sys/fs/cgroup: uncover, keep, re-cover
    sh('while [ -z "$(ls /sys/fs/cgroup 2>/dev/null)" ] && mountpoint -q /sys; do umount -l /sys; done')
    sh(f"mount --rbind /sys/fs/cgroup {w}/cg && mount -t sysfs sysfs /sys && mount --rbind {w}/cg /sys/fs/cgroup")
    sh("! mountpoint -q /sys/fs/cgroup/unified || umount /sys/fs/cgroup/unified")  # crun 1.8: no hybrid
    with open(f"{w}/storage.conf", "w") as fh:
        fh.write(f'[storage]\ndriver = "vfs"\ngraphroot = "{w}/storage"\nrunroot = "/run/containers/storage"\n')
    for flav, bindir in BINDIRS.items():
        with open(f"{w}/containers-{flav}.conf", "w") as fh:
            fh.write(PODMAN_CONF.format(w=w, bindir=bindir))
    conflist = {"cniVersion": "1.0.0", "name": "benchnet",
                "plugins": [{"type": "bridge", "bridge": "cni-bench", "isGateway": True, "ipMasq": True,
                             "ipam": {"type": "host-local", "subnet": "10.89.7.0/24",
                                      "routes": [{"dst": "0.0.0.0/0"}]}},
                            {"type": "portmap", "capabilities": {"portMappings": True}}]}
    with open("/etc/cni/net.d/benchnet.conflist", "w") as fh:
        json.dump(conflist, fh)


def case_7(flavours: List[str], n: int) -> Dict[str, Any]:
    """`podman run --rm /bin/true` with --network none (the floor), and on a bridge+portmap network
    with each flavour's plugins (podman also probes every plugin with VERSION)."""
    if not shutil.which("podman"):
        return {"skipped": "podman is not installed"}
    w = f"{WORK}/podman"
    podman_setup(w)
    runs = [("none", "go", "none")] + [(f, f, "benchnet") for f in flavours]
    samples: Dict[str, List[float]] = {name: [] for name, _, _ in runs}
    out: Dict[str, Any] = {}
    for i in range(WARMUP + n):
        for name, flav, network in runs:
            if name in out:
                continue
            env = dict(os.environ, CONTAINERS_CONF=f"{w}/containers-{flav}.conf",
                       CONTAINERS_STORAGE_CONF=f"{w}/storage.conf")
            start = time.perf_counter()
            proc = subprocess.run(["podman", "run", "--rm", "--cgroups=disabled", "--network", network,
                                   "--rootfs", f"{w}/rootfs", "/bin/true"], env=env, capture_output=True,
                                  text=True, check=False, timeout=120)
            took = time.perf_counter() - start
            if proc.returncode != 0:
                errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error")] or [proc.stderr[-300:]]
                out[name] = {"error": errors[-1].strip()}
            elif i >= WARMUP:
                samples[name].append(took)
    leftovers = os.listdir("/var/lib/cni/networks/benchnet") if os.path.isdir("/var/lib/cni/networks/benchnet") else []
    out["leases_left"] = [x for x in leftovers if x[0].isdigit()]
    for name, xs in samples.items():
        out.setdefault(name, {"add": xs, "del": [0.0] * len(xs)})
    return out


def case_8() -> Dict[str, Any]:
    """The seed's 3-node lab, site.yml twice (first run, idempotent re-run), as `make demo` does."""
    sys.path.insert(0, ROOT)
    import lab  # noqa: PLC0415
    from lab import play  # noqa: PLC0415

    site = os.path.join(ROOT, "playbooks", "site.yml")
    site_args = ["-e", f"cni_plugins_engine_src={play.engine_snapshot()}"]
    out: Dict[str, Any] = {}
    lab.up(3)
    try:
        for run in ("first", "rerun"):
            result = play.playbook(site, site_args, extra_env={"CNIKIT_LAB_STATE": lab.state_path()})
            out[run] = {"rc": result.rc, "seconds": round(result.seconds, 1), "changed": result.changed}
            if result.rc != 0:
                out[run]["error"] = result.output[-600:]
                break
    finally:
        lab.down()
    return out


def run_case(case: str, flavours: List[str], n: int) -> Dict[str, Any]:
    if case == "8":
        return case_8()
    agent = setup_sandbox(flavours)
    try:
        if case == "1":
            return case_1(flavours, n)
        if case in ("2", "3"):
            return case_bridge(flavours, n, ipmasq=case == "3")
        if case == "4":
            return case_4(flavours, n)
        if case == "5":
            return case_5(flavours, n)
        if case == "6":
            return case_6(flavours, n, agent)
        if case == "7":
            return case_7(flavours, n)
        if case == "9":
            return case_9(flavours, n, agent)
        raise SystemExit(f"unknown case {case}")
    finally:
        if agent is not None:
            agent.stop()


# --- the orchestrator -----------------------------------------------------------------------

def in_child_sandbox(case: str, flavours: List[str], n: int) -> Dict[str, Any]:
    """Run one case in a fresh nested sandbox; its raw samples."""
    with tempfile.NamedTemporaryFile(prefix="cnikit-bench-", suffix=".json", delete=False) as tmp:
        path = tmp.name
    env = dict(os.environ, CNIKIT_SANDBOX="", PYTHONPATH=ROOT)
    cmd = [os.path.join(ROOT, "tools", "sandbox.sh"), sys.executable, "-m", "bench.run", "--child", case,
           "--flavours", ",".join(flavours), "--cycles", str(n), "--out", path]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = {"error": f"case {case} crashed (rc {proc.returncode}): {proc.stderr.strip()[-1500:]}"}
    finally:
        os.unlink(path)
    return data


def stats(xs: List[float]) -> Dict[str, float]:
    s = sorted(xs)
    return {"median_ms": round(statistics.median(s) * 1000, 2),
            "p95_ms": round(s[max(0, math.ceil(0.95 * len(s)) - 1)] * 1000, 2), "n": len(s)}


def summarise(raw: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Rows: one per case and flavour (case 6: per level), with the ratio to go's median."""
    rows = []
    for case, data in raw.items():
        meta = CASES[case]
        if case in ("8", "9"):
            rows.append({"case": case, "title": meta["title"], "flavour": "ours", "extra": data})
            continue
        series = {k: v for k, v in data.items() if isinstance(v, dict)}
        extra = {k: v for k, v in data.items() if not isinstance(v, dict)}
        for key, val in series.items():
            row: Dict[str, Any] = {"case": case, "title": meta["title"], "flavour": key, "extra": extra}
            if "error" in val:
                row["error"] = val["error"]
            elif val["add"]:
                cyc = [a + d for a, d in zip(val["add"], val["del"])]
                row.update(add=stats(val["add"]), delete=stats(val["del"]), cycle=stats(cyc))
            rows.append(row)
    by = {(r["case"], r["flavour"]): r for r in rows}
    for r in rows:
        if "cycle" not in r:
            continue
        if r["case"] == "6":  # flatness: ADD at this level against the same flavour's ADD at 0
            flav = r["flavour"].split("@")[0]
            base = by.get(("6", f"{flav}@0"))
            if base and "add" in base:
                r["growth_vs_0"] = round(r["add"]["median_ms"] / base["add"]["median_ms"], 2)
            continue
        go = by.get((r["case"], "go"))
        if r["case"] == "7":  # the network part: a run minus a --network none run
            none = by.get(("7", "none"))
            if r["flavour"] == "none" or not none or "cycle" not in none:
                continue
            r["network_ms"] = round(r["cycle"]["median_ms"] - none["cycle"]["median_ms"], 2)
            if r["flavour"] != "go" and go and "cycle" in go:
                go_net = go["cycle"]["median_ms"] - none["cycle"]["median_ms"]
                r["ratio_vs_go"] = round(r["network_ms"] / go_net, 2)
            continue
        if r["flavour"] != "go" and go and "cycle" in go:
            r["ratio_vs_go"] = round(r["cycle"]["median_ms"] / go["cycle"]["median_ms"], 2)
    return rows


def cell(text: str, width: int = 160) -> str:
    return " ".join(str(text).split()).replace("|", "/")[:width]


def table(rows: List[Dict[str, Any]]) -> str:
    lines = ["| case | flavour | ADD median | DEL median | ADD+DEL median | ADD+DEL p95 | ours/go | target |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        target = CASES[r["case"]]["target"]
        if r["case"] == "8":
            e = r["extra"]
            runs = [f"{k} {v['seconds']:.1f} s (rc {v['rc']}, changed {v['changed']})" for k, v in e.items()
                    if isinstance(v, dict)]
            ok = (e.get("first", {}).get("rc") == 0 and e["first"]["seconds"] <= 60 and
                  e.get("rerun", {}).get("rc") == 0 and e["rerun"]["seconds"] <= 20 and e["rerun"]["changed"] == 0)
            err = next((cell(v["error"][-300:]) for v in e.values() if isinstance(v, dict) and "error" in v), "")
            lines.append(f"| {r['case']} {r['title']} | ours | {'; '.join(runs) or cell(e.get('error', ''))} "
                         f"{err} | | | | {'✔' if ok else '✘'} | first ≤ 60 s, re-run ≤ 20 s |")
            continue
        if r["case"] == "9":
            e = r["extra"]
            val = (f"idle {e.get('agent_rss_kb_idle', 0) / 1024:.1f} MB, 1000 attachments "
                   f"{e.get('agent_rss_kb_1000', 0) / 1024:.1f} MB, after DEL {e.get('agent_rss_kb_after_del', 0) / 1024:.1f} MB"
                   if "agent_rss_kb_1000" in e else f"error: {cell(e.get('error', 'no agent'))}")
            lines.append(f"| {r['case']} {r['title']} | ours | {val} | | | | | < {target:.0f} MB |")
            continue
        if "error" in r:
            lines.append(f"| {r['case']} {r['title']} | {r['flavour']} | error: {cell(r['error'])} | | | | | |")
            continue
        if "cycle" not in r:
            continue
        if r["case"] == "6":
            ratio = f"×{r['growth_vs_0']} of @0" if "growth_vs_0" in r else ""
            tgt = f"@1000 ≤ ×{target} of @0"
            verdict = ""
            if r["flavour"].endswith("@1000") and "growth_vs_0" in r:
                verdict = " ✔" if r["growth_vs_0"] <= target else " ✘"
        else:
            ratio = f"{r['ratio_vs_go']:.2f}" if "ratio_vs_go" in r else ""
            tgt = f"≤ {target}"
            verdict = ""
            if r["flavour"] == "ours" and "ratio_vs_go" in r:
                verdict = " ✔" if r["ratio_vs_go"] <= target else " ✘"
        add, dele, cyc = (f"{r['add']['median_ms']:.1f} ms", f"{r['delete']['median_ms']:.1f} ms",
                          f"{r['cycle']['median_ms']:.1f} ms")
        if r["case"] == "5":
            dele = "–"
        elif r["case"] == "7":  # whole `podman run` in the ADD column, its network part in ADD+DEL
            add, dele = f"run {add}", "–"
            cyc = f"network {r['network_ms']:.1f} ms" if "network_ms" in r else "(floor)"
        lines.append(f"| {r['case']} {r['title']} | {r['flavour']} | {add} | {dele} | {cyc} | "
                     f"{r['cycle']['p95_ms']:.1f} ms | {ratio}{verdict} | {tgt} |")
    return "\n".join(lines)


def machine() -> Dict[str, Any]:
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    return {"kernel": platform.release(), "cpus": os.cpu_count(), "loadavg": os.getloadavg(),
            "python_engine": platform.python_version(), "commit": commit,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def update_doc(text: str, when: str) -> None:
    start, end = "<!-- bench:table:start -->", "<!-- bench:table:end -->"
    if not os.path.exists(DOC):
        return
    with open(DOC, encoding="utf-8") as fh:
        doc = fh.read()
    if start not in doc or end not in doc:
        return
    head, rest = doc.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(DOC, "w", encoding="utf-8") as fh:
        fh.write(f"{head}{start}\nLatest `make bench` ({when}):\n\n{text}\n{end}{tail}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run")
    ap.add_argument("--cycles", type=int, default=int(os.environ.get("BENCH_CYCLES", "30")))
    ap.add_argument("--cases", default=os.environ.get("BENCH_CASES", ",".join(CASES)))
    ap.add_argument("--flavours", default="go,ours,ours-inproc")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    flavours = args.flavours.split(",")
    if args.child:
        data = run_case(args.child, flavours, args.cycles)
        with open(args.out, "w") as fh:
            json.dump(data, fh)
        return 0
    raw: Dict[str, Dict[str, Any]] = {}
    load_start = os.getloadavg()
    for case in args.cases.split(","):
        started = time.monotonic()
        if case == "6":  # one sandbox per flavour
            raw[case] = {}
            for flav in [f for f in flavours if f != "ours-inproc"]:
                raw[case].update(in_child_sandbox(case, [flav], args.cycles))
        elif case in ("8", "9"):
            raw[case] = in_child_sandbox(case, ["ours"], args.cycles)
        else:
            raw[case] = in_child_sandbox(case, flavours, args.cycles)
        print(f"case {case} done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    rows = summarise(raw)
    info = dict(machine(), loadavg_start=load_start)
    text = table(rows)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    out = os.path.join(RESULTS, time.strftime("%Y%m%d-%H%M%S") + ".json")
    with open(out, "w") as fh:
        json.dump({"machine": info, "cycles": args.cycles, "rows": rows, "raw": raw}, fh, indent=1)
    print(f"results: {os.path.relpath(out, ROOT)}")
    if not args.no_docs:
        update_doc(text, f"{info['time']}, commit {info['commit']}, {info['cpus']} CPUs, "
                         f"load average {load_start[0]:.1f} at the start and {info['loadavg'][0]:.1f} at the end, "
                         f"{args.cycles} cycles/case, results `{os.path.relpath(out, ROOT)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
