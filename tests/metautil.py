"""Helpers for the meta-plugin tests: a pod wired by a bridge (the plumbing a meta plugin chains
after), chained configs, and small kernel-state readers. Networking helpers run in the sandbox."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

import cnitest

_ids = itertools.count(1)


def uid() -> int:
    """A small number unique in this process (names, subnets)."""
    return next(_ids) + (os.getpid() % 50) * 100


@dataclass
class Pod:
    netns: str        # name under /run/netns
    cid: str
    network: str
    bridge: str
    subnet: str
    result: Dict[str, Any]  # the bridge's ADD result (prevResult of the next plugin)
    conf: Dict[str, Any]

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def ip(self) -> str:
        return self.result["ips"][0]["address"].split("/")[0]

    @property
    def gateway(self) -> str:
        return self.result["ips"][0]["gateway"]

    @property
    def host_veth(self) -> str:
        return self.result["interfaces"][1]["name"]


def bridge_conf(network: str, bridge: str, subnet: str, version: str = "1.0.0", **extra: Any) -> Dict[str, Any]:
    conf = {"cniVersion": version, "name": network, "type": "bridge", "bridge": bridge, "isGateway": True,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": f"/var/lib/cni/meta-{network}"}}
    conf.update(extra)
    return conf


def add_pod(netns: str, n: int, network: str = "", cid: str = "", version: str = "1.0.0", **extra: Any) -> Pod:
    """Wire netns with the Go bridge plugin (the fixed point the meta plugins chain after)."""
    network = network or f"meta{n}"
    bridge, subnet = f"cm{n}", f"10.{100 + n // 250}.{n % 250}.0/24"
    conf = bridge_conf(network, bridge, subnet, version, **extra)
    cid = cid or f"c{n}x{netns}"
    out = cnitest.run("bridge", "ADD", conf, go=True, cid=cid, netns=f"/run/netns/{netns}")
    assert out.rc == 0, out.stdout + out.stderr
    return Pod(netns, cid, network, bridge, subnet, out.json, conf)


def del_pod(pod: Pod) -> None:
    cnitest.run("bridge", "DEL", pod.conf, go=True, cid=pod.cid, netns=pod.path)
    cnitest.sh(f"ip link del {pod.bridge}", check=False)


def chained(pod: Pod, plugin: Dict[str, Any], prev: Optional[Dict[str, Any]] = None,
            runtime: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The config a runtime hands the next plugin in the chain (name, version, prevResult)."""
    conf = {"cniVersion": pod.conf["cniVersion"], "name": pod.network, **plugin,
            "prevResult": prev if prev is not None else pod.result}
    if runtime is not None:
        conf["runtimeConfig"] = runtime
    return conf


def run_chain(plugin: str, command: str, pod: Pod, conf: Dict[str, Any], go: bool = False,
              ifname: str = "eth0") -> cnitest.Outcome:
    return cnitest.run(plugin, command, conf, go=go, cid=pod.cid, netns=pod.path, ifname=ifname)


@contextlib.contextmanager
def http_server(netns: str, port: int, body: str) -> Iterator[None]:
    """busybox httpd serving `body` on `port` inside netns (busybox wget segfaults here: fetch with urllib)."""
    root = f"/run/www-{netns}-{port}"
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as fh:
        fh.write(body)
    proc = subprocess.Popen(["ip", "netns", "exec", netns, "busybox", "httpd", "-f", "-p", str(port), "-h", root])
    try:
        deadline = time.time() + 5
        while time.time() < deadline:  # wait until it listens
            if f":{port:04X} " in cnitest.sh(f"ip netns exec {netns} cat /proc/net/tcp /proc/net/tcp6"):
                break
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=5)
        shutil.rmtree(root, ignore_errors=True)


def fetch(url: str, netns: Optional[str] = None, timeout: float = 3.0) -> str:
    """GET `url` from the sandbox host netns (or from `netns`); the body, or '' on failure."""
    if netns:
        code = f"import urllib.request as u; print(u.urlopen({url!r}, timeout={timeout}).read().decode(), end='')"
        proc = subprocess.run(["ip", "netns", "exec", netns, "python3", "-c", code], capture_output=True, text=True,
                              check=False, timeout=timeout + 5)
        return proc.stdout if proc.returncode == 0 else ""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read().decode()
    except (OSError, socket.timeout):
        return ""


def nft_ruleset() -> str:
    return cnitest.sh("nft list ruleset")


def nft_table(family_name: str) -> Any:
    out = cnitest.sh(f"nft -j list table {family_name}", check=False)
    return json.loads(out)["nftables"] if out.strip() else None


def iptables_save(table: str = "nat", v6: bool = False) -> str:
    """iptables-save output without the comment/counter lines that differ between two runs."""
    tool = "ip6tables-save" if v6 else "iptables-save"
    return "\n".join(ln for ln in cnitest.sh(f"{tool} -t {table}").splitlines() if not ln.startswith("#"))


def cni_lines(saved: str) -> List[str]:
    return [ln for ln in saved.splitlines() if "CNI" in ln]


def reset_netfilter() -> None:
    """Drop what the meta plugins leave on purpose (shared tables/chains), so a test leaves nothing."""
    for table in ("inet cnikit_hostport", "inet cnikit_masq", "inet cnikit_filter"):
        cnitest.sh(f"nft delete table {table}", check=False)
    for tool in ("iptables", "ip6tables"):
        for table in ("nat", "filter"):
            cnitest.sh(f"{tool} -w -t {table} -F && {tool} -w -t {table} -X", check=False)
