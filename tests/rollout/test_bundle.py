"""The controller-side release packer (roles/cni_plugins/files/bundle.py): deterministic, from the
installed pyroute2 or from a wheel directory, with failures that say what to do. No network, no root."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import tarfile
import zipfile

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


def test_release_from_a_wheel_dir(tmp_path):
    dist = md.distribution("pyroute2")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / f"pyroute2-{dist.version}-py3-none-any.whl", "w") as zf:
        for f in dist.files:
            if not str(f).startswith("..") and "__pycache__" not in str(f):
                zf.write(dist.locate_file(f), str(f))
    rc, out = bundle(tmp_path / "out", str(wheels))
    assert rc == 0 and out["source"].startswith("wheels in")
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
