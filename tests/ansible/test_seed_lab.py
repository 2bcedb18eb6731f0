"""examples/seed_lab.yml: the seed's manual lab on our modules, run in full: every step changes
something, the pings pass, and the clean-up leaves nothing (the modules' idempotence is shown by
their own tests)."""
from __future__ import annotations

import os
import subprocess

from ansible_harness import ROOT, run_playbook

BOOK = os.path.join(ROOT, "examples", "seed_lab.yml")


def _sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout


def test_seed_lab(collections_root, sandbox):
    try:
        run = run_playbook(collections_root, BOOK).ok()
        changed = {t["name"] for t in run.data["tasks"] if t["result"].get("changed")}
        assert changed == {t["name"] for t in run.data["tasks"]} - {"Step 5 and 7 - is each forwarding/NAT rule there?",
                                                                    "Step 5 and 6 - ns01 reaches ns02 and the bridge"}
        pings = [t for t in run.data["tasks"] if t["name"].startswith("Step 5 and 6")]
        assert len(pings) == 1 and [i["rc"] for i in pings[0]["result"]["results"]] == [0, 0]
        assert _sh("ip netns list").strip() == ""
        assert "br01" not in _sh("ip -o link") and "veth0" not in _sh("ip -o link")
        assert "10.40.80" not in _sh("iptables-save") and "br01" not in _sh("iptables-save")
    finally:
        for cmd in ("ip netns del ns01", "ip netns del ns02", "ip link del br01",
                    "iptables -w -D FORWARD -i br01 -j ACCEPT",
                    "iptables -w -t nat -D POSTROUTING -s 10.40.80.0/24 ! -o br01 -j MASQUERADE"):
            subprocess.run(cmd, shell=True, capture_output=True, check=False)
