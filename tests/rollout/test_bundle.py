"""The controller-side release packer (roles/cni_plugins/files/bundle.py): deterministic, from the
installed pyroute2 + etcd3gw (and their dependency closure) or from a wheel directory, with failures that
say what to do. No network, no root."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUNDLE = os.path.join(ROOT, "roles", "cni_plugins", "files", "bundle.py")
ENGINE = os.path.join(ROOT, "plugins", "module_utils", "cni")


def bundle(out_dir, wheel_dir=""):
    proc = subprocess.run([sys.executable, BUNDLE, json.dumps({"engine_src": ENGINE, "collection_root": ROOT,
                                                                "wheel_dir": wheel_dir, "out_dir": str(out_dir)})],
                          capture_output=True, text=True, check=False)
    return proc.returncode, json.loads(proc.stdout)


def members(tarball):
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_release_from_the_installed_pyroute2_is_deterministic(tmp_path):
    rc, one = bundle(tmp_path / "a")
    rc2, two = bundle(tmp_path / "b")
    assert rc == rc2 == 0
    assert one["name"] == two["name"] and one["name"].split("-")[1] == one["digest"][:12]
    with open(one["tarball"], "rb") as fa, open(two["tarball"], "rb") as fb:
        assert fa.read() == fb.read()
    files = members(one["tarball"])
    assert "cni/node/main.py" in files and "cni/node/relay.c" in files and "pyroute2/__init__.py" in files
    assert not [n for n in files if "__pycache__" in n or n.endswith(".pyc") or n.startswith("/")]
    assert json.loads(files["RELEASE.json"])["pyroute2"] == md.version("pyroute2")


# etcd3gw's closure on the controller (requirements.txt): what the cnikit-cluster IPAM imports on the node
ETCD3GW_CLOSURE = ["certifi", "charset-normalizer", "debtcollector", "etcd3gw", "futurist", "idna", "pbr",
                   "requests", "urllib3", "wrapt"]


def test_release_carries_etcd3gw_pure_python_for_the_nodes_interpreter(tmp_path):
    """etcd3gw and every unconditional dependency, at their installed versions, without compiled parts
    (charset_normalizer and wrapt fall back to Python) nor setuptools (pbr's build-time need); the node's
    Debian interpreter, isolated from its own site-packages, imports the client from the release alone."""
    rc, out = bundle(tmp_path / "a")
    assert rc == 0, out
    files = members(out["tarball"])
    release = json.loads(files["RELEASE.json"])
    assert release["etcd3gw"] == md.version("etcd3gw")
    assert sorted(release["packages"]) == sorted(ETCD3GW_CLOSURE + ["pyroute2"])
    assert all(release["packages"][name] == md.version(name) for name in ETCD3GW_CLOSURE)
    assert not [n for n in files if n.endswith((".so", ".pyd", ".c")) and not n.startswith("cni/")]
    assert not [n for n in files if n.startswith("setuptools")]
    node_python = "/usr/bin/python3"
    if not os.access(node_python, os.X_OK):
        pytest.skip(f"no {node_python} (the lab nodes' interpreter) on this machine")
    root = tmp_path / "release"
    with tarfile.open(out["tarball"]) as tar:
        tar.extractall(root, filter="data")
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import etcd3gw, requests, charset_normalizer.md, pyroute2; "
             "print(etcd3gw.client.__module__.split('.')[0], etcd3gw.__file__.startswith(sys.argv[1]), "
             "charset_normalizer.md.__file__.endswith('.py'), 'setuptools' in sys.modules)")
    proc = subprocess.run([node_python, "-I", "-S", "-c", probe, str(root)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["etcd3gw", "True", "True", "False"]


def test_release_from_a_wheel_dir(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name, tag in (("pyroute2", "py3"), ("pbr", "py2.py3")):  # pbr's wheel is tagged for both
        dist = md.distribution(name)
        with zipfile.ZipFile(wheels / f"{name}-{dist.version}-{tag}-none-any.whl", "w") as zf:
            for f in dist.files:
                if not str(f).startswith("..") and "__pycache__" not in str(f):
                    zf.write(dist.locate_file(f), str(f))
    rc, out = bundle(tmp_path / "out", str(wheels))
    assert rc == 0 and out["source"].startswith("wheels in")
    # what the directory holds, nothing more: no etcd3gw wheel, no cluster IPAM client in this release
    assert out["packages"] == {"pbr": md.version("pbr"), "pyroute2": md.version("pyroute2")} and out["etcd3gw"] is None
    _, installed = bundle(tmp_path / "out2")
    a, b = members(out["tarball"]), members(installed["tarball"])
    assert a["pyroute2/__init__.py"] == b["pyroute2/__init__.py"] and a["cni/node/main.py"] == b["cni/node/main.py"]


def test_failures_say_what_to_do(tmp_path):
    wheels = tmp_path / "w"
    wheels.mkdir()
    rc, out = bundle(tmp_path / "o", str(wheels))
    assert rc == 1 and "no pyroute2 wheel" in out["msg"] and "pip download" in out["msg"]
    (wheels / "netifaces-0.11.0-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    rc, out = bundle(tmp_path / "o", str(wheels))
    assert rc == 1 and "not a pure-Python (py3-none-any) wheel" in out["msg"]
