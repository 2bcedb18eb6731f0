"""Helpers for the fleet tests: a lab reached over SSH, node snapshots, plays with a frozen engine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
import lab  # noqa: E402
from lab import play  # noqa: E402

SITE = os.path.join(ROOT, "playbooks", "site.yml")
RESET = os.path.join(ROOT, "playbooks", "reset.yml")
DEMO = os.path.join(ROOT, "playbooks", "demo.yml")
CONF = "/etc/cni/net.d/10-macvlannet.conf"

# Everything a rollout could leave on a node that outlives a reset: files (with content digests) under
# the CNI dirs and the unit dir, links, addresses, routes, iptables and nftables rules.
SNAPSHOT = r"""
for d in /opt/cni /etc/cni /var/lib/cni /etc/systemd/system; do
  find "$d" -printf '%p %y %m %l\n' 2>/dev/null; find "$d" -type f -exec sha256sum {} + 2>/dev/null
done | sort
echo '--- links'; ip -br link | awk '{print $1, $2}'
echo '--- addrs'; ip -br addr
echo '--- routes'; ip route; ip -6 route
echo '--- iptables'; iptables-save 2>/dev/null | grep -v '^#'
echo '--- nft'; nft list ruleset 2>/dev/null
"""


def sh(node: Dict, script: str, check: bool = True) -> str:
    return lab.run_in(node["pid"], ["sh", "-c", script], check=check).stdout


def snapshot(state: Dict) -> Dict[str, str]:
    return {n["name"]: sh(n, SNAPSHOT) for n in state["nodes"]}


def node(state: Dict, name: str) -> Dict:
    return next(n for n in lab.load(state["_path"])["nodes"] if n["name"] == name)


def run(lab_state: str, playbook: str, *args: str, engine: str = "", ssh: bool = True) -> play.PlayResult:
    extra = ["-e", f"cni_plugins_engine_src={engine}"] if engine else []
    return play.playbook(playbook, [*extra, *args], inventory=play.ssh_inventory(lab_state) if ssh else play.INVENTORY,
                         extra_env={"CNIKIT_LAB_STATE": lab_state})


def version(n: Dict) -> Dict:
    return json.loads(sh(n, "/opt/cni/bin/cnikit version"))


def cni(n: Dict, command: str, cid: str, netns: str) -> subprocess.CompletedProcess:
    """One CNI call through the installed executable, as a runtime execs it."""
    script = (f"CNI_COMMAND={command} CNI_CONTAINERID={cid} CNI_NETNS=/run/netns/{netns} CNI_IFNAME=eth0 "
              f"CNI_PATH=/opt/cni/bin /opt/cni/bin/macvlan < {CONF}")
    return lab.run_in(n["pid"], ["sh", "-c", script], check=False)


def expect_ok(result: play.PlayResult) -> play.PlayResult:
    assert result.rc == 0, result.output[-6000:]
    return result


def summary(result: play.PlayResult) -> List[str]:
    return play.summary(result.output)
