"""The cni_plugins role prunes only its own engine releases (issue 13: M3; docs/security.md).

roles/cni_plugins/files/activate.py - the node-side step that activates one engine release and prunes
the older ones - is run as the role runs it, with `cni_plugins_lib_dir` shared with a venv and another
tool's directories: only `<version>-<digest12>` directories under releases/ holding RELEASE.json go.
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


def release(lib: str, name: str, marker: bool = True) -> str:
    path = os.path.join(lib, "releases", name)
    shutil.copytree(ENGINE, os.path.join(path, "cni"), ignore=shutil.ignore_patterns("__pycache__"))
    if marker:
        with open(os.path.join(path, "RELEASE.json"), "w", encoding="utf-8") as fh:
            json.dump({"name": name}, fh)
    return path


def node(op: str, lib: str, dest: str, **extra: object) -> dict:
    with open(ACTIVATE, encoding="utf-8") as fh:
        program = fh.read()
    args = dict(op=op, lib_dir=lib, bin_dir=dest, python=PY, names=["host-local"], go_reference=[],
                replace=[], **extra)
    proc = subprocess.run([PY, "-I", "-c", program, json.dumps(args)], env=dict(os.environ, CC=""),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_prune_keeps_what_is_not_an_engine_release(sandbox, tmp_path):
    lib = str(tmp_path / "lib")  # cni_plugins_lib_dir, shared with a venv and another tool
    old = release(lib, "1.0.0-aaaaaaaaaaaa")
    mine = "1.1.0-0123456789ab"
    release(lib, mine)
    unmarked = release(lib, "1.0.0-bbbbbbbbbbbb", marker=False)  # release-like name, no RELEASE.json
    foreign = os.path.join(lib, "releases", "notes")  # not a release name
    os.makedirs(foreign)
    os.symlink(old, os.path.join(lib, "releases", "1.0.0-cccccccccccc"))  # a link to a release is not one
    venv = os.path.join(lib, "venv", "bin")  # a sibling of releases/
    os.makedirs(venv)
    dest = str(tmp_path / "bin")

    assert node("status", lib, dest, release=mine)["releases"] == ["1.0.0-aaaaaaaaaaaa", mine]
    planned = node("activate", lib, dest, release=mine, keep=0, check=True)
    assert planned["pruned"] == ["1.0.0-aaaaaaaaaaaa"] and os.path.isdir(old)  # check mode: nothing removed

    done = node("activate", lib, dest, release=mine, keep=0)
    assert done["pruned"] == ["1.0.0-aaaaaaaaaaaa"] and not os.path.exists(old)
    assert sorted(os.listdir(os.path.join(lib, "releases"))) == ["1.0.0-bbbbbbbbbbbb", "1.0.0-cccccccccccc",
                                                                  mine, "notes"]
    assert os.path.isdir(venv) and os.path.isdir(foreign) and os.path.isdir(unmarked)
    assert node("activate", lib, dest, release=mine, keep=0)["pruned"] == []


def test_agent_unit_sets_a_descriptor_limit():
    """The systemd unit gives the agent room for many connections (it raises its soft limit to it)."""
    with open(os.path.join(cnitest.ROOT, "roles", "cni_plugins", "templates", "cnikit-agent.service.j2"), encoding="utf-8") as fh:
        unit = fh.read()
    limits = [line for line in unit.splitlines() if line.startswith("LimitNOFILE=")]
    assert limits and int(limits[0].split("=")[1]) >= 4096


def _agent_start_script(tmp_path, pidfile: str) -> str:
    """The role's process-mode task, rendered as Ansible would in check mode (it stops after the
    stale-agent handling, before starting anything)."""
    import jinja2  # noqa: PLC0415
    import yaml  # noqa: PLC0415

    with open(os.path.join(cnitest.ROOT, "roles", "cni_plugins", "tasks", "agent.yml"), encoding="utf-8") as fh:
        tasks = yaml.safe_load(fh)
    (script,) = [t["ansible.builtin.shell"]["cmd"] for t in tasks if t.get("name") == "Run the node agent as a background process"]
    env = jinja2.Environment()
    env.filters["quote"] = lambda v: "'" + str(v).replace("'", "'\\''") + "'"
    return env.from_string(script).render(
        _cni_plugins_agent_socket=str(tmp_path / "no.sock"), _cni_plugins_agent_pidfile=pidfile,
        _cni_plugins_activate={"release": "1.1.0-new000000000"}, cni_plugins_bin_dir=str(tmp_path),
        ansible_check_mode=True)


def test_process_mode_signals_only_the_agent(tmp_path):
    """A stale pidfile's pid is signalled only when its command line is the agent's (L7): a reused pid
    belonging to anything else survives; a stale agent of another release is stopped."""
    import sys  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    other = subprocess.Popen(["sleep", "60"])
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "cnikit", "agent"])
    reaper = threading.Thread(target=agent.wait, daemon=True)  # as init would: no zombie for kill -0 to see
    reaper.start()
    try:
        for proc in (other, agent):
            pidfile = tmp_path / f"pid{proc.pid}"
            pidfile.write_text(f"{proc.pid} 1.1.0-old000000000\n")
            run = subprocess.run(["/bin/sh", "-c", _agent_start_script(tmp_path, str(pidfile))],
                                 capture_output=True, text=True, timeout=30, check=False)
            assert run.returncode == 0, run.stdout + run.stderr
        time.sleep(0.2)
        assert other.poll() is None  # not the agent: never signalled
        reaper.join(timeout=10)
        assert agent.returncode is not None  # the stale agent was stopped
    finally:
        for proc in (other, agent):
            proc.kill()
            proc.wait()
