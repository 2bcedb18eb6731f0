"""The engine's import contracts (.importlinter, docs/architecture.md) hold, and they have teeth:
the same check on a copy of the engine with one upward import added fails on the layers contract."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, ".importlinter")
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(module_utils: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=module_utils)
    return subprocess.run([LINT, "--config", CONFIG, "--no-cache"], cwd=module_utils, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_engine_keeps_its_import_contracts():
    proc = lint(os.path.join(ROOT, "plugins", "module_utils"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 kept, 0 broken" in proc.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    shutil.copytree(os.path.join(ROOT, "plugins", "module_utils", "cni"), tmp_path / "cni",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tmp_path / "cni" / "protocol" / "spec.py", "a", encoding="utf-8") as fh:
        fh.write("\nfrom ..runtime import CACHE_KIND  # noqa: E402,F401 - the protocol must not know the runtime\n")
    proc = lint(str(tmp_path))
    assert proc.returncode != 0
    assert "engine layers point down" in proc.stdout and "BROKEN" in proc.stdout
    assert "cni.protocol.spec -> cni.runtime" in proc.stdout
