"""`make demo`: the seed's 3-node macvlan cluster, end to end, on the namespace lab.
`make demo NET=overlay` (`--net overlay`): the same with the flannel-style vxlan overlay (docs/overlay.md).

lab up 3 -> site.yml -> one busybox pod per node (demo.yml) -> ping matrix pod<->pod across all
nodes and host<->pod through the macv-host shim -> table -> site.yml again (must report
changed=0) -> lab down. Exits non-zero if any step or any ping fails. Runs inside tools/sandbox.sh.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import lab  # noqa: E402
from lab import play  # noqa: E402

SITE = os.path.join(play.ROOT, "playbooks", "site.yml")
PODS = os.path.join(play.ROOT, "playbooks", "demo.yml")


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def pod_name(node: str) -> str:
    return f"busybox-{node}"


def pod_ip(pid: int, pod: str) -> str:
    out = lab.run_in(pid, ["ip", "-n", pod, "-j", "-4", "addr", "show", "dev", "eth0"]).stdout
    return json.loads(out)[0]["addr_info"][0]["local"]


def read_range(pid: int) -> str:
    conf = json.loads(lab.run_in(pid, ["cat", "/etc/cni/net.d/10-macvlannet.conf"]).stdout)
    return f"{conf['ipam']['rangeStart']}-{conf['ipam']['rangeEnd'].rsplit('.', 1)[1]}"


def ping(pid: int, dst: str, pod: Optional[str] = None) -> bool:
    """One ping from the node's host side, or from inside its pod with busybox."""
    argv = ["ip", "netns", "exec", pod, "busybox", "ping"] if pod else ["ping"]
    return lab.run_in(pid, argv + ["-c", "1", "-W", "2", dst], check=False).returncode == 0


def run_play(path: str, what: str, args: List[str], verbose: bool, inventory: List[str]) -> play.PlayResult:
    step(f"{what}: ansible-playbook {os.path.relpath(path, play.ROOT)} "
         + " ".join(f"-i {os.path.relpath(i, play.ROOT) if i.startswith(play.ROOT) else i}" for i in inventory))
    result = play.playbook(path, args, inventory=inventory, extra_env={"CNIKIT_LAB_STATE": lab.state_path()},
                           echo=verbose)
    for host, r in sorted(result.recap.items()):
        print(f"    {host:<12} ok={r['ok']:<3} changed={r['changed']:<3} failed={r['failed']} unreachable={r['unreachable']}")
    for line in play.summary(result.output):
        print(f"    | {line}")
    print(f"    {what}: rc={result.rc} in {result.seconds:.1f} s, {result.changed} changed")
    if result.rc != 0:
        if not verbose:
            print(result.output[-4000:])
        raise SystemExit(f"demo: {what} failed (rc {result.rc})")
    return result


def matrix(nodes: List[Dict], shims: Dict[str, str]) -> Tuple[List[List[str]], bool]:
    pods = {n["name"]: (n["pid"], pod_name(n["name"]), pod_ip(n["pid"], pod_name(n["name"]))) for n in nodes}
    jobs = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for src, (pid, pod, _) in pods.items():
            for dst, (_, _, ip) in pods.items():
                if src != dst:
                    jobs[("pod", src, dst)] = pool.submit(ping, pid, ip, pod)
            jobs[("host->pod", src, src)] = pool.submit(ping, pid, pods[src][2])
            jobs[("pod->host", src, src)] = pool.submit(ping, pid, shims[src], pod)
        done = {k: f.result() for k, f in jobs.items()}
    rows, ok = [], all(done.values())
    for n in nodes:
        name = n["name"]
        _, pod, ip = pods[name]
        reach = [dst for dst in pods if dst != name and done[("pod", name, dst)]]
        others = len(pods) - 1
        rows.append([name, read_range(n["pid"]), pod, ip, f"{len(reach)}/{others}" + ("" if len(reach) == others else " FAIL"),
                     "ok" if done[("host->pod", name, name)] else "FAIL",
                     f"ok ({shims[name]})" if done[("pod->host", name, name)] else f"FAIL ({shims[name]})"])
    return rows, ok


def vxlan_tx(pid: int) -> int:
    stats = json.loads(lab.run_in(pid, ["ip", "-s", "-j", "link", "show", "flannel.1"]).stdout)[0]["stats64"]
    return stats["tx"]["packets"]


