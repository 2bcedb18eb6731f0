"""`make demo`'s code path, end to end (it brings its own lab up and down)."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_make_demo_code_path(tmp_path, sandbox):
    env = dict(os.environ, CNIKIT_LAB_STATE=str(tmp_path / "demo-lab.json"))
    proc = subprocess.run([sys.executable, "-m", "tools.demo"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    # the seed's layout, one pod per node in its node's range, every ping answered
    for node, rng, pod_ip in (("k8s-master", "192.168.80.120-129", "192.168.80.12"),
                              ("k8s-node01", "192.168.80.130-139", "192.168.80.13"),
                              ("k8s-node02", "192.168.80.140-149", "192.168.80.14")):
        row = next(line for line in out.splitlines() if line.startswith(node + " ") and rng in line)
        assert f"busybox-{node}  {pod_ip}" in row and row.count("ok") == 2 and "2/2" in row and "FAIL" not in row
    assert "(changed=0)" in out and "demo passed" in out
    assert not os.path.exists(tmp_path / "demo-lab.json")  # lab down ran
