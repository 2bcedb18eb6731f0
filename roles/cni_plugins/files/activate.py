"""Point the CNI launchers at one installed engine version, prune the other versions, and check
that every executable in the directory answers VERSION.

Run on the node by the executables' interpreter:
    activate.py LIBDIR PYTHON DEST NAMES EXCLUDE [--check]
LIBDIR is <lib dir>/<digest> holding the `cni` package; NAMES and EXCLUDE are comma-separated
("" NAMES = every plugin the engine registers; EXCLUDE = names left to the Go plugins). The
launchers are written by the engine's own write_executables, and only when one differs from
what it would write. Prints
{"stale": [...], "pruned": [...], "not_answering_version": [...]} - what was (or in check mode
would be) changed, so the role reports changed exactly then - and exits 1 if any executable is silent.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

libdir, python, dest, names, exclude = sys.argv[1:6]
check = "--check" in sys.argv[6:]
sys.path.insert(0, libdir)
from cni.node import installer  # noqa: E402
from cni.protocol import registry  # noqa: E402

wanted = [n for n in (names.split(",") if names else registry.PLUGINS) if n and n not in exclude.split(",")]


def same(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read() and os.access(b, os.X_OK) and not os.path.islink(b)
    except OSError:
        return False


# what write_executables would write, compared byte for byte with what is there
with tempfile.TemporaryDirectory() as scratch:
    installer.write_executables(scratch, python, libdir, wanted)
    stale = [n for n in wanted + ["cnikit"] if not same(os.path.join(scratch, n), os.path.join(dest, n))]
if stale and not check:
    installer.write_executables(dest, python, libdir, wanted)
# older versions: no launcher points at them any more (the swap above is atomic per file). Only our
# own releases go: a digest name holding our marker (or, installed before the marker, our engine);
# anything else that shares the lib dir (a venv, another tool's files) is never touched.
MARKER = ".cnikit-engine"
DIGEST = re.compile(r"^[0-9a-f]{16}$")


def is_release(path):
    if not DIGEST.match(os.path.basename(path)) or os.path.islink(path) or not os.path.isdir(path):
        return False
    legacy = any(all(os.path.isfile(os.path.join(path, "cni", f)) for f in files)  # before and after the reshape
                 for files in (("main.py", "registry.py", "agent.py"),
                               ("node/main.py", "protocol/registry.py", "node/agent.py")))
    return os.path.isfile(os.path.join(path, MARKER)) or legacy


top, mine = os.path.split(libdir.rstrip("/"))
if not check and not os.path.exists(os.path.join(libdir, MARKER)):
    with open(os.path.join(libdir, MARKER), "w", encoding="utf-8") as fh:
        fh.write("a cnikit engine release; the cni_plugins role prunes it when no launcher points here\n")
pruned = sorted(os.path.join(top, d) for d in os.listdir(top) if d != mine and is_release(os.path.join(top, d)))
if not check:
    for path in pruned:
        shutil.rmtree(path)
# every executable in the directory (ours and any Go ones) must speak the CNI protocol
silent = []
for name in sorted(os.listdir(dest)) if os.path.isdir(dest) else []:
    path = os.path.join(dest, name)
    if name == "cnikit" or not os.access(path, os.X_OK) or os.path.isdir(path):
        continue
    try:
        proc = subprocess.run([path], env={"CNI_COMMAND": "VERSION", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
        ok = proc.returncode == 0 and "supportedVersions" in json.loads(proc.stdout or b"{}")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        silent.append(path)
print(json.dumps({"stale": stale, "pruned": pruned, "not_answering_version": silent}))
sys.exit(1 if silent else 0)
