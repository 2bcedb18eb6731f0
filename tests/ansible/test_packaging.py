"""The collection as a package: galaxy build -> install -> ansible-doc and a play from the installed
copy; `ansible-test sanity` (offline, local Python, no containers) and `ansible-lint` (production
profile, offline) on a copy of the tracked files laid out as ansible_collections/cnikit/cni."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ansible_harness import BIN, ROOT, run_playbook  # noqa: E402

# ansible-test keeps its per-test virtualenvs under ~/.ansible/test; a project-local HOME makes them
# a build artefact, made by `make sanity-venvs` outside the sandbox (which has no network to install
# them from), then reused.
TEST_HOME = os.path.join(ROOT, "build", "ansible-test-home")
PIP_BOOTSTRAP = os.path.join(ROOT, "tests", "sanity", "get_pip_offline.py")


def copy_tracked(dest: str) -> str:
    """The tracked files (as in the working tree) under `dest`, itself made a git tree (ansible-test and
    ansible-lint list files through git)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, (f.decode() for f in files)):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.join(dest, os.path.dirname(rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dest, rel))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="module")
def collection_copy(tmp_path_factory) -> str:
    return copy_tracked(str(tmp_path_factory.mktemp("coll") / "ansible_collections" / "cnikit" / "cni"))


def _run(cmd, cwd, env=None, timeout=600):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", **(env or {})})
    return proc


def test_galaxy_build_install_and_run(collection_copy, tmp_path, sandbox):
    out = tmp_path / "dist"
    built = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", "--output-path", str(out)], collection_copy)
    assert built.returncode == 0, built.stdout + built.stderr
    tarball = out / "cnikit-cni-1.0.0.tar.gz"
    inst = tmp_path / "installed"
    env = {"ANSIBLE_COLLECTIONS_PATH": str(inst)}
    got = _run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "--offline", "-p", str(inst), str(tarball)],
               str(tmp_path), env)
    assert got.returncode == 0 and "installed successfully" in got.stdout, got.stdout + got.stderr
    mods = ["netns", "veth", "macvlan", "bridge", "portmap", "cni_network", "cni_config"]
    doc = _run([os.path.join(BIN, "ansible-doc"), "--json"] + [f"cnikit.cni.{m}" for m in mods], str(tmp_path), env)
    assert doc.returncode == 0, doc.stderr
    assert all(f'"cnikit.cni.{m}"' in doc.stdout for m in mods)
    book = tmp_path / "play.yml"
    ns = f"pkg{os.getpid()}"
    lo = {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]}
    att = {"config": lo, "container_id": "pkg1", "netns": ns, "cache_dir": str(tmp_path / "cache")}
    book.write_text(f"""
- hosts: localhost
  gather_facts: false
  tasks:
    - {{name: ns, cnikit.cni.netns: {{name: {ns}, loopback_up: false}}}}
    - name: attach
      cnikit.cni.cni_network: {att!r}
    - name: lo state
      command: ip -n {ns} -o link show lo
      changed_when: false
    - name: detach
      cnikit.cni.cni_network: {{ {", ".join(f"{k}: {v!r}" for k, v in att.items())}, state: absent }}
    - {{name: ns gone, cnikit.cni.netns: {{name: {ns}, state: absent}}}}
""")
    r = run_playbook(str(inst), str(book)).ok()
    assert r["attach"]["changed"] is True and r["attach"]["result"]["interfaces"][0]["name"] == "lo"
    assert ",UP" in r["lo state"]["stdout"]  # the packaged loopback plugin ran in-process
    assert r["detach"]["changed"] is True and r["ns gone"]["changed"] is True


# What `ansible-test sanity` checks, and where. Every test runs on the collection's Ansible content;
# pylint and pep8 (Ansible's style: run_command instead of subprocess, module.log instead of print,
# no `_` names, ...) run on what Ansible loads as plugins and on the Ansible tests, not on the engine
# package module_utils/cni/, which is a standalone program (the CNI executables and the cnikit CLI)
# that never imports ansible - except netstate.py, the engine side of the modules.
CONTENT = ["plugins/", "roles/", "playbooks/", "meta/", "changelogs/", "examples/", "galaxy.yml",
           "tests/ansible/", "tests/sanity/"]
STYLED = ["plugins/modules/", "plugins/doc_fragments/", "plugins/connection/", "plugins/module_utils/ansible_cni.py",
          "plugins/module_utils/cni/state/netstate.py", "roles/", "playbooks/", "examples/", "tests/ansible/", "tests/sanity/"]


def _sanity(collection_dir, *args):
    """ansible-test sanity with the project-local HOME and the offline pip bootstrap in its cache."""
    os.makedirs(os.path.join(TEST_HOME, ".ansible", "test", "cache"), exist_ok=True)
    from ansible_test._internal.python_requirements import get_venv_packages  # noqa: PLC0415
    from ansible_test._internal.host_configs import NativePythonConfig  # noqa: PLC0415

    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    pip_version = get_venv_packages(NativePythonConfig(version=python))["pip"]
    shutil.copy(PIP_BOOTSTRAP, os.path.join(TEST_HOME, ".ansible", "test", "cache",
                                            f"get_pip_{pip_version.replace('.', '_')}.py"))
    return _run([os.path.join(BIN, "ansible-test"), "sanity", "--python", python, "--local", "--color", "no", *args],
                collection_dir, {"HOME": TEST_HOME}, timeout=1500)


def prime() -> int:
    """Build the sanity virtualenvs (`make sanity-venvs`, outside the sandbox: it needs the package index)."""
    root = os.path.join(ROOT, "build", "sanity-prime", "ansible_collections", "cnikit", "cni")
    shutil.rmtree(root, ignore_errors=True)
    res = _sanity(copy_tracked(root), "--prime-venvs")
    sys.stdout.write(res.stdout + res.stderr)
    return res.returncode


def test_ansible_test_sanity(collection_copy):
    res = _sanity(collection_copy, "--skip-test", "pylint", "--skip-test", "pep8", *CONTENT)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]


def test_ansible_test_sanity_style(collection_copy):
    res = _sanity(collection_copy, "--test", "pylint", "--test", "pep8", *STYLED)
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]


def test_ansible_lint_production(collection_copy):
    # the collection's own modules, roles and playbooks resolve from the copy itself, nothing installed
    root = os.path.dirname(os.path.dirname(os.path.dirname(collection_copy)))
    res = _run([os.path.join(BIN, "ansible-lint"), "--offline", "--nocolor", "-q"], collection_copy,
               {"HOME": TEST_HOME, "ANSIBLE_COLLECTIONS_PATH": root})
    assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]


if __name__ == "__main__":
    sys.exit(prime() if sys.argv[1:] == ["prime"] else 2)
