"""`molecule test` of the default scenario (lab up -> site.yml -> idempotence -> verify -> lab down)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
from lab import play  # noqa: E402


def test_molecule_default_scenario(tmp_path, sandbox):
    engine = play.engine_snapshot()
    env = play.env({"CNIKIT_LAB_STATE": str(tmp_path / "molecule-lab.json"), "CNIKIT_ENGINE_SRC": engine,
                    "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
                    "MOLECULE_NO_LOG": "false",
                    # molecule's own state ("created") private to this run, not shared via ~/.ansible
                    "MOLECULE_EPHEMERAL_DIRECTORY": str(tmp_path / "molecule")})
    try:
        proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "molecule"), "test"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
    finally:
        shutil.rmtree(os.path.dirname(engine), ignore_errors=True)
    out = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
    assert proc.returncode == 0, out[-8000:]
    for action in ("create", "converge", "idempotence", "verify", "destroy"):
        assert re.search(rf"default \S+ {action}: Executed: Successful", out), action
    assert not os.path.exists(tmp_path / "molecule-lab.json")
