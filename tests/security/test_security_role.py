"""The cni_plugins role prunes only its own engine releases (issue 13: M3; docs/security.md).

roles/cni_plugins/files/activate.py - the step that points the launchers at one engine version and
prunes the others - is run as the role runs it, with `cni_plugins_lib_dir` shared with a venv and
another tool's directories: only digest-named directories holding our marker (or, installed before
the marker existed, our engine) go.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import cnitest

PY = os.path.join(cnitest.ROOT, ".venv", "bin", "python3")
ACTIVATE = os.path.join(cnitest.ROOT, "roles", "cni_plugins", "files", "activate.py")
ENGINE = os.path.join(cnitest.LIB, "cni")


def release(top: str, name: str, marker: bool) -> str:
    path = os.path.join(top, name)
    shutil.copytree(ENGINE, os.path.join(path, "cni"), ignore=shutil.ignore_patterns("__pycache__"))
    if marker:
        open(os.path.join(path, ".cnikit-engine"), "w").close()
    return path


def activate(libdir: str, dest: str, *extra: str) -> dict:
    with open(ACTIVATE, encoding="utf-8") as fh:
        program = fh.read()
    proc = subprocess.run([PY, "-I", "-c", program, libdir, PY, dest, "host-local", "", *extra],
                          env=dict(os.environ, CC=""), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_prune_keeps_what_is_not_an_engine_release(sandbox, tmp_path):
    top = str(tmp_path / "lib")  # cni_plugins_lib_dir: /opt/cni/lib, shared with the venv
    mine = release(top, "0123456789abcdef", marker=False)
    old = release(top, "fedcba9876543210", marker=True)
    legacy = release(top, "aaaaaaaaaaaaaaaa", marker=False)  # installed before the marker existed
    venv = os.path.join(top, "venv", "bin")
    os.makedirs(venv)
    foreign = os.path.join(top, "bbbbbbbbbbbbbbbb", "data")  # digest-like name, not ours
    os.makedirs(foreign)
    os.symlink(old, os.path.join(top, "cccccccccccccccc"))  # a link to a release is not one
    dest = str(tmp_path / "bin")

    planned = activate(mine, dest, "--check")
    assert planned["pruned"] == [legacy, old] and os.path.isdir(old)  # check mode: nothing removed

    done = activate(mine, dest)
    assert done["pruned"] == [legacy, old]
    assert sorted(os.listdir(top)) == ["0123456789abcdef", "bbbbbbbbbbbbbbbb", "cccccccccccccccc", "venv"]
    assert os.path.isdir(venv) and os.path.isdir(foreign)
    assert os.path.isfile(os.path.join(mine, ".cnikit-engine"))  # the release in use is marked now
    assert activate(mine, dest)["pruned"] == []


def test_agent_unit_sets_a_descriptor_limit():
    """The systemd unit gives the agent room for many connections (it raises its soft limit to it)."""
    import yaml  # noqa: PLC0415

    with open(os.path.join(cnitest.ROOT, "roles", "cni_plugins", "tasks", "main.yml"), encoding="utf-8") as fh:
        tasks = yaml.safe_load(fh)
    (unit,) = [t["ansible.builtin.copy"]["content"] for t in tasks if t.get("name") == "The node agent's systemd unit"]
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].split("=")[1]) >= 4096