def overlay_matrix(nodes: List[Dict]) -> Tuple[List[List[str]], bool]:
    """Pod -> every other pod through vxlan, node -> own pod and pod -> node over cni0, and how many
    packets each node's flannel.1 sent meanwhile (the encapsulation at work)."""
    pods = {n["name"]: (n["pid"], pod_name(n["name"]), pod_ip(n["pid"], pod_name(n["name"]))) for n in nodes}
    tx0 = {n["name"]: vxlan_tx(n["pid"]) for n in nodes}
    jobs = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for src, (pid, pod, _) in pods.items():
            for dst, (_, _, ip) in pods.items():
                if src != dst:
                    jobs[("pod", src, dst)] = pool.submit(ping, pid, ip, pod)
            jobs[("host->pod", src, src)] = pool.submit(ping, pid, pods[src][2])
            jobs[("pod->host", src, src)] = pool.submit(ping, pid, pods[src][2].rsplit(".", 1)[0] + ".1", pod)
        done = {k: f.result() for k, f in jobs.items()}
    rows, ok = [], all(done.values())
    for n in nodes:
        name = n["name"]
        _, pod, ip = pods[name]
        reach = [dst for dst in pods if dst != name and done[("pod", name, dst)]]
        others = len(pods) - 1
        rows.append([name, ip.rsplit(".", 1)[0] + ".0/24", pod, ip,
                     f"{len(reach)}/{others}" + ("" if len(reach) == others else " FAIL"),
                     "ok" if done[("host->pod", name, name)] else "FAIL",
                     "ok" if done[("pod->host", name, name)] else "FAIL",
                     f"+{vxlan_tx(n['pid']) - tx0[name]}"])
    return rows, ok


def table(rows: List[List[str]], overlay: bool = False) -> str:
    head = ["NODE", "RANGE", "POD", "POD IP", "POD->PODS", "HOST->POD", "POD->HOST (macv-host)"]
    if overlay:
        head = ["NODE", "SUBNET", "POD", "POD IP", "POD->PODS (vxlan)", "HOST->POD", "POD->HOST (cni0)", "FLANNEL.1 TX"]
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*["-" * w for w in widths])] + [fmt.format(*r) for r in rows])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--net", choices=["macvlan", "overlay"], default=os.environ.get("NET") or "macvlan",
                        help="the pod network (site.yml's cni_pod_network)")
    parser.add_argument("-v", "--verbose", action="store_true", help="stream ansible-playbook output")
    parser.add_argument("--ssh", action="store_true", help="reach the nodes over SSH (user ops, sudo) instead of nsenter")
    args = parser.parse_args(argv)
    lab.require_sandbox()
    t0 = time.monotonic()
    engine = play.engine_snapshot()
    site_args = ["-e", f"cni_plugins_engine_src={engine}", "-e", f"cni_pod_network={args.net}"]
    try:
        step(f"lab up {args.nodes}: switch 192.168.80.2 (hairpin on) + nodes with ens33 uplinks")
        state = lab.up(args.nodes, ssh=args.ssh)
        inventory = play.ssh_inventory() if args.ssh else [play.INVENTORY]
        for n in state["nodes"]:
            print(f"    {n['name']:<12} pid {n['pid']:<7} ens33 {n['ip']}/24")
        first = run_play(SITE, "rollout (site.yml)", site_args, args.verbose, inventory)
        run_play(PODS, "pods (demo.yml)", ["-e", f"cni_pod_network={args.net}"], args.verbose, inventory)
        if args.net == "overlay":
            step("ping matrix: every pod -> every other pod through vxlan; node <-> its pod over cni0")
            rows, ok = overlay_matrix(state["nodes"])
            print(table(rows, overlay=True))
        else:
            step("ping matrix: every pod -> every other pod; node -> its pod and pod -> node via the macv-host shim")
            shims = {n["name"]: s for n, s in zip(state["nodes"], _shim_addresses(state["nodes"]))}
            rows, ok = matrix(state["nodes"], shims)
            print(table(rows))
        second = run_play(SITE, "idempotent re-run (site.yml)", site_args, args.verbose, inventory)
        if second.changed != 0:
            raise SystemExit(f"demo: the re-run changed {second.changed} things; expected changed=0")
        print(f"\n    rollout {first.seconds:.1f} s, re-run {second.seconds:.1f} s (changed=0)")
        if not ok:
            raise SystemExit("demo: some pings failed (see the table)")
        print(f"\ndemo passed in {time.monotonic() - t0:.0f} s")
        return 0
    finally:
        step("lab down")
        print(f"    stopped {lab.down()} lab processes")
        shutil.rmtree(os.path.dirname(engine), ignore_errors=True)


def _shim_addresses(nodes: List[Dict]) -> List[str]:
    """Each node's macv-host address, as the rollout configured it (read from the node)."""
    out = []
    for n in nodes:
        info = json.loads(lab.run_in(n["pid"], ["ip", "-j", "-4", "addr", "show", "dev", "macv-host"]).stdout)
        out.append(info[0]["addr_info"][0]["local"])
    return out


if __name__ == "__main__":
    sys.exit(main())
